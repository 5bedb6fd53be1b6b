//! Thin entry point: parse arguments, set up logging, hand over to the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "accounts-api",
    about = "FastSpring-compatible accounts and checkout over the Strongroom vault"
)]
struct Cli {
    /// Log lines on stderr: `text` (human, the default) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        env = "STRONGROOM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: shared::ops::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Production entry point: everything from a TOML file (environment overrides).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// An instance i ≥ 2 of `accounts-api dev --database-url URL --instances N`, started by
    /// dev: `serve` plus dev's lifecycle clock (`STRONGROOM_DEV_CLOCK_FILE`), so every instance
    /// of a dev cluster runs on the same time. Hidden: `serve` itself never reads that clock.
    #[command(hide = true)]
    DevInstance {
        #[arg(long)]
        config: PathBuf,
    },
    /// The whole system on embedded defaults: vault init + vault + accounts-api + demo store.
    Dev {
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Run on this PostgreSQL database instead of the embedded sled (postgres://…).
        #[arg(long)]
        database_url: Option<String>,
        /// With --database-url: how many vaults and accounts-api instances to start.
        #[arg(long, default_value_t = 1)]
        instances: usize,
    },
    /// Store (tenant) administration.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Webhooks of a store (works while the server runs, over its admin socket).
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
}

#[derive(clap::Args)]
struct Target {
    /// The store id.
    #[arg(long)]
    store: String,
    #[arg(long, conflicts_with = "config")]
    data: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Adds a webhook URL; prints it as JSON. The HMAC secret, if any, is read from the first
    /// line of standard input with `--secret-stdin` (never from the command line, which other
    /// users can see in the process list).
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        url: String,
        #[arg(long)]
        secret_stdin: bool,
    },
    /// Lists the store's webhooks (never their secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Removes a webhook and its pending deliveries.
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: String,
    },
}

fn data_of(data: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, String> {
    Ok(match (data, config) {
        (Some(d), _) => d,
        (None, Some(c)) => accounts_api::config::Config::data_folder(&c)?,
        (None, None) => PathBuf::from("./data"),
    })
}

async fn webhook(cmd: WebhookCommand) -> Result<(), String> {
    let (target, req) = match cmd {
        WebhookCommand::Add {
            target,
            url,
            secret_stdin,
        } => {
            let mut req = serde_json::json!({"op": "webhook.add", "url": url});
            if secret_stdin {
                let mut line = zeroize::Zeroizing::new(String::new());
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the secret from stdin: {e}"))?;
                req["hmacSecret"] =
                    serde_json::Value::String(line.trim_end_matches(['\r', '\n']).to_owned());
            }
            (target, req)
        }
        WebhookCommand::List { target } => (target, serde_json::json!({"op": "webhook.list"})),
        WebhookCommand::Remove { target, id } => (
            target,
            serde_json::json!({"op": "webhook.remove", "id": id}),
        ),
    };
    let mut req = req;
    req["store"] = serde_json::Value::String(target.store.clone());
    // The rules `webhook add` holds to when no server answers (a running server applies its
    // own): the configuration file's `[webhooks]`, else the environment (strict by default).
    let mut settings = accounts_api::settings::Settings::from_env()?;
    let answer = match (target.data, target.config) {
        (None, Some(c)) => {
            let (data, db, hooks) = accounts_api::config::Config::admin_of(&c)?;
            hooks.apply(&mut settings);
            match db {
                Some(db) => accounts_api::admin::request_in_database(&db, req, &settings).await?,
                None => accounts_api::admin::request(&data, req, &settings).await?,
            }
        }
        (data, config) => {
            accounts_api::admin::request(&data_of(data, config)?, req, &settings).await?
        }
    };
    println!("{answer}");
    Ok(())
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Creates a store and prints `{"store","username","password"}` once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, conflicts_with = "config")]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `serve` (the lifecycle on `clock`: the system clock, except for a dev cluster's instances).
async fn serve(
    config: PathBuf,
    log_format: shared::ops::LogFormat,
    clock: accounts_api::settings::Clock,
) -> Result<(), String> {
    let cfg = accounts_api::config::Config::load(&config)?;
    // Without it, sign-in links would be built from each request's Host header, which the
    // client chooses (`dev` keeps that fallback: it listens on loopback only).
    if cfg.public_url.is_none() {
        return Err(format!(
            "{}: public_url is not set. Sign-in links must not follow the request's Host header \
             (a client could point them anywhere): set public_url = \"https://accounts.example.com\" \
             (the public address of the proxy in front of accounts-api) in the file, or \
             STRONGROOM_PUBLIC_URL",
            config.display()
        ));
    }
    let mut settings = accounts_api::settings::Settings {
        public_url: cfg.public_url.clone(),
        live: cfg.live,
        retention: cfg.retention,
        clock,
        ..accounts_api::settings::Settings::from_env()?
    };
    cfg.webhooks.apply(&mut settings);
    // Bind first: a taken port is the most common start failure and needs no other state.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| listen_error(cfg.listen, &e))?;
    let storage =
        accounts_api::open_storage(&cfg.data, cfg.database.as_ref(), settings.live).await?;
    let state = accounts_api::build_with_storage(
        storage,
        &cfg.data,
        &cfg.vault,
        cfg.renewals.as_ref(),
        settings,
    )?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("ACCOUNTS_API_LISTENING http://{addr}");
    tracing::info!(%addr, "accounts-api listening");
    // The summary asks the vault who we are; it must not delay serving (the vault may start
    // later), so it runs beside the server.
    tokio::spawn(accounts_api::startup::summary(
        std::sync::Arc::clone(&state),
        accounts_api::startup::Facts::of(&cfg, addr),
        log_format,
    ));
    accounts_api::app::run_with(listener, state, cfg.limits, accounts_api::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// "listen 127.0.0.1:8080: address already in use — …": names the address and what to do.
fn listen_error(addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " — another process already listens on this port: stop it or change `listen` \
             (or STRONGROOM_LISTEN)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " — ports below 1024 need privileges: use a higher port behind a proxy"
        }
        std::io::ErrorKind::AddrNotAvailable => " — no interface of this machine has that address",
        _ => "",
    };
    format!("cannot listen on {addr}: {e}{hint}")
}

async fn store_create(
    name: String,
    data: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(), String> {
    let (data, database) = match (data, config) {
        (Some(d), _) => (d, None),
        (None, Some(c)) => accounts_api::config::Config::storage_of(&c)?,
        (None, None) => (PathBuf::from("./data"), None),
    };
    let created = match database {
        // Every instance shares the database: write there, running instances or not.
        Some(db) => accounts_api::admin::create_store_in_database(&db, &name).await?,
        None => accounts_api::admin::create_store_cli(&data, &name).await?,
    };
    println!("{created}");
    Ok(())
}

/// The server commands hold raw payment tokens (checkout) and check API passwords: no core
/// dumps, no ptrace by other processes of the same user (`shared::hardening`), or no start.
fn harden() -> Result<(), String> {
    shared::hardening::disable_core_dumps()
        .map_err(|e| format!("cannot turn core dumps off ({e}); refusing to start"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::tls::install_crypto_provider();
    let cli = Cli::parse();
    accounts_api::init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => match harden() {
            Ok(()) => serve(config, cli.log_format, Default::default()).await,
            Err(e) => Err(e),
        },
        Command::DevInstance { config } => match harden() {
            Ok(()) => {
                let clock = accounts_api::settings::Clock::dev_from_env();
                serve(config, cli.log_format, clock).await
            }
            Err(e) => Err(e),
        },
        Command::Dev {
            data,
            port,
            database_url,
            instances,
        } => match harden() {
            Ok(()) => {
                let database = database_url.map(shared::SecretString::new);
                accounts_api::dev::run(data, port, database, instances).await
            }
            Err(e) => Err(e),
        },
        Command::Store {
            command: StoreCommand::Create { name, data, config },
        } => store_create(name, data, config).await,
        Command::Webhook { command } => webhook(command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In JSON mode the error is one JSON line like every other (log shippers parse
            // stderr line by line); in text mode one plain line.
            match cli.log_format {
                shared::ops::LogFormat::Json => tracing::error!(error = %e, "accounts-api: {e}"),
                shared::ops::LogFormat::Text => eprintln!("accounts-api: {e}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
