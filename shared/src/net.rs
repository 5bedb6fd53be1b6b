//! Admission of accepted connections, for both services' listeners (the vault's mTLS listener
//! around its TLS acceptor, the accounts-api's plain-HTTP listener directly). Every accepted TCP
//! connection gets:
//!
//! - TCP_NODELAY: without it small keep-alive answers wait on delayed ACK and new connections
//!   stall ~40 ms (RUST-NOTES trap 3);
//! - an [`Admission`]: a global cap on simultaneous connections and a lower cap per client
//!   address (IPv6 addresses counted by their /64, IPv4-mapped IPv6 as the IPv4 address), so one
//!   address cannot take every slot. Over either cap the new connection is closed at once rather
//!   than queued. The slot is held for the connection's life ([`Admitted`]) and released when it
//!   closes.
//!
//! Refusals are counted in `connections_refused_total{listener, reason}` and logged at WARN at
//! most once per [`REFUSAL_LOG_EVERY`] with the number refused since the last line: a flood of
//! refused connections must not become a flood of log lines (one test of the old per-refusal line
//! wrote 220k lines).
//!
//! The vault uses two admissions: one for connections still in their TLS handshake (small, with a
//! tight per-address cap and the handshake timeout) and one for established, authenticated
//! connections. An unauthenticated client can then only ever fill the first (see
//! `vault/src/server.rs`).

use crate::ops::Metrics;
use axum_server::accept::Accept;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most one WARN line about refused connections per listener per this interval.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The key a client address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by /64
/// (one host usually owns a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot of the listener is taken.
    Full,
    /// The client's address holds all the slots one address may hold.
    PerAddress,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "cap",
            Refused::PerAddress => "per_address",
        }
    }
}

/// Caps of one listener (or one stage of it): `total` simultaneous connections, at most
/// `per_address` of them from one address (`0`: no per-address cap).
pub struct Admission {
    listener: &'static str,
    permits: Arc<Semaphore>,
    per_address: usize,
    /// Addresses the per-address cap does not apply to (trusted proxies).
    exempt: Option<Exempt>,
    held: PerAddress,
    metrics: &'static Metrics,
    log: Arc<RefusalLog>,
}

impl Clone for Admission {
    fn clone(&self) -> Self {
        Self {
            listener: self.listener,
            permits: Arc::clone(&self.permits),
            per_address: self.per_address,
            exempt: self.exempt.clone(),
            held: Arc::clone(&self.held),
            metrics: self.metrics,
            log: Arc::clone(&self.log),
        }
    }
}

/// Which peers the per-address cap skips.
type Exempt = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Connections held per address key.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A connection's slot; dropping it frees the slot.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    address: Option<(IpAddr, PerAddress)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((key, held)) = self.address.take() {
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

impl Admission {
    /// `listener` names it in the metric and the log (`api`, `handshake`, `established`).
    pub fn new(
        listener: &'static str,
        total: usize,
        per_address: usize,
        metrics: &'static Metrics,
    ) -> Self {
        metrics.describe(
            "connections_refused_total",
            "Connections closed at once because a connection cap was reached (reason: cap for \
             the listener's total, per_address for one client address's share).",
        );
        Self {
            listener,
            permits: Arc::new(Semaphore::new(total)),
            per_address,
            exempt: None,
            held: Arc::default(),
            metrics,
            log: Arc::new(RefusalLog::new()),
        }
    }

    /// Peers for which `exempt` holds (e.g. a trusted proxy that carries every client's
    /// connections) count against the total only.
    pub fn exempting(mut self, exempt: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        self.exempt = Some(Arc::new(exempt));
        self
    }

    /// A slot for a connection from `peer`, or why not (counted and, rate-limited, logged).
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<Admitted, Refused> {
        let result = self.try_admit(peer);
        if let Err(why) = result {
            self.metrics.inc(
                "connections_refused_total",
                &[("listener", self.listener), ("reason", why.reason())],
            );
            if let Some(since) = self.log.note() {
                tracing::warn!(
                    listener = self.listener,
                    reason = why.reason(),
                    refused = since,
                    "connection cap reached; new connections are closed at once \
                     (count since the last such line)"
                );
            }
        }
        result
    }

    fn try_admit(&self, peer: Option<IpAddr>) -> Result<Admitted, Refused> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let address = match peer {
            Some(ip) if self.per_address > 0 && !self.exempt.as_ref().is_some_and(|e| e(ip)) => {
                let key = address_key(ip);
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                let n = held.entry(key).or_insert(0);
                if *n >= self.per_address {
                    return Err(Refused::PerAddress);
                }
                *n += 1;
                Some((key, Arc::clone(&self.held)))
            }
            _ => None,
        };
        Ok(Admitted {
            _permit: permit,
            address,
        })
    }

    /// Connections admitted now.
    pub fn in_use(&self, total: usize) -> usize {
        total.saturating_sub(self.permits.available_permits())
    }
}

/// The rate limit of the refusal log line.
struct RefusalLog {
    started: Instant,
    /// Milliseconds after `started` of the last line (u64::MAX: never).
    last: AtomicU64,
    since: AtomicU64,
}

impl RefusalLog {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: AtomicU64::new(u64::MAX),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one refusal; `Some(count since the last line)` when a line is due now.
    fn note(&self) -> Option<u64> {
        self.note_at(self.started.elapsed().as_millis() as u64)
    }

    /// [`RefusalLog::note`] at `now` ms after the start.
    fn note_at(&self, now: u64) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        let due =
            last == u64::MAX || now.saturating_sub(last) >= REFUSAL_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.since.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }
}

/// A stream that holds its connection's slot until dropped.
pub struct Held<S> {
    inner: S,
    _slot: Admitted,
}

impl<S> Held<S> {
    pub fn new(inner: S, slot: Admitted) -> Self {
        Self { inner, _slot: slot }
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
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

/// A TCP stream holding its slot of the listener's [`Admission`].
pub type CappedStream = Held<TcpStream>;

/// An `axum_server` acceptor that sets TCP_NODELAY and admits the connection (closing it at
/// once when refused).
#[derive(Clone)]
pub struct CappedNoDelay {
    admission: Admission,
}

impl CappedNoDelay {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

/// The peer's IP address of an accepted stream.
pub fn peer_ip(stream: &TcpStream) -> Option<IpAddr> {
    stream.peer_addr().ok().as_ref().map(SocketAddr::ip)
}

impl<S> Accept<TcpStream, S> for CappedNoDelay {
    type Stream = CappedStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(CappedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let result = match self.admission.admit(peer_ip(&stream)) {
            Ok(slot) => stream
                .set_nodelay(true)
                .map(|()| (Held::new(stream, slot), service)),
            Err(why) => Err(io::Error::other(format!(
                "connection refused ({})",
                why.reason()
            ))),
        };
        std::future::ready(result)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn metrics() -> &'static Metrics {
        static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
        M.get_or_init(|| Metrics::new("test"))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in_until_the_total() {
        let a = Admission::new("t1", 10, 2, metrics());
        let x1 = a.admit(ip("10.0.0.1")).unwrap();
        let _x2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refused::PerAddress));
        // The mapped form is the same client.
        assert_eq!(
            a.admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refused::PerAddress)
        );
        let _y = a.admit(ip("10.0.0.2")).unwrap();
        // One /64 is one client; the next /64 is another.
        let _z1 = a.admit(ip("2001:db8::1")).unwrap();
        let _z2 = a.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8::ffff")).err(),
            Some(Refused::PerAddress)
        );
        let _w = a.admit(ip("2001:db8:0:1::1")).unwrap();
        drop(x1);
        assert!(
            a.admit(ip("10.0.0.1")).is_ok(),
            "a closed connection frees its slot"
        );
        assert!(
            metrics().counter(
                "connections_refused_total",
                &[("listener", "t1"), ("reason", "per_address")]
            ) >= 3
        );
    }

    #[test]
    fn an_exempt_peer_is_held_to_the_total_only() {
        let proxy = ip("10.9.9.9").unwrap();
        let a = Admission::new("t3", 4, 1, metrics()).exempting(move |p| p == proxy);
        let _p: Vec<Admitted> = (0..3).map(|_| a.admit(Some(proxy)).unwrap()).collect();
        let _x = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.2")).err(), Some(Refused::Full));
        let b = Admission::new("t4", 4, 1, metrics()).exempting(move |p| p == proxy);
        let _y = b.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(b.admit(ip("10.0.0.1")).err(), Some(Refused::PerAddress));
    }

    #[test]
    fn the_total_cap_holds_without_a_per_address_cap() {
        let a = Admission::new("t2", 2, 0, metrics());
        let _x = a.admit(ip("10.0.0.1")).unwrap();
        let _y = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refused::Full));
        assert_eq!(a.in_use(2), 2);
        assert!(
            metrics().counter(
                "connections_refused_total",
                &[("listener", "t2"), ("reason", "cap")]
            ) >= 1
        );
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            address_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_refusal_line_is_rate_limited_and_reports_the_count() {
        let log = RefusalLog::new();
        assert_eq!(log.note_at(0), Some(1), "the first refusal is reported");
        for t in 1..1000 {
            assert_eq!(log.note_at(t), None, "then silence within the interval");
        }
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        assert_eq!(
            log.note_at(every),
            Some(1000),
            "then one line with the count since"
        );
        assert_eq!(log.note_at(every + 1), None);
    }
}
