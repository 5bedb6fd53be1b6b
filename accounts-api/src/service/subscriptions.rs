//! Subscriptions: cancel and resume, by the merchant (API) or the customer (account page). The
//! state rules are the domain's (`domain::subscription`); the event is built from the record as
//! changed, inside the same transaction.

use crate::domain::DomainEvent;
use crate::model::{SubscriptionRecord, now_ms};
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
    store: &str,
    id: &str,
    by: By,
    answer: Option<IdempotencyWrite>,
) -> Result<SubscriptionRecord, StorageError> {
    let now = now_ms();
    let ids = [id.to_owned()];
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

/// Resumes the canceled subscriptions `ids` of `store`, all or none.
pub async fn resume(
    storage: &dyn Storage,
    store: &str,
    ids: &[String],
    answer: Option<IdempotencyWrite>,
) -> Result<Vec<SubscriptionRecord>, StorageError> {
    let changed = storage
        .update_subscriptions(
            store,
            ids,
            &|s| {
                s.resume().map_err(StorageError::State)?;
                Ok(vec![super::events::record(
                    &DomainEvent::SubscriptionResumed(s.clone()),
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
