#![no_main]
//! Feed arbitrary datagrams (on ports 500 and 4500) to a responder endpoint:
//! no panic, and the outputs drain.

use libfuzzer_sys::fuzz_target;
use polytun_ike::{Config, Endpoint, Identity};
use rand_core::{CryptoRng, RngCore};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Deterministic "randomness" so crashes reproduce.
struct Counter(u64);
impl RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        for b in d {
            *b = (self.next_u64() >> 33) as u8;
        }
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(d);
        Ok(())
    }
}
impl CryptoRng for Counter {}

fuzz_target!(|data: &[u8]| {
    let mut c = Config::psk(
        Identity::Fqdn("b.example".into()),
        Some(Identity::Fqdn("a.example".into())),
        b"secret",
    );
    c.cookie_threshold = 2;
    let mut ep = Endpoint::new(c, IpAddr::from([192, 0, 2, 2]), Box::new(Counter(1)));
    let now = Instant::now();
    // datagrams: [len_hi, len_lo, port_sel, bytes...]*
    let mut r = data;
    let mut i = 0u64;
    while r.len() >= 3 {
        let len = (u16::from_be_bytes([r[0], r[1]]) as usize).min(r.len() - 3);
        let port = if r[2] & 1 == 0 { 500 } else { 4500 };
        let src = SocketAddr::new(IpAddr::from([192, 0, 2, 1 + (r[2] >> 6)]), port);
        let _ = ep.handle(now + Duration::from_secs(i), src, port, &r[3..3 + len]);
        while ep.poll_output().is_some() {}
        r = &r[3 + len..];
        i += 1;
    }
    ep.handle_timeout(now + Duration::from_secs(3600));
    while ep.poll_output().is_some() {}
});
