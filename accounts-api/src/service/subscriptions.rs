//! Subscriptions: cancel, uncancel, pause and resume, by the merchant (API) or the customer
//! (account page). The state rules are the domain's (`domain::subscription`); the events are
//! built from the record as changed, inside the same transaction.

use crate::domain::DomainEvent;
use crate::domain::rebill::Entry;
use crate::model::{OrderRecord, StoreId, SubscriptionId, SubscriptionRecord};
use crate::storage::{Extras, IdempotencyWrite, Storage, StorageError, SubscriptionChange};

pub use crate::domain::subscription::{By, CancelWhen};

/// The events of one transition as rows, plus the drop of a pending renewal intent that never
/// reached the vault when the subscription stopped running.
fn transition_rows(
    s: &mut SubscriptionRecord,
    events: Vec<DomainEvent>,
) -> Vec<crate::model::EventRecord> {
    let mut rows = super::events::records(&events);
    if let Some(dropped) = s.drop_unsent_charge() {
        rows.push(super::events::record(&dropped));
    }
    rows
}

/// Cancels subscription `id` of `store` at period end or now (`billingPeriod=0`); `State`
/// (fixed text) if its state refuses it. A renewal intent that never reached the vault is
/// dropped with it: the customer is not charged after cancelling.
pub async fn cancel(
    storage: &dyn Storage,
    store: &StoreId,
    id: &SubscriptionId,
    by: By,
    when: CancelWhen,
    now: i64,
    answer: Option<IdempotencyWrite>,
) -> Result<SubscriptionRecord, StorageError> {
    change(storage, store, id, answer, &|s| {
        let events = s.cancel(by, when, now).map_err(StorageError::State)?;
        Ok(transition_rows(s, events))
    })
    .await
}

/// Schedules a pause of `periods` periods from the next charge date (`POST …/pause`), at `now`.
pub async fn pause(
    storage: &dyn Storage,
    store: &StoreId,
    id: &SubscriptionId,
    periods: u32,
    now: i64,
    answer: Option<IdempotencyWrite>,
) -> Result<SubscriptionRecord, StorageError> {
    change(storage, store, id, answer, &|s| {
        let events = s
            .schedule_pause(periods, now)
            .map_err(StorageError::State)?;
        Ok(transition_rows(s, events))
    })
    .await
}

/// Removes a scheduled pause, or ends a pause now (`POST …/resume`): the next charge is due.
pub async fn unpause(
    storage: &dyn Storage,
    store: &StoreId,
    id: &SubscriptionId,
    now: i64,
    answer: Option<IdempotencyWrite>,
) -> Result<SubscriptionRecord, StorageError> {
    change(storage, store, id, answer, &|s| {
        let events = s.resume_pause(now).map_err(StorageError::State)?;
        Ok(transition_rows(s, events))
    })
    .await
}

/// One transition of one subscription, in one transaction with its events (and the answer).
async fn change(
    storage: &dyn Storage,
    store: &StoreId,
    id: &SubscriptionId,
    answer: Option<IdempotencyWrite>,
    rule: SubscriptionChange<'_>,
) -> Result<SubscriptionRecord, StorageError> {
    let ids = [id.clone()];
    let mut changed = storage
        .update_subscriptions(
            store,
            &ids,
            rule,
            &Extras {
                idempotency: answer,
                events: vec![],
            },
        )
        .await?;
    storage.durable().await?;
    changed.pop().ok_or(StorageError::NotFound)
}

/// Uncancels the subscriptions `ids` of `store` at `now` (canceled ones become active, active
/// ones stay), all or none.
pub async fn resume(
    storage: &dyn Storage,
    store: &StoreId,
    ids: &[SubscriptionId],
    now: i64,
    answer: Option<IdempotencyWrite>,
) -> Result<Vec<SubscriptionRecord>, StorageError> {
    let changed = storage
        .update_subscriptions(
            store,
            ids,
            &|s| {
                // One `subscription.uncanceled` per actual change: a retried uncancel of an
                // active subscription succeeds without an event.
                Ok(super::events::records(
                    &s.uncancel(now).map_err(StorageError::State)?,
                ))
            },
            &Extras {
                idempotency: answer,
                events: vec![],
            },
        )
        .await?;
    storage.durable().await?;
    Ok(changed)
}

/// [`resume`] of the ids a client named. An id that does not parse names no subscription, so
/// the answer is the one an unknown id in its place gets from the all-or-none change: the
/// refusal of the first id before it that the rule refuses (`State`), else `NotFound` — and
/// nothing is written.
pub async fn resume_named(
    storage: &dyn Storage,
    store: &StoreId,
    ids: &[String],
    now: i64,
    answer: Option<IdempotencyWrite>,
) -> Result<Vec<SubscriptionRecord>, StorageError> {
    let mut parsed = Vec::with_capacity(ids.len());
    for raw in ids {
        let Ok(id) = SubscriptionId::parse(raw) else {
            // What the change would have done up to here, on copies (an id named twice sees
            // its first change, as inside the transaction).
            let mut seen: Vec<SubscriptionRecord> = Vec::new();
            for id in &parsed {
                let mut s = match seen.iter().position(|s| s.id == *id) {
                    Some(i) => seen.swap_remove(i),
                    None => storage
                        .subscription(store, id)
                        .await?
                        .ok_or(StorageError::NotFound)?,
                };
                s.uncancel(now).map_err(StorageError::State)?;
                seen.push(s);
            }
            return Err(StorageError::NotFound);
        };
        parsed.push(id);
    }
    resume(storage, store, &parsed, now, answer).await
}

/// Keeps `answer` under its Idempotency-Key on its own (for requests whose changes were written
/// by several transactions before the answer was known). Nothing to do without a key.
pub async fn record_answer(
    storage: &dyn Storage,
    store: &StoreId,
    answer: Option<IdempotencyWrite>,
) -> Result<(), StorageError> {
    if answer.is_none() {
        return Ok(());
    }
    storage
        .update_subscriptions(
            store,
            &[],
            &|_| Ok(vec![]),
            &Extras {
                idempotency: answer,
                events: vec![],
            },
        )
        .await?;
    storage.durable().await
}

/// The entries of subscription `id` of `store` (`GET /subscriptions/{id}/entries`): each of its
/// orders with the period it paid, the original order first, then one per rebill, oldest first;
/// `None` if the store has no such subscription. An order that cannot be read any more is left
/// out (orders are never deleted, but a listing must not fail on one).
pub async fn entries(
    storage: &dyn Storage,
    store: &StoreId,
    id: &SubscriptionId,
) -> Result<Option<Vec<(Entry, OrderRecord)>>, StorageError> {
    let Some(s) = storage.subscription(store, id).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for e in s.entries() {
        if let Some(o) = storage.order(store, &e.order).await? {
            out.push((e, o));
        }
    }
    Ok(Some(out))
}
