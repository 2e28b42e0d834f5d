//! UAPI requests (`get=1` / `set=1` and their `key=value` lines, as `wg`
//! and `wg-quick` send them to the socket): any text parses or is refused
//! with an errno, without panicking; a parsed `set` holds only well-formed
//! keys, endpoints and prefixes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_wireguard::uapi::{parse_request, Request};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let body: Vec<String> = lines.map(str::to_string).collect();
    match parse_request(first, &body) {
        Ok(Request::Set(set)) => {
            for p in &set.peers {
                assert!(p.allowed_ips.len() <= body.len(), "more prefixes than lines");
            }
        }
        Ok(_) => {}
        Err(e) => assert!(e.errno < 0, "errno {} is not negative", e.errno),
    }
});
