//! PUSH_REPLY messages (the server's options for a client, inside TLS):
//! any text parses or is refused without panicking, alone and merged as a
//! sequence of continuation messages, and the parsed reply's accessors
//! never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_openvpn::push::PushReply;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = PushReply::parse(&text) {
        let _ = r.dns();
        let _ = r.tls_ekm();
    }
    // NUL separates the messages of one multi-part reply.
    let mut merged = PushReply::default();
    for part in text.split('\0') {
        if merged.merge(part).is_err() {
            break;
        }
    }
    let _ = merged.dns();
});
