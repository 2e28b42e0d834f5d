//! Locating binaries. Never skips: a missing binary is a test failure that says how to fix it.
use std::path::{Path, PathBuf};

/// The workspace root (the parent of the `tests/` package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory holding the polytun binaries: `$POLYTUN_BIN_DIR`, else `$CARGO_TARGET_DIR/release`,
/// else `<workspace>/target/release`.
pub fn polytun_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("POLYTUN_BIN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        let d = PathBuf::from(d);
        let d = if d.is_absolute() {
            d
        } else {
            workspace_root().join(d)
        };
        return d.join("release");
    }
    workspace_root().join("target/release")
}

fn polytun_bin(name: &str) -> PathBuf {
    let p = polytun_bin_dir().join(name);
    assert!(
        p.is_file(),
        "polytun binary {} not found: run `cargo build --release` first (or set POLYTUN_BIN_DIR)",
        p.display()
    );
    // The end-to-end tests run what `cargo build --release` built, which
    // `cargo nextest run` does not rebuild: after a change to the daemon's
    // sources they would test the code from before it and pass or fail for
    // it. A binary picked explicitly (POLYTUN_BIN_DIR) is taken as it is.
    if std::env::var_os("POLYTUN_BIN_DIR").is_none() {
        static NEWEST: std::sync::OnceLock<Option<(std::time::SystemTime, PathBuf)>> =
            std::sync::OnceLock::new();
        let newest = NEWEST.get_or_init(|| newest_source(&workspace_root()));
        if let Err(e) = check_fresh(&p, newest.as_ref()) {
            panic!("{e}");
        }
    }
    p
}

/// The most recently modified of the files the binaries are built from:
/// the sources of the daemon and of the crates under `crates/`, their
/// manifests, the workspace's manifest and lock file.
fn newest_source(root: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest = None;
    let mut package = |dir: PathBuf| {
        consider(&dir.join("src"), &mut newest);
        consider(&dir.join("Cargo.toml"), &mut newest);
    };
    package(root.join("daemon"));
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        for c in crates.flatten() {
            package(c.path());
        }
    }
    consider(&root.join("Cargo.toml"), &mut newest);
    consider(&root.join("Cargo.lock"), &mut newest);
    newest
}

/// Keeps in `newest` the latest-modified of `path` (every file under it,
/// for a directory) and what it held.
fn consider(path: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            consider(&e.path(), newest);
        }
    } else if let Ok(m) = meta.modified() {
        let later = match newest {
            Some((t, _)) => m > *t,
            None => true,
        };
        if later {
            *newest = Some((m, path.to_path_buf()));
        }
    }
}

/// Err (saying what to do) when `binary` is older than `newest` source.
fn check_fresh(
    binary: &Path,
    newest: Option<&(std::time::SystemTime, PathBuf)>,
) -> Result<(), String> {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    match newest {
        Some((changed, source)) if *changed > built => Err(format!(
            "polytun binary {} is older than {}: run `cargo build --release` first \
             (the end-to-end tests run that binary; set POLYTUN_BIN_DIR to run another)",
            binary.display(),
            source.display()
        )),
        _ => Ok(()),
    }
}

/// `polytund`, the daemon.
pub fn polytund() -> PathBuf {
    polytun_bin("polytund")
}
/// `polytun`, the CLI.
pub fn polytun() -> PathBuf {
    polytun_bin("polytun")
}
/// `polytun-wg`, the wireguard-go drop-in.
pub fn polytun_wg() -> PathBuf {
    polytun_bin("polytun-wg")
}

/// The test helper binary of this package. Integration tests are compiled with
/// `CARGO_BIN_EXE_pt-xfer`, but this library is not, so look it up at run time: the variables
/// cargo/nextest set, else next to the test executable (`target/<profile>/deps/..`).
pub fn pt_xfer() -> PathBuf {
    for v in [
        "CARGO_BIN_EXE_pt-xfer",
        "NEXTEST_BIN_EXE_pt-xfer",
        "NEXTEST_BIN_EXE_pt_xfer",
    ] {
        if let Some(p) = std::env::var_os(v) {
            return PathBuf::from(p);
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join("pt-xfer");
        if p.is_file() {
            return p;
        }
    }
    panic!("pt-xfer not found next to {}: run the tests with `cargo nextest run -p polytun-e2e` (it builds pt-xfer)", exe.display())
}

const APT: &str = "apt-get install -y --no-install-recommends";

fn install_hint(tool: &str) -> String {
    match tool {
        "wireguard-go" => format!("{APT} wireguard-go"),
        "wg" | "wg-quick" => format!("{APT} wireguard-tools"),
        "boringtun-cli" => "cargo install boringtun-cli --locked".into(),
        "iperf3" => format!("{APT} iperf3"),
        "nft" => format!("{APT} nftables"),
        "ping" => format!("{APT} iputils-ping"),
        "tcpdump" => format!("{APT} tcpdump"),
        "ethtool" => format!("{APT} ethtool"),
        "ip" => format!("{APT} iproute2"),
        "systemd-analyze" => format!("{APT} systemd"),
        "swanctl" => format!("{APT} strongswan-swanctl"),
        "pki" => format!("{APT} strongswan-pki"),
        _ => format!("{APT} {tool}"),
    }
}

/// Find an external tool in `$PATH`, `$CARGO_HOME/bin` or `~/.cargo/bin`; panic with the install
/// command if it is missing (interop tests must never be skipped silently).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(d.into());
    }
    if let Some(c) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(c).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push("/root/.cargo/bin".into());
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required tool `{name}` is not installed: run `{}` (or `sudo scripts/test.sh`, which installs everything)",
        install_hint(name)
    );
}

/// Tests need root (namespaces, TUN); fail loudly otherwise.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the e2e tests need root (network namespaces, TUN): run `sudo scripts/test.sh`"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A binary built before the latest source change is refused, naming
    /// the source; one built after it is taken.
    #[test]
    fn a_binary_older_than_its_sources_is_refused() {
        let dir = std::env::temp_dir().join(format!("polytun-bins-{}", std::process::id()));
        let src = dir.join("daemon/src");
        std::fs::create_dir_all(&src).unwrap();
        let (bin, lib) = (dir.join("polytund"), src.join("lib.rs"));
        std::fs::write(&bin, b"").unwrap();
        std::fs::write(&lib, b"").unwrap();
        let set = |p: &Path, t: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        let t0 = SystemTime::now() - Duration::from_secs(100);
        set(&bin, t0);
        set(&lib, t0 + Duration::from_secs(10));
        let newest = newest_source(&dir);
        assert_eq!(newest.as_ref().map(|n| &n.1), Some(&lib));
        let e = check_fresh(&bin, newest.as_ref()).unwrap_err();
        assert!(
            e.contains("lib.rs") && e.contains("cargo build --release"),
            "{e}"
        );
        set(&bin, t0 + Duration::from_secs(20));
        assert_eq!(check_fresh(&bin, newest.as_ref()), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
