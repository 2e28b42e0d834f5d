//! A config with an error makes polytund exit non-zero, and stderr names the file, the line
//! (where there is one) and the field (contract: `error: FILE:LINE: FIELD: problem`).
use polytun_e2e::{bins, Keypair, Netns};
use std::time::Duration;

/// A valid config; each case edits one line (found by its `# <tag>` marker).
fn base() -> String {
    let a = Keypair::generate();
    let b = Keypair::generate();
    format!(
        r#"# polytund config used by the config-error tests
[interface]
name = "IFACE"
address = ["198.51.100.1/24"]
mtu = 1420 # mtu

[[tunnel]]
name = "wg"
protocol = "wireguard"
listen_port = 51820 # port
private_key = "{}" # private_key

[[tunnel.peer]]
name = "site-b"
public_key = "{}" # public_key
endpoint = "192.0.2.2:51820" # endpoint
allowed_ips = ["198.51.100.2/32"] # allowed_ips
"#,
        a.private, b.public
    )
}

/// Replace the line tagged `# tag` by `new` (None: delete it); return the text and the 1-based
/// line number of the edit.
fn edit(tag: &str, new: Option<&str>) -> (String, usize) {
    let b = base();
    let marker = format!("# {tag}");
    let idx = b.lines().position(|l| l.ends_with(&marker)).expect("tag");
    let mut lines: Vec<String> = b.lines().map(String::from).collect();
    match new {
        Some(n) => lines[idx] = n.to_string(),
        None => {
            lines.remove(idx);
        }
    }
    (lines.join("\n") + "\n", idx + 1)
}

/// Run polytund on `text`; assert non-zero exit and that stderr names the file, `FILE:LINE`
/// (if `line`), and every string in `must`.
fn expect_error(test: &str, text: &str, line: Option<usize>, must: &[&str]) {
    let ns = Netns::new(test);
    let iface = polytun_e2e::unique_ifname("ce");
    let text = text.replace("IFACE", &iface);
    let conf = ns.write_file("bad.toml", &text);
    let conf_s = conf.to_str().unwrap();
    let d = bins::polytund();
    let pid = ns.spawn("polytund", &[d.to_str().unwrap(), "--config", conf_s]);
    let st = ns.wait_exit(pid, Duration::from_secs(10));
    let log = ns.log_of(pid);
    let st = st.unwrap_or_else(|| panic!("polytund kept running on a bad config:\n{text}\n{log}"));
    assert!(
        !st.success(),
        "polytund exited 0 on a bad config:\n{text}\n{log}"
    );
    assert!(
        log.contains(conf_s),
        "the error does not name the file {conf_s}:\n{log}"
    );
    if let Some(l) = line {
        let want = format!("{conf_s}:{l}");
        assert!(
            log.contains(&want),
            "the error does not name the line ({want}):\n{log}\nconfig:\n{text}"
        );
    }
    for m in must {
        assert!(log.contains(m), "the error does not mention `{m}`:\n{log}");
    }
    assert!(
        !log.contains("panicked"),
        "polytund panicked on a bad config:\n{log}"
    );
}

#[test]
fn config_error_bad_public_key() {
    let (t, l) = edit("public_key", Some(r#"public_key = "bm90IGEga2V5""#));
    expect_error("ce-pk", &t, Some(l), &["public_key"]);
}

#[test]
fn config_error_bad_private_key() {
    let (t, l) = edit("private_key", Some(r#"private_key = "@@@@""#));
    expect_error("ce-sk", &t, Some(l), &["private_key"]);
}

#[test]
fn config_error_missing_private_key() {
    let (t, _) = edit("private_key", None);
    expect_error("ce-miss", &t, None, &["private_key"]);
}

#[test]
fn config_error_bad_cidr() {
    let (t, l) = edit("allowed_ips", Some(r#"allowed_ips = ["198.51.100.2/33"]"#));
    expect_error("ce-cidr", &t, Some(l), &["allowed_ips"]);
}

#[test]
fn config_error_bad_endpoint() {
    let (t, l) = edit("endpoint", Some(r#"endpoint = "192.0.2.2""#));
    expect_error("ce-ep", &t, Some(l), &["endpoint"]);
}

#[test]
fn config_error_unknown_key() {
    let (t, l) = edit("port", Some("listen_prot = 51820"));
    expect_error("ce-key", &t, Some(l), &["listen_prot"]);
}

#[test]
fn config_error_port_out_of_range() {
    let (t, l) = edit("port", Some("listen_port = 70000"));
    expect_error("ce-port", &t, Some(l), &["listen_port"]);
}

#[test]
fn config_error_toml_syntax() {
    let (t, l) = edit("endpoint", Some(r#"endpoint = "192.0.2.2:51820"#));
    expect_error("ce-syn", &t, Some(l), &[]);
}

#[test]
fn config_error_workers_out_of_range() {
    let (t, l) = edit("mtu", Some("workers = 0"));
    expect_error("ce-workers", &t, Some(l), &["interface.workers", "1..=64"]);
}

#[test]
fn config_error_missing_file() {
    let ns = Netns::new("ce-nofile");
    let missing = ns.dir().join("does-not-exist.toml");
    let d = bins::polytund();
    let pid = ns.spawn(
        "polytund",
        &[d.to_str().unwrap(), "--config", missing.to_str().unwrap()],
    );
    let st = ns
        .wait_exit(pid, Duration::from_secs(10))
        .expect("polytund kept running");
    let log = ns.log_of(pid);
    assert!(!st.success(), "exit 0 without a config file:\n{log}");
    assert!(
        log.contains(missing.to_str().unwrap()),
        "error does not name the file:\n{log}"
    );
}
