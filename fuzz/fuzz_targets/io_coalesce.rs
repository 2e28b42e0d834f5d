//! TUN write coalescing: any list of (decrypted) packets splits into runs
//! the gathered writer can write, without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Packets as a sequence of (u16 length, bytes); the first one is a
    // template the others mostly repeat, so runs of segments are reachable.
    let mut packets = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && packets.len() < 80 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 2048;
        rest = &rest[2..];
        let take = len.min(rest.len());
        packets.push(rest[..take].to_vec());
        rest = &rest[take..];
    }
    polytun_io::fuzz_coalesce(&mut packets);
});
