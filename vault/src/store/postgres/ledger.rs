//! The charge ledger on PostgreSQL: one row per (store, idempotency key), and
//! [`Store::charge_swap`](crate::store::Store::charge_swap) as a compare-and-swap the database
//! decides, so racing claims from any number of vault instances have one winner. The lease
//! inside an entry is the service's (`service::charges`); the backend only compares entries.

use super::{PgStore, db_err};
use crate::store::{ChargeEntry, StoreError, Swap};
use shared::domain::StoreId;

pub(super) fn get(
    pg: &PgStore,
    store: &StoreId,
    key: &str,
) -> Result<Option<ChargeEntry>, StoreError> {
    let (store, key) = (store.as_str().to_owned(), key.to_owned());
    pg.call(move |c| async move {
        let stmt = c
            .prepare_cached("SELECT entry FROM vault_charges WHERE store = $1 AND idem_key = $2")
            .await
            .map_err(db_err)?;
        match c.query_opt(&stmt, &[&store, &key]).await.map_err(db_err)? {
            None => Ok(None),
            Some(row) => ChargeEntry::decode(row.try_get(0).map_err(db_err)?).map(Some),
        }
    })
}

pub(super) fn swap(
    pg: &PgStore,
    store: &StoreId,
    key: &str,
    expected: Option<&ChargeEntry>,
    new: &ChargeEntry,
) -> Result<Swap, StoreError> {
    let (store, key) = (store.as_str().to_owned(), key.to_owned());
    let expected = expected.cloned();
    let value = new.encode()?;
    pg.call(move |mut c| async move {
        let Some(expected) = expected else {
            // Insert-if-absent: of racing claims the unique key lets one in; the others
            // wait for its commit and then read what it wrote.
            let stmt = c
                .prepare_cached(
                    "INSERT INTO vault_charges (store, idem_key, entry) VALUES ($1, $2, $3) \
                         ON CONFLICT (store, idem_key) DO NOTHING",
                )
                .await
                .map_err(db_err)?;
            if c.execute(&stmt, &[&store, &key, &value])
                .await
                .map_err(db_err)?
                == 1
            {
                return Ok(Swap::Done);
            }
            let row = c
                .query_opt(
                    "SELECT entry FROM vault_charges WHERE store = $1 AND idem_key = $2",
                    &[&store, &key],
                )
                .await
                .map_err(db_err)?;
            let current = match row {
                Some(r) => Some(Box::new(ChargeEntry::decode(
                    r.try_get(0).map_err(db_err)?,
                )?)),
                None => None,
            };
            return Ok(Swap::Changed(current));
        };
        // The compare is on the decoded entry (an entry written by an older format still
        // matches), under the row lock, so no other swap can slip in between.
        let tx = c.transaction().await.map_err(db_err)?;
        let row = tx
            .query_opt(
                "SELECT entry FROM vault_charges WHERE store = $1 AND idem_key = $2 \
                     FOR UPDATE",
                &[&store, &key],
            )
            .await
            .map_err(db_err)?;
        let current = match row {
            Some(r) => Some(ChargeEntry::decode(r.try_get(0).map_err(db_err)?)?),
            None => None,
        };
        if current.as_ref() != Some(&expected) {
            return Ok(Swap::Changed(current.map(Box::new)));
        }
        tx.execute(
            "UPDATE vault_charges SET entry = $3 WHERE store = $1 AND idem_key = $2",
            &[&store, &key, &value],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Swap::Done)
    })
}
