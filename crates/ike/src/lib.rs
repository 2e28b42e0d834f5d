//! polytun IKEv2 (RFC 7296), without I/O.
//!
//! - [`wire`]: the message and payload formats (parse/serialize).
//! - [`crypto`]: PRFs, key derivation, SK protection, key exchange, PSK AUTH.

pub mod crypto;
pub mod wire;
