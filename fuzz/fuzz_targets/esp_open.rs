//! Opening arbitrary bytes as an ESP packet with an inbound SA of every
//! transform: never a panic, and nothing forged authenticates.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_core::PacketBuf;
use polytun_esp::{Direction, EspSa, SaParams, Transform};
use std::time::Instant;

const SPI: u32 = 0x0102_0304;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let t = Transform::ALL[usize::from(sel) % Transform::ALL.len()];
    let now = Instant::now();
    let mut params = SaParams::new(SPI, Direction::Inbound, t);
    params.esn = sel & 0x80 != 0;
    params.window = 64;
    let keymat = vec![0x42u8; t.keymat_len()];
    let Ok(sa) = EspSa::new(params, &keymat, now) else {
        return;
    };
    let mut buf = rest.to_vec();
    // Steer most inputs at this SA's SPI.
    if buf.len() >= 4 && sel & 0x40 == 0 {
        buf[..4].copy_from_slice(&SPI.to_be_bytes());
    }
    let n = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, n);
    assert!(sa.open(now, &mut p).is_err(), "forged packet authenticated");
    assert_eq!(sa.newest_seq(), None, "a forgery moved the replay window");
});
