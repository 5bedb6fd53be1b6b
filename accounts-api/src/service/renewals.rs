//! The renewal use case: charges due automatic subscriptions through the vault (as the `renewals`
//! identity), reminds manual ones, flags cards that expire before the next charge.
//!
//! Exactly once per period, across crashes:
//! 1. under a per-subscription lock, the intent (`renewal.pending`: idempotency key, period,
//!    amount) is written and flushed before the vault is called;
//! 2. the vault charges with that key (its own ledger plus the processor's idempotency make a
//!    repeated key one charge);
//! 3. the outcome is written in one transaction with the subscription, the account's
//!    `charges[]` and `orders[]`, a success's rebill order (`domain::rebill`) and the events. A crash between 1 and 3 leaves `pending`; every run (the first
//!    one right after start) resumes pending intents with the same key.
//!
//! Keys: `{subscription}:{period}` for the first attempt of a period, `…:{n}` for retry `n`
//! after a decline (a declined key is final in the vault and at the processor). A success ends
//! the period, so no period is ever paid twice.
//!
//! Declines retry 1, 3 and 5 days after the due date ([`RETRY_DAYS`]); the decline after the
//! last retry deactivates the subscription. Transient failures (`failed`, vault unreachable) keep
//! the intent and retry with the same key on the next run.
//!
//! Time is a parameter (`now`, ms) of [`run_due`] and [`renew_one`], so schedules are testable
//! without waiting. The periodic worker is `jobs::renewals`; `POST /subscriptions/charge` is in
//! `http::routes::subscriptions`.

use crate::app::{AppState, SharedState};
pub use crate::domain::renewal::{DAY_MS, REMIND_AHEAD_MS, RETRY_DAYS, has_work};
use crate::domain::renewal::{automatic, charge_key, expiry_needs_update};
use crate::model::{PendingCharge, StoreId, SubscriptionId, SubscriptionRecord, now_ms};
use crate::service::events;
use crate::storage::Lease;
use crate::storage::{StorageError, with_named};
use crate::vault::{VaultClient, VaultError};
use shared::vault_api::{ChargeRequest, ChargeStatus};
use std::sync::Arc;
use tokio::sync::Mutex;

mod settle;
use settle::{flag_expiry, period_end, remind, settle_decline, settle_success, still_pending};

/// Charges the job runs at once.
pub const CONCURRENCY: usize = 32;
const LOCK_SHARDS: usize = 1024;
/// How long a renewal worker's claim on a subscription keeps other instances out by default
/// (wall clock; longer than the renewals client's whole-request timeout). The deployment's value
/// is `Settings::renewal_lease` (`STRONGROOM_RENEWAL_LEASE_MS`).
pub const LEASE_MS: i64 = 5 * 60_000;
/// The refusal of a claim held by another worker (the step is skipped, not an error).
const CLAIMED_ELSEWHERE: &str = "the subscription is being renewed by another worker";
/// The subscription stopped running between the read and the intent's transaction.
const CHANGED: &str = "the subscription changed meanwhile";
/// The intent read was settled (or replaced) by another worker before this one claimed it.
pub(super) const PENDING_CHANGED: &str = "the pending charge changed meanwhile";

/// The renewal job's own vault client (`renewals` certificate) and per-subscription locks.
pub struct Renewals {
    client: VaultClient,
    locks: Vec<Arc<Mutex<()>>>,
}

impl Renewals {
    /// The renewal job's vault client (readiness checks its identity).
    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    pub fn new(client: VaultClient) -> Self {
        Self {
            client,
            locks: (0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }

    fn lock_for(&self, store: &StoreId, id: &SubscriptionId) -> Arc<Mutex<()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (store, id).hash(&mut h);
        Arc::clone(&self.locks[(h.finish() as usize) % self.locks.len()])
    }
}

/// What one renewal step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Charged,
    Declined {
        reason: String,
        deactivated: bool,
    },
    /// Transient: nothing paid; the intent stays and is retried with the same key. `unsent`:
    /// the attempt certainly never reached the vault.
    Failed {
        reason: String,
        unsent: bool,
    },
    /// A pending intent that never reached the vault was dropped: the subscription stopped
    /// running before it could be charged.
    Dropped,
    /// A time-driven transition (period end of a canceled subscription, a pause beginning).
    Transitioned,
    Reminded,
    /// Nothing to do now.
    Skipped,
    /// Refused before any charge (fixed codes: `NOT_FOUND`, `SUBSCRIPTION_NOT_ACTIVE`, …).
    Refused(&'static str),
}

impl Outcome {
    /// The `outcome` label of the `charges_total` metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Charged => "charged",
            Self::Declined { .. } => "declined",
            Self::Failed { .. } => "failed",
            Self::Reminded => "reminded",
            Self::Dropped => "dropped",
            Self::Transitioned => "transitioned",
            Self::Skipped => "skipped",
            Self::Refused(_) => "refused",
        }
    }
}

/// Counts of one [`run_due`] pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub examined: usize,
    pub charged: usize,
    pub declined: usize,
    pub deactivated: usize,
    pub failed: usize,
    pub reminded: usize,
    /// Period-end transitions (deactivations of canceled subscriptions, pauses and resumes).
    pub transitioned: usize,
    /// Pending intents dropped because the subscription stopped running.
    pub dropped: usize,
    pub errors: usize,
}

/// One pass: every subscription with work at `now`, [`CONCURRENCY`] at a time.
pub async fn run_due(state: &SharedState, now: i64) -> Result<RunSummary, StorageError> {
    // Everything due now, as before the port had a limit: a pass takes all of it.
    let due = state.storage.due_subscriptions(now, usize::MAX).await?;
    let mut summary = RunSummary {
        examined: due.len(),
        ..RunSummary::default()
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for s in due {
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            break;
        };
        let st = Arc::clone(state);
        set.spawn(async move {
            let r = renew_one(&st, &s.store, &s.id, now, false).await;
            drop(permit);
            r
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Ok(Ok(o)) = &joined {
            crate::ops::metrics().inc("charges_total", &[("outcome", o.label())]);
        }
        match joined {
            Ok(Ok(o)) => match o {
                Outcome::Charged => summary.charged += 1,
                Outcome::Declined { deactivated, .. } => {
                    summary.declined += 1;
                    if deactivated {
                        summary.deactivated += 1;
                    }
                }
                Outcome::Failed { .. } => summary.failed += 1,
                Outcome::Reminded => summary.reminded += 1,
                Outcome::Transitioned => summary.transitioned += 1,
                Outcome::Dropped => summary.dropped += 1,
                Outcome::Skipped | Outcome::Refused(_) => {}
            },
            Ok(Err(e)) => {
                tracing::error!(error = %e, "renewal step failed");
                summary.errors += 1;
            }
            Err(_) => summary.errors += 1,
        }
    }
    Ok(summary)
}

/// `POST /subscriptions/charge` for one subscription the client named by `id`: an id that does
/// not parse names no subscription, so it answers what an unknown id answers.
pub async fn charge_named(
    state: &AppState,
    store: &StoreId,
    id: &str,
    now: i64,
) -> Result<Outcome, StorageError> {
    if state.renewals.is_none() {
        return Ok(Outcome::Refused("RENEWALS_DISABLED"));
    }
    let unknown = Ok(Outcome::Refused("NOT_FOUND"));
    with_named(id, unknown, async |id: &SubscriptionId| {
        renew_one(state, store, id, now, true).await
    })
    .await
}

/// One renewal step for one subscription at `now`. `on_demand` (`POST /subscriptions/charge`)
/// charges the upcoming period even before it is due and ignores the retry wait.
pub async fn renew_one(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
    now: i64,
    on_demand: bool,
) -> Result<Outcome, StorageError> {
    let Some(renewals) = state.renewals.as_ref() else {
        return Ok(Outcome::Refused("RENEWALS_DISABLED"));
    };
    let lock = renewals.lock_for(store, id);
    let _guard = lock.lock().await;
    let Some(mut sub) = state.storage.subscription(store, id).await? else {
        return Ok(Outcome::Refused("NOT_FOUND"));
    };
    let not_running = if on_demand {
        Outcome::Refused("SUBSCRIPTION_NOT_ACTIVE")
    } else {
        Outcome::Skipped
    };
    // The time-driven transitions come first: a canceled subscription ends at its period end,
    // a scheduled pause begins instead of the charge, a pause ends at its resume date.
    let mut transitioned = false;
    if sub.has_period_transition(now) {
        sub = period_end(state, store, id, now).await?;
        transitioned = true;
    }

    let pending = match sub.renewal.pending.clone() {
        Some(p) => {
            // Resuming an intent: claim it, unless a live worker elsewhere is charging it. An
            // intent that never reached the vault is dropped instead if the subscription
            // stopped running meanwhile.
            match claim(state, store, id, &p).await {
                Ok(s) if s.renewal.pending.is_none() => return Ok(Outcome::Dropped),
                Ok(_) => {}
                // Another worker holds it, or finished it since the read: its outcome stands.
                Err(StorageError::State(CLAIMED_ELSEWHERE | PENDING_CHANGED)) => {
                    return Ok(if on_demand {
                        Outcome::Refused("RENEWAL_IN_PROGRESS")
                    } else {
                        Outcome::Skipped
                    });
                }
                Err(e) => return Err(e),
            }
            p
        }
        // An unpaid manual renewal became overdue or ended: nothing to charge or remind.
        None if transitioned && !automatic(&sub) => return Ok(Outcome::Transitioned),
        None if !sub.state.charges() => {
            return Ok(if transitioned {
                Outcome::Transitioned
            } else {
                not_running
            });
        }
        None if on_demand && sub.lifecycle.pause_scheduled.is_some() => {
            // The upcoming period is the paused one.
            return Ok(Outcome::Refused("SUBSCRIPTION_PAUSE_SCHEDULED"));
        }
        None => {
            if expiry_needs_update(&sub) {
                sub = flag_expiry(state, store, id).await?;
            }
            match new_intent(state, store, id, &sub, now, on_demand).await? {
                Ok(p) => p,
                Err(o) => return Ok(o),
            }
        }
    };

    let outcome = charge_claimed(state, renewals, store, id, &sub, &pending, now).await;
    match &outcome {
        Ok(Outcome::Charged | Outcome::Declined { .. }) => {}
        // The outcome was not written (transient failure or error): let the next run retry.
        Ok(Outcome::Failed { unsent, .. }) => release(state, store, id, *unsent).await?,
        _ => release(state, store, id, false).await?,
    }
    outcome
}

/// Records a new intent for the due period (or reminds a manual subscription). `Err(outcome)`:
/// nothing to charge now.
async fn new_intent(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
    sub: &SubscriptionRecord,
    now: i64,
    on_demand: bool,
) -> Result<Result<PendingCharge, Outcome>, StorageError> {
    if !automatic(sub) {
        let reminder_due = on_demand || sub.next - REMIND_AHEAD_MS <= now;
        if reminder_due && sub.renewal.reminded != Some(sub.next) {
            remind(state, store, id).await?;
        }
        return Ok(Err(if on_demand || reminder_due {
            Outcome::Reminded
        } else {
            Outcome::Skipped
        }));
    }
    let due = sub.next <= now && sub.renewal.retry_at.is_none_or(|t| t <= now);
    if !due && !on_demand {
        return Ok(Err(Outcome::Skipped));
    }
    if on_demand && sub.renewal.last_charged.is_some_and(|t| now - t < DAY_MS) {
        return Ok(Err(Outcome::Refused(
            "Only 1 successful rebill per day allowed.",
        )));
    }
    let p = PendingCharge {
        key: charge_key(sub),
        period: sub.next,
        amount: sub.price.saturating_mul(i64::from(sub.quantity)),
        currency: sub.currency.clone(),
        started: now,
        // Nothing has been sent yet; the claim below is held until the attempt's outcome.
        unsent: true,
    };
    let (intent, lease) = (p.clone(), lease(state));
    // Insert-if-absent of the intent is the claim: a second worker finds it pending. Another
    // instance can win that race (the per-subscription lock is this process's only): then it
    // charges, and this call does nothing. The state is checked again here, in the same
    // transaction: a charge never starts for a subscription that stopped running.
    let claimed = state
        .storage
        .apply_renewal(store, id, &|s, _| {
            if s.renewal.pending.is_some() {
                return Err(StorageError::State(CLAIMED_ELSEWHERE));
            }
            if !s.state.charges() || s.lifecycle.pause_scheduled.is_some() && s.next <= now {
                return Err(StorageError::State(CHANGED));
            }
            s.renewal.pending = Some(intent.clone());
            s.renewal.lease = Some(lease.clone());
            Ok(vec![].into())
        })
        .await;
    match claimed {
        Ok(_) => {}
        Err(StorageError::State(CLAIMED_ELSEWHERE)) => {
            return Ok(Err(if on_demand {
                Outcome::Refused("RENEWAL_IN_PROGRESS")
            } else {
                Outcome::Skipped
            }));
        }
        Err(StorageError::State(CHANGED)) => {
            return Ok(Err(if on_demand {
                Outcome::Refused("SUBSCRIPTION_NOT_ACTIVE")
            } else {
                Outcome::Skipped
            }));
        }
        Err(e) => return Err(e),
    }
    // The intent is on disk before the vault hears of the charge.
    state.storage.durable().await?;
    Ok(Ok(p))
}

/// A new claim on a subscription's renewal by this worker.
fn lease(state: &AppState) -> Lease {
    Lease {
        holder: state.storage.instance().to_owned(),
        until: now_ms().saturating_add(
            i64::try_from(state.settings.renewal_lease.as_millis()).unwrap_or(LEASE_MS),
        ),
    }
}

/// Claims the pending intent `p` for this worker (see [`Lease::blocks`]).
async fn claim(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
    p: &PendingCharge,
) -> Result<SubscriptionRecord, StorageError> {
    let (me, exclusive, wall, new) = (
        state.storage.instance(),
        state.storage.exclusive(),
        now_ms(),
        lease(state),
    );
    state
        .storage
        .apply_renewal(store, id, &|s, _| {
            still_pending(s, p)?;
            if s.renewal
                .lease
                .as_ref()
                .is_some_and(|l| l.blocks(me, exclusive, wall))
            {
                return Err(StorageError::State(CLAIMED_ELSEWHERE));
            }
            if s.renewal.lease.take().is_some()
                && let Some(pending) = s.renewal.pending.as_mut()
            {
                // A claim left behind: that attempt ended without an outcome (a crash), so it
                // may have reached the processor.
                pending.unsent = false;
            }
            if let Some(dropped) = s.drop_unsent_charge() {
                return Ok(vec![events::record(&dropped)].into());
            }
            s.renewal.lease = Some(new.clone());
            Ok(vec![].into())
        })
        .await
}

/// Drops this worker's claim after an attempt without an outcome. The intent stays for the
/// next run, unless the attempt certainly never reached the vault (`unsent`), none before it
/// did, and the subscription stopped running meanwhile: then it is dropped (with its event).
async fn release(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
    unsent: bool,
) -> Result<(), StorageError> {
    let me = state.storage.instance();
    state
        .storage
        .apply_renewal(store, id, &|s, _| {
            if s.renewal.lease.as_ref().is_some_and(|l| l.holder == me) {
                s.renewal.lease = None;
            }
            if !unsent && let Some(p) = s.renewal.pending.as_mut() {
                p.unsent = false;
            }
            Ok(s.drop_unsent_charge()
                .map(|e| events::record(&e))
                .into_iter()
                .collect::<Vec<_>>()
                .into())
        })
        .await
        .map(drop)
}

/// Steps 2 and 3 of the protocol for a claimed intent: the vault call and its outcome.
async fn charge_claimed(
    state: &AppState,
    renewals: &Renewals,
    store: &StoreId,
    id: &SubscriptionId,
    sub: &SubscriptionRecord,
    pending: &PendingCharge,
    now: i64,
) -> Result<Outcome, StorageError> {
    let pending = pending.clone();
    let Some(pm) = sub.payment_method.clone() else {
        // The card was removed while a charge was pending: nothing can be charged.
        return settle_decline(
            state,
            store,
            id,
            &pending,
            "payment_method_missing",
            now,
            false,
        )
        .await;
    };
    let req = ChargeRequest {
        store: store.to_string(),
        amount: pending.amount,
        currency: pending.currency.clone(),
        idempotency_key: pending.key.clone(),
        description: Some(format!("Renewal of subscription {id}")),
    };
    match renewals.client.charge(&pm, &req).await {
        Ok(o) => match o.status {
            ChargeStatus::Succeeded => {
                settle_success(state, store, sub, &pending, o.processor_reference, now).await
            }
            ChargeStatus::Declined => {
                let reason = o.reason.unwrap_or_else(|| "card_declined".into());
                settle_decline(state, store, id, &pending, &reason, now, false).await
            }
            // The vault tried the processor: it may have taken the charge.
            ChargeStatus::Failed => Ok(Outcome::Failed {
                reason: o.reason.unwrap_or_else(|| "processor_unavailable".into()),
                unsent: false,
            }),
        },
        Err(VaultError::NotFound) => {
            settle_decline(
                state,
                store,
                id,
                &pending,
                "payment_method_missing",
                now,
                false,
            )
            .await
        }
        // Logged at ERROR by the client when the renewals certificate's identity lacks
        // `charge`; the intent stays, so the charge goes out once the configuration is fixed.
        // To the merchant it is an outage of ours, like any other: `VAULT_UNAVAILABLE`.
        Err(e @ (VaultError::Unavailable(_) | VaultError::Forbidden { .. })) => {
            Ok(Outcome::Failed {
                reason: "vault_unavailable".into(),
                unsent: e.never_sent(),
            })
        }
        Err(VaultError::Rejected { status, field }) => {
            // The vault refused the charge request itself (a 4xx: e.g. an amount above its
            // limit). That will not fix itself: retrying every run would refuse forever. It is
            // final: recorded as a failed charge, no retry, the subscription deactivated.
            tracing::error!(
                status,
                ?field,
                subscription = id.as_str(),
                "vault refused a renewal charge; the subscription is deactivated"
            );
            settle_decline(state, store, id, &pending, "vault_rejected", now, true).await
        }
    }
}
