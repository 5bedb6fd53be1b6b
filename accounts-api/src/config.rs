//! Production configuration: a TOML file, then environment overrides.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data = "/var/lib/strongroom"        # accounts-api keeps its state in DATA/accounts
//! public_url = "https://accounts.example.com"   # base of sign-in links (absolute http(s) URL)
//! live = false                        # the `live` field of orders, subscriptions and events
//! [vault]
//! addr = "vault.internal:8443"        # host:port (resolved at start) or ip:port
//! server_name = "localhost"           # name in the vault's certificate
//! ca = "pki/ca.pem"                   # relative paths are relative to this file
//! cert = "pki/accounts.pem"
//! key = "pki/accounts.key"            # owner-only (chmod 600), like the vault's key files
//! [renewals]                          # on by default; `enabled = false` turns the job off
//! cert = "pki/renewals.pem"           # default: renewals.pem next to vault.cert
//! key = "pki/renewals.key"            # default: renewals.key next to vault.cert
//! interval_secs = 60                  # periodic run; 0 = on demand only
//! [database]                          # PostgreSQL instead of the embedded sled (several instances)
//! url_file = "database.url"           # owner-only file holding the URL (or STRONGROOM_DATABASE_URL)
//! pool_size = 16
//! ca = "pki/db-ca.pem"                # TLS, verified against this CA (required off this machine)
//! cert = "pki/db-client.pem"          # optional client certificate
//! key = "pki/db-client.key"
//! [webhooks]                          # all optional
//! allow = ["10.20.0.0/16", "hooks.internal"]   # egress allow-list (CIDRs, host names); default none
//! per_store = 10                      # most webhooks per store
//! in_flight_per_store = 8             # most posts in flight at once per store
//! [limits]                            # all optional; defaults shown in the README
//! auth_failures_per_address_user = 20   # per (address, username); 200 per address
//! store_requests_per_sec = 0          # 0: unlimited
//! [http]                              # behind a reverse proxy (ops::ClientAddress)
//! trusted_proxy_header = "x-forwarded-for"   # believed only from these peers:
//! trusted_proxies = ["10.0.0.0/8"]
//! [retention]                         # all optional (settings::Retention)
//! idempotency_hours = 24              # Idempotency-Key answers, from first use (1..=720)
//! processed_events_days = 30          # processed events, from processing (1..=3650)
//! ```
//! Overrides: `STRONGROOM_LISTEN`, `STRONGROOM_DATA`, `STRONGROOM_PUBLIC_URL`, `STRONGROOM_LIVE`,
//! `STRONGROOM_VAULT_ADDR`, `STRONGROOM_VAULT_SERVER_NAME`, `STRONGROOM_VAULT_CA`,
//! `STRONGROOM_VAULT_CERT`, `STRONGROOM_VAULT_KEY`, `STRONGROOM_RENEWALS_ENABLED`,
//! `STRONGROOM_RENEWALS_CERT`, `STRONGROOM_RENEWALS_KEY`, `STRONGROOM_RENEWALS_INTERVAL_SECS`,
//! `STRONGROOM_DATABASE_URL` (the URL itself; selects PostgreSQL even without `[database]`),
//! `STRONGROOM_IDEMPOTENCY_RETENTION_HOURS`, `STRONGROOM_EVENT_RETENTION_DAYS`,
//! `STRONGROOM_WEBHOOK_ALLOW` (comma-separated; `none` empties it),
//! `STRONGROOM_WEBHOOKS_PER_STORE`, `STRONGROOM_WEBHOOK_IN_FLIGHT_PER_STORE`.
//!
//! Every mistake is an error that names the key: an unknown key, a missing required one, a
//! public URL without scheme, renewals on (the default) without their certificate files.

use crate::settings::{parse_bool, parse_public_url};
use crate::vault::VaultConfig;
use serde::Deserialize;
use shared::tls::TlsFiles;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    public_url: Option<String>,
    live: Option<bool>,
    vault: Option<VaultFile>,
    renewals: Option<RenewalsFile>,
    database: Option<DatabaseFile>,
    #[serde(default)]
    webhooks: WebhooksFile,
    #[serde(default)]
    limits: crate::ops::Limits,
    retention: Option<RetentionFile>,
    http: Option<HttpFile>,
}

/// `[http]`: the client address behind a reverse proxy (`ops::ClientAddress`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    trusted_proxy_header: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

/// `[retention]`: how long Idempotency-Key answers and processed events are kept.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    idempotency_hours: Option<u64>,
    processed_events_days: Option<u64>,
}

/// The windows of `[retention]` (bounded; an out-of-range value names its key), then the
/// environment's overrides.
fn retention(file: Option<RetentionFile>) -> Result<crate::settings::Retention, String> {
    use crate::settings::Retention;
    let f = file.unwrap_or_default();
    let d = Retention::default();
    let from_file = Retention {
        idempotency: match f.idempotency_hours {
            Some(h) => Retention::idempotency_hours(h, "retention.idempotency_hours")?,
            None => d.idempotency,
        },
        processed_events: match f.processed_events_days {
            Some(n) => Retention::event_days(n, "retention.processed_events_days")?,
            None => d.processed_events,
        },
    };
    Retention::from_env(from_file)
}

/// `[webhooks]`: where webhooks may be posted and how many a store may have.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WebhooksFile {
    allow: Option<Vec<String>>,
    per_store: Option<usize>,
    in_flight_per_store: Option<usize>,
}

/// The webhook settings of a configuration file, environment overrides applied.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The egress allow-list; empty (strict) unless configured.
    pub egress: crate::egress::Policy,
    pub per_store: usize,
    pub in_flight_per_store: usize,
}

impl WebhookConfig {
    fn of(file: WebhooksFile) -> Result<Self, String> {
        let d = crate::settings::Settings::default();
        let egress = match crate::settings::egress_from_env()? {
            Some(p) => p,
            None => crate::egress::Policy::from_entries(
                file.allow.as_deref().unwrap_or_default(),
                "webhooks.allow",
            )?,
        };
        let count = |envname: &str, key: &str, val: Option<usize>, default: usize| {
            match env(envname) {
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{envname}: not a number")),
                None => Ok(val.unwrap_or(default)),
            }
            .and_then(|n| {
                if n == 0 {
                    Err(format!("webhooks.{key} must be at least 1"))
                } else {
                    Ok(n)
                }
            })
        };
        Ok(Self {
            egress,
            per_store: count(
                "STRONGROOM_WEBHOOKS_PER_STORE",
                "per_store",
                file.per_store,
                d.webhooks_per_store,
            )?,
            in_flight_per_store: count(
                "STRONGROOM_WEBHOOK_IN_FLIGHT_PER_STORE",
                "in_flight_per_store",
                file.in_flight_per_store,
                d.webhook_in_flight_per_store,
            )?,
        })
    }

    /// These settings in `settings`.
    pub fn apply(&self, settings: &mut crate::settings::Settings) {
        settings.webhook_egress = std::sync::Arc::new(self.egress.clone());
        settings.webhooks_per_store = self.per_store;
        settings.webhook_in_flight_per_store = self.in_flight_per_store;
    }
}

/// `[database]`: PostgreSQL. The URL may hold a password, so it is never written in this file:
/// it comes from an owner-only file or the environment.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DatabaseFile {
    url_file: Option<PathBuf>,
    pool_size: Option<usize>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
}

/// The database settings: `None` is the embedded sled under `data`; `Some` is PostgreSQL,
/// chosen by a `[database]` section or `STRONGROOM_DATABASE_URL`.
fn database(
    file: Option<DatabaseFile>,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Option<shared::pg::PgSettings>, String> {
    let from_env = env("STRONGROOM_DATABASE_URL").map(shared::SecretString::new);
    if file.is_none() && from_env.is_none() {
        return Ok(None);
    }
    let d = file.unwrap_or_default();
    let url = match (from_env, d.url_file.map(rel)) {
        (Some(url), _) => url,
        (None, Some(path)) => {
            shared::tls::check_key_file_owner_only(&path)
                .map_err(|e| format!("database.url_file: {e}"))?;
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                    format!("database.url_file: cannot read {}: {e}", path.display())
                })?);
            shared::SecretString::new(text.trim().to_owned())
        }
        (None, None) => {
            return Err(
                "database.url_file (or STRONGROOM_DATABASE_URL) is required with \
                        [database]"
                    .into(),
            );
        }
    };
    let client_cert = match (d.cert.map(rel), d.key.map(rel)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("database.cert and database.key go together".into()),
    };
    let settings = shared::pg::PgSettings {
        url,
        pool_size: d.pool_size.unwrap_or(shared::pg::DEFAULT_POOL_SIZE),
        ca: d.ca.map(rel),
        client_cert,
        connect_timeout: std::time::Duration::from_millis(d.connect_timeout_ms.unwrap_or(5000)),
    };
    // Parse now: a bad URL is a start error that names the key, not a 503 later.
    shared::pg::parse_url(&settings.url).map_err(|e| e.to_string())?;
    Ok(Some(settings))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RenewalsFile {
    /// `false` turns the renewal job off (saved-card subscriptions are then never charged).
    enabled: Option<bool>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    interval_secs: Option<u64>,
}

/// The renewal job: its client certificate at the vault and how often it runs.
#[derive(Debug, Clone)]
pub struct RenewalsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `None`: only on demand (`POST /subscriptions/charge`).
    pub interval: Option<std::time::Duration>,
}

impl RenewalsConfig {
    /// The interval from `STRONGROOM_RENEWALS_INTERVAL_SECS`, else `default_secs` (0 = off).
    pub fn interval_from_env(default_secs: u64) -> Result<Option<std::time::Duration>, String> {
        let secs = match env("STRONGROOM_RENEWALS_INTERVAL_SECS") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| "STRONGROOM_RENEWALS_INTERVAL_SECS: not a number".to_owned())?,
            None => default_secs,
        };
        Ok((secs > 0).then(|| std::time::Duration::from_secs(secs)))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    addr: Option<String>,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The data folder; accounts-api's own state is under `data/accounts`.
    pub data: PathBuf,
    pub vault: VaultConfig,
    /// `vault.addr` as written (a host name or an address), for the startup summary.
    pub vault_addr_text: String,
    /// `None`: renewals are off (`[renewals] enabled = false`).
    pub renewals: Option<RenewalsConfig>,
    /// Base of sign-in links; `None`: links follow the request's Host header.
    pub public_url: Option<String>,
    /// Live mode: `live` in every order, subscription and event.
    pub live: bool,
    /// `[limits]`: abuse and resource limits (see [`crate::ops::Limits`]).
    pub limits: crate::ops::Limits,
    /// `[database]`: `None` = the embedded sled under `data/accounts`; `Some` = PostgreSQL.
    pub database: Option<shared::pg::PgSettings>,
    /// `[retention]`: how long Idempotency-Key answers and processed events are kept.
    pub retention: crate::settings::Retention,
    /// `[webhooks]`: egress allow-list and per-store limits.
    pub webhooks: WebhookConfig,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let v = file.vault.unwrap_or_default();
        let listen = env("STRONGROOM_LISTEN")
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr_text = env("STRONGROOM_VAULT_ADDR")
            .or(v.addr)
            .ok_or("vault.addr is required")?;
        let need = |envname: &str, val: Option<PathBuf>, what: &str| -> Result<PathBuf, String> {
            env(envname)
                .map(PathBuf::from)
                .or(val.map(rel))
                .ok_or(format!("vault.{what} is required"))
        };
        let tls = TlsFiles {
            ca: need("STRONGROOM_VAULT_CA", v.ca, "ca")?,
            cert: need("STRONGROOM_VAULT_CERT", v.cert, "cert")?,
            key: need("STRONGROOM_VAULT_KEY", v.key, "key")?,
        };
        let renewals = renewals(file.renewals.unwrap_or_default(), &tls.cert, &rel)?;
        let database = database(file.database, &rel)?;
        let retention = retention(file.retention)?;
        let http = file.http.unwrap_or_default();
        let mut limits = file.limits;
        limits.client_address = crate::ops::ClientAddress::parse(
            http.trusted_proxy_header.as_deref(),
            &http.trusted_proxies,
        )?;
        let public_url = match env("STRONGROOM_PUBLIC_URL") {
            Some(u) => Some(parse_public_url(&u, "STRONGROOM_PUBLIC_URL")?),
            None => file
                .public_url
                .as_deref()
                .map(|u| parse_public_url(u, "public_url"))
                .transpose()?,
        };
        let live = match env("STRONGROOM_LIVE") {
            Some(v) => parse_bool(&v, "STRONGROOM_LIVE")?,
            None => file.live.unwrap_or(false),
        };
        Ok(Self {
            listen: listen
                .parse()
                .map_err(|_| format!("listen: not an address (ip:port): {listen}"))?,
            data: env("STRONGROOM_DATA")
                .map(PathBuf::from)
                .or(file.data.map(rel))
                .ok_or("data is required")?,
            vault: VaultConfig {
                addr: resolve_vault_addr(&addr_text)?,
                server_name: env("STRONGROOM_VAULT_SERVER_NAME")
                    .or(v.server_name)
                    .unwrap_or_else(|| "localhost".into()),
                tls,
            },
            vault_addr_text: addr_text,
            renewals,
            public_url,
            live,
            limits,
            database,
            retention,
            webhooks: WebhookConfig::of(file.webhooks)?,
        })
    }

    /// Only the data folder (for `store create --config`), without requiring the vault part.
    pub fn data_folder(path: &Path) -> Result<PathBuf, String> {
        Ok(Self::storage_of(path)?.0)
    }

    /// The data folder and the database settings (for `store create --config`), without
    /// requiring the vault part.
    pub fn storage_of(path: &Path) -> Result<(PathBuf, Option<shared::pg::PgSettings>), String> {
        Self::admin_of(path).map(|(data, db, _)| (data, db))
    }

    /// [`Config::storage_of`] and the webhook settings (for `webhook … --config`, which applies
    /// the file's egress policy when it writes to the database itself).
    #[allow(clippy::type_complexity)]
    pub fn admin_of(
        path: &Path,
    ) -> Result<(PathBuf, Option<shared::pg::PgSettings>, WebhookConfig), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let data = env("STRONGROOM_DATA")
            .map(PathBuf::from)
            .or(file.data.map(rel))
            .ok_or_else(|| "data is required".to_owned())?;
        Ok((
            data,
            database(file.database, &rel)?,
            WebhookConfig::of(file.webhooks)?,
        ))
    }
}

/// `[renewals]`: on unless `enabled = false` (or `STRONGROOM_RENEWALS_ENABLED=false`); the
/// certificate defaults to `renewals.pem`/`renewals.key` next to `vault.cert`, and must exist.
fn renewals(
    r: RenewalsFile,
    vault_cert: &Path,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Option<RenewalsConfig>, String> {
    let enabled = match env("STRONGROOM_RENEWALS_ENABLED") {
        Some(v) => parse_bool(&v, "STRONGROOM_RENEWALS_ENABLED")?,
        None => r.enabled.unwrap_or(true),
    };
    if !enabled {
        return Ok(None);
    }
    let folder = vault_cert.parent().unwrap_or(Path::new("."));
    let path = |envname: &str, val: Option<PathBuf>, default: &str| {
        env(envname)
            .map(PathBuf::from)
            .or(val.map(rel))
            .unwrap_or_else(|| folder.join(default))
    };
    let cert = path("STRONGROOM_RENEWALS_CERT", r.cert, "renewals.pem");
    let key = path("STRONGROOM_RENEWALS_KEY", r.key, "renewals.key");
    for (what, file) in [("renewals.cert", &cert), ("renewals.key", &key)] {
        if !file.exists() {
            return Err(format!(
                "renewals are on (the default) but {what} {} does not exist: place the renewal \
                 job's client certificate and key there, set renewals.cert and renewals.key, or \
                 turn renewals off with `[renewals] enabled = false` (saved-card subscriptions \
                 are then never charged)",
                file.display()
            ));
        }
    }
    Ok(Some(RenewalsConfig {
        cert,
        key,
        interval: RenewalsConfig::interval_from_env(r.interval_secs.unwrap_or(60))?,
    }))
}

/// `vault.addr`: an `ip:port`, or a `host:port` resolved once here (the first address wins; the
/// TLS name checked is `vault.server_name`, not this host).
fn resolve_vault_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs as _;
    text.to_socket_addrs()
        .map_err(|e| {
            format!("vault.addr: cannot resolve {text:?} (write host:port or ip:port): {e}")
        })?
        .next()
        .ok_or_else(|| format!("vault.addr: {text:?} resolves to no address"))
}

/// `DATA/accounts`: the folder accounts-api owns (sled database and admin socket).
pub fn accounts_dir(data: &Path) -> PathBuf {
    data.join("accounts")
}

#[cfg(test)]
mod tests;
