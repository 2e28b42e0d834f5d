//! Arbitrary datagrams into a Device with a peer configured and a handshake
//! in progress: every input is an Ok or a counted error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_wireguard::{Device, PeerConfig, PublicKey, StaticSecret};
use rand_core::{impls, CryptoRng, RngCore};
use std::time::{Duration, Instant, SystemTime};

/// Deterministic rng so crashes reproduce.
struct Counter(u64);
impl RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        impls::fill_bytes_via_next(self, d)
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(d);
        Ok(())
    }
}
impl CryptoRng for Counter {}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut dev = Device::new(
        StaticSecret::from([1u8; 32]),
        now,
        SystemTime::UNIX_EPOCH,
        Counter(7),
    );
    let peer_secret = StaticSecret::from([2u8; 32]);
    let peer = dev.add_peer(PeerConfig {
        public_key: PublicKey::from(&peer_secret),
        preshared_key: None,
        endpoint: Some("192.0.2.2:51820".parse().unwrap()),
        persistent_keepalive: Some(25),
    });
    dev.on_need_handshake(now, peer);
    // Split the input into datagrams at 0xff 0xff markers; alternate load.
    for (i, d) in data.split(|b| *b == 0xff).enumerate() {
        let t = now + Duration::from_millis(i as u64 * 30);
        let _ = dev.handle_handshake(t, "192.0.2.3:1".parse().unwrap(), d, i % 2 == 1);
        dev.on_data_received(
            t,
            u32::from_le_bytes([d.first().copied().unwrap_or(0), 0, 0, 0]),
            "192.0.2.4:2".parse().unwrap(),
            d.is_empty(),
        );
        dev.handle_timeout(t + Duration::from_secs(6));
        while dev.poll_output().is_some() {}
    }
});
