//! Thin entry point: parse arguments, set up logging, hand over to the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "accounts-api",
    about = "FastSpring-compatible accounts and checkout over the Strongroom vault"
)]
struct Cli {
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
    /// The whole system on embedded defaults: vault init + vault + accounts-api + demo store.
    Dev {
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Store (tenant) administration.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
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

async fn serve(config: PathBuf) -> Result<(), String> {
    let cfg = accounts_api::config::Config::load(&config)?;
    let state = accounts_api::build(&cfg.data, &cfg.vault)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("ACCOUNTS_API_LISTENING http://{addr}");
    tracing::info!(%addr, "accounts-api listening");
    accounts_api::app::run(listener, state, accounts_api::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn store_create(
    name: String,
    data: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(), String> {
    let data = match (data, config) {
        (Some(d), _) => d,
        (None, Some(c)) => accounts_api::config::Config::data_folder(&c)?,
        (None, None) => PathBuf::from("./data"),
    };
    let created = accounts_api::admin::create_store_cli(&data, &name).await?;
    println!("{created}");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::tls::install_crypto_provider();
    accounts_api::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Dev { data, port } => accounts_api::dev::run(data, port).await,
        Command::Store {
            command: StoreCommand::Create { name, data, config },
        } => store_create(name, data, config).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accounts-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
