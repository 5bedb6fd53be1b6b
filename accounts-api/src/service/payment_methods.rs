//! Saved payment methods of an account.

use crate::model::{AccountId, StoreId};
use crate::storage::{Extras, Storage, StorageError};

/// Forgets a payment method of an account; its subscriptions that used it become
/// manual-renewal (no payment method, no automatic renewal), changed at `now` — one
/// transaction with `extras`.
pub async fn forget(
    storage: &dyn Storage,
    store: &StoreId,
    account: &AccountId,
    pm: &str,
    now: i64,
    extras: &Extras,
) -> Result<(), StorageError> {
    storage
        .update_account_and_subscriptions(
            store,
            account,
            &|a| a.payment_methods.retain(|p| p.id != pm),
            &|s| {
                if s.payment_method.as_deref() != Some(pm) {
                    return false;
                }
                s.payment_method_removed(now);
                true
            },
            extras,
        )
        .await
        .map(drop)
}
