//! The certificate side of IKE_AUTH: X.509 parsing (CERT payload data),
//! the chain check, DN parsing/printing, RFC 7427 AlgorithmIdentifiers and
//! private-key PEM/DER. Nothing may panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_ike::cert::{dn_eq, dn_to_string, verify_chain, Certificate, SigAlg};
use polytun_ike::key::PrivateKey;
use std::time::{Duration, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    let _ = SigAlg::from_der(data);
    let _ = dn_to_string(data);
    let _ = dn_eq(data, data);
    let _ = PrivateKey::from_pem_or_der(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = polytun_ike::cert::dn_from_str(s) {
            let _ = dn_to_string(&d);
        }
    }
    if let Ok(c) = Certificate::from_der(data.to_vec()) {
        let _ = c.subject_string();
        let _ = c.spki_sha1();
        let _ = c.is_ca();
        let _ = c.has_identity(&c.subject_identity());
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let _ = verify_chain(&c, &[c.clone()], &[c.clone()], now);
    }
});
