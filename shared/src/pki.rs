//! Development PKI: a CA, the vault's server certificate and one client certificate per
//! identity, generated in-process with rcgen (ECDSA P-256).
//!
//! Production deployments bring their own CA (README, "Production PKI"); this exists so the
//! README's start command and the tests work on a fresh machine with zero setup. Private keys are
//! written owner-only (0600) and held in zeroizing memory.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// The client identities the system uses. Each maps to vault permissions in the vault config.
pub const CLIENT_IDENTITIES: [&str; 3] = ["accounts", "renewals", "admin"];

/// The vault's server certificate file stem.
pub const SERVER_NAME: &str = "vault";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// An issued certificate and its private key (PEM). No `Debug`: the key is secret.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl IssuedCert {
    /// Writes `<dir>/<stem>.pem` (0644) and `<dir>/<stem>.key` (0600).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        write_file(
            &dir.join(format!("{stem}.pem")),
            self.cert_pem.as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(format!("{stem}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )
    }
}

/// A certificate authority able to issue server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl DevCa {
    /// A new self-signed CA valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Strongroom dev");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key PEM (to issue more client certificates later).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    /// A server certificate for `localhost` and `127.0.0.1` (plus `extra_names`), valid 2 years.
    pub fn issue_server(
        &self,
        common_name: &str,
        extra_names: &[String],
    ) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_server_valid(
            common_name,
            extra_names,
            now - Duration::hours(1),
            now + Duration::days(730),
        )
    }

    /// [`DevCa::issue_server`] with an explicit validity window (tests use it for expired certs).
    pub fn issue_server_valid(
        &self,
        common_name: &str,
        extra_names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, not_before, not_after)
    }

    /// A client certificate whose Common Name is the identity, valid 2 years.
    pub fn issue_client(&self, identity: &str) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_client_valid(
            identity,
            now - Duration::hours(1),
            now + Duration::days(730),
        )
    }

    /// A client certificate with an explicit validity window (tests use it for expired certs).
    pub fn issue_client_valid(
        &self,
        identity: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, not_before, not_after)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// Writes a complete dev PKI into `dir` unless `dir/ca.pem` already exists: `ca.pem`, `ca.key`,
/// `vault.pem`/`vault.key`, and `<id>.pem`/`<id>.key` for every [`CLIENT_IDENTITIES`] entry.
/// Returns whether anything was written.
pub fn ensure_dev_pki(dir: &Path) -> Result<bool, PkiError> {
    if dir.join("ca.pem").exists() {
        return Ok(false);
    }
    create_private_dir(dir)?;
    let ca = DevCa::generate("Strongroom dev CA")?;
    write_file(&dir.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
    write_file(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
    ca.issue_server(SERVER_NAME, &[])?.write(dir, SERVER_NAME)?;
    for id in CLIENT_IDENTITIES {
        ca.issue_client(id)?.write(dir, id)?;
    }
    Ok(true)
}

/// Creates a directory (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: dir.display().to_string(),
        source,
    };
    // An existing folder keeps its owner and mode: an operator's documented layout (e.g. a
    // 0750 config folder) is never changed behind their back.
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    set_mode(dir, 0o700).map_err(err)
}

/// Writes a file with the given Unix mode, created with that mode so it is never briefly
/// world-readable.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    set_mode(path, mode).map_err(err)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache answers exactly what parsing answers, for each certificate, also after it was
    /// cleared for being full; a certificate that does not parse has no identity.
    #[test]
    fn cached_identities_are_the_parsed_ones_per_certificate() {
        let dir = std::env::temp_dir().join(format!("pki-cache-{}", uuid::Uuid::new_v4()));
        create_private_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ca = DevCa::generate("cache test ca").unwrap_or_else(|e| panic!("{e}"));
        let der = |name: &str| {
            ca.issue_client(name)
                .unwrap_or_else(|e| panic!("{e}"))
                .write(&dir, name)
                .unwrap_or_else(|e| panic!("{e}"));
            let certs = crate::tls::load_certs(&dir.join(format!("{name}.pem")))
                .unwrap_or_else(|e| panic!("{e}"));
            certs
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("one certificate"))
        };
        let (a, b) = (der("client-a"), der("client-b"));
        let cache = crate::tls::IdentityCache::default();
        for _ in 0..2 {
            assert_eq!(cache.identity(&a).as_deref(), Some("client-a"));
            assert_eq!(cache.identity(&b).as_deref(), Some("client-b"));
        }
        assert_eq!(cache.identity(b"not a certificate"), None);
        for i in 0..70u8 {
            assert_eq!(cache.identity(&[i, 1, 2]), None);
        }
        assert_eq!(cache.identity(&a).as_deref(), Some("client-a"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dev_pki_writes_owner_only_keys_and_client_identities_parse_back() {
        let dir = std::env::temp_dir().join(format!("pki-test-{}", uuid::Uuid::new_v4()));
        assert!(matches!(ensure_dev_pki(&dir), Ok(true)));
        assert!(
            matches!(ensure_dev_pki(&dir), Ok(false)),
            "second call must not regenerate"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                "ca.key",
                "vault.key",
                "accounts.key",
                "renewals.key",
                "admin.key",
            ] {
                let mode = std::fs::metadata(dir.join(f)).map(|m| m.permissions().mode() & 0o777);
                assert_eq!(mode.ok(), Some(0o600), "{f}");
            }
        }
        for id in CLIENT_IDENTITIES {
            let certs = crate::tls::load_certs(&dir.join(format!("{id}.pem")));
            let der = certs.ok().and_then(|c| c.into_iter().next());
            assert_eq!(
                der.and_then(|d| crate::tls::certificate_identity(&d)),
                Some(id.to_string())
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
