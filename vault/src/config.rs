//! `vault.toml`: what the vault listens on, where its data, keys and TLS material live, which
//! client identity may do what, and its resource limits.
//!
//! Layering: the file, then environment variables, then command-line flags. Paths in the file are
//! relative to the file's own folder (so a vault folder can be moved as a whole); paths from the
//! environment are relative to the working directory, like any other command-line path.
//!
//! Environment overrides: `VAULT_LISTEN`, `VAULT_DATA_DIR`, `VAULT_MASTER_KEY_FILE`,
//! `VAULT_FINGERPRINT_KEY_FILE`, `VAULT_AUDIT_KEY_FILE`, and the key material itself via
//! `VAULT_MASTER_KEY` / `VAULT_FINGERPRINT_KEY` / `VAULT_AUDIT_KEY` (instead of the files; see
//! `keys`). The payment processor (`[processor]`):
//! `VAULT_PROCESSOR_URL`, `VAULT_PROCESSOR_SECRET_KEY_FILE`, `VAULT_PROCESSOR_SECRET_KEY` (the key
//! itself) and `VAULT_PROCESSOR_TIMEOUT_MS`.

//!
//! `[storage]` (the backend, and the database for PostgreSQL): see [`storage`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod storage;

use storage::database_settings;
pub use storage::{Backend, Storage};

/// What a client identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Store payment methods.
    Store,
    /// Read masked views.
    Read,
    /// Delete payment methods (crypto-shredding).
    Delete,
    /// Charge a stored token (a later issue; reserved so configs stay stable).
    Charge,
    /// Audit operations.
    Audit,
    /// Key lifecycle: rotate, retire, status, unseal (issue 6).
    Keys,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Read => "read",
            Self::Delete => "delete",
            Self::Charge => "charge",
            Self::Audit => "audit",
            Self::Keys => "keys",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsPaths {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// The vault's server certificate.
    pub cert: PathBuf,
    /// Its private key (must be owner-only).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body; bigger is answered 413 without being read.
    pub max_body_bytes: usize,
    /// Concurrent established (mTLS-authenticated) connections; beyond it new connections
    /// are closed at once after their handshake.
    pub max_connections: usize,
    /// Concurrent connections still in their TLS handshake, in all and from one client address:
    /// beyond either, a new connection is closed at once. Unauthenticated clients can only ever
    /// hold these, so they cannot take the slots of authenticated ones.
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Time allowed to receive a request's headers (also bounds idle keep-alive connections
    /// waiting for their next request).
    pub header_read_timeout_secs: u64,
    /// Time allowed for a whole request, body and handler included.
    pub request_timeout_secs: u64,
    /// Most header lines in a request (more → 431).
    pub max_headers: usize,
    /// Most bytes of request head buffered (more → 431; hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: shared::vault_api::MAX_BODY_BYTES,
            max_connections: 512,
            max_handshakes: 256,
            max_handshakes_per_address: 32,
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 30,
            request_timeout_secs: 15,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// `[audit]`: where the audit segments live, when they rotate, where they are archived and how
/// long archived ones stay in the data folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditFile {
    /// Segment folder; default `audit` inside the data folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A segment closes (with its signed checkpoint) at this size…
    pub segment_max_bytes: u64,
    /// … or at this age, whichever comes first.
    pub segment_max_age_secs: u64,
    /// Closed segments are copied here (e.g. a mount of the central log server), checked, and
    /// marked archived; without it, run `vault audit archive --to DIR` (cron).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<PathBuf>,
    /// Archived segments older than this leave the data folder (0: kept).
    pub keep_days: u64,
    /// Archived segments leave the data folder, oldest first, while it holds more (0: no cap).
    pub max_bytes: u64,
}

impl Default for AuditFile {
    fn default() -> Self {
        Self {
            dir: None,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age_secs: 86_400,
            archive_dir: None,
            keep_days: 90,
            max_bytes: 0,
        }
    }
}

/// `[processor]`: the Stripe-compatible endpoint the charge route calls. Without a `base_url`
/// the vault runs without charging (the charge route answers 503).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorFile {
    /// `https://api.stripe.com`, or `http://127.0.0.1:PORT` for the local sandbox (plain http is
    /// refused for anything but loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// File holding the processor secret key (must be owner-only).
    pub secret_key_file: PathBuf,
    /// Whole-call timeout; a timed-out charge is `failed` (retryable), never paid.
    pub timeout_ms: u64,
}

impl Default for ProcessorFile {
    fn default() -> Self {
        Self {
            base_url: None,
            secret_key_file: "processor.key".into(),
            timeout_ms: 10_000,
        }
    }
}

/// The resolved processor settings.
pub struct ProcessorSettings {
    pub base_url: Option<String>,
    pub secret_key: KeySource,
    pub timeout: std::time::Duration,
}

impl Default for TlsPaths {
    fn default() -> Self {
        FileConfig::defaults().tls
    }
}

/// The file as written and read. Every key is optional; a missing one takes the value
/// `vault init --dir` writes (see [`FileConfig::defaults`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub master_key_file: PathBuf,
    pub fingerprint_key_file: PathBuf,
    /// Signs audit checkpoints (created beside the other keys if absent).
    pub audit_key_file: PathBuf,
    pub tls: TlsPaths,
    pub permissions: BTreeMap<String, Vec<Permission>>,
    pub limits: Limits,
    pub storage: Storage,
    pub audit: AuditFile,
    pub processor: ProcessorFile,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

impl FileConfig {
    /// The defaults `vault init` writes: everything inside the vault folder.
    pub fn defaults() -> Self {
        let mut permissions = BTreeMap::new();
        permissions.insert(
            "accounts".to_owned(),
            vec![Permission::Store, Permission::Read, Permission::Delete],
        );
        permissions.insert(
            "renewals".to_owned(),
            vec![Permission::Read, Permission::Charge],
        );
        permissions.insert(
            "admin".to_owned(),
            vec![Permission::Audit, Permission::Keys],
        );
        Self {
            listen: "127.0.0.1:8443".to_owned(),
            data_dir: "data".into(),
            master_key_file: "master.key".into(),
            fingerprint_key_file: "fingerprint.key".into(),
            audit_key_file: "audit.key".into(),
            tls: TlsPaths {
                ca: "pki/ca.pem".into(),
                cert: "pki/vault.pem".into(),
                key: "pki/vault.key".into(),
            },
            permissions,
            limits: Limits::default(),
            storage: Storage::default(),
            audit: AuditFile::default(),
            processor: ProcessorFile::default(),
        }
    }

    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Ok(format!(
            "# Strongroom vault configuration, written by `vault init`.\n\
             # Relative paths are relative to this file's folder.\n\
             # Environment overrides: VAULT_LISTEN, VAULT_DATA_DIR, VAULT_MASTER_KEY_FILE,\n\
             # VAULT_FINGERPRINT_KEY_FILE, VAULT_AUDIT_KEY_FILE, VAULT_MASTER_KEY,\n\
             # VAULT_FINGERPRINT_KEY, VAULT_AUDIT_KEY,\n\
             # VAULT_PROCESSOR_URL, VAULT_PROCESSOR_SECRET_KEY_FILE, VAULT_PROCESSOR_SECRET_KEY,\n\
             # VAULT_PROCESSOR_TIMEOUT_MS, VAULT_DATABASE_URL. Without [processor] base_url\n\
             # charging is off. [storage] backend = \"postgres\" (several instances on one\n\
             # database) takes database_url_file, pool_size, database_ca, database_cert,\n\
             # database_key.\n\n{body}"
        ))
    }
}

/// Where the keys come from after layering.
pub enum KeySource {
    File(PathBuf),
    /// The value of an environment variable (key material; never printed).
    Env(zeroize::Zeroizing<String>),
}

/// The resolved configuration the vault runs with: absolute paths, overrides applied.
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: KeySource,
    pub fingerprint_key: KeySource,
    pub audit_key: KeySource,
    pub tls: shared::tls::TlsFiles,
    pub permissions: BTreeMap<String, Vec<Permission>>,
    pub limits: Limits,
    pub storage: Storage,
    /// `Some` exactly when `[storage] backend = "postgres"`: where the shared database is.
    pub database: Option<shared::pg::PgSettings>,
    pub audit: crate::audit::AuditSettings,
    pub processor: ProcessorSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid listen address {0:?}")]
    Listen(String),
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// Overrides that come from the environment (collected by `main`, injectable in tests).
#[derive(Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub fingerprint_key_file: Option<PathBuf>,
    pub audit_key_file: Option<PathBuf>,
    pub master_key: Option<zeroize::Zeroizing<String>>,
    pub fingerprint_key: Option<zeroize::Zeroizing<String>>,
    pub audit_key: Option<zeroize::Zeroizing<String>>,
    pub processor_url: Option<String>,
    pub processor_secret_key_file: Option<PathBuf>,
    pub processor_secret_key: Option<zeroize::Zeroizing<String>>,
    pub processor_timeout_ms: Option<String>,
    /// The database URL itself (may hold a password; never printed).
    pub database_url: Option<shared::SecretString>,
}

impl Overrides {
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self {
            listen: var("VAULT_LISTEN"),
            data_dir: var("VAULT_DATA_DIR").map(PathBuf::from),
            master_key_file: var("VAULT_MASTER_KEY_FILE").map(PathBuf::from),
            fingerprint_key_file: var("VAULT_FINGERPRINT_KEY_FILE").map(PathBuf::from),
            audit_key_file: var("VAULT_AUDIT_KEY_FILE").map(PathBuf::from),
            master_key: var("VAULT_MASTER_KEY").map(zeroize::Zeroizing::new),
            fingerprint_key: var("VAULT_FINGERPRINT_KEY").map(zeroize::Zeroizing::new),
            audit_key: var("VAULT_AUDIT_KEY").map(zeroize::Zeroizing::new),
            processor_url: var("VAULT_PROCESSOR_URL"),
            processor_secret_key_file: var("VAULT_PROCESSOR_SECRET_KEY_FILE").map(PathBuf::from),
            processor_secret_key: var("VAULT_PROCESSOR_SECRET_KEY").map(zeroize::Zeroizing::new),
            processor_timeout_ms: var("VAULT_PROCESSOR_TIMEOUT_MS"),
            database_url: var("VAULT_DATABASE_URL").map(shared::SecretString::new),
        }
    }
}

impl Config {
    /// Reads `path`, then applies `overrides` (environment) and `listen_flag` (command line).
    pub fn load(
        path: &Path,
        overrides: Overrides,
        listen_flag: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            // toml names the key and its line (`unknown field `listn``, `missing field …`).
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        let base = absolute(
            path.parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from(".")),
        );
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let listen_text = listen_flag
            .map(str::to_owned)
            .or(overrides.listen)
            .unwrap_or(file.listen);
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let key_source = |env: Option<zeroize::Zeroizing<String>>,
                          file_override: Option<PathBuf>,
                          in_file: &Path| {
            match (env, file_override) {
                (Some(v), _) => KeySource::Env(v),
                (None, Some(p)) => KeySource::File(absolute(p)),
                (None, None) => KeySource::File(resolve(&base, in_file)),
            }
        };
        let master_key = key_source(
            overrides.master_key,
            overrides.master_key_file,
            &file.master_key_file,
        );
        let fingerprint_key = key_source(
            overrides.fingerprint_key,
            overrides.fingerprint_key_file,
            &file.fingerprint_key_file,
        );
        let audit_key = key_source(
            overrides.audit_key,
            overrides.audit_key_file,
            &file.audit_key_file,
        );
        let processor_secret = key_source(
            overrides.processor_secret_key,
            overrides.processor_secret_key_file,
            &file.processor.secret_key_file,
        );
        let timeout_ms = match overrides.processor_timeout_ms {
            Some(t) => t.parse::<u64>().map_err(|_| {
                ConfigError::Parse("VAULT_PROCESSOR_TIMEOUT_MS must be a number".into())
            })?,
            None => file.processor.timeout_ms,
        };
        if timeout_ms == 0 {
            return Err(ConfigError::Parse(
                "processor timeout must be positive".into(),
            ));
        }
        let processor = ProcessorSettings {
            base_url: overrides.processor_url.or(file.processor.base_url),
            secret_key: processor_secret,
            timeout: std::time::Duration::from_millis(timeout_ms),
        };
        if file.limits.max_connections == 0
            || file.limits.max_body_bytes == 0
            || file.limits.max_handshakes == 0
        {
            return Err(ConfigError::Parse("limits must be positive".into()));
        }
        if file.audit.segment_max_bytes < 4096 || file.audit.segment_max_age_secs == 0 {
            return Err(ConfigError::Parse(
                "[audit] segment_max_bytes must be at least 4096 and segment_max_age_secs positive"
                    .into(),
            ));
        }
        let database = database_settings(&base, &file.storage, overrides.database_url)?;
        let data_dir = overrides
            .data_dir
            .map(absolute)
            .unwrap_or_else(|| resolve(&base, &file.data_dir));
        let audit = crate::audit::AuditSettings {
            dir: file
                .audit
                .dir
                .as_deref()
                .map(|d| resolve(&base, d))
                .unwrap_or_else(|| data_dir.join("audit")),
            segment_max_bytes: file.audit.segment_max_bytes,
            segment_max_age: std::time::Duration::from_secs(file.audit.segment_max_age_secs),
            flush_every: std::time::Duration::from_millis(file.storage.flush_every_ms.max(1)),
            archive_dir: file.audit.archive_dir.as_deref().map(|d| resolve(&base, d)),
            keep_days: file.audit.keep_days,
            max_bytes: file.audit.max_bytes,
        };
        Ok(Self {
            listen,
            data_dir,
            master_key,
            fingerprint_key,
            audit_key,
            audit,
            tls: shared::tls::TlsFiles {
                ca: resolve(&base, &file.tls.ca),
                cert: resolve(&base, &file.tls.cert),
                key: resolve(&base, &file.tls.key),
            },
            permissions: file.permissions,
            limits: file.limits,
            storage: file.storage,
            database,
            processor,
        })
    }

    /// Permissions of a verified client identity; `None` for an identity the config does not name.
    pub fn permissions_of(&self, identity: &str) -> Option<&[Permission]> {
        self.permissions.get(identity).map(Vec::as_slice)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_file_are_relative_to_its_folder_and_flags_beat_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.toml");
        std::fs::write(&path, FileConfig::defaults().to_toml().unwrap()).unwrap();
        let env = Overrides {
            listen: Some("127.0.0.1:9000".into()),
            ..Overrides::default()
        };
        let cfg = Config::load(&path, env, Some("127.0.0.1:0")).unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.tls.key, dir.path().join("pki/vault.key"));
        assert!(
            matches!(cfg.master_key, KeySource::File(ref p) if *p == dir.path().join("master.key"))
        );
        assert_eq!(
            cfg.permissions_of("accounts"),
            Some(&[Permission::Store, Permission::Read, Permission::Delete][..])
        );
        assert_eq!(cfg.permissions_of("stranger"), None);
        let env = Overrides {
            listen: Some("127.0.0.1:9000".into()),
            ..Overrides::default()
        };
        assert_eq!(Config::load(&path, env, None).unwrap().listen.port(), 9000);
    }

    #[test]
    fn a_minimal_file_takes_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.toml");
        std::fs::write(&path, "data_dir = \"/srv/vault-data\"\n").unwrap();
        let cfg = Config::load(&path, Overrides::default(), None).unwrap();
        assert_eq!(cfg.listen.port(), 8443);
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/vault-data"));
        assert_eq!(cfg.tls.ca, dir.path().join("pki/ca.pem"));
        assert!(cfg.permissions_of("accounts").is_some());
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.toml");
        let text = FileConfig::defaults()
            .to_toml()
            .unwrap()
            .replace("listen =", "listn =");
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path, Overrides::default(), None)
            .err()
            .map(|e| e.to_string())
            .unwrap();
        assert!(err.contains("unknown field `listn`"), "{err}");
        assert!(err.contains("vault.toml"), "{err}");
    }
}
