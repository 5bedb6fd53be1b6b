//! rustls configuration for the vault's mutual-TLS boundary.
//!
//! Secure by default: the server builder always requires a client certificate chained to the
//! given CA (there is no "optional client auth" switch); both sides use the ring provider, TLS 1.3
//! with TLS 1.2 AEAD suites as the floor (ring's TLS 1.2 suites are all ECDHE + AEAD).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS setup failures. The messages name files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is missing or unreadable.
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The file holds no usable PEM item of the expected kind.
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    /// rustls rejected the configuration (key does not match certificate, bad CA, …).
    #[error("TLS configuration rejected: {0}")]
    Config(String),
    /// A private-key file that group or others may read: refused, as the vault refuses its own.
    #[error("key file {path} is readable by group or others (mode {mode:o}); run chmod 600 {path}")]
    KeyPermissions { path: String, mode: u32 },
}

/// Refuses a private-key file that group or others can read or write (mode & 0o077 != 0), the
/// same rule and message the vault applies to its key files.
pub fn check_key_file_owner_only(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyPermissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// Why a TLS handshake failed, in words an operator can act on. Built from the rustls error on
/// either side; [`TlsProblem::reason`] is a fixed label (metrics, log fields), never peer text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The peer's certificate does not chain to our CA (client: wrong `ca`; vault: a client
    /// certificate from another CA).
    UnknownIssuer,
    /// The peer's certificate does not carry the expected name (client: wrong `server_name`).
    NameMismatch,
    /// The peer's certificate is expired or not yet valid.
    Expired,
    /// The peer's certificate is unusable for this purpose (no `ClientAuth`/`ServerAuth` usage,
    /// bad signature, bad encoding, revoked).
    BadCertificate,
    /// The client sent no certificate (the vault requires one).
    NoCertificate,
    /// The peer refused *our* certificate and said so with a TLS alert.
    PeerRejected(rustls::AlertDescription),
    /// Any other protocol failure (version or suite mismatch, malformed messages).
    Protocol,
}

impl TlsProblem {
    /// Classifies a rustls error.
    pub fn of(e: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                // A bad signature on a well-formed chain almost always means "issued by another
                // CA with the same name" (every dev PKI's CA is "Strongroom dev CA"): to an
                // operator that is the same mistake as an unknown issuer.
                C::UnknownIssuer | C::BadSignature => Self::UnknownIssuer,
                C::NotValidForName | C::NotValidForNameContext { .. } => Self::NameMismatch,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Self::Expired,
                _ => Self::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => Self::NoCertificate,
            rustls::Error::AlertReceived(a) => Self::PeerRejected(*a),
            _ => Self::Protocol,
        }
    }

    /// Finds the rustls error anywhere in an error's chain (reqwest → hyper → io::Error →
    /// rustls::Error; `io::Error::source` skips its payload, so payloads are looked into too).
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        find_rustls(err).map(Self::of)
    }

    /// A fixed label: `unknown_issuer`, `name_mismatch`, `expired`, `bad_certificate`,
    /// `no_certificate`, `peer_rejected`, `protocol`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownIssuer => "unknown_issuer",
            Self::NameMismatch => "name_mismatch",
            Self::Expired => "expired",
            Self::BadCertificate => "bad_certificate",
            Self::NoCertificate => "no_certificate",
            Self::PeerRejected(_) => "peer_rejected",
            Self::Protocol => "protocol",
        }
    }
}

/// The rustls error in an error's chain, if any (its text names a certificate problem, never key
/// material or request data, so it may be logged).
pub fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(r) = find_rustls(inner)
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str(
                "unknown issuer: the peer's certificate is not signed by the trusted CA",
            ),
            Self::NameMismatch => f.write_str(
                "name mismatch: the peer's certificate does not carry the expected name",
            ),
            Self::Expired => {
                f.write_str("expired: the peer's certificate is expired or not yet valid")
            }
            Self::BadCertificate => f.write_str(
                "bad certificate: the peer's certificate is not usable for this connection",
            ),
            Self::NoCertificate => {
                f.write_str("no certificate: the client presented no certificate")
            }
            Self::PeerRejected(a) => write!(
                f,
                "our certificate was rejected by the peer (TLS alert {a:?})"
            ),
            Self::Protocol => f.write_str("TLS protocol failure"),
        }
    }
}

/// Installs ring as the process-wide rustls provider. Call first thing in every `main`; later
/// calls (tests start many servers in one process) are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads the private key in a PEM file. The error text never includes file contents.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        other => TlsError::Read {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(ca)? {
        store
            .add(cert)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// Where a TLS identity lives on disk.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA bundle that the peer's certificate must chain to.
    pub ca: PathBuf,
    /// Own certificate chain (PEM).
    pub cert: PathBuf,
    /// Own private key (PEM, owner-only).
    pub key: PathBuf,
}

/// Server config that refuses any client without a valid certificate issued by `files.ca`.
pub fn mtls_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config that trusts only `files.ca` and presents `files.cert` as its identity.
pub fn mtls_client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = roots(&files.ca)?;
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// [`certificate_identity`] remembered per certificate: a service sees a handful of client
/// certificates, and parsing the DER on every request was ~5% of the vault's CPU per request.
/// Keyed by the exact DER bytes (already verified by the TLS handshake), so a cached answer is
/// the one parsing would give; bounded (cleared when full), and a poisoned lock only means
/// parsing again.
#[derive(Default)]
pub struct IdentityCache {
    known: std::sync::RwLock<std::collections::HashMap<Box<[u8]>, Option<String>>>,
}

impl IdentityCache {
    const MAX_CERTIFICATES: usize = 64;

    pub fn identity(&self, der: &[u8]) -> Option<String> {
        if let Ok(known) = self.known.read()
            && let Some(id) = known.get(der)
        {
            return id.clone();
        }
        let id = certificate_identity(der);
        if let Ok(mut known) = self.known.write() {
            if known.len() >= Self::MAX_CERTIFICATES {
                known.clear();
            }
            known.insert(der.into(), id.clone());
        }
        id
    }
}

/// The identity of an already-verified client certificate: its subject Common Name, or failing
/// that its first DNS subject-alternative name. `None` if the DER does not parse.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}
