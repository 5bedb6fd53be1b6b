//! Request bodies must arrive at a pace: a client that declares a body and then sends it a byte
//! every few seconds would otherwise hold its connection (and a handler task) for as long as it
//! likes. Every request body is wrapped in a [`PacedBody`] that ends it with [`SlowBody`] when
//!
//! - no bytes arrived for `gap` (the longest wait between chunks);
//! - after `grace`, fewer than `min_rate` bytes per second arrived on average since the request
//!   reached the router (a trickle of one byte every few seconds is cut within seconds, while a
//!   small body sent at once is never affected);
//! - the whole body took longer than `deadline`.
//!
//! The extractors turn a [`SlowBody`] into `408 Request Timeout` in the API's envelope, and the
//! connection is closed. Handlers themselves are not cut off: once the body is in, the work is
//! bounded by its dependencies' timeouts (vault, database), and cancelling it half-way would
//! only add failure modes.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How fast a body must arrive (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub gap: Duration,
    pub grace: Duration,
    pub min_rate: u64,
    pub deadline: Duration,
}

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowBody(pub &'static str);

impl std::fmt::Display for SlowBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body too slow: {}", self.0)
    }
}

impl std::error::Error for SlowBody {}

/// Whether an error (a body extractor's rejection, through its sources) is a [`SlowBody`].
pub fn is_slow_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<SlowBody>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body that fails with [`SlowBody`] when it does not keep [`Pace`].
pub struct PacedBody {
    inner: Body,
    pace: Pace,
    started: Instant,
    received: u64,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl PacedBody {
    pub fn new(inner: Body, pace: Pace) -> Self {
        let now = Instant::now();
        Self {
            inner,
            pace,
            started: now,
            received: 0,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + pace.gap)),
            done: false,
        }
    }

    /// The first instant a rule is broken if nothing more arrives, and which rule.
    fn next_check(&self) -> (Instant, &'static str) {
        let mut at = (self.last + self.pace.gap, "no data for too long");
        let deadline = self.started + self.pace.deadline;
        if deadline < at.0 {
            at = (deadline, "deadline passed");
        }
        if self.pace.min_rate > 0 {
            // received ≥ min_rate × (t − started − grace) must hold.
            let covered = Duration::from_secs_f64(self.received as f64 / self.pace.min_rate as f64);
            let rate_at = self.started + self.pace.grace + covered;
            if rate_at < at.0 {
                at = (rate_at, "below the minimum rate");
            }
        }
        at
    }
}

impl HttpBody for PacedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.last = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                let (at, why) = this.next_check();
                if Instant::now() >= at {
                    this.done = true;
                    return Poll::Ready(Some(Err(axum::Error::new(SlowBody(why)))));
                }
                this.timer.as_mut().reset(at);
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        Poll::Ready(Some(Err(axum::Error::new(SlowBody(why)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The middleware: every request's body becomes a [`PacedBody`].
pub async fn paced(pace: Pace, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = Body::new(PacedBody::new(body, pace));
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pace() -> Pace {
        Pace {
            gap: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            min_rate: 1024,
            deadline: Duration::from_secs(30),
        }
    }

    /// A body fed by the test through a channel.
    fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, PacedBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let stream = futures_stream(rx);
        (tx, PacedBody::new(Body::new(stream), pace()))
    }

    /// A minimal `http_body::Body` over a channel (no extra crate for a stream adapter).
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);
    impl HttpBody for Channel {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }
    fn futures_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Channel {
        Channel(rx)
    }

    async fn next(body: &mut PacedBody) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|r| {
                r.map(|f| f.into_data().unwrap_or_default())
                    .map_err(|e| e.to_string())
            })
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_off_soon_after_the_grace_period() {
        let (tx, mut body) = fed();
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                if tx.send(Bytes::from_static(b" ")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(8)).await;
            }
        });
        let mut got = 0;
        let err = loop {
            match next(&mut body).await {
                Some(Ok(b)) => got += b.len(),
                Some(Err(e)) => break e,
                None => panic!("the trickle ended normally"),
            }
        };
        assert!(err.contains("minimum rate"), "{err}");
        assert_eq!(got, 1);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(6),
            "cut after {took:?}"
        );
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_a_steady_reasonable_pace_passes_and_a_silent_one_hits_the_gap() {
        // 2 KiB per second for 20 s: above the minimum rate all along.
        let (tx, mut body) = fed();
        tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Bytes::from(vec![b'x'; 2048])).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut got = 0;
        while let Some(chunk) = next(&mut body).await {
            got += chunk.unwrap().len();
        }
        assert_eq!(got, 20 * 2048);

        // A body that sends 64 KiB at once and then nothing: the gap rule ends it.
        let (tx, mut body) = fed();
        tx.send(Bytes::from(vec![b'x'; 65536])).await.unwrap();
        let started = Instant::now();
        assert!(next(&mut body).await.unwrap().is_ok());
        let err = next(&mut body).await.unwrap().unwrap_err();
        assert!(err.contains("no data"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_a_fast_enough_but_endless_body() {
        let (tx, mut body) = fed();
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                if tx.send(Bytes::from(vec![b'x'; 4096])).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let err = loop {
            match next(&mut body).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("ended"),
            }
        };
        assert!(err.contains("deadline"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(body.is_end_stream());
    }

    #[test]
    fn a_slow_body_is_recognised_through_the_error_chain() {
        let e = axum::Error::new(SlowBody("deadline passed"));
        assert!(is_slow_body(&e));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!is_slow_body(&other));
    }
}
