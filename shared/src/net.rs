//! The accepted-connection wrapper both services' listeners use (the vault's mTLS listener
//! under its TLS acceptor, the accounts-api's plain-HTTP listener directly). It lives here
//! because both need exactly the same two things on every accepted TCP connection:
//!
//! - TCP_NODELAY: without it small keep-alive answers wait on delayed ACK and new connections
//!   stall ~40 ms (RUST-NOTES trap 3);
//! - a cap on simultaneous connections: one semaphore permit per connection, held for the
//!   connection's lifetime and released when it closes. Over the cap, the new connection is
//!   closed immediately rather than queued.

use axum_server::accept::Accept;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An `axum_server` acceptor that sets TCP_NODELAY and enforces the connection cap.
#[derive(Clone)]
pub struct CappedNoDelay {
    permits: Arc<Semaphore>,
}

impl CappedNoDelay {
    /// At most `max` simultaneous connections (`0` refuses every connection).
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
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
                tracing::warn!("connection cap reached; closing a new connection");
                Err(io::Error::other("connection cap reached"))
            }
        };
        std::future::ready(result)
    }
}
