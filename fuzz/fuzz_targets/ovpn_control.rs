//! The control channel end to end: a server Session (no wrapping, so the
//! input reaches the body parser, the reliability layer, key-id routing,
//! soft resets and TLS) fed a sequence of packets (each a u16 length then
//! the bytes) and timeouts: never panics, and whatever it does, it never
//! installs a data key (no TLS handshake can complete against it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_core::Limits;
use polytun_openvpn::data::Cipher;
use polytun_openvpn::reliable::ReliableConfig;
use polytun_openvpn::session::{Output, Role, Session, SessionConfig, DEFAULT_CONTROL_MTU};
use polytun_openvpn::tls::rustls::pki_types::pem::PemObject;
use polytun_openvpn::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use polytun_openvpn::tls::{self, PeerVerification, TlsIdentity};
use polytun_openvpn::wrap::ControlWrap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBdTCCARugAwIBAgIUcH15LoQJtAe2GF36S2MWKgK1PUEwCgYIKoZIzj0EAwIw
DzENMAsGA1UEAwwEZnV6ejAgFw0yNjExMjYwODE4MjJaGA8yMTI2MTEwMjA4MTgy
MlowDzENMAsGA1UEAwwEZnV6ejBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABGwq
gF8YS/SWURvQ2cgqyzMcw89xKo7Tchml6a+JaCsiFSUbvoWfF6z8aM6ybQFx1MMI
2Nj4uEqvAomrlGITTVmjUzBRMB0GA1UdDgQWBBQI/KGFxHAmiL/v9hH91qVyM9qR
4zAfBgNVHSMEGDAWgBQI/KGFxHAmiL/v9hH91qVyM9qR4zAPBgNVHRMBAf8EBTAD
AQH/MAoGCCqGSM49BAMCA0gAMEUCIQCyCwuUY618qryJJQP5+jTvZGMCTtnHZbwR
nfX0Q4CmAgIgKhj2xVTG4ZGkDs+7rfrMq3S/NmBgRw7Pri4vpebxUp4=
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsktwfFdI8AKiB5nN
L9Zh6zJkJeKr+J2Sy2AL31zJeW+hRANCAARsKoBfGEv0llEb0NnIKsszHMPPcSqO
03IZpemviWgrIhUlG76Fnxes/GjOsm0BcdTDCNjY+LhKrwKJq5RiE01Z
-----END PRIVATE KEY-----
";

fn server_config() -> Arc<tls::rustls::ServerConfig> {
    static CFG: OnceLock<Arc<tls::rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let cert = CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap();
        let id = TlsIdentity {
            cert_chain: vec![cert.clone()],
            key: Some(PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap()),
            verify: PeerVerification::Fingerprints(vec![tls::fingerprint(&cert)]),
            allow_tls12: true,
        };
        tls::server_config(&id).unwrap()
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let cfg = SessionConfig {
        role: Role::Server {
            config: server_config(),
            push: vec![],
            peer_id: 1,
        },
        wrap: ControlWrap::none(),
        ciphers: Cipher::ALL.to_vec(),
        udp: true,
        control_mtu: DEFAULT_CONTROL_MTU,
        reliable: ReliableConfig::default(),
        data_limits: Limits::default(),
        credentials: None,
        framing: Default::default(),
        compress_migrate: true,
        decompress: true,
        auth_token: None,
    };
    let mut s = Session::new(cfg, now, SystemTime::UNIX_EPOCH, rand_core::OsRng);
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let (pkt, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        if pkt.is_empty() {
            // an empty packet stands for time passing
            now += Duration::from_secs(3);
            s.handle_timeout(now);
        } else {
            let _ = s.handle_packet(now, pkt);
        }
        if pkt.first() == Some(&0xff) {
            let _ = s.renegotiate(now);
        }
        while let Some(o) = s.poll_output() {
            assert!(
                !matches!(o, Output::InstallKey(_) | Output::SendKey(_)),
                "a data key without a TLS handshake"
            );
        }
        let _ = s.poll_timeout();
        let _ = s.key_info(now);
    }
});
