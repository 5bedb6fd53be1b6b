//! `[storage]` of `vault.toml`: `backend = "sled"` (the default: one embedded folder, one
//! process) or `"postgres"` (several vault instances on one database; records, key-check values and the
//! charge ledger are shared, each instance keeps its own audit chain in its data folder). The
//! database URL may carry a password, so it comes only from an owner-only file
//! (`database_url_file`) or from `VAULT_DATABASE_URL`, is read at load into a
//! [`shared::SecretString`], and no error or `Debug` output built here contains it. Database keys
//! with `backend = "sled"` are refused rather than ignored: a vault silently running on the
//! wrong backend would split its data.

use super::{ConfigError, resolve};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which backend holds records, key-check values and the charge ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One embedded folder (`data_dir`), locked by one process.
    #[default]
    Sled,
    /// A PostgreSQL database several vault instances share.
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub backend: Backend,
    /// sled page cache bound in bytes. Keeps resident memory flat as records grow.
    pub cache_capacity_bytes: u64,
    /// sled's background flush interval. Writes are flushed explicitly before they are
    /// acknowledged; this only bounds how long read-audit entries wait for the next flush.
    pub flush_every_ms: u64,
    /// postgres: file holding the database URL (must be owner-only: it may hold a password).
    /// `VAULT_DATABASE_URL` takes precedence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
    /// postgres: connections in this instance's pool (default
    /// [`shared::pg::DEFAULT_POOL_SIZE`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// postgres: CA the database server's certificate must chain to; makes TLS required
    /// (without it only a database on this machine is reachable, in plain text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_ca: Option<PathBuf>,
    /// postgres: client certificate presented to the database (with `database_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_cert: Option<PathBuf>,
    /// postgres: its private key (must be owner-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_key: Option<PathBuf>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            backend: Backend::Sled,
            cache_capacity_bytes: 4 * 1024 * 1024,
            flush_every_ms: 500,
            database_url_file: None,
            pool_size: None,
            database_ca: None,
            database_cert: None,
            database_key: None,
        }
    }
}

/// Bound on connecting to the database and on waiting for a pooled connection.
const DATABASE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `[storage]` database settings, resolved: `None` for sled (refusing database keys there),
/// the URL read from its owner-only file or the environment for postgres.
pub(super) fn database_settings(
    base: &Path,
    storage: &Storage,
    env_url: Option<shared::SecretString>,
) -> Result<Option<shared::pg::PgSettings>, ConfigError> {
    let named = [
        ("database_url_file", storage.database_url_file.is_some()),
        ("pool_size", storage.pool_size.is_some()),
        ("database_ca", storage.database_ca.is_some()),
        ("database_cert", storage.database_cert.is_some()),
        ("database_key", storage.database_key.is_some()),
    ];
    if storage.backend == Backend::Sled {
        if let Some((key, _)) = named.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Parse(format!(
                "[storage] {key} applies to backend = \"postgres\", but backend is \"sled\""
            )));
        }
        if env_url.is_some() {
            return Err(ConfigError::Parse(
                "VAULT_DATABASE_URL is set, but [storage] backend is \"sled\": set backend = \
                 \"postgres\" or unset it"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let url = match (env_url, &storage.database_url_file) {
        (Some(url), _) => url,
        (None, Some(file)) => read_url_file(&resolve(base, file))?,
        (None, None) => {
            return Err(ConfigError::Parse(
                "[storage] backend = \"postgres\" needs database_url_file (an owner-only file \
                 holding the URL) or VAULT_DATABASE_URL"
                    .into(),
            ));
        }
    };
    if url.expose_secret().is_empty() {
        return Err(ConfigError::Parse("the database URL is empty".into()));
    }
    // Refuse a malformed URL now, naming the problem (never the text).
    shared::pg::parse_url(&url).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let pool_size = storage.pool_size.unwrap_or(shared::pg::DEFAULT_POOL_SIZE);
    if pool_size == 0 {
        return Err(ConfigError::Parse(
            "[storage] pool_size must be positive".into(),
        ));
    }
    let ca = storage.database_ca.as_deref().map(|p| resolve(base, p));
    let client_cert = match (&storage.database_cert, &storage.database_key) {
        (Some(cert), Some(key)) => Some((resolve(base, cert), resolve(base, key))),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Parse(
                "[storage] database_cert and database_key go together".into(),
            ));
        }
    };
    if client_cert.is_some() && ca.is_none() {
        return Err(ConfigError::Parse(
            "[storage] database_cert needs database_ca (the client certificate is presented \
             over TLS only)"
                .into(),
        ));
    }
    Ok(Some(shared::pg::PgSettings {
        url,
        pool_size,
        ca,
        client_cert,
        connect_timeout: DATABASE_CONNECT_TIMEOUT,
    }))
}

/// Reads the URL from its file, which must be owner-only (it may hold a password). Errors name
/// the file, never its contents.
fn read_url_file(path: &Path) -> Result<shared::SecretString, ConfigError> {
    let fail = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    shared::tls::check_key_file_owner_only(path).map_err(|e| fail(e.to_string()))?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| fail(format!("database_url_file: {e}")))?,
    );
    Ok(shared::SecretString::new(text.trim().to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! `[storage]`: the backend choice and the database keys; the URL's password never shows.
    use super::*;
    use crate::config::{Config, FileConfig, Overrides};
    use std::os::unix::fs::PermissionsExt;

    const URL: &str = "postgres://vault:hunter2@127.0.0.1:5432/vault";

    fn load(text: &str, env_url: Option<&str>) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("database.url");
        std::fs::write(&url_file, format!("{URL}\n")).unwrap();
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("vault.toml");
        std::fs::write(&path, text).unwrap();
        let env = Overrides {
            database_url: env_url.map(|u| shared::SecretString::new(u.into())),
            ..Overrides::default()
        };
        Config::load(&path, env, None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_backend_is_sled_and_init_writes_it() {
        let cfg = load("", None).unwrap();
        assert_eq!(cfg.storage.backend, Backend::Sled);
        assert!(cfg.database.is_none());
        let text = FileConfig::defaults().to_toml().unwrap();
        assert!(text.contains("backend = \"sled\""), "{text}");
        assert!(!text.contains("database_url_file ="), "{text}");
    }

    #[test]
    fn postgres_reads_the_url_from_an_owner_only_file_and_never_shows_it() {
        let cfg = load(
            "[storage]\nbackend = \"postgres\"\ndatabase_url_file = \"database.url\"\n\
             pool_size = 4\n",
            None,
        )
        .unwrap();
        let db = cfg.database.as_ref().expect("postgres settings");
        assert_eq!(db.url.expose_secret(), URL, "read and trimmed");
        assert_eq!(db.pool_size, 4);
        assert!(db.ca.is_none() && db.client_cert.is_none());
        let shown = format!("{:?} {:?}", cfg.database, cfg.storage);
        assert!(!shown.contains("hunter2"), "{shown}");
        // The environment beats the file.
        let cfg = load(
            "[storage]\nbackend = \"postgres\"\ndatabase_url_file = \"database.url\"\n",
            Some("postgres://other@127.0.0.1/x"),
        )
        .unwrap();
        let db = cfg.database.unwrap();
        assert_eq!(db.url.expose_secret(), "postgres://other@127.0.0.1/x");
        assert_eq!(db.pool_size, shared::pg::DEFAULT_POOL_SIZE);
    }

    #[test]
    fn a_url_file_others_can_read_is_refused_without_showing_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("database.url");
        std::fs::write(&url_file, URL).unwrap();
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("vault.toml");
        let text = "[storage]\nbackend = \"postgres\"\ndatabase_url_file = \"database.url\"\n";
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path, Overrides::default(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("database.url") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn database_keys_are_checked_by_name_and_a_bad_url_is_refused_without_its_password() {
        let refusals = [
            (
                "[storage]\ndatabase_urll_file = \"x\"\n",
                None,
                "unknown field `database_urll_file`",
            ),
            (
                "[storage]\nbackend = \"mysql\"\n",
                None,
                "unknown variant `mysql`",
            ),
            (
                "[storage]\npool_size = 4\n",
                None,
                "pool_size applies to backend = \"postgres\"",
            ),
            (
                "",
                Some(URL),
                "VAULT_DATABASE_URL is set, but [storage] backend is \"sled\"",
            ),
            (
                "[storage]\nbackend = \"postgres\"\n",
                None,
                "needs database_url_file",
            ),
            (
                "[storage]\nbackend = \"postgres\"\npool_size = 0\n",
                Some(URL),
                "pool_size must be positive",
            ),
            (
                "[storage]\nbackend = \"postgres\"\ndatabase_cert = \"c.pem\"\n",
                Some(URL),
                "database_cert and database_key go together",
            ),
            (
                "[storage]\nbackend = \"postgres\"\ndatabase_cert = \"c.pem\"\n\
                 database_key = \"c.key\"\n",
                Some(URL),
                "database_cert needs database_ca",
            ),
            (
                "[storage]\nbackend = \"postgres\"\n",
                Some("postgres://vault:hunter2@127.0.0.1:notaport/vault"),
                "database url",
            ),
        ];
        for (text, env, expected) in refusals {
            let err = load(text, env).err().unwrap_or_default();
            assert!(err.contains(expected), "{text:?} {env:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
