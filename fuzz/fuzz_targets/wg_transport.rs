//! Opening arbitrary bytes as a transport data message with a keypair.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_core::PacketBuf;
use polytun_wireguard::noise::SessionKeys;
use polytun_wireguard::Keypair;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let keys = SessionKeys {
        send: [1; 32],
        recv: [2; 32],
    };
    let kp = Keypair::new(&keys, 0x0403_0201, 9, true, now, 1420);
    let mut buf = data.to_vec();
    // Steer half the inputs at this keypair's index.
    if buf.len() >= 8 && buf[0] & 1 == 0 {
        buf[..8].copy_from_slice(&[4, 0, 0, 0, 1, 2, 3, 4]);
    }
    let n = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, n);
    assert!(kp.open(now, &mut p).is_err(), "forged packet authenticated");
});
