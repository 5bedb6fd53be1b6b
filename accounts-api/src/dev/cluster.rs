//! `accounts-api dev --database-url URL --instances N`: the dev system on PostgreSQL, N of each
//! service, for trying (and testing) several instances on one machine.
//!
//! - The URL is written once to `DATA/database.url` (0600); every child reads it from there
//!   (never from its command line or environment, where `ps` would show a password).
//! - Vault i lives in `DATA/vaults/<i>`: the first is created with `vault init --dir` over a
//!   `vault.toml` that selects `backend = "postgres"` (so `init` binds the keys in the database);
//!   the others are copies of its keys, PKI and config, and `vault init --dir` only gives each its
//!   own data folder (its audit chain). The key folder is locked per process, hence the copies.
//! - accounts-api instance 1 is the dev process; instance i ≥ 2 is an `accounts-api
//!   dev-instance` child (`serve` on dev's lifecycle clock) with `DATA/instances/<i>/accounts-api.toml`, on vault i. All share the database, so a
//!   store, account, Idempotency-Key or session made on one is seen by all.
//!
//! Both services use the one database here (their tables do not overlap); in production each
//! gets its own database and role (README, "Running on PostgreSQL").

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The database every instance uses, and where its URL is kept.
pub(super) struct Database {
    url: shared::SecretString,
    url_file: PathBuf,
}

impl Database {
    /// Writes the URL to `DATA/database.url` (owner-only) after checking it parses.
    pub(super) fn prepare(data: &Path, url: &shared::SecretString) -> Result<Self, String> {
        shared::pg::parse_url(url).map_err(|e| format!("--database-url: {e}"))?;
        let url_file = data.join("database.url");
        shared::pki::write_file(&url_file, url.expose_secret().as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", url_file.display()))?;
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.clone(),
            url_file,
        })
    }

    /// The in-process instance's connection settings.
    pub(super) fn settings(&self) -> shared::pg::PgSettings {
        shared::pg::PgSettings {
            url: self.url.clone(),
            pool_size: shared::pg::DEFAULT_POOL_SIZE,
            ca: None,
            client_cert: None,
            connect_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// `vault init --dir dir` (idempotent: existing files are kept).
pub(super) async fn vault_init(vault_bin: &Path, dir: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new(vault_bin)
        .arg("init")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("vault init: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "vault init --dir {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The config of a dev vault instance on PostgreSQL (the rest takes `vault init`'s defaults).
fn vault_toml(url_file: &Path) -> String {
    format!(
        "# Written by `accounts-api dev --database-url`: a dev vault instance on PostgreSQL.\n\
         # Relative paths are relative to this file's folder.\n\
         listen = \"127.0.0.1:8443\"\n\
         data_dir = \"data\"\n\
         master_key_file = \"master.key\"\n\
         fingerprint_key_file = \"fingerprint.key\"\n\
         audit_key_file = \"audit.key\"\n\n\
         [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/vault.pem\"\nkey = \"pki/vault.key\"\n\n\
         [storage]\nbackend = \"postgres\"\ndatabase_url_file = {:?}\npool_size = 8\n",
        url_file.display().to_string()
    )
}

/// Copies `from` to `to` (files only, mode kept), unless `to` exists.
fn copy_new(from: &Path, to: &Path) -> Result<(), String> {
    if to.exists() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} → {}: {e}", from.display(), to.display()))
}

/// Vault folders `DATA/vaults/1..=n` on the database, created as the module header says.
pub(super) async fn vault_folders(
    vault_bin: &Path,
    data: &Path,
    db: &Database,
    n: usize,
) -> Result<Vec<PathBuf>, String> {
    let root = data.join("vaults");
    shared::pki::create_private_dir(&root).map_err(|e| e.to_string())?;
    let first = root.join("1");
    let mut dirs = vec![first.clone()];
    if !first.join("vault.toml").exists() {
        shared::pki::create_private_dir(&first).map_err(|e| e.to_string())?;
        shared::pki::write_file(
            &first.join("vault.toml"),
            vault_toml(&db.url_file).as_bytes(),
            0o600,
        )
        .map_err(|e| e.to_string())?;
    }
    vault_init(vault_bin, &first).await?;
    for i in 2..=n {
        let dir = root.join(i.to_string());
        shared::pki::create_private_dir(&dir).map_err(|e| e.to_string())?;
        shared::pki::create_private_dir(&dir.join("pki")).map_err(|e| e.to_string())?;
        for file in ["vault.toml", "master.key", "fingerprint.key", "audit.key"] {
            copy_new(&first.join(file), &dir.join(file))?;
        }
        let pki = std::fs::read_dir(first.join("pki")).map_err(|e| e.to_string())?;
        for entry in pki.flatten() {
            copy_new(&entry.path(), &dir.join("pki").join(entry.file_name()))?;
        }
        vault_init(vault_bin, &dir).await?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// An `accounts-api dev-instance` child and its base URL.
pub(super) struct ApiChild {
    pub child: tokio::process::Child,
    pub url: String,
}

/// Starts accounts-api instance `i` (≥ 2) as `accounts-api dev-instance` on vault `vault_addr`.
pub(super) async fn start_api(
    data: &Path,
    db: &Database,
    i: usize,
    pki: &Path,
    vault_addr: &str,
    public_url: &str,
) -> Result<ApiChild, String> {
    let dir = data.join("instances").join(i.to_string());
    shared::pki::create_private_dir(&dir).map_err(|e| e.to_string())?;
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    let config = format!(
        "# Written by `accounts-api dev --database-url`: accounts-api instance {i}.\n\
         listen = \"127.0.0.1:0\"\ndata = \".\"\npublic_url = \"{public_url}\"\n\n\
         [vault]\naddr = \"{vault_addr}\"\nserver_name = \"localhost\"\n\
         ca = {}\ncert = {}\nkey = {}\n\n\
         [renewals]\ncert = {}\nkey = {}\n\n\
         [database]\nurl_file = {}\n\n\
         # A loopback demo, as the first instance: webhooks may go to loopback receivers.\n\
         [webhooks]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n",
        q(pki.join("ca.pem")),
        q(pki.join("accounts.pem")),
        q(pki.join("accounts.key")),
        q(pki.join("renewals.pem")),
        q(pki.join("renewals.key")),
        q(db.url_file.clone()),
    );
    let path = dir.join("accounts-api.toml");
    shared::pki::write_file(&path, config.as_bytes(), 0o600).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // `dev-instance` is `serve` on dev's lifecycle clock (`STRONGROOM_DEV_CLOCK_FILE`, which
    // the child inherits): the instances' renewal jobs must agree on what time it is.
    let mut child = tokio::process::Command::new(exe)
        .arg("dev-instance")
        .arg("--config")
        .arg(&path)
        // The instance's own settings come from its file, not from ours.
        .env_remove("STRONGROOM_DATABASE_URL")
        .env_remove("STRONGROOM_LISTEN")
        .env_remove("STRONGROOM_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("accounts-api serve (instance {i}): {e}"))?;
    let stdout = child.stdout.take().ok_or("accounts-api stdout")?;
    let url = super::first_line_with(stdout, "ACCOUNTS_API_LISTENING ")
        .await
        .ok_or_else(|| format!("accounts-api instance {i} did not start"))?;
    Ok(ApiChild { child, url })
}

/// Stops a child like Ctrl-C would (SIGTERM), then for good after 10 s.
pub(super) async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status()
            .await;
        if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
