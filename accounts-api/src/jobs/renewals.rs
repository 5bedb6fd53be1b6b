//! The renewal worker: [`crate::service::renewals::run_due`] on a timer, until shutdown.

use crate::app::SharedState;
use crate::service::renewals::run_due;
use std::time::Duration;

/// Runs [`run_due`] every `interval` (the first pass at once: it resumes pending intents) until
/// `shutdown`; a pass in progress then is finished first (its charges are in flight).
pub async fn periodic(state: SharedState, interval: Duration, mut shutdown: crate::jobs::Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => break,
        }
        match run_due(&state, state.settings.clock.now()).await {
            Ok(s) if s.examined > 0 => tracing::info!(
                examined = s.examined,
                charged = s.charged,
                declined = s.declined,
                deactivated = s.deactivated,
                failed = s.failed,
                reminded = s.reminded,
                transitioned = s.transitioned,
                dropped = s.dropped,
                errors = s.errors,
                "renewal run"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "renewal run failed"),
        }
    }
}
