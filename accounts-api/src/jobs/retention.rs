//! The retention sweeper (issue 12): once a minute it deletes expired sign-in links and
//! sessions, Idempotency-Key records older than their window and processed events older than
//! theirs ([`Retention`]; an unprocessed event is never deleted by age, see there why).
//!
//! Bounded work: each kind goes in passes of at most [`PASS_LIMIT`] rows (a pass is short
//! transactions in the backend: `Storage::sweep_idempotency`, `Storage::sweep_events`), at most
//! [`MAX_PASSES`] passes per kind per sweep. A bigger backlog (the first sweep after an upgrade,
//! a window shortened) drains over the following minutes — up to 10,000 rows per kind and
//! minute — without a long transaction or lock in front of the requests.
//!
//! Time: the cut-offs come from `Settings::clock`, the system clock under `serve` and the dev
//! clock under `accounts-api dev` (`STRONGROOM_DEV_CLOCK_FILE`), so a test moves retention by
//! moving that clock; a sweep also runs as soon as that clock is a minute past the last one, so
//! a test does not wait for it. Links and sessions stay on the system clock, which is the one
//! they are checked against when used.
//!
//! Several instances on one database may sweep at once: deleting is idempotent, and
//! PostgreSQL's passes skip rows another transaction holds.

use crate::jobs::Shutdown;
use crate::model::now_ms;
use crate::ops::metrics;
use crate::settings::{Clock, Retention};
use crate::storage::Storage;
use std::sync::Arc;
use std::time::Duration;

/// Most rows of one kind deleted in one pass.
pub const PASS_LIMIT: usize = 1000;
/// Most passes per kind in one sweep.
pub const MAX_PASSES: usize = 10;
/// How often (on the sweep's clock) a sweep runs.
const EVERY_MS: i64 = 60_000;
/// How often the loop reads the clock.
const TICK: Duration = Duration::from_secs(1);

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub links_and_sessions: usize,
    pub idempotency_keys: usize,
    pub events: usize,
}

/// Sweeps once a minute on `clock` (the first a second after the start) until `shutdown`.
pub async fn run(
    storage: Arc<dyn Storage>,
    clock: Clock,
    retention: Retention,
    mut shutdown: Shutdown,
) {
    let mut last: Option<i64> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => break,
        }
        let now = clock.now();
        // A clock moved back (the dev clock) sweeps at once too, rather than after the gap.
        if last.is_some_and(|l| now >= l && now - l < EVERY_MS) {
            continue;
        }
        last = Some(now);
        sweep(storage.as_ref(), retention, now, &shutdown).await;
    }
}

/// One sweep at `now` (ms, the retention clock): what is at or past its window goes.
pub async fn sweep(
    storage: &dyn Storage,
    retention: Retention,
    now: i64,
    shutdown: &Shutdown,
) -> Swept {
    let window = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let links_and_sessions = match storage.sweep_expired(now_ms()).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "expired sign-in links and sessions: sweep failed");
            0
        }
    };
    metrics().add(
        "retention_swept_total",
        &[("kind", "links_and_sessions")],
        links_and_sessions as u64,
    );
    let cutoff = now.saturating_sub(window(retention.idempotency));
    let idempotency_keys = drain(storage, Kind::IdempotencyKeys, cutoff, shutdown).await;
    let cutoff = now.saturating_sub(window(retention.processed_events));
    let events = drain(storage, Kind::Events, cutoff, shutdown).await;
    metrics().inc("retention_sweeps_total", &[]);
    let swept = Swept {
        links_and_sessions,
        idempotency_keys,
        events,
    };
    if swept != Swept::default() {
        tracing::info!(
            links_and_sessions,
            idempotency_keys,
            events,
            "retention sweep"
        );
    }
    swept
}

/// The kinds swept in passes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    IdempotencyKeys,
    Events,
}

/// Passes over `kind` up to `cutoff` until one deletes fewer than [`PASS_LIMIT`] rows,
/// [`MAX_PASSES`] ran, or the service is stopping; counts the rows in
/// `retention_swept_total{kind}`.
async fn drain(storage: &dyn Storage, kind: Kind, cutoff: i64, shutdown: &Shutdown) -> usize {
    let label = match kind {
        Kind::IdempotencyKeys => "idempotency_keys",
        Kind::Events => "events",
    };
    let mut total = 0;
    for _ in 0..MAX_PASSES {
        let pass = match kind {
            Kind::IdempotencyKeys => storage.sweep_idempotency(cutoff, PASS_LIMIT).await,
            Kind::Events => storage.sweep_events(cutoff, PASS_LIMIT).await,
        };
        match pass {
            Ok(n) => {
                total += n;
                metrics().add("retention_swept_total", &[("kind", label)], n as u64);
                if n < PASS_LIMIT || shutdown.is_stopping() {
                    break;
                }
                // Let requests in between passes.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = label, "retention sweep failed; next one in a minute");
                break;
            }
        }
    }
    total
}
