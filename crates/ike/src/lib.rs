//! polytun IKEv2 (RFC 7296), without I/O.
//!
//! - [`wire`]: the message and payload formats (parse/serialize).
//! - [`crypto`]: PRFs, key derivation, SK protection, key exchange, PSK AUTH.
//! - [`config`]: proposals, traffic selectors, selection and narrowing.
//! - [`endpoint`]: the sans-I/O state machine ([`Endpoint`]).
//!
//! A daemon creates one [`Endpoint`] per tunnel, calls
//! [`Endpoint::connect`] to initiate, feeds every UDP payload received on
//! ports 500/4500 to [`Endpoint::handle`], drains [`Endpoint::poll_output`]
//! (send [`Output::Transmit`], install [`Output::InstallChildSa`] in ESP,
//! remove [`Output::DeleteChildSa`], report [`Output::Event`]) and calls
//! [`Endpoint::handle_timeout`] at [`Endpoint::poll_timeout`].

pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod wire;

pub use config::{Config, EspProposal, IkeProposal, Retransmit};
pub use crypto::{ChildKeys, DhGroup, EncrAlg, EspTransform, IkeAlgs, IntegAlg, PrfAlg};
pub use endpoint::{
    ChildSaInfo, ChildSaParams, DpdAction, DropReason, Endpoint, Event, FailReason,
    IdentityValidator, Output, SaId,
};
pub use wire::{Identity, TrafficSelector};

use polytun_core::{Capabilities, Interface};

/// What this crate implements today, in RFC 8922 §5 terms.
pub fn capabilities() -> Capabilities {
    Capabilities::new()
        .with(Interface::Ipk, "IKE identities (IPv4/IPv6, FQDN, RFC 822, DER DN, KEY_ID); no certificates yet")
        .with(Interface::Alg, "IKE and ESP proposals in order of preference: AES-GCM-16, ChaCha20-Poly1305, AES-CBC+HMAC-SHA2; PRF HMAC-SHA2; groups 14/19/20/31")
        .with(Interface::Pski, "IKEv2 PSK authentication (RFC 7296 §2.15)")
        .with(Interface::Iv, "configured remote identity plus an identity-validation hook")
        .with(Interface::Sav, "IKE COOKIE above a half-open threshold (RFC 7296 §2.6)")
        .with(Interface::Ct, "INFORMATIONAL Delete of IKE and CHILD SAs")
}
