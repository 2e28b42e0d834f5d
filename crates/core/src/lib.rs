//! polytun core: what every packet-security protocol shares.
//!
//! No I/O, no clock, no async runtime: callers pass `now` in. Protocol crates
//! (wireguard, esp, openvpn) describe their record format with
//! [`record::RecordFormat`]; the [`record`] engine does the counting, nonce
//! building, AEAD seal/open in place, replay protection and lifetime
//! accounting for all of them.

pub mod aead;
pub mod batch;
pub mod capabilities;
pub mod fast_map;
pub mod lifetime;
pub mod prefix;
pub mod record;
pub mod replay;

pub use aead::{Aead, AeadError, Algorithm};
pub use batch::{PacketBatch, PacketBuf};
pub use capabilities::{Capabilities, Interface};
pub use fast_map::FastMap;
pub use lifetime::{KeyStatus, Limits};
pub use prefix::PrefixTable;
pub use record::{OpenError, OpeningKey, RecordFormat, SealError, SealingKey};
pub use replay::ReplayWindow;
