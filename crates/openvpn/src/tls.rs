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
//!
//! On top of either, a [`PeerPolicy`] (RFC 8922 IV) checks the peer's
//! end-entity certificate as OpenVPN 2.6 does: `remote-cert-tls server`
//! (a key usage extension present and the TLS Web Server Authentication
//! extended key usage) and `verify-x509-name` (the subject DN as OpenVPN
//! prints it, the common name, or a prefix of it). Every refusal names the
//! option that refused, so the log says why a handshake failed.

/// The rustls this crate uses (its certificate and key types are in [`TlsIdentity`]).
pub use rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
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
    #[error("TLS: peer certificate refused: {0}")]
    PeerRejected(String),
    #[error("TLS: a server needs its certificate and key")]
    NoServerCertificate,
}

/// rustls shows our own refusal reasons with Debug formatting: unwrap them.
fn tls_error(e: rustls::Error) -> TlsError {
    if let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(o))) = &e {
        if let Some(r) = o.downcast_ref::<PeerRejected>() {
            return TlsError::PeerRejected(r.0.clone());
        }
    }
    TlsError::Rustls(e)
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
    /// Our certificate chain and its key. A client may go without
    /// (`auth-user-pass` against a server with `verify-client-cert none`);
    /// a server may not.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Option<PrivateKeyDer<'static>>,
    pub verify: PeerVerification,
    /// Allow TLS 1.2 besides 1.3 (OpenVPN's `tls-version-min 1.2`).
    pub allow_tls12: bool,
}

/// SHA-256 of a DER certificate, as `peer-fingerprint` writes it.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

/// `AB:CD:...`, as OpenVPN and `openssl x509 -fingerprint` print it.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `verify-x509-name NAME [subject|name|name-prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum X509NameCheck {
    /// The whole subject DN as OpenVPN prints it, e.g. `C=KG, O=Org,
    /// CN=server-1` (OpenVPN's default type).
    Subject(String),
    /// The common name, exactly.
    Name(String),
    /// The common name starts with this.
    NamePrefix(String),
}

impl X509NameCheck {
    /// From the option's arguments; `kind` defaults to `subject` as in OpenVPN.
    pub fn parse(name: &str, kind: Option<&str>) -> Result<Self, String> {
        if name.is_empty() {
            return Err("empty name".into());
        }
        let n = name.to_string();
        match kind.unwrap_or("subject") {
            "subject" => Ok(Self::Subject(n)),
            "name" => Ok(Self::Name(n)),
            "name-prefix" => Ok(Self::NamePrefix(n)),
            other => Err(format!(
                "`{other}`: the type is `subject`, `name` or `name-prefix`"
            )),
        }
    }
}

/// `remote-cert-tls server|client`: the usage the peer's certificate must allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertUsage {
    Server,
    Client,
}

impl CertUsage {
    fn eku_name(self) -> &'static str {
        match self {
            CertUsage::Server => "TLS Web Server Authentication",
            CertUsage::Client => "TLS Web Client Authentication",
        }
    }
}

/// Checks of the peer's certificate beyond the chain or fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    pub remote_cert_tls: Option<CertUsage>,
    pub verify_x509_name: Option<X509NameCheck>,
}

/// Why the peer's certificate was refused (shown in the TLS error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PeerRejected(pub String);

fn rejected(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRejected(
        msg,
    )))))
}

/// OpenSSL's short name of a DN attribute (`XN_FLAG_FN_SN`).
fn attr_short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.17" => "postalCode",
        "2.5.4.42" => "GN",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        _ => return None,
    })
}

/// What the policy looks at in a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNames {
    /// The subject DN as OpenVPN 2.6 prints it (`x509_get_subject`:
    /// `C=KG, ST=NA, CN=server`, RDNs in certificate order, multi-valued
    /// ones joined by ` + `).
    pub subject: String,
    /// The last CN (OpenVPN's `x509-username-field` default).
    pub common_name: Option<String>,
}

/// Reads the subject of a DER certificate.
pub fn cert_names(der: &[u8]) -> Result<CertNames, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut rdns = Vec::new();
    let mut common_name = None;
    for rdn in cert.subject().iter() {
        let mut parts = Vec::new();
        for a in rdn.iter() {
            let oid = a.attr_type().to_id_string();
            let value = a
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| String::from_utf8_lossy(a.as_slice()).into_owned());
            if oid == "2.5.4.3" {
                common_name = Some(value.clone());
            }
            let key = attr_short_name(&oid).map_or(oid.clone(), str::to_string);
            parts.push(format!("{key}={value}"));
        }
        rdns.push(parts.join(" + "));
    }
    Ok(CertNames {
        subject: rdns.join(", "),
        common_name,
    })
}

impl PeerPolicy {
    /// Applies the policy to the peer's end-entity certificate.
    pub fn check(&self, der: &[u8]) -> Result<(), PeerRejected> {
        if self.remote_cert_tls.is_none() && self.verify_x509_name.is_none() {
            return Ok(());
        }
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PeerRejected(format!("peer certificate does not parse: {e}")))?;
        if let Some(usage) = self.remote_cert_tls {
            let opt = match usage {
                CertUsage::Server => "remote-cert-tls server",
                CertUsage::Client => "remote-cert-tls client",
            };
            match cert.key_usage() {
                Ok(Some(_)) => {}
                _ => {
                    return Err(PeerRejected(format!(
                        "{opt}: the peer certificate has no key usage extension"
                    )))
                }
            }
            let ok = match cert.extended_key_usage() {
                Ok(Some(e)) => match usage {
                    CertUsage::Server => e.value.server_auth,
                    CertUsage::Client => e.value.client_auth,
                },
                _ => false,
            };
            if !ok {
                return Err(PeerRejected(format!(
                    "{opt}: the peer certificate lacks the extended key usage {}",
                    usage.eku_name()
                )));
            }
        }
        if let Some(check) = &self.verify_x509_name {
            let names = cert_names(der).map_err(PeerRejected)?;
            let cn = names.common_name.as_deref().unwrap_or("");
            let (ok, want) = match check {
                X509NameCheck::Subject(s) => (names.subject == *s, format!("subject `{s}`")),
                X509NameCheck::Name(n) => (cn == n, format!("name `{n}`")),
                X509NameCheck::NamePrefix(p) => {
                    (cn.starts_with(p.as_str()), format!("name prefix `{p}`"))
                }
            };
            if !ok {
                return Err(PeerRejected(format!(
                    "verify-x509-name: the peer certificate's subject `{}` does not match {want}",
                    names.subject
                )));
            }
        }
        Ok(())
    }
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
    policy: PeerPolicy,
    webpki_server: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    webpki_client: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(
        mode: PeerVerification,
        policy: PeerPolicy,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
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
            policy,
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
            Err(rejected(format!(
                "peer-fingerprint: the peer certificate's SHA-256 fingerprint {} is not one of \
                 the {} configured",
                fingerprint_hex(&fp),
                fps.len()
            )))
        }
    }

    /// The chain check's verdict, explained, then the policy.
    fn finish(&self, chain: Result<(), rustls::Error>, cert: &[u8]) -> Result<(), rustls::Error> {
        match chain {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                return Err(rejected(
                    "the peer certificate is not issued by the configured CA (ca)".into(),
                ))
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        self.policy.check(cert).map_err(|e| rejected(e.0))
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
        let chain = match &self.webpki_server {
            Some(w) => {
                match w.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    // OpenVPN checks no DNS name: verify-x509-name does that.
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(()),
                    r => r.map(|_| ()),
                }
            }
            None => self.check_fingerprint(end_entity),
        };
        self.finish(chain, end_entity)?;
        Ok(ServerCertVerified::assertion())
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
        let chain = match &self.webpki_client {
            Some(w) => w
                .verify_client_cert(end_entity, intermediates, now)
                .map(|_| ()),
            None => self.check_fingerprint(end_entity),
        };
        self.finish(chain, end_entity)?;
        Ok(ClientCertVerified::assertion())
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
    client_config_with_policy(id, &PeerPolicy::default())
}

/// [`client_config`] with `remote-cert-tls` / `verify-x509-name` checks.
pub fn client_config_with_policy(
    id: &TlsIdentity,
    policy: &PeerPolicy,
) -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let v = Arc::new(Verifier::new(id.verify.clone(), policy.clone(), p.clone())?);
    let b = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(versions(id.allow_tls12))?
        .dangerous()
        .with_custom_certificate_verifier(v);
    let cfg = match &id.key {
        Some(key) if !id.cert_chain.is_empty() => {
            b.with_client_auth_cert(id.cert_chain.clone(), key.clone_key())?
        }
        _ => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// A rustls server configuration: client certificates are mandatory.
pub fn server_config(id: &TlsIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_policy(id, &PeerPolicy::default())
}

/// [`server_config`] with `remote-cert-tls client` / `verify-x509-name`.
pub fn server_config_with_policy(
    id: &TlsIdentity,
    policy: &PeerPolicy,
) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let v = Arc::new(Verifier::new(id.verify.clone(), policy.clone(), p.clone())?);
    let cfg = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(versions(id.allow_tls12))?
        .with_client_cert_verifier(v)
        .with_single_cert(
            id.cert_chain.clone(),
            id.key
                .as_ref()
                .ok_or(TlsError::NoServerCertificate)?
                .clone_key(),
        )?;
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
            self.conn.process_new_packets().map_err(tls_error)?;
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
        self.export_with_context(label, None, len)
    }

    /// The exporter with an optional context. OpenVPN's own
    /// `keying-material-exporter` passes none; under TLS 1.3 no context and
    /// an empty one give the same key (RFC 8446 §7.5).
    pub fn export_with_context(
        &self,
        label: &[u8],
        context: Option<&[u8]>,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, TlsError> {
        if self.conn.is_handshaking() {
            return Err(TlsError::NotReady);
        }
        let out = Zeroizing::new(vec![0u8; len]);
        Ok(self.conn.export_keying_material(out, label, context)?)
    }

    /// OpenVPN's data channel key material (tls-ekm).
    pub fn export_data_keys(&self) -> Result<Zeroizing<[u8; EKM_LEN]>, TlsError> {
        let v = self.export(EKM_LABEL, EKM_LEN)?;
        let mut k = Zeroizing::new([0u8; EKM_LEN]);
        k.copy_from_slice(&v);
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, DistinguishedName as Dn, DnType, ExtendedKeyUsagePurpose, KeyPair,
        KeyUsagePurpose,
    };

    fn cert(dn: &[(DnType, &str)], ku: bool, eku: &[ExtendedKeyUsagePurpose]) -> Vec<u8> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        let mut d = Dn::new();
        for (t, v) in dn {
            d.push(t.clone(), *v);
        }
        p.distinguished_name = d;
        if ku {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        p.extended_key_usages = eku.to_vec();
        p.self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn subject_as_openvpn_prints_it() {
        let c = cert(
            &[
                (DnType::CountryName, "KG"),
                (DnType::OrganizationName, "Org"),
                (DnType::CommonName, "server-1"),
            ],
            true,
            &[],
        );
        let n = cert_names(&c).unwrap();
        assert_eq!(n.subject, "C=KG, O=Org, CN=server-1");
        assert_eq!(n.common_name.as_deref(), Some("server-1"));
    }

    #[test]
    fn verify_x509_name_types() {
        let c = cert(
            &[
                (DnType::OrganizationName, "Org"),
                (DnType::CommonName, "server-1"),
            ],
            true,
            &[],
        );
        let check = |name: &str, kind: Option<&str>| {
            PeerPolicy {
                verify_x509_name: Some(X509NameCheck::parse(name, kind).unwrap()),
                ..Default::default()
            }
            .check(&c)
        };
        assert!(check("O=Org, CN=server-1", None).is_ok());
        assert!(check("O=Org, CN=server-1", Some("subject")).is_ok());
        assert!(check("CN=server-1", Some("subject")).is_err());
        assert!(check("server-1", Some("name")).is_ok());
        assert!(check("server", Some("name")).is_err());
        assert!(check("server-", Some("name-prefix")).is_ok());
        let e = check("client", Some("name-prefix")).unwrap_err();
        assert!(
            e.0.contains("verify-x509-name") && e.0.contains("O=Org, CN=server-1"),
            "{e}"
        );
        assert!(X509NameCheck::parse("x", Some("cn")).is_err());
        assert!(X509NameCheck::parse("", None).is_err());
    }

    #[test]
    fn remote_cert_tls() {
        let p = PeerPolicy {
            remote_cert_tls: Some(CertUsage::Server),
            ..Default::default()
        };
        let cn = [(DnType::CommonName, "s")];
        assert!(p
            .check(&cert(&cn, true, &[ExtendedKeyUsagePurpose::ServerAuth]))
            .is_ok());
        let e = p
            .check(&cert(&cn, false, &[ExtendedKeyUsagePurpose::ServerAuth]))
            .unwrap_err();
        assert!(e.0.contains("no key usage"), "{e}");
        let e = p
            .check(&cert(&cn, true, &[ExtendedKeyUsagePurpose::ClientAuth]))
            .unwrap_err();
        assert!(e.0.contains("TLS Web Server Authentication"), "{e}");
        assert!(p.check(&cert(&cn, true, &[])).is_err());
        assert!(PeerPolicy::default().check(b"not a certificate").is_ok());
        assert!(p.check(b"not a certificate").is_err());
    }

    #[test]
    fn fingerprint_format() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[31] = 0x01;
        let h = fingerprint_hex(&fp);
        assert!(h.starts_with("AB:00:") && h.ends_with(":01") && h.len() == 95);
    }
}
