//! The commands: `init`, `serve`, `key …`, `audit verify|export|archive`.
//!
//! Output contract: `serve` prints exactly one stdout line, `VAULT_LISTENING <addr>`, once the
//! listener accepts connections; every log line goes to stderr. `init` prints paths, never keys.
//! Exit codes: 0 success; 1 refused or failed (clear message on stderr); 2 `audit verify` found
//! a broken chain, or `audit archive` refused to archive from one.

mod admin;
mod audit;
mod init;

use crate::api::AppState;
use crate::config::{Config, Overrides};
use crate::keys;
use crate::service::Vault;
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
    /// Development: create DIR/vault.toml, a dev PKI under DIR/pki, the master and fingerprint
    /// keys and the data folder bound to them. Production: `--config FILE` (your own config and
    /// PKI) creates only the key files and the data folder. Existing files are kept.
    Init {
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// An operator-written vault.toml whose TLS files are in place.
        #[arg(long)]
        config: Option<PathBuf>,
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
    /// Walk the hash chain across every segment (and archived ones) and check each segment's
    /// signed checkpoint. Works while the vault runs.
    Verify {
        #[arg(long)]
        config: PathBuf,
        /// Also read archived segments from this folder (default: `[audit] archive_dir`).
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Copy closed segments to DIR after verifying the chain, check the copies, mark them
    /// archived; then prune archived ones by `[audit] keep_days` / `max_bytes`. Works while
    /// the vault runs.
    Archive {
        #[arg(long)]
        config: PathBuf,
        /// Archive folder (default: `[audit] archive_dir`).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Write entries as JSON lines (with `prevHash` and `hash`) to stdout, so an external system
    /// can keep and re-verify them. Reads the segment files (works while the vault runs).
    Export {
        #[command(flatten)]
        admin: AdminArgs,
        /// First entry to export: a sequence number (1-based) or an RFC 3339 time.
        #[arg(long, default_value = "1")]
        since: String,
        /// Ask the running vault (`GET /v1/audit/export`, permission `audit`) instead of
        /// opening a stopped vault's data folder; the output is the same.
        #[arg(long)]
        online: bool,
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
    /// Vault address as `host:port` or `ip:port` (default: `listen` from the config).
    #[arg(long)]
    pub addr: Option<String>,
    /// Name checked against the vault's certificate (default: the host of --addr if it is a
    /// name, else the IP).
    #[arg(long)]
    pub server_name: Option<String>,
    /// CA that signed the vault's server certificate (default: the config's `tls.ca`).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Admin client certificate (default: `admin.pem` beside the CA).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
}

pub fn main(cli: Cli) -> ExitCode {
    shared::ops::init_tracing(cli.log_format, "VAULT_LOG");
    let json_logs = matches!(cli.log_format, shared::ops::LogFormat::Json);
    let result = match cli.command {
        Command::Init {
            dir,
            config,
            shares,
            threshold,
        } => {
            let sealed = shares.zip(threshold);
            match (dir, config) {
                (_, Some(c)) => init::init_config(&c, sealed),
                (Some(d), None) => init::init_dir(&d, sealed),
                (None, None) => Err("give --dir or --config".into()),
            }
            .map(|()| ExitCode::SUCCESS)
        }
        Command::Key { command } => admin::key_command(command),
        Command::Audit {
            command:
                AuditCommand::Export {
                    admin,
                    since,
                    online,
                },
        } => {
            if online {
                admin::audit_export_online(&admin, &since)
            } else {
                audit::export(&admin.config, &since)
            }
        }
        Command::Serve { config, listen } => {
            serve(&config, listen.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { config, archive },
        } => audit::verify(&config, archive.as_deref()),
        Command::Audit {
            command: AuditCommand::Archive { config, to },
        } => audit::archive(&config, to.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if json_logs {
                // One JSON object like every other log line, so a journal parser sees it.
                tracing::error!(error = %e, "vault: error");
            } else {
                eprintln!("vault: error: {e}");
            }
            ExitCode::from(1)
        }
    }
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Everything `serve` checks and loads before it listens. Public so tests and the benchmark can
/// run the real server in-process.
pub struct Prepared {
    pub config: Config,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Every certificate in `tls.ca` is a trust anchor for client certificates: a self-signed root
/// next to the Strongroom intermediate would let anything that root ever issued (`CN=admin`
/// included) authenticate. Not refused (a dedicated root CA is legitimate), but said loudly.
fn warn_on_broad_trust(ca: &Path) {
    let Ok(certs) = shared::tls::load_certs(ca) else {
        return;
    };
    if certs.len() < 2 {
        return;
    }
    for der in &certs {
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref())
            && cert.subject() == cert.issuer()
        {
            tracing::warn!(
                ca = %ca.display(),
                root = %cert.subject(),
                "tls.ca holds a self-signed root besides other certificates: every client \
                 certificate that root issued is trusted; trust only the Strongroom intermediate"
            );
        }
    }
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
    warn_on_broad_trust(&config.tls.ca);
    let tls = shared::tls::mtls_server_config(&config.tls)?;
    Ok(Prepared { config, tls })
}

/// Opens the data folder and keys and starts serving on `listener`. Needs a tokio runtime.
pub async fn start(
    prepared: Prepared,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> CliResult<crate::server::Running> {
    if prepared.config.permissions.values().all(Vec::is_empty) {
        tracing::warn!(
            "[permissions] grants nothing: every client identity will be refused (403); \
             name the identities (certificate CNs) and what each may do"
        );
    }
    let vault = Vault::open(&prepared.config, true)?;
    tracing::info!(
        data_dir = %prepared.config.data_dir.display(),
        master_key_versions = ?vault.key_versions(),
        sealed = vault.is_sealed(),
        "keys checked against the data folder"
    );
    let processor = build_processor(&prepared.config.processor)?;
    let state = Arc::new(AppState {
        vault: vault.with_processor(processor),
        permissions: prepared.config.permissions.clone(),
        identities: shared::tls::IdentityCache::default(),
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
