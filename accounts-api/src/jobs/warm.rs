//! Keeps a connection to the vault established. The vault admits a new connection only through
//! a small handshake stage that unauthenticated clients can crowd (`vault/src/server.rs`); an
//! established mTLS connection is beyond their reach. A health call every [`EVERY`] (shorter
//! than the vault's idle keep-alive, 30 s by default) keeps one pooled connection alive, so
//! checkouts do not depend on winning a handshake slot while the vault's port is under attack.

use crate::vault::VaultClient;
use std::time::Duration;

/// How often the idle connection is used.
pub const EVERY: Duration = Duration::from_secs(10);

/// The keeper loop, until `shutdown`.
pub async fn keep_warm(vault: VaultClient, mut shutdown: crate::jobs::Shutdown) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => break,
        }
        if let Err(e) = vault.health().await {
            tracing::debug!(error = %e, "vault keep-alive call failed");
        }
    }
}
