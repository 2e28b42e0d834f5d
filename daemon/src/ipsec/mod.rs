//! IPsec (IKEv2 + ESP) tunnels: the IKE control task ([`tunnel`]) drives a
//! sans-I/O [`polytun_ike::Endpoint`] and installs the CHILD SAs it
//! negotiates into the [`state::Tables`] the ESP data path ([`datapath`])
//! reads: traffic selectors → outbound SA, inbound SPI → SA.
//!
//! ESP always travels UDP-encapsulated on port 4500 (RFC 3948): polytun
//! runs in userspace without raw sockets, and strongSwan's kernel-libipsec
//! does the same.

pub mod config;
pub mod datapath;
pub mod rekey;
pub mod state;
pub mod tunnel;

use ipnet::IpNet;
use polytun_esp::Transform;
use polytun_ike::{DhGroup, EncrAlg, EspTransform, IkeAlgs, IntegAlg, PrfAlg, TrafficSelector};
use std::net::IpAddr;

/// What polytund's IPsec supports (the IKE crate's list plus what the daemon adds).
pub fn capabilities() -> polytun_core::Capabilities {
    use polytun_core::Interface;
    polytun_ike::capabilities()
        .with(
            Interface::Ku,
            "`polytun rekey` (CHILD SAs), `--ike` (IKE SAs) with CREATE_CHILD_SA, make-before-break; `--reauth` reauthenticates",
        )
        .with(
            Interface::Ke,
            "CHILD SAs rekeyed at rekey_time (jittered by rand_time) or on the record engine's KeyExpiring (rekey_bytes/rekey_packets), deleted at the hard limits; IKE SAs rekeyed at ike_rekey_time; reauth_time",
        )
        .with(
            Interface::Sske,
            "`polytun export-key`: prf+(SK_d, \"polytun key export\" | label | context | Ni | Nr)",
        )
}

/// The ESP transform of a negotiated CHILD SA and its keys as `polytun_esp` takes them.
pub fn esp_transform(t: &EspTransform) -> Option<Transform> {
    Some(match (t.encr, t.integ) {
        (EncrAlg::AesGcm16 { key_bits: 128 }, None) => Transform::AesGcm128,
        (EncrAlg::AesGcm16 { key_bits: 256 }, None) => Transform::AesGcm256,
        (EncrAlg::ChaCha20Poly1305, None) => Transform::ChaCha20Poly1305,
        (EncrAlg::AesCbc { key_bits: 128 }, Some(IntegAlg::HmacSha256_128)) => {
            Transform::AesCbc128HmacSha256
        }
        (EncrAlg::AesCbc { key_bits: 256 }, Some(IntegAlg::HmacSha256_128)) => {
            Transform::AesCbc256HmacSha256
        }
        _ => return None,
    })
}

/// KEYMAT of one direction in `polytun_esp`'s layout: AEAD key ‖ salt, or
/// encryption key ‖ integrity key.
pub fn esp_keymat(k: &polytun_ike::ChildKeys) -> zeroize::Zeroizing<Vec<u8>> {
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(k.encr.len() + k.integ.len()));
    v.extend_from_slice(&k.encr);
    v.extend_from_slice(&k.integ);
    v
}

pub fn encr_name(e: EncrAlg) -> String {
    match e {
        EncrAlg::AesGcm16 { key_bits } => format!("AES_GCM_16-{key_bits}"),
        EncrAlg::AesCbc { key_bits } => format!("AES_CBC-{key_bits}"),
        EncrAlg::ChaCha20Poly1305 => "CHACHA20_POLY1305".into(),
    }
}

pub fn integ_name(i: IntegAlg) -> &'static str {
    match i {
        IntegAlg::HmacSha256_128 => "HMAC_SHA2_256_128",
        IntegAlg::HmacSha384_192 => "HMAC_SHA2_384_192",
        IntegAlg::HmacSha512_256 => "HMAC_SHA2_512_256",
    }
}

pub fn prf_name(p: PrfAlg) -> &'static str {
    match p {
        PrfAlg::HmacSha256 => "PRF_HMAC_SHA2_256",
        PrfAlg::HmacSha384 => "PRF_HMAC_SHA2_384",
        PrfAlg::HmacSha512 => "PRF_HMAC_SHA2_512",
    }
}

pub fn dh_name(d: DhGroup) -> &'static str {
    match d {
        DhGroup::Modp2048 => "MODP_2048",
        DhGroup::Ecp256 => "ECP_256",
        DhGroup::Ecp384 => "ECP_384",
        DhGroup::Curve25519 => "CURVE_25519",
    }
}

/// `AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519`, as swanctl prints it.
pub fn ike_algs_name(a: &IkeAlgs) -> String {
    let mut s = encr_name(a.encr);
    if let Some(i) = a.integ {
        s.push('/');
        s.push_str(integ_name(i));
    }
    s.push('/');
    s.push_str(prf_name(a.prf));
    s.push('/');
    s.push_str(dh_name(a.dh));
    s
}

/// The traffic selector of a prefix.
pub fn ts_of(net: &IpNet) -> TrafficSelector {
    polytun_ike::config::ts_prefix(net.addr(), net.prefix_len())
}

/// The prefixes exactly covering a selector's address range (ports and
/// protocol are not looked at by the data path).
pub fn nets_of(ts: &TrafficSelector) -> Vec<IpNet> {
    fn split(mut lo: u128, hi: u128, bits: u32, mk: impl Fn(u128, u8) -> IpNet) -> Vec<IpNet> {
        // the last address of the aligned block of 2^size at lo
        let last = |lo: u128, size: u32| {
            if size >= 128 {
                u128::MAX
            } else {
                lo + ((1u128 << size) - 1)
            }
        };
        let mut v = Vec::new();
        loop {
            let mut size = if lo == 0 {
                bits
            } else {
                lo.trailing_zeros().min(bits)
            };
            while size > 0 && last(lo, size) > hi {
                size -= 1;
            }
            v.push(mk(lo, (bits - size) as u8));
            let l = last(lo, size);
            // (a pathological range stops at 64 prefixes)
            if l >= hi || v.len() >= 64 {
                return v;
            }
            lo = l + 1;
        }
    }
    match (ts.start, ts.end) {
        (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
            split(u32::from(a).into(), u32::from(b).into(), 32, |x, l| {
                IpNet::new(IpAddr::V4((x as u32).into()), l).expect("prefix length ≤ 32")
            })
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => split(a.into(), b.into(), 128, |x, l| {
            IpNet::new(IpAddr::V6(x.into()), l).expect("prefix length ≤ 128")
        }),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn selectors_to_prefixes_and_back() {
        for p in [
            "198.51.100.2/32",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
        ] {
            assert_eq!(nets_of(&ts_of(&n(p))), vec![n(p)], "{p}");
        }
        let ts = TrafficSelector {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start: "10.0.0.1".parse().unwrap(),
            end: "10.0.0.6".parse().unwrap(),
        };
        assert_eq!(
            nets_of(&ts),
            vec![
                n("10.0.0.1/32"),
                n("10.0.0.2/31"),
                n("10.0.0.4/31"),
                n("10.0.0.6/32")
            ]
        );
    }

    #[test]
    fn transforms_map() {
        let t = EspTransform {
            encr: EncrAlg::AES256GCM16,
            integ: None,
            esn: false,
        };
        assert_eq!(esp_transform(&t), Some(Transform::AesGcm256));
        let t = EspTransform {
            encr: EncrAlg::AES128CBC,
            integ: Some(IntegAlg::HmacSha256_128),
            esn: true,
        };
        assert_eq!(esp_transform(&t), Some(Transform::AesCbc128HmacSha256));
        let t = EspTransform {
            encr: EncrAlg::AES128CBC,
            integ: Some(IntegAlg::HmacSha512_256),
            esn: true,
        };
        assert_eq!(esp_transform(&t), None);
    }
}
