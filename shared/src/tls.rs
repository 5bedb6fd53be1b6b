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
