//! Key method 2 messages (what the peer sends inside TLS: key material,
//! options, credentials, peer-info): never panic; what parses re-encodes
//! and parses back to the same message; peer-info lookups never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_openvpn::data::Cipher;
use polytun_openvpn::keymethod::{negotiate_cipher, peer_has_proto, peer_info_get, KeyMethod2};

/// A deterministic byte source for the key material of the re-encoding.
struct Counter(u8);

impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let [flag, rest @ ..] = data else {
        return;
    };
    let from_client = flag & 1 == 1;
    let Ok((m, used)) = KeyMethod2::parse(rest, from_client) else {
        return;
    };
    assert!(used <= rest.len(), "consumed {used} of {}", rest.len());
    let again = m.encode(from_client, &mut Counter(0));
    let (back, n) = KeyMethod2::parse(&again, from_client).expect("re-encoded message parses");
    assert_eq!(n, again.len());
    assert_eq!(back, m);
    let _ = peer_info_get(&m.peer_info, "IV_CIPHERS");
    let _ = peer_has_proto(&m.peer_info, 1 << 3);
    let _ = negotiate_cipher(&[Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305], &m.peer_info);
});
