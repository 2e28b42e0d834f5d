//! polytun ESP: the IPsec record layer (RFC 4303 tunnel mode). No I/O, no
//! clock, no runtime: callers pass `now` and packet buffers in.
//!
//! - [`EspSa`]: one SA (one direction) built from IKE's KEYMAT, sealing or
//!   opening packets in place on core's [`PacketBuf`](polytun_core::PacketBuf).
//! - Transforms ([`Transform`]): AES-GCM-16 128/256 (RFC 4106) and
//!   ChaCha20-Poly1305 (RFC 7634) on core's record engine ([`aead::AeadFormat`]
//!   is a [`RecordFormat`](polytun_core::RecordFormat)); AES-CBC with
//!   HMAC-SHA2-256-128 (RFC 3602, RFC 4868) in [`cbc`], in the same shape.
//! - 32-bit and extended sequence numbers (ESN, inferred on receive per
//!   RFC 4303 Appendix A), anti-replay window (core's, default 8192),
//!   sequence-number exhaustion (no wrap), soft/hard lifetimes (core's).
//! - Tunnel-mode trailer: padding 1, 2, 3, …, next header 4/41, dummy
//!   packets (59) reported as such ([`Opened::is_dummy`]), not as errors.
//! - UDP encapsulation on port 4500 (RFC 3948): [`classify_udp4500`].

pub mod aead;
pub mod cbc;
pub mod sa;
pub mod udp;
pub mod wire;

pub use sa::{
    Direction, EspOpenError, EspSa, EspSealError, Opened, SaError, SaParams, Transform,
    MAX_HEADER_LEN, MAX_TRAILER_LEN,
};
pub use udp::{classify_udp4500, Udp4500, NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER};
pub use wire::{parse_header, spi_of, EspHeader, NextHeader};
