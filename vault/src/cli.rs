//! The three commands: `init`, `serve`, `audit verify`.
//!
//! Output contract: `serve` prints exactly one stdout line, `VAULT_LISTENING <addr>`, once the
//! listener accepts connections; every log line goes to stderr. `init` prints paths, never keys.
//! Exit codes: 0 success; 1 refused or failed (clear message on stderr); 2 `audit verify` found
//! a broken chain.

use crate::api::AppState;
use crate::config::{Config, FileConfig, Overrides};
use crate::core::VaultCore;
use crate::keys;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "vault", about = "Strongroom payment-token vault (mTLS only)")]
pub struct Cli {
    /// Log lines on stderr: `text` (human, the default) or `json` (one object per line).
    #[arg(long, global = true, env = "VAULT_LOG_FORMAT", default_value = "text")]
    pub log_format: shared::ops::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create DIR/vault.toml, a dev PKI under DIR/pki, and the master and fingerprint keys.
    /// Existing files are kept.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Sealed start (split knowledge): split the master key's root into this many Shamir
        /// shares, printed once as `SHARE <text>` lines; the key is never on disk in one piece.
        #[arg(long, requires = "threshold")]
        shares: Option<u8>,
        /// How many shares unseal the vault (2..=shares).
        #[arg(long, requires = "shares")]
        threshold: Option<u8>,
    },
    /// Master-key lifecycle, through the running vault's admin API.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Run the vault.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Listen address (overrides VAULT_LISTEN and the file); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Audit log commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain. Run it on a stopped vault: sled locks its data folder.
    Verify {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write entries as JSON lines (with `prevHash` and `hash`) to stdout, so an external system
    /// can keep and re-verify them. Run it on a stopped vault.
    Export {
        #[arg(long)]
        config: PathBuf,
        /// First entry to export: a sequence number (1-based) or an RFC 3339 time.
        #[arg(long, default_value = "1")]
        since: String,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// `POST /v1/admin/keys/rotate` on the running vault (the vault holds sled's lock).
    Rotate(AdminArgs),
    /// `GET /v1/admin/keys`.
    Status(AdminArgs),
    /// `POST /v1/admin/fingerprint-key/rotate` (re-index runs in the background).
    RotateFingerprint(AdminArgs),
    /// `POST /v1/admin/keys/retire {"below": N}`.
    Retire {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        below: u32,
    },
}

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The vault's config (for its CA); the admin client certificate defaults to
    /// `admin.pem` / `admin.key` beside the CA.
    #[arg(long)]
    pub config: PathBuf,
    /// Vault address, e.g. `127.0.0.1:8443` (default: `listen` from the config).
    #[arg(long)]
    pub addr: Option<String>,
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
}

pub fn main(cli: Cli) -> ExitCode {
    shared::ops::init_tracing(cli.log_format, "VAULT_LOG");
    let result = match cli.command {
        Command::Init {
            dir,
            shares,
            threshold,
        } => match (shares, threshold) {
            (Some(n), Some(k)) => init_sealed(&dir, n, k).map(|()| ExitCode::SUCCESS),
            _ => init(&dir).map(|()| ExitCode::SUCCESS),
        },
        Command::Key { command } => key_command(command),
        Command::Audit {
            command: AuditCommand::Export { config, since },
        } => audit_export(&config, &since),
        Command::Serve { config, listen } => {
            serve(&config, listen.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => audit_verify(&config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vault: error: {e}");
            ExitCode::from(1)
        }
    }
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

/// `vault init --dir DIR`: idempotent; never overwrites a key, certificate or config.
pub fn init(dir: &Path) -> CliResult<()> {
    shared::pki::create_private_dir(dir)?;
    let dir = std::path::absolute(dir)?;
    let config_path = dir.join("vault.toml");
    let defaults = FileConfig::defaults();
    let status = |created: bool| if created { "created" } else { "kept" };
    let config_created = if config_path.exists() {
        false
    } else {
        shared::pki::write_file(&config_path, defaults.to_toml()?.as_bytes(), 0o600)?;
        true
    };
    let pki_dir = dir.join("pki");
    let pki_created = shared::pki::ensure_dev_pki(&pki_dir)?;
    let master = dir.join(&defaults.master_key_file);
    // Re-running plain `init` on a sealed vault folder must not add an unused clear key.
    let sealed_folder = dir.join("master.sealed").exists();
    let master_created = !sealed_folder && keys::ensure_master_file(&master)?;
    let fp = dir.join(&defaults.fingerprint_key_file);
    let fp_created = keys::ensure_fingerprint_file(&fp)?;
    println!(
        "config: {} ({})",
        config_path.display(),
        status(config_created)
    );
    println!("pki: {} ({})", pki_dir.display(), status(pki_created));
    println!(
        "master key: {} ({})",
        master.display(),
        status(master_created)
    );
    println!("fingerprint key: {} ({})", fp.display(), status(fp_created));
    println!("data: {}", dir.join(&defaults.data_dir).display());
    println!("start with: vault serve --config {}", config_path.display());
    Ok(())
}

/// `vault init --dir DIR --shares N --threshold K`: like `init`, but the master key is a sealed
/// file (`master.sealed`) whose root key exists only as the N shares printed here, once.
pub fn init_sealed(dir: &Path, shares: u8, threshold: u8) -> CliResult<()> {
    shared::pki::create_private_dir(dir)?;
    let dir = std::path::absolute(dir)?;
    let config_path = dir.join("vault.toml");
    if config_path.exists() {
        return Err(format!(
            "{} exists; sealed mode is chosen at first init (refusing to change an existing vault)",
            config_path.display()
        )
        .into());
    }
    let mut defaults = FileConfig::defaults();
    defaults.master_key_file = "master.sealed".into();
    let sealed_path = dir.join(&defaults.master_key_file);
    let texts = keys::create_sealed_master_file(&sealed_path, shares, threshold)?;
    shared::pki::write_file(&config_path, defaults.to_toml()?.as_bytes(), 0o600)?;
    let pki_dir = dir.join("pki");
    shared::pki::ensure_dev_pki(&pki_dir)?;
    let fp = dir.join(&defaults.fingerprint_key_file);
    keys::ensure_fingerprint_file(&fp)?;
    println!("config: {} (created)", config_path.display());
    println!("pki: {}", pki_dir.display());
    println!(
        "sealed master key: {} (threshold {threshold} of {shares})",
        sealed_path.display()
    );
    println!("fingerprint key: {}", fp.display());
    println!("data: {}", dir.join(&defaults.data_dir).display());
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
    drop(texts);
    println!(
        "start with: vault serve --config {} (it starts sealed)",
        config_path.display()
    );
    Ok(())
}

/// Runs an admin request against the running vault and prints the JSON answer.
fn key_command(command: KeyCommand) -> CliResult<ExitCode> {
    let (args, method, path, body) = match command {
        KeyCommand::Rotate(a) => (a, "POST", "/v1/admin/keys/rotate", None),
        KeyCommand::Status(a) => (a, "GET", "/v1/admin/keys", None),
        KeyCommand::RotateFingerprint(a) => (a, "POST", "/v1/admin/fingerprint-key/rotate", None),
        KeyCommand::Retire { admin, below } => (
            admin,
            "POST",
            "/v1/admin/keys/retire",
            Some(serde_json::json!({ "below": below })),
        ),
    };
    shared::tls::install_crypto_provider();
    let config = Config::load(&args.config, Overrides::from_env(), args.addr.as_deref())?;
    let ca_dir = config
        .tls
        .ca
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let files = shared::tls::TlsFiles {
        ca: config.tls.ca.clone(),
        cert: args.cert.unwrap_or_else(|| ca_dir.join("admin.pem")),
        key: args.key.unwrap_or_else(|| ca_dir.join("admin.key")),
    };
    let tls = shared::tls::mtls_client_config(&files)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    // The server certificate is issued for localhost / 127.0.0.1.
    let url = format!("https://{}{path}", config.listen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let req = match method {
            "GET" => client.get(&url),
            _ => client.post(&url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        println!("{text}");
        Ok(if status.is_success() {
            ExitCode::SUCCESS
        } else {
            eprintln!("vault: {method} {path} answered {status}");
            ExitCode::from(1)
        })
    })
}

/// `vault audit export --config FILE --since <seq | RFC 3339>`: JSON lines on stdout.
fn audit_export(config_path: &Path, since: &str) -> CliResult<ExitCode> {
    enum Since {
        Seq(u64),
        Time(time::OffsetDateTime),
    }
    let since = match since.parse::<u64>() {
        Ok(n) => Since::Seq(n),
        Err(_) => Since::Time(
            time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
                .map_err(|_| "--since must be a sequence number or an RFC 3339 time")?,
        ),
    };
    let config = Config::load(config_path, Overrides::from_env(), None)?;
    if !config.data_dir.is_dir() {
        return Err(format!("data folder {} does not exist", config.data_dir.display()).into());
    }
    let db = crate::store::open_db(
        &config.data_dir,
        config.storage.cache_capacity_bytes,
        config.storage.flush_every_ms,
    )?;
    let tree = db.open_tree("audit")?;
    let start = match since {
        Since::Seq(n) => n.max(1),
        Since::Time(t) => {
            // Entries are appended in time order: the first at or after `t` starts the export.
            let mut first = None;
            for item in tree.iter() {
                let (_, v) = item?;
                let e = crate::audit::AuditEntry::decode(&v)?;
                let at = time::OffsetDateTime::parse(
                    &e.time,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| format!("audit entry {} has an unreadable time", e.seq))?;
                if at >= t {
                    first = Some(e.seq);
                    break;
                }
            }
            match first {
                Some(s) => s,
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    };
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0u64;
    for item in tree.range(crate::audit::key(start)..) {
        let (_, v) = item?;
        // Decoded and re-encoded: a damaged entry stops the export with a clear error.
        let e = crate::audit::AuditEntry::decode(&v)?;
        serde_json::to_writer(&mut out, &e)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    eprintln!("exported {n} audit entries from seq {start}");
    Ok(ExitCode::SUCCESS)
}

/// Everything `serve` checks and loads before it listens. Public so tests and the benchmark can
/// run the real server in-process.
pub struct Prepared {
    pub config: Config,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Loads the config and TLS material, refusing missing TLS files or group/other-readable keys.
pub fn prepare(config_path: &Path, listen: Option<&str>) -> CliResult<Prepared> {
    shared::tls::install_crypto_provider();
    let config = Config::load(config_path, Overrides::from_env(), listen)?;
    for (what, p) in [
        ("TLS CA", &config.tls.ca),
        ("TLS certificate", &config.tls.cert),
        ("TLS key", &config.tls.key),
    ] {
        if !p.exists() {
            return Err(format!(
                "{what} {} is missing; refusing to start without TLS material",
                p.display()
            )
            .into());
        }
    }
    keys::check_owner_only(&config.tls.key)?;
    let tls = shared::tls::mtls_server_config(&config.tls)?;
    Ok(Prepared { config, tls })
}

/// Opens the data folder and keys and starts serving on `listener`. Needs a tokio runtime.
pub async fn start(
    prepared: Prepared,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> CliResult<crate::server::Running> {
    let core = VaultCore::open(&prepared.config, true)?;
    let processor = build_processor(&prepared.config.processor)?;
    let state = Arc::new(AppState {
        core,
        permissions: prepared.config.permissions.clone(),
        processor,
        charge_locks: Default::default(),
    });
    // A restart in the middle of a re-wrap or fingerprint re-index picks it up again.
    crate::api::admin_keys::resume_background(&state);
    Ok(crate::server::run(
        state,
        prepared.tls,
        &prepared.config.limits,
        listener,
        shutdown,
    )
    .await?)
}

/// The processor connector from `[processor]`: `None` without a base URL (charging off). The
/// secret key comes from the environment or an owner-only file, and is held as a secret.
fn build_processor(
    settings: &crate::config::ProcessorSettings,
) -> CliResult<Option<Arc<dyn crate::processor::Processor>>> {
    let Some(url) = &settings.base_url else {
        tracing::info!("no [processor] base_url: the charge route answers 503");
        return Ok(None);
    };
    let key = match &settings.secret_key {
        crate::config::KeySource::Env(v) => shared::SecretString::new(v.as_str().to_owned()),
        crate::config::KeySource::File(p) => {
            if !p.exists() {
                return Err(format!(
                    "processor secret key file {} is missing (or set VAULT_PROCESSOR_SECRET_KEY)",
                    p.display()
                )
                .into());
            }
            keys::check_owner_only(p)?;
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(p)?);
            shared::SecretString::new(text.trim().to_owned())
        }
    };
    if key.expose_secret().is_empty() {
        return Err("the processor secret key is empty".into());
    }
    let connector = crate::processor::StripeConnector::new(url, key, settings.timeout)?;
    tracing::info!(processor = %url, "processor connector configured");
    Ok(Some(Arc::new(connector)))
}

fn serve(config_path: &Path, listen: Option<&str>) -> CliResult<()> {
    crate::hardening::cap_malloc_arenas()?;
    crate::hardening::disable_core_dumps()
        .map_err(|e| format!("cannot turn core dumps off: {e}"))?;
    let prepared = prepare(config_path, listen)?;
    let listener = std::net::TcpListener::bind(prepared.config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", prepared.config.listen))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = start(prepared, listener, shutdown_signal()).await?;
        tracing::info!(addr = %running.addr, "vault listening (mTLS)");
        println!("VAULT_LISTENING {}", running.addr);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        running.task.await??;
        tracing::info!("vault stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `vault audit verify --config FILE`.
fn audit_verify(config_path: &Path) -> CliResult<ExitCode> {
    let config = Config::load(config_path, Overrides::from_env(), None)?;
    if !config.data_dir.is_dir() {
        return Err(format!("data folder {} does not exist", config.data_dir.display()).into());
    }
    let db = crate::store::open_db(
        &config.data_dir,
        config.storage.cache_capacity_bytes,
        config.storage.flush_every_ms,
    )?;
    match crate::store::verify_audit_db(&db)? {
        crate::audit::Verdict::Ok { entries } => {
            println!("audit chain: {entries} entries ok");
            Ok(ExitCode::SUCCESS)
        }
        crate::audit::Verdict::Broken { position, reason } => {
            println!("audit chain BROKEN at entry {position}: {reason}");
            Ok(ExitCode::from(2))
        }
    }
}
