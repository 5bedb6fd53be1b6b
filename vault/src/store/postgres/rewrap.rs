//! `rewrap_batch` on PostgreSQL: one transaction that spans the caller's thread.
//!
//! The re-wrap closure runs on the calling thread (it holds the keyring and is neither `Send`
//! nor `'static`), but the batch must be one transaction, as in sled, so that a record changed
//! meanwhile (re-indexed, deleted) is never written back stale. So the transaction's task on
//! the backend's runtime locks the batch (`SELECT … FOR UPDATE`), hands the rows to the caller,
//! waits for the new values, writes them and commits. A caller that fails in between drops
//! its sender and the transaction rolls back.

use super::{PgStore, db_err, id_text, limit_param};
use crate::store::{RewrapBatch, StoreError, StoredRecord};

type Rows = Vec<(String, Vec<u8>)>;

pub(super) fn batch(
    store: &PgStore,
    after: Option<&[u8]>,
    limit: usize,
    target: u32,
    rewrap: &dyn Fn(&StoredRecord) -> Option<(String, u32)>,
) -> Result<RewrapBatch, StoreError> {
    if store.instances.is_stale() {
        return Err(StoreError::MissedKeyChange);
    }
    let after = id_text(after)?;
    let n = limit_param(limit);
    let (rows_tx, rows_rx) = std::sync::mpsc::sync_channel::<Rows>(1);
    let (updates_tx, updates_rx) = tokio::sync::oneshot::channel::<Rows>();
    let pool = store.pool.clone();
    let done = store.bridge.spawn(async move {
        let mut c = super::conn(&pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let rows = tx
            .query(
                "SELECT id, value FROM vault_records WHERE id > $1 ORDER BY id LIMIT $2 \
                 FOR UPDATE",
                &[&after, &n],
            )
            .await
            .map_err(db_err)?;
        let rows: Rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db_err)?;
        if rows_tx.send(rows).is_err() {
            return Err(StoreError::Backend("re-wrap caller gone".into()));
        }
        let updates = updates_rx
            .await
            .map_err(|_| StoreError::Backend("re-wrap batch abandoned".into()))?;
        for (id, value) in &updates {
            tx.execute(
                "UPDATE vault_records SET value = $2 WHERE id = $1",
                &[id, value],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    })?;
    // Without rows the task ended early: its answer says why.
    let Ok(rows) = super::bridge::wait(|| rows_rx.recv()) else {
        done.wait()?;
        return Err(StoreError::Backend("re-wrap batch ended early".into()));
    };
    let scanned = rows.len() as u64;
    let next_after = if rows.len() < limit {
        None
    } else {
        rows.last().map(|(id, _)| id.as_bytes().to_vec())
    };
    let (mut rewrapped, mut failed) = (0u64, 0u64);
    let mut updates = Rows::new();
    for (id, bytes) in rows {
        let Ok(mut r) = StoredRecord::decode(&bytes) else {
            failed += 1;
            continue;
        };
        if r.wrap_version() >= target || r.id != id {
            continue;
        }
        match rewrap(&r) {
            Some((wrapped, version)) => {
                r.wrapped_dek = wrapped;
                r.wrap_version = Some(version);
                let Ok(value) = r.encode() else {
                    failed += 1;
                    continue;
                };
                updates.push((id, value));
                rewrapped += 1;
            }
            None => failed += 1,
        }
    }
    // If the task is gone its answer below says why.
    let _ = updates_tx.send(updates);
    done.wait()?;
    Ok(RewrapBatch {
        scanned,
        rewrapped,
        failed,
        next_after,
    })
}
