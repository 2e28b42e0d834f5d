//! The replay window against a model: accept iff new and within the window.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_core::ReplayWindow;
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let mut w = ReplayWindow::new(128);
    let window = w.window();
    let mut seen = HashSet::new();
    let mut newest: Option<u64> = None;
    for c in data.chunks_exact(2) {
        let c = u16::from_le_bytes([c[0], c[1]]) as u64;
        let expect = !seen.contains(&c) && newest.is_none_or(|n| c > n || n - c < window);
        assert_eq!(w.update(c).is_ok(), expect);
        if expect {
            seen.insert(c);
            newest = Some(newest.map_or(c, |n| n.max(c)));
        }
    }
});
