//! polytun-wireguard: the WireGuard protocol as a state machine without I/O.
//!
//! - [`keys`]: x25519 keys, preshared keys, wg base64 form
//! - [`messages`]: wire formats and the data path's [`messages::classify`]
//! - [`noise`]: the Noise_IKpsk2 handshake (hand-rolled; why: see there)
//! - [`cookie`]: mac1, mac2, cookie replies
//! - [`ratelimit`]: handshake rate limiting per source
//! - [`timers`]: the constants of whitepaper §6; [`rekey`]: what they drive
//! - [`transport`]: the transport record format on `polytun_core`'s engine, [`transport::Keypair`]
//! - [`device`]: the sans-I/O [`Device`]

pub mod cookie;
pub mod device;
pub mod keys;
pub mod messages;
pub mod noise;
pub mod ratelimit;
pub mod rekey;
pub mod timers;
pub mod transport;
pub mod uapi;

pub use device::{Device, Event, HandshakeError, Output, PeerConfig, PeerId, PeerInfo};
pub use keys::{PresharedKey, PublicKey, StaticSecret};
pub use messages::{classify, Message, ParseError};
pub use transport::{DataFormat, Keypair};

use polytun_core::{Capabilities, Interface};

/// The RFC 8922 §5 interfaces WireGuard offers in polytun.
pub fn capabilities() -> Capabilities {
    Capabilities::new()
        .with(
            Interface::Ipk,
            "static x25519 key pair per interface, peers by public key",
        )
        .with(
            Interface::Pski,
            "optional 32-byte preshared key per peer (Noise psk2)",
        )
        .with(
            Interface::Iv,
            "peer must be configured; Device::set_identity_validator policy hook",
        )
        .with(
            Interface::Sav,
            "mac2 cookie reply under load (XChaCha20-Poly1305)",
        )
        .with(
            Interface::Ku,
            "new handshake on demand (Device::initiate_handshake)",
        )
        .with(
            Interface::Ke,
            "KeyExpiring at REKEY_AFTER_TIME/MESSAGES, hard REJECT_AFTER_*",
        )
        .with(Interface::Me, "roaming to the authenticated source address")
    // CT: WireGuard has no termination message; sessions just expire.
}
