//! polytun-openvpn: the OpenVPN protocol as state machines without I/O.
//!
//! - [`packet`]: opcodes, control packets, ACK arrays, the P_DATA_V2 header
//! - [`framing`]: the 16-bit length framing of TCP mode
//! - [`static_key`]: OpenVPN's static key file, key slots and directions
//! - [`wrap`]: control-channel protection (none, tls-auth, tls-crypt)
//! - [`reliable`]: the control channel's reliability layer
//! - [`tls`]: TLS via rustls without I/O, CA / peer-fingerprint, exporter
//! - [`keymethod`]: key method 2, peer-info, cipher negotiation
//! - [`push`]: PUSH_REPLY parsing and building
//! - [`compress`]: the compression framing (`comp-lzo`, `compress`), never compression
//! - [`data`]: P_DATA_V2 on `polytun_core`'s record engine, tls-ekm keys
//! - [`session`]: the sans-I/O client/server [`session::Session`]
//! - [`rekey`]: renegotiation: soft reset, key-ids 1..7, lame duck, triggers

pub mod compress;
pub mod data;
pub mod framing;
pub mod keymethod;
pub mod packet;
pub mod push;
pub mod rekey;
pub mod reliable;
pub mod session;
pub mod static_key;
pub mod tls;
pub mod wrap;
use polytun_core::{Capabilities, Interface};

/// The RFC 8922 §5 interfaces OpenVPN offers in polytun, as built so far.
pub fn capabilities() -> Capabilities {
    Capabilities::new()
        .with(
            Interface::Ipk,
            "X.509 certificate and key per side (rustls, TLS 1.3/1.2)",
        )
        .with(
            Interface::Alg,
            "data-ciphers AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305 (server picks)",
        )
        .with(Interface::Pski, "static key files for tls-auth / tls-crypt")
        .with(
            Interface::Iv,
            "CA chain with EKU (remote-cert-tls) or peer-fingerprint SHA-256",
        )
        .with(
            Interface::Sske,
            "TLS exporter of the session (RFC 5705, as keying-material-exporter): polytun export-key",
        )
        .with(
            Interface::Ke,
            "reneg-sec / reneg-bytes / reneg-pkts and packet-id wrap start a soft reset",
        )
        .with(
            Interface::Ct,
            "explicit-exit-notify (OCC_EXIT) sent and honoured, both roles, UDP",
        )
        .with(
            Interface::Me,
            "server follows a client's authenticated new address (float)",
        )
        .with(
            Interface::Ku,
            "soft reset on request from either side; the old key stays as lame duck",
        )
    // Not yet: SAV (HMAC cookie).
}
