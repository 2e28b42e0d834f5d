//! polytun IKEv2 (RFC 7296), without I/O.
//!
//! - [`wire`]: the message and payload formats (parse/serialize).
//! - [`crypto`]: PRFs, key derivation, SK protection, key exchange, PSK AUTH.

pub mod crypto;
pub mod wire;
pub mod config;
pub mod endpoint;

pub use config::{Config, EspProposal, IkeProposal, Retransmit};
pub use crypto::{ChildKeys, DhGroup, EncrAlg, EspTransform, IkeAlgs, IntegAlg, PrfAlg};
pub use endpoint::{
    ChildSaParams, DropReason, Endpoint, Event, FailReason, IdentityValidator, Output, SaId,
};
pub use wire::{Identity, TrafficSelector};
