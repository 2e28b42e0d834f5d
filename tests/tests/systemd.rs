//! `systemd/polytund@.service` passes `systemd-analyze verify` and is hardened.
//!
//! `verify` checks that ExecStart's binary exists, so the test verifies an instance copy of the
//! unit (`polytund@test.service` in a temp dir) whose ExecStart points at the built polytund.
use polytun_e2e::bins;
use std::process::Command;

fn unit_text() -> String {
    let p = bins::workspace_root().join("systemd/polytund@.service");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn temp_instance(exec: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pt-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = unit_text().replace("/usr/local/bin/polytund", exec);
    let unit = dir.join("polytund@test.service");
    std::fs::write(&unit, text).unwrap();
    (dir, unit)
}

#[test]
fn systemd_unit_verifies() {
    let sa = bins::tool("systemd-analyze");
    let polytund = bins::polytund();
    let (dir, unit) = temp_instance(polytund.to_str().unwrap());
    let o = Command::new(&sa)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&o.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "systemd-analyze verify failed:\n{err}");
    // verify is lenient: unknown directives are only warnings — fail on those too
    assert!(
        !err.contains("Unknown key")
            && !err.contains("Failed to parse")
            && !err.contains("Invalid"),
        "systemd-analyze verify warnings:\n{err}"
    );
}

#[test]
fn systemd_unit_is_hardened() {
    let text = unit_text();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/polytund --config /etc/polytun/%i.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RuntimeDirectory=polytun",
        "DeviceAllow=/dev/net/tun rw",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "polytund@.service lacks `{line}`"
        );
    }
    // systemd's own exposure score of the unit (offline analysis; lower is better, 10 = unsafe)
    let sa = bins::tool("systemd-analyze");
    let (dir, unit) = temp_instance("/bin/true");
    let o = Command::new(&sa)
        .args(["security", "--offline=yes", "--threshold=40"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let out = String::from_utf8_lossy(&o.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for polytund@test.service: ")
                .nth(1)
        })
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure score:\n{out}\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    assert!(
        score <= 4.0,
        "polytund@.service exposure {score} > 4.0 (systemd-analyze security):\n{out}"
    );
}
