//! Logging to stderr (journald captures it under systemd), filtered by
//! `POLYTUN_LOG` / `RUST_LOG` (default: info).

pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("POLYTUN_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Under systemd the journal adds its own timestamps.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journald {
        b.without_time().init();
    } else {
        b.init();
    }
}
