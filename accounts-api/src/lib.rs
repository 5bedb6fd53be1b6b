//! accounts-api: the merchant-facing, FastSpring-compatible account and checkout service.
//!
//! `main` only parses arguments; [`build`] opens storage, the vault client and the admin socket,
//! and [`app::run`] serves a bound listener until a shutdown future resolves, so tests and the
//! benchmark run the real server on port 0.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod dev;
pub mod error;
pub mod eventstore;
pub mod iso;
pub mod model;
pub mod routes;
pub mod settings;
pub mod storage;
pub mod vault;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;

/// Opens the data folder (`data/accounts`), connects the vault client, and starts the admin
/// socket. Must run inside a tokio runtime.
pub fn build(data: &Path, vault: &vault::VaultConfig) -> Result<app::SharedState, String> {
    let dir = config::accounts_dir(data);
    admin::private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let sled = Arc::new(
        storage::SledStorage::open(&dir.join("db"))
            .map_err(|e| format!("cannot open the database: {e}"))?,
    );
    let storage: Arc<dyn storage::Storage> = sled.clone();
    let events: Arc<dyn eventstore::EventStore> = sled;
    let client = vault::VaultClient::new(vault)?;
    admin::serve(&dir, Arc::clone(&storage), Arc::clone(&events))
        .map_err(|e| format!("admin socket: {e}"))?;
    let settings = settings::Settings::from_env();
    webhooks::spawn_dispatcher(Arc::clone(&events), settings.clone())?;
    Ok(app::AppState::new(storage, events, settings, client))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Logs go to stderr (stdout carries the readiness line). `RUST_LOG` overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
