//! Production configuration: a TOML file, then environment overrides.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data = "/var/lib/strongroom"        # accounts-api keeps its state in DATA/accounts
//! [vault]
//! addr = "127.0.0.1:8443"
//! server_name = "localhost"           # name in the vault's certificate
//! ca = "pki/ca.pem"                   # relative paths are relative to this file
//! cert = "pki/accounts.pem"
//! key = "pki/accounts.key"
//! [renewals]                          # the renewal job (off without this section)
//! cert = "pki/renewals.pem"           # its own client identity at the vault
//! key = "pki/renewals.key"
//! interval_secs = 60                  # periodic run; 0 = on demand only
//! [limits]                            # all optional; defaults shown in the README
//! auth_failures_per_address = 20
//! store_requests_per_sec = 0          # 0: unlimited
//! ```
//! Overrides: `STRONGROOM_LISTEN`, `STRONGROOM_DATA`, `STRONGROOM_VAULT_ADDR`,
//! `STRONGROOM_VAULT_SERVER_NAME`, `STRONGROOM_VAULT_CA`, `STRONGROOM_VAULT_CERT`,
//! `STRONGROOM_VAULT_KEY`, `STRONGROOM_RENEWALS_CERT`, `STRONGROOM_RENEWALS_KEY`,
//! `STRONGROOM_RENEWALS_INTERVAL_SECS`.

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
    vault: Option<VaultFile>,
    renewals: Option<RenewalsFile>,
    #[serde(default)]
    limits: crate::ops::Limits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RenewalsFile {
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
    pub renewals: Option<RenewalsConfig>,
    /// `[limits]`: abuse and resource limits (see [`crate::ops::Limits`]).
    pub limits: crate::ops::Limits,
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
        let r = file.renewals;
        let renewals = match r {
            None if env("STRONGROOM_RENEWALS_CERT").is_none() => None,
            r => {
                let r = r.unwrap_or_default();
                let path = |envname: &str, val: Option<PathBuf>, what: &str| {
                    env(envname)
                        .map(PathBuf::from)
                        .or(val.map(rel))
                        .ok_or(format!("renewals.{what} is required"))
                };
                Some(RenewalsConfig {
                    cert: path("STRONGROOM_RENEWALS_CERT", r.cert, "cert")?,
                    key: path("STRONGROOM_RENEWALS_KEY", r.key, "key")?,
                    interval: RenewalsConfig::interval_from_env(r.interval_secs.unwrap_or(60))?,
                })
            }
        };
        let listen = env("STRONGROOM_LISTEN")
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr = env("STRONGROOM_VAULT_ADDR")
            .or(v.addr)
            .ok_or("vault.addr is required")?;
        let need = |envname: &str, val: Option<PathBuf>, what: &str| -> Result<PathBuf, String> {
            env(envname)
                .map(PathBuf::from)
                .or(val.map(rel))
                .ok_or(format!("vault.{what} is required"))
        };
        Ok(Self {
            listen: listen
                .parse()
                .map_err(|_| format!("listen: not an address: {listen}"))?,
            data: env("STRONGROOM_DATA")
                .map(PathBuf::from)
                .or(file.data.map(rel))
                .ok_or("data is required")?,
            vault: VaultConfig {
                addr: addr
                    .parse()
                    .map_err(|_| format!("vault.addr: not an address: {addr}"))?,
                server_name: env("STRONGROOM_VAULT_SERVER_NAME")
                    .or(v.server_name)
                    .unwrap_or_else(|| "localhost".into()),
                tls: TlsFiles {
                    ca: need("STRONGROOM_VAULT_CA", v.ca, "ca")?,
                    cert: need("STRONGROOM_VAULT_CERT", v.cert, "cert")?,
                    key: need("STRONGROOM_VAULT_KEY", v.key, "key")?,
                },
            },
            renewals,
            limits: file.limits,
        })
    }

    /// Only the data folder (for `store create --config`), without requiring the vault part.
    pub fn data_folder(path: &Path) -> Result<PathBuf, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        env("STRONGROOM_DATA")
            .map(PathBuf::from)
            .or(file
                .data
                .map(|p| if p.is_absolute() { p } else { base.join(p) }))
            .ok_or_else(|| "data is required".into())
    }
}

/// `DATA/accounts`: the folder accounts-api owns (sled database and admin socket).
pub fn accounts_dir(data: &Path) -> PathBuf {
    data.join("accounts")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_file_and_missing_vault_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("accounts.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:0\"\ndata = \"state\"\n[vault]\naddr = \"127.0.0.1:8443\"\n\
             ca = \"pki/ca.pem\"\ncert = \"/abs/accounts.pem\"\nkey = \"pki/accounts.key\"\n",
        )
        .unwrap();
        let cfg = Config::load(&file).unwrap();
        assert_eq!(cfg.data, dir.path().join("state"));
        assert_eq!(cfg.vault.tls.ca, dir.path().join("pki/ca.pem"));
        assert_eq!(cfg.vault.tls.cert, PathBuf::from("/abs/accounts.pem"));
        assert_eq!(cfg.vault.server_name, "localhost");
        assert_eq!(
            Config::data_folder(&file).unwrap(),
            dir.path().join("state")
        );

        std::fs::write(&file, "data = \"x\"\n[vault]\naddr = \"127.0.0.1:1\"\n").unwrap();
        assert!(Config::load(&file).unwrap_err().contains("vault.ca"));
        std::fs::write(&file, "data = \"x\"\nsurprise = 1\n").unwrap();
        assert!(Config::load(&file).is_err(), "unknown keys are refused");
    }
}
