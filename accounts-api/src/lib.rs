//! accounts-api: the merchant-facing, FastSpring-compatible account and checkout service.
//!
//! `main` only parses arguments; [`build`] opens storage, the vault client and the admin socket,
//! and [`app::run`] serves a bound listener until a shutdown future resolves, so tests and the
//! benchmark run the real server on port 0.

pub mod admin;
pub mod app;
mod auth;
mod cidr;
pub mod config;
pub mod dev;
mod domain;
mod http;
/// The one error mapping (FastSpring's envelope), at its short path.
use http::error;
mod iso;
mod jobs;
pub mod model;
mod openapi;
mod ops;
mod pacing;
mod pages;
pub mod service;

pub mod egress;
pub mod settings;
pub mod startup;
pub mod storage;
pub mod vault;

/// Raw-bytes entry points of the fuzz targets (`accounts-api/fuzz`); not API.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::http::requests::parse_account;
    pub use crate::http::routes::orders::parse_checkout_bytes;
}

use std::path::Path;
use std::sync::Arc;

/// Opens the data folder (`data/accounts`), connects the vault client, and starts the admin
/// socket. Must run inside a tokio runtime.
pub fn build(data: &Path, vault: &vault::VaultConfig) -> Result<app::SharedState, String> {
    build_with_renewals(data, vault, None)
}

/// [`build`] plus the renewal job: its own vault client (the `renewals` certificate) and, when
/// `interval` is given, a periodic run (the first at once, resuming interrupted charges).
/// Tunables come from the environment ([`settings::Settings::from_env`]).
pub fn build_with_renewals(
    data: &Path,
    vault: &vault::VaultConfig,
    renewals: Option<&config::RenewalsConfig>,
) -> Result<app::SharedState, String> {
    build_with_settings(data, vault, renewals, settings::Settings::from_env()?)
}

/// [`build_with_renewals`] with explicit settings, on the embedded sled database under
/// `data/accounts`.
pub fn build_with_settings(
    data: &Path,
    vault: &vault::VaultConfig,
    renewals: Option<&config::RenewalsConfig>,
    settings: settings::Settings,
) -> Result<app::SharedState, String> {
    let storage = open_sled(data, settings.live)?;
    build_with_storage(storage, data, vault, renewals, settings)
}

/// The embedded sled database under `data/accounts`.
fn open_sled(data: &Path, live: bool) -> Result<Arc<dyn storage::Storage>, String> {
    let dir = config::accounts_dir(data);
    admin::private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(Arc::new(
        storage::SledStorage::open(&dir.join("db"))
            .map_err(|e| format!("cannot open the database: {e}"))?
            .with_live(live),
    ))
}

/// The configured database: PostgreSQL when `database` is given (connects, checks durability,
/// migrates), else the embedded sled under `data/accounts`.
pub async fn open_storage(
    data: &Path,
    database: Option<&shared::pg::PgSettings>,
    live: bool,
) -> Result<Arc<dyn storage::Storage>, String> {
    match database {
        None => open_sled(data, live),
        Some(db) => Ok(Arc::new(
            storage::PgStorage::open(db)
                .await
                .map_err(|e| format!("cannot open the database: {e}"))?
                .with_live(live),
        )),
    }
}

/// Builds the service on an opened `storage` (see [`open_storage`]): the vault clients, the
/// admin socket under `data/accounts`, the webhook dispatcher, the retention sweeper and, when `renewals` has an
/// interval, the periodic renewal job.
pub fn build_with_storage(
    storage: Arc<dyn storage::Storage>,
    data: &Path,
    vault: &vault::VaultConfig,
    renewals: Option<&config::RenewalsConfig>,
    settings: settings::Settings,
) -> Result<app::SharedState, String> {
    let dir = config::accounts_dir(data);
    admin::private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The client identities first: a key file others can read refuses the start before any
    // background work begins.
    let client = vault::VaultClient::new(vault)?;
    let renewals_client = match renewals {
        Some(r) => Some(vault::VaultClient::renewals(vault, r)?),
        None => None,
    };
    let admin = admin::bind(&dir).map_err(|e| format!("admin socket: {e}"))?;
    let http = jobs::webhooks::client(&settings)?;
    let warm = client.clone();
    let state = app::AppState::build(
        Arc::clone(&storage),
        settings.clone(),
        client,
        renewals_client,
    );
    // Every background task takes the stop signal and is awaited when `app::run` ends.
    let bg = &state.background;
    bg.spawn(admin::serve(
        admin,
        Arc::clone(&storage),
        settings.clone(),
        bg.shutdown(),
    ));
    bg.spawn(jobs::warm::keep_warm(warm, bg.shutdown()));
    bg.spawn(jobs::retention::run(
        Arc::clone(&storage),
        settings.clock.clone(),
        settings.retention,
        bg.shutdown(),
    ));
    bg.spawn(jobs::webhooks::dispatch(
        storage,
        http,
        settings,
        bg.shutdown(),
    ));
    if let Some(interval) = renewals.and_then(|r| r.interval) {
        bg.spawn(jobs::renewals::periodic(
            Arc::clone(&state),
            interval,
            bg.shutdown(),
        ));
    }
    Ok(state)
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
pub fn init_tracing(format: shared::ops::LogFormat) {
    shared::ops::init_tracing(format, "RUST_LOG");
}
