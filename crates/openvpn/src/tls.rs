//! TLS on the control channel through rustls, driven without I/O: TLS
//! records in ([`Tls::feed`]), TLS records out ([`Tls::take_records`]),
//! plaintext in and out, and the key exporter.
//!
//! Peer verification follows OpenVPN: a CA (`ca`) with the certificate's
//! name not checked (OpenVPN checks names only with `verify-x509-name`) and
//! the extended key usage enforced by webpki (serverAuth for a server,
//! clientAuth for a client, as `remote-cert-tls` asks), or `peer-fingerprint`:
//! the SHA-256 of the peer's end-entity certificate must be one of the
//! configured ones (self-signed certificates), the handshake signature still
//! verified.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// OpenVPN's exporter label for data channel keys (tls-ekm).
pub const EKM_LABEL: &[u8] = b"EXPORTER-OpenVPN-datakeys";
/// Size of `struct key2`'s keys: 2 × (64 cipher + 64 hmac).
pub const EKM_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS I/O on memory buffers: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS key export before the handshake completed")]
    NotReady,
}

/// How the peer's certificate is validated (RFC 8922 IV).
#[derive(Clone, Debug)]
pub enum PeerVerification {
    /// Chain to one of these CA certificates (`ca`).
    Ca(Vec<CertificateDer<'static>>),
    /// SHA-256 fingerprints of acceptable peer certificates (`peer-fingerprint`).
    Fingerprints(Vec<[u8; 32]>),
}

/// Certificates and keys of one side.
#[derive(Debug)]
pub struct TlsIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub verify: PeerVerification,
    /// Allow TLS 1.2 besides 1.3 (OpenVPN's `tls-version-min 1.2`).
    pub allow_tls12: bool,
}

/// SHA-256 of a DER certificate, as `peer-fingerprint` writes it.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 {
        &TLS13_12
    } else {
        &TLS13_ONLY
    }
}

#[derive(Debug)]
struct Verifier {
    mode: PeerVerification,
    webpki_server: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    webpki_client: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(mode: PeerVerification, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let (mut ws, mut wc) = (None, None);
        if let PeerVerification::Ca(cas) = &mode {
            let mut roots = RootCertStore::empty();
            for c in cas {
                roots.add(c.clone())?;
            }
            let roots = Arc::new(roots);
            ws = Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
            );
            wc = Some(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
            );
        }
        Ok(Self {
            mode,
            webpki_server: ws,
            webpki_client: wc,
            provider,
        })
    }

    fn check_fingerprint(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let PeerVerification::Fingerprints(fps) = &self.mode else {
            return Ok(());
        };
        let fp = fingerprint(cert);
        if fps.iter().any(|f| bool::from(f.ct_eq(&fp))) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.webpki_server {
            Some(w) => {
                match w.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    // OpenVPN does not check the name unless verify-x509-name says so.
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    r => r,
                }
            }
            None => {
                self.check_fingerprint(end_entity)?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.webpki_client {
            Some(w) => w.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.webpki_client {
            Some(w) => w.verify_client_cert(end_entity, intermediates, now),
            None => {
                self.check_fingerprint(end_entity)?;
                Ok(ClientCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

/// A rustls client configuration for the control channel.
pub fn client_config(id: &TlsIdentity) -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let v = Arc::new(Verifier::new(id.verify.clone(), p.clone())?);
    let cfg = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(versions(id.allow_tls12))?
        .dangerous()
        .with_custom_certificate_verifier(v)
        .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(cfg))
}

/// A rustls server configuration: client certificates are mandatory.
pub fn server_config(id: &TlsIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let v = Arc::new(Verifier::new(id.verify.clone(), p.clone())?);
    let cfg = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(versions(id.allow_tls12))?
        .with_client_cert_verifier(v)
        .with_single_cert(id.cert_chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(cfg))
}

/// One TLS session over memory buffers.
pub struct Tls {
    conn: rustls::Connection,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl Tls {
    pub fn client(cfg: Arc<ClientConfig>) -> Result<Self, TlsError> {
        // The name is not checked (see the module doc); any valid one will do.
        let name = ServerName::try_from("openvpn-server").expect("valid DNS name");
        Ok(Self {
            conn: rustls::ClientConnection::new(cfg, name)?.into(),
        })
    }

    pub fn server(cfg: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self {
            conn: rustls::ServerConnection::new(cfg)?.into(),
        })
    }

    /// TLS bytes from the peer (any chunking).
    pub fn feed(&mut self, mut records: &[u8]) -> Result<(), TlsError> {
        while !records.is_empty() {
            self.conn.read_tls(&mut records)?;
            self.conn.process_new_packets()?;
        }
        Ok(())
    }

    /// TLS bytes to send to the peer.
    pub fn take_records(&mut self) -> Result<Vec<u8>, TlsError> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        Ok(out)
    }

    /// Queues plaintext (sent once the handshake allows).
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), TlsError> {
        self.conn.writer().write_all(data)?;
        Ok(())
    }

    /// Appends the plaintext received so far to `out`.
    pub fn read_plaintext(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut buf = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The peer's end-entity certificate, once known.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.conn.peer_certificates().and_then(|c| c.first())
    }

    /// The negotiated protocol version, e.g. "TLSv1_3".
    pub fn version(&self) -> Option<String> {
        self.conn.protocol_version().map(|v| format!("{v:?}"))
    }

    /// RFC 5705 / 8446 exporter (SSKE: `keying-material-exporter`).
    pub fn export(&self, label: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, TlsError> {
        if self.conn.is_handshaking() {
            return Err(TlsError::NotReady);
        }
        let out = Zeroizing::new(vec![0u8; len]);
        Ok(self.conn.export_keying_material(out, label, None)?)
    }

    /// OpenVPN's data channel key material (tls-ekm).
    pub fn export_data_keys(&self) -> Result<Zeroizing<[u8; EKM_LEN]>, TlsError> {
        let v = self.export(EKM_LABEL, EKM_LEN)?;
        let mut k = Zeroizing::new([0u8; EKM_LEN]);
        k.copy_from_slice(&v);
        Ok(k)
    }
}
