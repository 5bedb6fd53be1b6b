//! Application state and the server loop: the state every handler and job shares, and [`run`],
//! which serves the router of [`crate::http`] wrapped in the operations layer of [`crate::ops`].

use crate::storage::Storage;
use crate::vault::VaultClient;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use crate::http::{MAX_BODY_BYTES, api_routes, router};

/// Number of idempotency lock shards. A request holding a key locks its shard for the duration
/// of the request (including the vault call), so two requests with one key never both execute;
/// two different keys share a shard only by hash collision, which at most serialises them.
const LOCK_SHARDS: usize = 4096;

pub struct AppState {
    /// The one storage object (accounts, orders, events, webhooks, sign-in links, sessions).
    pub storage: Arc<dyn Storage>,
    pub settings: crate::settings::Settings,
    pub vault: VaultClient,
    /// The renewal job's vault client (`renewals` identity); `None`: renewals are off.
    pub renewals: Option<crate::service::renewals::Renewals>,
    /// The admin socket, webhook dispatcher and renewal job: stopped and awaited by [`run`].
    pub background: crate::jobs::Background,
    locks: Vec<Arc<Mutex<()>>>,
    pub(crate) auth: crate::auth::AuthCache,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        storage: Arc<dyn Storage>,
        settings: crate::settings::Settings,
        vault: VaultClient,
    ) -> SharedState {
        Self::build(storage, settings, vault, None)
    }

    /// Like [`AppState::new`], with the renewal job's own vault client.
    pub fn build(
        storage: Arc<dyn Storage>,
        settings: crate::settings::Settings,
        vault: VaultClient,
        renewals: Option<VaultClient>,
    ) -> SharedState {
        let locks = (0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect();
        Arc::new(Self {
            storage,
            settings,
            vault,
            renewals: renewals.map(crate::service::renewals::Renewals::new),
            background: crate::jobs::Background::default(),
            locks,
            auth: crate::auth::AuthCache::default(),
        })
    }

    /// The in-process lock of one Idempotency-Key (a shard of [`LOCK_SHARDS`]): a retry in this
    /// process waits for the first attempt's answer instead of seeing its claim.
    pub(crate) async fn idempotency_lock(&self, store: &str, key: &str) -> OwnedMutexGuard<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (store, key).hash(&mut h);
        let shard = (h.finish() as usize) % self.locks.len();
        Arc::clone(&self.locks[shard]).lock_owned().await
    }
}

/// Most simultaneous client connections; beyond it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// A client must finish sending request headers within this time (also bounds idle keep-alive),
/// so slow or silent connections cannot pin resources.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the service (API router plus the operations layer of [`crate::ops`]) on an
/// already-bound listener until `shutdown` resolves, then drains in-flight requests for up to
/// 10 s. Default limits.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, state, crate::ops::Limits::default(), shutdown).await
}

/// [`run`] with the configured limits (connection cap, header-read timeout, header count and
/// head size → 431). The peer address reaches handlers as `ConnectInfo<SocketAddr>` (the
/// per-address auth limit uses it).
pub async fn run_with(
    listener: tokio::net::TcpListener,
    state: SharedState,
    limits: crate::ops::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    // A trusted proxy carries every client's connections: the per-address cap is not for it.
    let proxies = limits.client_address.clone();
    let acceptor = shared::net::CappedNoDelay::new(
        shared::net::Admission::new(
            "api",
            limits.max_connections.max(1),
            limits.max_connections_per_address,
            crate::ops::metrics(),
        )
        .exempting(move |ip| proxies.trusts(ip)),
    );
    let mut server = axum_server::from_tcp(listener.into_std()?)?
        .acceptor(acceptor)
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(std::time::Duration::from_secs(
            limits.header_read_timeout_secs.max(1),
        )))
        .max_headers(limits.max_headers.max(1))
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let server = server.http1_only();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    let app = crate::ops::service_router(Arc::clone(&state), limits);
    let served = server
        .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .await;
    // Requests are drained: now the background tasks finish their unit of work and end.
    state.background.stop().await;
    served
}
