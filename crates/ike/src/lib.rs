//! polytun IKEv2 (RFC 7296), without I/O.
//!
//! - [`wire`]: the message and payload formats (parse/serialize).
//! - [`crypto`]: PRFs, key derivation, SK protection, key exchange, PSK AUTH.
//! - [`auth`]: the AUTH payload: signed octets, RFC 7427 signatures.
//! - [`cert`]: X.509 certificates, chain checks, identities, DN notation.
//! - [`key`]: private keys from PEM/DER.
//! - [`config`]: proposals, traffic selectors, selection and narrowing.
//! - [`fragment`]: IKE fragmentation (RFC 7383): splitting encrypted
//!   messages into SKF payloads and their bounded, authenticated reassembly.
//! - [`endpoint`]: the sans-I/O state machine ([`Endpoint`]); its
//!   CREATE_CHILD_SA, rekey and collision logic is in `src/rekey.rs`
//!   (make-before-break: [`Output::InstallChildSaInbound`], then
//!   [`Output::SwitchChildSaOutbound`], then [`Output::DeleteChildSa`]).
//!
//! A daemon creates one [`Endpoint`] per tunnel, calls
//! [`Endpoint::connect`] to initiate, feeds every UDP payload received on
//! ports 500/4500 to [`Endpoint::handle`], drains [`Endpoint::poll_output`]
//! (send [`Output::Transmit`], install [`Output::InstallChildSa`] in ESP,
//! remove [`Output::DeleteChildSa`], report [`Output::Event`]) and calls
//! [`Endpoint::handle_timeout`] at [`Endpoint::poll_timeout`].

pub mod auth;
pub mod cert;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod fragment;
pub mod key;
pub mod wire;

pub use auth::{AuthError, Clock, PubkeyAuth, SetupError};
pub use cert::{CertError, Certificate};
pub use config::{Config, EspProposal, IkeProposal, Retransmit};
pub use crypto::{
    ChildKeys, DhGroup, EncrAlg, EspTransform, ExportError, IkeAlgs, IntegAlg, PrfAlg,
};
pub use endpoint::{
    ChildSaInfo, ChildSaParams, DpdAction, DropReason, Endpoint, Event, FailReason,
    IdentityValidator, IkeStats, Output, SaId,
};
pub use key::{KeyError, KeyKind, PrivateKey};
pub use wire::{Identity, TrafficSelector};

use polytun_core::{Capabilities, Interface};

/// What this crate implements today, in RFC 8922 §5 terms.
pub fn capabilities() -> Capabilities {
    Capabilities::new()
        .with(Interface::Ipk, "IKE identities (IPv4/IPv6, FQDN, RFC 822, DER DN, KEY_ID); X.509 certificates with RFC 7427 signatures (ECDSA P-256/P-384, RSA PKCS#1 v1.5/PSS, Ed25519), CERT/CERTREQ, chains to configured CAs; PEM keys (PKCS#8, SEC1, PKCS#1)")
        .with(Interface::Alg, "IKE and ESP proposals in order of preference: AES-GCM-16, ChaCha20-Poly1305, AES-CBC+HMAC-SHA2; PRF HMAC-SHA2; groups 14/19/20/31")
        .with(Interface::Ext, "IKE fragmentation (RFC 7383, fragment_size), INITIAL_CONTACT")
        .with(Interface::Pski, "IKEv2 PSK authentication (RFC 7296 §2.15)")
        .with(Interface::Iv, "configured remote identity (DNs with * wildcards), the identity must be in the peer's certificate (subject or subjectAltName), plus an identity-validation hook")
        .with(Interface::Sav, "IKE COOKIE above a half-open threshold (RFC 7296 §2.6)")
        .with(Interface::Ct, "INFORMATIONAL Delete of IKE and CHILD SAs")
        .with(Interface::Ku, "CHILD SA and IKE SA rekey on command (CREATE_CHILD_SA, make-before-break, collisions per RFC 7296 §2.8)")
        .with(Interface::Sske, "keys exported from SK_d: prf+(SK_d, \"polytun key export\" | L | label | C | context | Ni | Nr) (Endpoint::export_key)")
        .with(Interface::Ke, "CHILD SA rekey on the record engine's soft limit (time/bytes/packets) and on IKE/CHILD SA rekey and hard lifetimes from the config")
}
