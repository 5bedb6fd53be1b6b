//! The transactions of the renewal protocol that write an outcome or a time-driven change,
//! each with its events in the same transaction and flushed before it returns: the period end
//! (deactivation, pause, resume), the card-expiry flag, the manual-renewal reminder, and the
//! settlement of a charged (with its rebill order) or declined intent. `super` decides when each runs.

use super::Outcome;
use super::PENDING_CHANGED;
use crate::app::AppState;
use crate::domain::rebill::Paid;
use crate::domain::renewal::{DAY_MS, RETRY_DAYS, card_expiring};
use crate::domain::{DomainEvent, Money};
use crate::model::{
    OrderId, PendingCharge, RenewalState, StoreId, SubState, SubscriptionId, SubscriptionRecord,
};
use crate::service::events;
use crate::storage::{RenewalWrites, StorageError};

/// The period-end transitions of [`SubscriptionRecord::period_end`], in one transaction.
pub(super) async fn period_end(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
    now: i64,
) -> Result<SubscriptionRecord, StorageError> {
    let s = state
        .storage
        .apply_renewal(store, id, &|s, _| {
            if !s.has_period_transition(now) {
                return Ok(vec![].into());
            }
            Ok(events::records(&s.period_end(now)).into())
        })
        .await?;
    state.storage.durable().await?;
    Ok(s)
}

pub(super) async fn flag_expiry(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
) -> Result<SubscriptionRecord, StorageError> {
    let s = state
        .storage
        .apply_renewal(store, id, &|s, _| {
            let expiring = card_expiring(s);
            s.renewal.card_expiring = expiring;
            if expiring && s.renewal.expiring_notified != Some(s.next) {
                s.renewal.expiring_notified = Some(s.next);
                return Ok(vec![events::record(&DomainEvent::CardExpiring {
                    subscription: s.id.clone(),
                    account: s.account.clone(),
                    expiry: s.expiry.clone(),
                    next_charge_date: s.next,
                })]
                .into());
            }
            Ok(vec![].into())
        })
        .await?;
    state.storage.durable().await?;
    Ok(s)
}

pub(super) async fn remind(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
) -> Result<(), StorageError> {
    state
        .storage
        .apply_renewal(store, id, &|s, _| {
            if s.renewal.reminded == Some(s.next) {
                return Ok(vec![].into());
            }
            s.renewal.reminded = Some(s.next);
            Ok(vec![events::record(&DomainEvent::PaymentReminder {
                subscription: s.id.clone(),
                account: s.account.clone(),
                amount: Money::of(s.price, &s.currency).times(s.quantity),
                next_charge_date: s.next,
            })]
            .into())
        })
        .await?;
    state.storage.durable().await?;
    Ok(())
}

/// The intent `p` is still the pending one (by its key: its `unsent` flag may have changed).
pub(super) fn still_pending(s: &SubscriptionRecord, p: &PendingCharge) -> Result<(), StorageError> {
    if s.renewal.pending.as_ref().map(|q| &q.key) == Some(&p.key) {
        Ok(())
    } else {
        Err(StorageError::State(PENDING_CHANGED))
    }
}

/// Writes a successful charge: the period is paid (`next` advances), the rebill order of the
/// period is recorded on the subscription and its account and written with them, and
/// `subscription.charge.completed` carries it — one transaction, so the order exists exactly
/// when the period is paid. The original order is read first (orders never change).
pub(super) async fn settle_success(
    state: &AppState,
    store: &StoreId,
    sub: &SubscriptionRecord,
    p: &PendingCharge,
    reference: Option<String>,
    now: i64,
) -> Result<Outcome, StorageError> {
    let original = state.storage.order(store, &sub.order).await?;
    // Drawn once: a rerun of the transaction writes the same order.
    let order_id = OrderId::generate();
    state
        .storage
        .apply_renewal(store, &sub.id, &|s, account| {
            still_pending(s, p)?;
            let order = s.record_rebill(
                account,
                &Paid {
                    id: order_id.clone(),
                    original: original.as_ref(),
                    period: p.period,
                    amount: p.amount,
                    currency: &p.currency,
                    at: now,
                },
            );
            s.charged(p.period, now);
            s.renewal = RenewalState {
                last_charged: Some(now),
                expiring_notified: s.renewal.expiring_notified,
                ..RenewalState::default()
            };
            s.renewal.card_expiring = card_expiring(s);
            let event = DomainEvent::ChargeCompleted {
                subscription: s.id.clone(),
                account: s.account.clone(),
                amount: Money::of(p.amount, &p.currency),
                period: p.period,
                reference: reference.clone(),
                next_charge_date: s.next,
                timestamp: now,
                sequence: s.sequence(),
                order: Box::new(order.clone()),
            };
            Ok(RenewalWrites {
                events: vec![events::record(&event)],
                order: Some(order),
            })
        })
        .await?;
    state.storage.durable().await?;
    tracing::info!(subscription = sub.id.as_str(), "renewal charged");
    Ok(Outcome::Charged)
}

pub(super) async fn settle_decline(
    state: &AppState,
    store: &StoreId,
    id: &SubscriptionId,
    p: &PendingCharge,
    reason: &str,
    now: i64,
    last: bool,
) -> Result<Outcome, StorageError> {
    let after = state
        .storage
        .apply_renewal(store, id, &|s, _| {
            still_pending(s, p)?;
            s.renewal.pending = None;
            s.renewal.lease = None;
            s.renewal.decline_reason = Some(reason.to_owned());
            s.renewal.failed_attempts = s.renewal.failed_attempts.saturating_add(1);
            let n = s.renewal.failed_attempts as usize;
            let mut out = Vec::new();
            // `last`: a failure no retry can mend ends the schedule now.
            let next_retry = if last {
                None
            } else {
                RETRY_DAYS.get(n - 1).map(|d| p.period + d * DAY_MS)
            };
            s.renewal.retry_at = next_retry;
            out.push(events::record(&DomainEvent::ChargeFailed {
                subscription: s.id.clone(),
                account: s.account.clone(),
                amount: Money::of(p.amount, &p.currency),
                reason: reason.to_owned(),
                attempt: n,
                next_retry,
                timestamp: now,
            }));
            if next_retry.is_none() {
                out.push(events::record(&s.deactivate(reason, now)));
            } else {
                s.mark_overdue(now);
            }
            Ok(out.into())
        })
        .await?;
    state.storage.durable().await?;
    let deactivated = after.state == SubState::Deactivated;
    tracing::info!(
        subscription = id.as_str(),
        reason,
        deactivated,
        "renewal declined"
    );
    Ok(Outcome::Declined {
        reason: reason.to_owned(),
        deactivated,
    })
}
