//! polytun-openvpn: the OpenVPN protocol as state machines without I/O.
//!
//! - [`packet`]: opcodes, control packets, ACK arrays, the P_DATA_V2 header
//! - [`framing`]: the 16-bit length framing of TCP mode
//! - [`static_key`]: OpenVPN's static key file, key slots and directions
//! - [`wrap`]: control-channel protection (none, tls-auth, tls-crypt)

pub mod data;
pub mod framing;
pub mod keymethod;
pub mod packet;
pub mod push;
pub mod reliable;
pub mod static_key;
pub mod tls;
pub mod wrap;
