//! The mTLS listener: rustls requiring a client certificate from the configured CA, a TLS
//! handshake timeout, TCP_NODELAY, a connection cap, and hyper's header-read timeout.
//!
//! There is no plaintext listener and no switch to make client certificates optional.
//! `run` takes an already-bound listener and a shutdown future and returns once the server
//! accepts connections, reporting its address — `main` prints it, tests connect to it.

use crate::api::{self, AppState};
use crate::config::Limits;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sets TCP_NODELAY (without it every new connection stalls ~40 ms on delayed ACK, RUST-NOTES
/// trap 3) and holds one permit of the connection cap for the connection's lifetime. Over the
/// cap, the connection is closed immediately rather than queued.
#[derive(Clone)]
struct CappedNoDelay {
    permits: Arc<Semaphore>,
}

/// A TCP stream that returns its connection-cap permit when dropped.
pub struct CappedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> Accept<TcpStream, S> for CappedNoDelay {
    type Stream = CappedStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(CappedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let result = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => stream.set_nodelay(true).map(|()| {
                (
                    CappedStream {
                        inner: stream,
                        _permit: permit,
                    },
                    service,
                )
            }),
            Err(_) => {
                tracing::warn!("connection cap reached; closing new connection");
                Err(io::Error::other("connection cap reached"))
            }
        };
        std::future::ready(result)
    }
}

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
        .acceptor(CappedNoDelay {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
        });
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
