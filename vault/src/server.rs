//! The mTLS listener: rustls requiring a client certificate from the configured CA, a TLS
//! handshake timeout, TCP_NODELAY, connection caps, and hyper's header-read timeout.
//!
//! Connections are admitted in two stages ([`Gated`]): during its TLS handshake a connection
//! holds a slot of a small handshake admission (`max_handshakes`, at most
//! `max_handshakes_per_address` from one address, bounded in time by the handshake timeout);
//! once the client certificate is verified it moves to a slot of the established cap
//! (`max_connections`). A client without a certificate from our CA never holds an established
//! slot, so idle or slow unauthenticated connections cannot lock accounts-api out.
//!
//! There is no plaintext listener and no switch to make client certificates optional.
//! Failed handshakes are logged at WARN with the rustls reason (unknown CA, expired, no
//! certificate, the client refusing our certificate …) and counted in
//! `vault_tls_handshake_failures_total{reason}`: without this a client with the wrong CA or
//! certificate sees "connection reset" and the vault's log says nothing.
//! `run` takes an already-bound listener and a shutdown future and returns once the server
//! accepts connections, reporting its address — `main` prints it, tests connect to it.

use crate::api::{self, AppState};
use crate::config::Limits;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use shared::net::{Admission, Held};
use shared::tls::TlsProblem;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Wraps the TLS acceptor: logs and counts every handshake that fails.
#[derive(Clone)]
struct LoggedHandshake<A>(A);

/// The inner accept future, watched for its error (boxed: no pin projection needed).
struct Watched<F> {
    inner: Pin<Box<F>>,
    peer: Option<SocketAddr>,
}

impl<F, T> Future for Watched<F>
where
    F: Future<Output = io::Result<T>>,
{
    type Output = io::Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let peer = self.peer;
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(Err(e)) => {
                handshake_failed(peer, &e);
                Poll::Ready(Err(e))
            }
            other => other,
        }
    }
}

impl<A, S> Accept<TcpStream, S> for LoggedHandshake<A>
where
    A: Accept<TcpStream, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Watched<A::Future>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        Watched {
            inner: Box::pin(self.0.accept(stream, service)),
            peer,
        }
    }
}

/// One failed accept: a rustls refusal is a WARN with its reason (an operator can act on it); a
/// handshake timeout is INFO; a connection closed before any handshake (port probes) or refused
/// by the connection cap (already logged there) is DEBUG. Refusals and timeouts are counted.
fn handshake_failed(peer: Option<SocketAddr>, e: &io::Error) {
    let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    if let Some(problem) = TlsProblem::find(e) {
        let reason = problem.reason();
        crate::api::ops::metrics().inc("tls_handshake_failures_total", &[("reason", reason)]);
        let what = match problem {
            TlsProblem::UnknownIssuer => {
                "client certificate rejected: unknown CA (not issued by the vault's [tls] ca)"
            }
            TlsProblem::Expired => "client certificate rejected: expired or not yet valid",
            TlsProblem::NoCertificate => "client certificate rejected: no certificate presented",
            TlsProblem::BadCertificate => {
                "client certificate rejected: unusable (bad signature or encoding, or no \
                 ClientAuth usage)"
            }
            TlsProblem::NameMismatch => "client certificate rejected: name mismatch",
            TlsProblem::PeerRejected(_) => {
                "the client refused the vault's certificate (wrong CA or server name on the \
                 client side?)"
            }
            TlsProblem::Protocol => "TLS protocol failure",
        };
        let detail = shared::tls::find_rustls(e).map(ToString::to_string);
        tracing::warn!(%peer, reason, detail, "TLS handshake failed: {what} ({problem})");
    } else if e.kind() == io::ErrorKind::TimedOut {
        crate::api::ops::metrics().inc("tls_handshake_failures_total", &[("reason", "timeout")]);
        tracing::info!(%peer, reason = "timeout", "TLS handshake timed out");
    } else {
        tracing::debug!(%peer, kind = ?e.kind(), "connection closed before a TLS session");
    }
}

/// TCP_NODELAY on an accepted connection (the TLS acceptor's inner stage).
#[derive(Clone, Copy)]
struct NoDelay;

impl<S> Accept<TcpStream, S> for NoDelay {
    type Stream = TcpStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(TcpStream, S)>>;
    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(stream.set_nodelay(true).map(|()| (stream, service)))
    }
}

/// The two-stage admission around the TLS acceptor (module doc).
#[derive(Clone)]
struct Gated<A> {
    tls: A,
    handshakes: Admission,
    established: Admission,
}

type Admitting<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl<A, S> Accept<TcpStream, S> for Gated<A>
where
    A: Accept<TcpStream, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = Admitting<(Held<A::Stream>, A::Service)>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = shared::net::peer_ip(&stream);
        let handshake = match self.handshakes.admit(peer) {
            Ok(slot) => slot,
            Err(why) => {
                let e = io::Error::other(format!("connection refused ({})", why.reason()));
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        let established = self.established.clone();
        let tls = self.tls.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = tls.await?;
            drop(handshake);
            let slot = established.admit(peer).map_err(|why| {
                io::Error::other(format!("connection refused ({})", why.reason()))
            })?;
            Ok((Held::new(stream, slot), service))
        })
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
    let metrics = crate::api::ops::metrics();
    let acceptor = LoggedHandshake(Gated {
        tls: RustlsAcceptor::new(RustlsConfig::from_config(tls))
            .handshake_timeout(Duration::from_secs(limits.handshake_timeout_secs))
            .acceptor(NoDelay),
        handshakes: Admission::new(
            "handshake",
            limits.max_handshakes,
            limits.max_handshakes_per_address,
            metrics,
        ),
        established: Admission::new("established", limits.max_connections, 0, metrics),
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
