//! Subscriptions: cancel and resume, by the merchant (API) or the customer (account page). The
//! state rules are the domain's (`domain::subscription`); the event is built from the record as
//! changed, inside the same transaction.

use crate::domain::DomainEvent;
use crate::model::{StoreId, SubscriptionId, SubscriptionRecord, now_ms};
use crate::storage::{Extras, IdempotencyWrite, Storage, StorageError};

/// Who asks for the change: the rules differ (a customer cancels only an active subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Merchant,
    Customer,
}

/// Cancels subscription `id` of `store`; `State` (fixed text) if its state refuses it.
pub async fn cancel(
    storage: &dyn Storage,
    store: &StoreId,
    id: &SubscriptionId,
    by: By,
    answer: Option<IdempotencyWrite>,
) -> Result<SubscriptionRecord, StorageError> {
    let now = now_ms();
    let ids = [id.clone()];
    let mut changed = storage
        .update_subscriptions(
            store,
            &ids,
            &|s| {
                match by {
                    By::Merchant => s.cancel(now),
                    By::Customer => s.cancel_by_customer(now),
                }
                .map_err(StorageError::State)?;
                Ok(vec![super::events::record(
                    &DomainEvent::SubscriptionCanceled(s.clone()),
                )])
            },
            &Extras {
                idempotency: answer,
                events: vec![],
            },
        )
        .await?;
    storage.durable().await?;
    changed.pop().ok_or(StorageError::NotFound)
}

/// Uncancels the subscriptions `ids` of `store` (canceled ones become active, active ones stay),
/// all or none.
pub async fn resume(
    storage: &dyn Storage,
    store: &StoreId,
    ids: &[SubscriptionId],
    answer: Option<IdempotencyWrite>,
) -> Result<Vec<SubscriptionRecord>, StorageError> {
    let changed = storage
        .update_subscriptions(
            store,
            ids,
            &|s| {
                // One `subscription.uncanceled` per actual change: a retried uncancel of an
                // active subscription succeeds without an event.
                if !s.resume().map_err(StorageError::State)? {
                    return Ok(vec![]);
                }
                Ok(vec![super::events::record(
                    &DomainEvent::SubscriptionUncanceled(s.clone()),
                )])
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
                s.resume().map_err(StorageError::State)?;
                seen.push(s);
            }
            return Err(StorageError::NotFound);
        };
        parsed.push(id);
    }
    resume(storage, store, &parsed, answer).await
}
