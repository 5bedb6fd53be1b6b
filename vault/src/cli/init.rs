//! `vault init`: creates the key files and the data folder bound to them.
//!
//! Two forms. `--dir DIR` (development) also writes `DIR/vault.toml` and a dev PKI. `--config
//! FILE` (production: "place your PKI, then `vault init`") reads an operator-written config,
//! requires the TLS files it names, and creates only what is missing: the master and fingerprint
//! key files (0600) at the configured paths and the data folder (0700).
//!
//! Binding (see `custody`): new key files and a new data folder share one random id. A data
//! folder is created only together with key files that are new or still unbound; key files
//! already bound to a folder that is not at `data_dir` are refused, so `init` can never attach the
//! live keys to a second, empty data folder. Nothing existing is overwritten or re-moded.
//!
//! With `[storage] backend = "postgres"` the folder id lives in the database (migrated here if
//! new), shared by every instance: the first `init` records it; an `init` for a further instance
//! (same key files, copied to its machine) finds it and only creates its local data folder (its
//! audit chain). Bound key files with a database that has no id are refused, as with an empty
//! sled folder.

use super::CliResult;
use crate::config::{Config, FileConfig, KeySource, Overrides};
use crate::keys::{self, KeyKind};
use crate::service::custody::FOLDER_ID_KEY;
use crate::store::{PgStore, StoppedFolder, Store};
use std::path::{Path, PathBuf};

/// `vault init --dir DIR [--shares N --threshold K]`.
pub fn init_dir(dir: &Path, sealed: Option<(u8, u8)>) -> CliResult<()> {
    shared::pki::create_private_dir(dir)?;
    let dir = std::path::absolute(dir)?;
    let config_path = dir.join("vault.toml");
    let config_created = if config_path.exists() {
        if sealed.is_some() {
            return Err(format!(
                "{} exists; sealed mode is chosen at first init (refusing to change an existing vault)",
                config_path.display()
            )
            .into());
        }
        false
    } else {
        let mut defaults = FileConfig::defaults();
        if sealed.is_some() {
            defaults.master_key_file = "master.sealed".into();
        }
        shared::pki::write_file(&config_path, defaults.to_toml()?.as_bytes(), 0o600)?;
        true
    };
    println!(
        "config: {} ({})",
        config_path.display(),
        status(config_created)
    );
    let pki_dir = dir.join("pki");
    let pki_created = shared::pki::ensure_dev_pki(&pki_dir)?;
    println!("pki: {} ({})", pki_dir.display(), status(pki_created));
    let config = Config::load(&config_path, Overrides::default(), None)?;
    // Re-running plain `init` on a sealed vault folder must not add an unused clear key.
    let sealed_folder = dir.join("master.sealed").exists();
    create_keys_and_folder(&config, sealed, sealed_folder)?;
    println!("start with: vault serve --config {}", config_path.display());
    Ok(())
}

/// `vault init --config FILE [--shares N --threshold K]`.
pub fn init_config(config_path: &Path, sealed: Option<(u8, u8)>) -> CliResult<()> {
    let config = Config::load(config_path, Overrides::from_env(), None)?;
    let missing: Vec<String> = [
        ("tls.ca", &config.tls.ca),
        ("tls.cert", &config.tls.cert),
        ("tls.key", &config.tls.key),
    ]
    .iter()
    .filter(|(_, p)| !p.exists())
    .map(|(what, p)| format!("{what} = {}", p.display()))
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "place the PKI first: missing {} (see the README: production install)",
            missing.join(", ")
        )
        .into());
    }
    keys::check_owner_only(&config.tls.key)?;
    create_keys_and_folder(&config, sealed, false)?;
    println!(
        "start with: vault serve --config {}",
        std::path::absolute(config_path)?.display()
    );
    Ok(())
}

fn status(created: bool) -> &'static str {
    if created { "created" } else { "kept" }
}

fn key_file(source: &KeySource, what: &str) -> CliResult<PathBuf> {
    match source {
        KeySource::File(p) => Ok(p.clone()),
        KeySource::Env(_) => Err(format!(
            "the {what} key comes from the environment; `vault init` writes key files (unset it)"
        )
        .into()),
    }
}

/// The id stored in an existing data folder (if the folder holds a database), or in the
/// shared database.
fn folder_id(config: &Config, database: Option<&PgStore>) -> CliResult<Option<String>> {
    let id = match database {
        Some(db) => db.meta_get(FOLDER_ID_KEY)?,
        None if !config.data_dir.join("conf").exists() => return Ok(None),
        None => StoppedFolder::open(&config.data_dir, config.storage.cache_capacity_bytes, 500)?
            .meta_get(FOLDER_ID_KEY)?,
    };
    Ok(id.and_then(|v| String::from_utf8(v).ok()))
}

fn create_keys_and_folder(
    config: &Config,
    sealed: Option<(u8, u8)>,
    sealed_folder: bool,
) -> CliResult<()> {
    let master = key_file(&config.master_key, "master")?;
    let fp = key_file(&config.fingerprint_key, "fingerprint")?;
    let bindings: Vec<(PathBuf, String)> = [&master, &fp]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| Ok::<_, keys::KeyError>(keys::binding_of(p)?.map(|id| (p.clone(), id))))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let database = config.database.as_ref().map(PgStore::open).transpose()?;
    let existing = folder_id(config, database.as_ref())?;
    let id = match (&existing, bindings.first()) {
        (Some(f), _) => {
            if let Some((p, other)) = bindings.iter().find(|(_, b)| b != f) {
                return Err(format!(
                    "key file {} belongs to data folder {other}, but {} is data folder {f}; \
                     refusing to mix them",
                    p.display(),
                    config.data_dir.display()
                )
                .into());
            }
            f.clone()
        }
        (None, Some((p, bound))) => {
            if database.is_some() {
                return Err(format!(
                    "key file {} belongs to data folder {bound}, which is not the configured \
                     database (it has no data folder id): restore that database, or point the \
                     config at new key file paths to start a new vault (refusing to bind \
                     existing keys to a new database)",
                    p.display()
                )
                .into());
            }
            if !config.data_dir.join("conf").exists() {
                return Err(format!(
                    "key file {} belongs to data folder {bound}, which is not at {}: restore that \
                     data folder there, or point the config at new key file paths to start a new \
                     vault (refusing to bind existing keys to a new data folder)",
                    p.display(),
                    config.data_dir.display()
                )
                .into());
            }
            bound.clone()
        }
        (None, None) => uuid::Uuid::new_v4().to_string(),
    };
    // On a database, the id is claimed before any key file is bound to it, with
    // insert-if-absent: of two `init`s racing on one empty database, the second takes the
    // first's id, exactly as if it had run after it (its keys are then checked at start).
    let id = match (&existing, &database) {
        (None, Some(db)) => String::from_utf8(db.meta_put_if_absent(FOLDER_ID_KEY, id.as_bytes())?)
            .map_err(|_| "the database holds a data folder id that is not text")?,
        _ => id,
    };
    for p in [&master, &fp] {
        if let Some(dir) = p.parent() {
            shared::pki::create_private_dir(dir)?;
        }
    }
    let mut created_keys: Vec<PathBuf> = Vec::new();
    let master_created = match sealed {
        Some((n, k)) => {
            let texts = keys::create_sealed_master_file(&master, n, k, Some(&id))?;
            println!(
                "sealed master key: {} (threshold {k} of {n})",
                master.display()
            );
            println!(
                "Give each share to a different custodian. They are printed only now and never stored."
            );
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for t in &texts {
                    writeln!(out, "SHARE {}", t.as_str())?;
                }
                out.flush()?;
            }
            true
        }
        None if sealed_folder => false,
        None => keys::ensure_key_file(&master, KeyKind::Master, Some(&id))?,
    };
    if master_created {
        created_keys.push(master.clone());
    }
    if sealed.is_none() {
        println!(
            "master key: {} ({})",
            master.display(),
            status(master_created)
        );
    }
    let fp_created = keys::ensure_key_file(&fp, KeyKind::Fingerprint, Some(&id))?;
    if fp_created {
        created_keys.push(fp.clone());
    }
    println!("fingerprint key: {} ({})", fp.display(), status(fp_created));
    if let crate::config::KeySource::File(audit) = &config.audit_key {
        if let Some(dir) = audit.parent() {
            shared::pki::create_private_dir(dir)?;
        }
        let created = keys::ensure_audit_key_file(audit, Some(&id))?;
        if created {
            created_keys.push(audit.clone());
        }
        println!("audit key: {} ({})", audit.display(), status(created));
    }
    // Key files that existed unbound (written by hand) are bound to the folder now.
    for p in [&master, &fp] {
        if !created_keys.contains(p) && p.exists() && keys::binding_of(p)?.is_none() {
            keys::bind_file(p, &id)?;
            created_keys.push(p.clone());
        }
    }
    let data_created = !config.data_dir.exists();
    shared::pki::create_private_dir(&config.data_dir)?;
    if existing.is_none() && database.is_none() {
        StoppedFolder::open(&config.data_dir, config.storage.cache_capacity_bytes, 500)?
            .meta_put(FOLDER_ID_KEY, id.as_bytes())?
    }
    println!(
        "data: {} ({}), data folder id {id}",
        config.data_dir.display(),
        status(data_created)
    );
    if !created_keys.is_empty() {
        let list: Vec<String> = created_keys
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!(
            "back up the key files now: {} (apart from the data backups)",
            list.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod key_change_tests;
