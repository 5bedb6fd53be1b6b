//! The mTLS listener: rustls requiring a client certificate from the configured CA, a TLS
//! handshake timeout, TCP_NODELAY, a connection cap, and hyper's header-read timeout.
//!
//! There is no plaintext listener and no switch to make client certificates optional.
//! `run` takes an already-bound listener and a shutdown future and returns once the server
//! accepts connections, reporting its address — `main` prints it, tests connect to it.

use crate::api::{self, AppState};
use crate::config::Limits;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use shared::net::CappedNoDelay;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<io::Result<()>>,
}

/// Serves the API on `listener` until `shutdown` resolves (then drains for up to 5 s).
pub async fn run(
    state: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<Running> {
    let app = api::app(state, limits);
    let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(tls))
        .handshake_timeout(Duration::from_secs(limits.handshake_timeout_secs))
        .acceptor(CappedNoDelay::new(limits.max_connections));
    let handle = axum_server::Handle::new();
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(Duration::from_secs(limits.header_read_timeout_secs)))
        .max_headers(limits.max_headers.max(1))
        .max_buf_size(limits.max_header_bytes.max(8192));
    let server = server.http1_only();
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_handle.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let task = tokio::spawn(server.serve(app.into_make_service()));
    let addr = handle
        .listening()
        .await
        .ok_or_else(|| io::Error::other("server failed to start listening"))?;
    Ok(Running { addr, task })
}
