//! PostgreSQL plumbing both services' backends share (issue 11): the connection settings, a
//! pool over TLS that trusts only the configured CA, the durability check, and embedded
//! migrations applied once under an advisory lock. No table of either service is named here.
//!
//! Secure by default: without a CA the connection is plain text, which is allowed only to a
//! loopback address or a Unix socket (a database on the same machine); any other host needs
//! `ca`, and then TLS is required and the server's certificate must chain to that CA (public
//! roots are never trusted). The URL may carry a password: it lives in a [`SecretString`], and
//! no error or log line built here contains it.
//!
//! Durability: an acknowledged write must survive a crash of the database server, so a server
//! (or role/database default) with `synchronous_commit = off` is refused at start.

use crate::secret::SecretString;
use crate::tls::{TlsError, check_key_file_owner_only, load_certs, load_key};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::Host;

/// Where and how to reach the database.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user[:password]@host[:port]/database[?options]` or the key=value form.
    pub url: SecretString,
    /// Connections in this process's pool.
    pub pool_size: usize,
    /// CA bundle the server's certificate must chain to; `Some` makes TLS required.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (owner-only) presented to the server, if it asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Bound on connecting and on waiting for a pooled connection.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// Default pool size per process (each service instance).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Why the database could not be used. Texts never contain the URL's password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database url: {0}")]
    Url(String),
    #[error(
        "database host {0} is not on this machine: set the database `ca` (TLS with the server's \
         certificate checked against it) to connect to it"
    )]
    PlainTextRemote(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the database runs with synchronous_commit = {0}: acknowledged writes could be lost in a \
         crash; set synchronous_commit = on (or local/remote_write/remote_apply) for this \
         database or role"
    )]
    NotDurable(String),
    #[error(
        "database schema of {component} is at version {found}, newer than this binary's \
         {known}: run the newer release (or restore the matching backup)"
    )]
    SchemaAhead {
        component: String,
        found: i32,
        known: i32,
    },
    #[error("database migration {version} of {component} failed: {reason}")]
    Migration {
        component: String,
        version: i32,
        reason: String,
    },
}

/// The parsed URL's hosts, for messages (never the password).
fn describe(host: &Host) -> String {
    match host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(p) => p.display().to_string(),
    }
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false)
        }
    }
}

/// Parses the URL (the error names the problem, never the text).
pub fn parse_url(url: &SecretString) -> Result<tokio_postgres::Config, PgError> {
    tokio_postgres::Config::from_str(url.expose_secret()).map_err(|e| {
        // tokio-postgres' parse errors name the option, not the value; keep only that.
        let text = e.to_string();
        let safe = if text.contains(url.expose_secret()) {
            "not a valid PostgreSQL URL".to_owned()
        } else {
            text
        };
        PgError::Url(safe)
    })
}

/// A pool on the configured database. Connections are made lazily; call [`check`] to fail
/// fast at start.
pub fn pool(settings: &PgSettings) -> Result<Pool, PgError> {
    let mut config = parse_url(&settings.url)?;
    if config.get_hosts().is_empty() {
        return Err(PgError::Url("no host".into()));
    }
    config.connect_timeout(settings.connect_timeout);
    let manager_config = ManagerConfig {
        // A connection handed out is checked by its use; a broken one fails that use (503) and
        // is dropped, not handed out again.
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &settings.ca {
        None => {
            if let Some(remote) = config.get_hosts().iter().find(|h| !is_local(h)) {
                return Err(PgError::PlainTextRemote(describe(remote)));
            }
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        }
        Some(ca) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(
                ca,
                settings.client_cert.as_ref(),
            )?);
            Manager::from_config(config, tls, manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

/// TLS to the database: only `ca` is trusted; a client certificate if configured.
fn client_tls(
    ca: &std::path::Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<rustls::ClientConfig, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            check_key_file_owner_only(key)?;
            builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    })
}

/// A pooled connection, or `Unavailable` (the caller answers 503).
pub async fn connection(pool: &Pool) -> Result<deadpool_postgres::Object, PgError> {
    pool.get()
        .await
        .map_err(|e| PgError::Unavailable(with_causes(&e)))
}

/// An error's text followed by its causes ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer"): the driver's own text stops at the outermost one. No cause of a
/// connection error carries the URL or its password.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Connects once and refuses a database that would not keep acknowledged writes.
pub async fn check(pool: &Pool) -> Result<(), PgError> {
    let client = connection(pool).await?;
    let row = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .map_err(|e| PgError::Unavailable(e.to_string()))?;
    let value: String = row.get(0);
    if value == "off" {
        return Err(PgError::NotDurable(value));
    }
    Ok(())
}

/// Applies the `migrations` of `component` that the database lacks (version = index + 1), all
/// in one transaction under a transaction-scoped advisory lock: of several instances starting
/// at once on an empty database, one migrates and the others then find the schema current.
/// Returns how many were applied.
pub async fn migrate(pool: &Pool, component: &str, migrations: &[&str]) -> Result<usize, PgError> {
    let mut client = connection(pool).await?;
    let fail = |version: i32| {
        let component = component.to_owned();
        move |e: tokio_postgres::Error| PgError::Migration {
            component,
            version,
            reason: e.to_string(),
        }
    };
    let tx = client.transaction().await.map_err(fail(0))?;
    // One lock id per component, the same in every process: a fixed hash of its name.
    let digest = ring::digest::digest(&ring::digest::SHA256, component.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&i64::from_be_bytes(id)],
    )
    .await
    .map_err(fail(0))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS strongroom_migrations (
             component text NOT NULL,
             version integer NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version))",
    )
    .await
    .map_err(fail(0))?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM strongroom_migrations WHERE component = $1",
            &[&component],
        )
        .await
        .map_err(fail(0))?;
    let found: i32 = row.get(0);
    let known = i32::try_from(migrations.len()).unwrap_or(i32::MAX);
    if found > known {
        return Err(PgError::SchemaAhead {
            component: component.to_owned(),
            found,
            known,
        });
    }
    let mut applied = 0;
    for (i, sql) in migrations.iter().enumerate().skip(found.max(0) as usize) {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).await.map_err(fail(version))?;
        tx.execute(
            "INSERT INTO strongroom_migrations (component, version) VALUES ($1, $2)",
            &[&component, &version],
        )
        .await
        .map_err(fail(version))?;
        applied += 1;
    }
    tx.commit().await.map_err(fail(known))?;
    Ok(applied)
}

/// The constraint a unique violation names (`None`: not a unique violation).
pub fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        .then(|| db.constraint().unwrap_or(""))
}

/// Whether an error is worth retrying the whole transaction for (a serialization failure or a
/// deadlock the server broke).
pub fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        c == &tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            || c == &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Whether an error means the database is unreachable or went away (answer 503), as opposed to
/// a statement the database refused.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_none() && e.code().is_none()
        || e.code().is_some_and(|c| {
            let s = c.code();
            // 08: connection exception; 57P: operator intervention (shutdown, crash recovery).
            s.starts_with("08") || s.starts_with("57P")
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(url: &str) -> PgSettings {
        PgSettings {
            url: SecretString::new(url.into()),
            pool_size: 2,
            ca: None,
            client_cert: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn plain_text_is_refused_to_a_remote_host_and_allowed_on_this_machine() {
        let e = pool(&settings("postgres://u:hunter2@db.example.com/x")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("db.example.com") && text.contains("`ca`"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        for local in [
            "postgres://u:p@127.0.0.1:5432/x",
            "postgres://u:p@localhost/x",
            "postgres://u:p@[::1]:5432/x",
            "host=/run/postgresql user=u dbname=x",
        ] {
            assert!(pool(&settings(local)).is_ok(), "{local}");
        }
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let e = pool(&settings("postgres://u:hunter2@127.0.0.1:notaport/x")).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{:?}", settings("postgres://u:hunter2@h/x")).contains("hunter2"));
    }
}
