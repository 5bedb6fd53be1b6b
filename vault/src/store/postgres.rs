//! The PostgreSQL backend of [`Store`] (issue 11): several vault instances on one database.
//! The only module that names tokio-postgres.
//!
//! Layout (schema in [`MIGRATIONS`], applied by `shared::pg::migrate` under an advisory lock):
//! - `vault_records`: one row per record: id, store, account, created, the fingerprint it is
//!   indexed under (`UNIQUE`: the dedupe index) and the record's bytes exactly as
//!   [`StoredRecord::encode`] gives them (sealing and associated data do not change);
//! - `vault_meta`: key-check values, custody markers, the folder id; shared by every instance;
//! - `vault_charges`: the charge ledger, one row per (store, idempotency key).
//!
//! Invariants, held by the database rather than by any process-local lock:
//! - A record and its index entries are one row, so they change together by construction.
//! - One record per fingerprint across processes: the insert is `ON CONFLICT DO NOTHING` on the
//!   unique fingerprint; a loser (the server makes it wait for the winner's commit) then reads
//!   the winner. Each statement is atomic on its own and the unique index is what decides, so
//!   no surrounding transaction is needed (it would only add two round trips).
//! - `meta_put_if_absent` is `INSERT … ON CONFLICT DO NOTHING`, then a read of the winner: two
//!   instances starting at once on an empty database agree on one key-check value / folder id.
//! - `charge_swap` is a compare-and-swap in the database: insert-if-absent, or `SELECT … FOR
//!   UPDATE`, compare the decoded entry, update, in one transaction.
//! - Ids are `COLLATE "C"`: `record_ids_after` and `rewrap_batch` walk them in byte order, as
//!   sled does.
//! - Every call is committed with `synchronous_commit` on (refused at start otherwise), so
//!   `durable` has nothing left to wait for.
//!
//! The blocking trait over the async driver: see `bridge`.

mod bridge;
mod instances;

use self::bridge::Bridge;
use self::instances::Instances;
use crate::audit::log::LegacyEntries;
use crate::store::{
    BoxFuture, ChargeEntry, Counts, KeyChangeGuard, RewrapBatch, Store, StoreError, Stored,
    StoredRecord, Swap,
};
use deadpool_postgres::Pool;
use shared::domain::{AccountId, PaymentMethodId, StoreId};

/// The vault's schema, one migration per entry (version = index + 1; never edit a released one,
/// append).
pub const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE vault_records (
    id          text COLLATE "C" PRIMARY KEY,
    store       text COLLATE "C" NOT NULL,
    account     text COLLATE "C" NOT NULL,
    created     text COLLATE "C" NOT NULL,
    fingerprint bytea NOT NULL UNIQUE,
    value       bytea NOT NULL
);
CREATE INDEX vault_records_by_account ON vault_records (store, account);
CREATE TABLE vault_meta (
    name  text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE vault_charges (
    store    text COLLATE "C" NOT NULL,
    idem_key text COLLATE "C" NOT NULL,
    entry    bytea NOT NULL,
    PRIMARY KEY (store, idem_key)
);
"#];

/// Rows per round trip of a full scan (`count_by`).
const SCAN_BATCH: i64 = 1000;

const SELECT_BY_FINGERPRINTS: &str =
    "SELECT fingerprint, value FROM vault_records WHERE fingerprint = ANY($1)";

pub struct PgStore {
    pool: Pool,
    /// This instance's registration (the instance lock of key changes, `instances`). Declared
    /// before `bridge`: it unregisters on the bridge's runtime when dropped.
    instances: Instances,
    bridge: Bridge,
    /// The lock file of this instance's data folder (audit chain), held while open; `None` for
    /// stores opened without a folder (tests playing several instances).
    _folder_lock: Option<std::fs::File>,
}

/// A driver error, for the log (`StoreError::Backend`). tokio-postgres never puts the
/// connection string in its errors; the pool's come from the same driver.
fn db_err(e: tokio_postgres::Error) -> StoreError {
    if shared::pg::is_unavailable(&e) {
        StoreError::Backend(format!("database unavailable: {e}"))
    } else {
        StoreError::Backend(format!("database: {e}"))
    }
}

fn pg_err(e: shared::pg::PgError) -> StoreError {
    StoreError::Backend(e.to_string())
}

async fn conn(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    shared::pg::connection(pool).await.map_err(pg_err)
}

/// A stored id from a key the caller passes back (ids are ASCII; anything else is not ours).
fn id_text(key: Option<&[u8]>) -> Result<String, StoreError> {
    match key {
        None => Ok(String::new()),
        Some(k) => std::str::from_utf8(k)
            .map(str::to_owned)
            .map_err(|_| StoreError::Corrupt("record id")),
    }
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Of the rows found under any of `fingerprints`, the record under the first one listed.
fn first_indexed(
    fingerprints: &[Vec<u8>],
    rows: &[tokio_postgres::Row],
) -> Result<Option<StoredRecord>, StoreError> {
    for fp in fingerprints {
        for row in rows {
            if row.try_get::<_, &[u8]>(0).map_err(db_err)? == fp.as_slice() {
                return StoredRecord::decode(row.try_get(1).map_err(db_err)?).map(Some);
            }
        }
    }
    Ok(None)
}

impl PgStore {
    /// Connects (failing fast on an unreachable database or `synchronous_commit = off`) and
    /// brings the schema up to date.
    pub fn open(settings: &shared::pg::PgSettings) -> Result<Self, StoreError> {
        Ok(Self::connect(settings)?.0)
    }

    /// [`PgStore::open`], and how many migrations this call applied.
    fn connect(settings: &shared::pg::PgSettings) -> Result<(Self, usize), StoreError> {
        Self::connect_waiting(settings, instances::START_WAIT)
    }

    /// [`PgStore::connect`], waiting up to `wait` for a key change elsewhere to end.
    fn connect_waiting(
        settings: &shared::pg::PgSettings,
        wait: std::time::Duration,
    ) -> Result<(Self, usize), StoreError> {
        let bridge = Bridge::new()?;
        let pool = bridge
            .enter(|| shared::pg::pool(settings))?
            .map_err(pg_err)?;
        let p = pool.clone();
        let applied = bridge.run(async move {
            shared::pg::check(&p).await.map_err(pg_err)?;
            shared::pg::migrate(&p, "vault", MIGRATIONS)
                .await
                .map_err(pg_err)
        })?;
        if applied > 0 {
            tracing::info!(applied, "vault database schema migrated");
        }
        // After the migrations (the counter lives in `vault_meta`), before any custody check
        // reads the key state (`instances`, point 1).
        let instances = Instances::register(&bridge, settings, wait)?;
        let store = Self {
            pool,
            instances,
            bridge,
            _folder_lock: None,
        };
        Ok((store, applied))
    }

    /// Holds `lock` (this instance's data folder) for as long as the store is open.
    pub fn with_folder_lock(mut self, lock: std::fs::File) -> Self {
        self._folder_lock = Some(lock);
        self
    }

    /// Runs `f` with a pooled connection on the backend's runtime and waits for it.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if self.instances.is_stale() {
            return Err(StoreError::MissedKeyChange);
        }
        let pool = self.pool.clone();
        self.bridge.run(async move { f(conn(&pool).await?).await })
    }

    fn ids_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let after = id_text(after)?;
        let limit = limit_param(limit);
        self.call(move |c| async move {
            let stmt = c
                .prepare_cached("SELECT id FROM vault_records WHERE id > $1 ORDER BY id LIMIT $2")
                .await
                .map_err(db_err)?;
            let rows = c.query(&stmt, &[&after, &limit]).await.map_err(db_err)?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0).map(String::into_bytes))
                .collect::<Result<_, _>>()
                .map_err(db_err)
        })
    }
}

impl Store for PgStore {
    fn insert(
        &self,
        record: StoredRecord,
        fingerprints: &[[u8; 32]],
    ) -> Result<Stored, StoreError> {
        let Some(primary) = fingerprints.first().map(|f| f.to_vec()) else {
            return Err(StoreError::Corrupt("insert without a fingerprint"));
        };
        let fps: Vec<Vec<u8>> = fingerprints.iter().map(|f| f.to_vec()).collect();
        let value = record.encode()?;
        self.call(move |c| async move {
            let select = c
                .prepare_cached(SELECT_BY_FINGERPRINTS)
                .await
                .map_err(db_err)?;
            let insert = c
                .prepare_cached(
                    "INSERT INTO vault_records (id, store, account, created, fingerprint, value) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (fingerprint) DO NOTHING",
                )
                .await
                .map_err(db_err)?;
            // A lost race reads the winner on the next turn; a winner deleted in between
            // lets this insert try again. With one fingerprint version (no re-index running) the
            // unique index alone decides, so the insert goes first: the service has just looked
            // the fingerprint up, and a conflict is the rare case that needs the read. With
            // several versions an older one may index the token under another value the index
            // cannot compare, so the read comes first.
            for turn in 0..3 {
                if turn > 0 || fps.len() > 1 {
                    let rows = c.query(&select, &[&fps]).await.map_err(db_err)?;
                    if let Some(existing) = first_indexed(&fps, &rows)? {
                        return Ok(Stored::Existing(existing));
                    }
                }
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                    &record.id,
                    &record.store,
                    &record.account,
                    &record.created,
                    &primary,
                    &value,
                ];
                if c.execute(&insert, &params).await.map_err(db_err)? == 1 {
                    return Ok(Stored::Created(record));
                }
            }
            Err(StoreError::Backend(
                "a fingerprint kept changing hands during one insert".into(),
            ))
        })
    }

    fn find_fingerprint(
        &self,
        fingerprints: &[[u8; 32]],
    ) -> Result<Option<StoredRecord>, StoreError> {
        let fps: Vec<Vec<u8>> = fingerprints.iter().map(|f| f.to_vec()).collect();
        self.call(move |c| async move {
            let stmt = c
                .prepare_cached(SELECT_BY_FINGERPRINTS)
                .await
                .map_err(db_err)?;
            let rows = c.query(&stmt, &[&fps]).await.map_err(db_err)?;
            first_indexed(&fps, &rows)
        })
    }

    fn get(&self, id: &PaymentMethodId) -> Result<Option<StoredRecord>, StoreError> {
        let id = id.as_str().to_owned();
        self.call(move |c| async move {
            let stmt = c
                .prepare_cached("SELECT value FROM vault_records WHERE id = $1")
                .await
                .map_err(db_err)?;
            let Some(row) = c.query_opt(&stmt, &[&id]).await.map_err(db_err)? else {
                return Ok(None);
            };
            let r = StoredRecord::decode(row.try_get(0).map_err(db_err)?)?;
            // A record value moved under another id is corrupt, not a different record.
            if r.id != id {
                return Err(StoreError::Corrupt("record id does not match its key"));
            }
            Ok(Some(r))
        })
    }

    fn list(&self, store: &StoreId, account: &AccountId) -> Result<Vec<StoredRecord>, StoreError> {
        let (store, account) = (store.as_str().to_owned(), account.as_str().to_owned());
        self.call(move |c| async move {
            let stmt = c
                .prepare_cached(
                    "SELECT value FROM vault_records WHERE store = $1 AND account = $2 \
                     ORDER BY created, id",
                )
                .await
                .map_err(db_err)?;
            let rows = c.query(&stmt, &[&store, &account]).await.map_err(db_err)?;
            rows.iter()
                .map(|row| StoredRecord::decode(row.try_get(0).map_err(db_err)?))
                .collect()
        })
    }

    fn delete(&self, store: &StoreId, id: &PaymentMethodId) -> Result<bool, StoreError> {
        let (store, id) = (store.as_str().to_owned(), id.as_str().to_owned());
        // The row holds the wrapped data key: deleting it is the crypto-shredding. Another
        // store's record is answered exactly like a missing one.
        self.call(move |c| async move {
            let n = c
                .execute(
                    "DELETE FROM vault_records WHERE id = $1 AND store = $2",
                    &[&id, &store],
                )
                .await
                .map_err(db_err)?;
            Ok(n > 0)
        })
    }

    fn erase_account(&self, store: &StoreId, account: &AccountId) -> Result<u64, StoreError> {
        let (store, account) = (store.as_str().to_owned(), account.as_str().to_owned());
        self.call(move |c| async move {
            c.execute(
                "DELETE FROM vault_records WHERE store = $1 AND account = $2",
                &[&store, &account],
            )
            .await
            .map_err(db_err)
        })
    }

    fn record_count(&self) -> Result<u64, StoreError> {
        self.call(|c| async move {
            let row = c
                .query_one("SELECT count(*) FROM vault_records", &[])
                .await
                .map_err(db_err)?;
            let n: i64 = row.try_get(0).map_err(db_err)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn count_by(&self, f: &dyn Fn(&StoredRecord) -> u32) -> Result<Counts, StoreError> {
        // In batches by id, `f` on this thread (it is neither `Send` nor `'static`). Like
        // sled's iterator this is not one snapshot: records changed during the scan may be
        // counted before or after the change.
        let mut counts = std::collections::BTreeMap::new();
        let mut corrupt = 0u64;
        let mut after = String::new();
        loop {
            let from = after.clone();
            let rows: Vec<(String, Vec<u8>)> = self.call(move |c| async move {
                let stmt = c
                    .prepare_cached(
                        "SELECT id, value FROM vault_records WHERE id > $1 ORDER BY id LIMIT $2",
                    )
                    .await
                    .map_err(db_err)?;
                let rows = c
                    .query(&stmt, &[&from, &SCAN_BATCH])
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, tokio_postgres::Error>>()
                    .map_err(db_err)
            })?;
            let full = rows.len() >= usize::try_from(SCAN_BATCH).unwrap_or(usize::MAX);
            for (_, v) in &rows {
                match StoredRecord::decode(v) {
                    Ok(r) => *counts.entry(f(&r)).or_insert(0u64) += 1,
                    Err(_) => corrupt += 1,
                }
            }
            match rows.into_iter().last() {
                Some((id, _)) if full => after = id,
                _ => break,
            }
        }
        Ok((counts, corrupt))
    }

    fn record_ids_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.ids_after(after, limit)
    }

    fn rewrap_batch(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        target: u32,
        rewrap: &dyn Fn(&StoredRecord) -> Option<(String, u32)>,
    ) -> Result<RewrapBatch, StoreError> {
        rewrap::batch(self, after, limit, target, rewrap)
    }

    fn reindex_one(
        &self,
        id: &[u8],
        old_fingerprint_hex: &str,
        new_fingerprint: [u8; 32],
        new_version: u32,
    ) -> Result<bool, StoreError> {
        let id = id_text(Some(id))?;
        let old = old_fingerprint_hex.to_owned();
        self.call(move |mut c| async move {
            let tx = c.transaction().await.map_err(db_err)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT value FROM vault_records WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(db_err)?
            else {
                return Ok(false);
            };
            let mut r = StoredRecord::decode(row.try_get(0).map_err(db_err)?)?;
            if r.fingerprint != old {
                return Ok(false);
            }
            r.fingerprint = hex::encode(new_fingerprint);
            r.fp_version = Some(new_version);
            let value = r.encode()?;
            let moved = tx
                .execute(
                    "UPDATE vault_records SET fingerprint = $2, value = $3 WHERE id = $1",
                    &[&id, &new_fingerprint.as_slice(), &value],
                )
                .await;
            match moved {
                Ok(_) => {}
                // sled would silently take the index entry from the other record; here the
                // unique index refuses, and two records of one token are reported, not hidden.
                Err(e) if shared::pg::unique_violation(&e).is_some() => {
                    return Err(StoreError::Corrupt(
                        "another record is indexed under the new fingerprint",
                    ));
                }
                Err(e) => return Err(db_err(e)),
            }
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        })
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.call(move |c| async move {
            let stmt = c
                .prepare_cached("SELECT value FROM vault_meta WHERE name = $1")
                .await
                .map_err(db_err)?;
            let row = c.query_opt(&stmt, &[&key]).await.map_err(db_err)?;
            row.map(|r| r.try_get(0)).transpose().map_err(db_err)
        })
    }

    fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT name, value FROM vault_meta WHERE starts_with(name, $1) ORDER BY name",
                    &[&prefix],
                )
                .await
                .map_err(db_err)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(db_err)
        })
    }

    fn meta_apply(&self, puts: &[(&str, &[u8])], removes: &[&str]) -> Result<(), StoreError> {
        let puts: Vec<(String, Vec<u8>)> = puts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        let removes: Vec<String> = removes.iter().map(|k| (*k).to_owned()).collect();
        self.call(move |mut c| async move {
            let tx = c.transaction().await.map_err(db_err)?;
            for (k, v) in &puts {
                tx.execute(
                    "INSERT INTO vault_meta (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[k, v],
                )
                .await
                .map_err(db_err)?;
            }
            if !removes.is_empty() {
                tx.execute("DELETE FROM vault_meta WHERE name = ANY($1)", &[&removes])
                    .await
                    .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
    }

    fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.call(move |c| async move {
            let insert = c
                .prepare_cached(
                    "INSERT INTO vault_meta (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .await
                .map_err(db_err)?;
            let select = c
                .prepare_cached("SELECT value FROM vault_meta WHERE name = $1")
                .await
                .map_err(db_err)?;
            // The unique name decides: a racing insert waits for the winner's commit and then
            // does nothing; the next statement (a new snapshot) reads the winner. Two
            // statements, since one would read with the snapshot taken before the winner
            // committed. A winner removed in between leaves the key absent: try again.
            for _ in 0..3 {
                if c.execute(&insert, &[&key, &value]).await.map_err(db_err)? == 1 {
                    return Ok(value);
                }
                if let Some(row) = c.query_opt(&select, &[&key]).await.map_err(db_err)? {
                    return row.try_get(0).map_err(db_err);
                }
            }
            Err(StoreError::Backend(
                "a settings key kept changing hands during one insert".into(),
            ))
        })
    }

    fn charge_get(&self, store: &StoreId, key: &str) -> Result<Option<ChargeEntry>, StoreError> {
        ledger::get(self, store, key)
    }

    fn charge_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<&ChargeEntry>,
        new: &ChargeEntry,
    ) -> Result<Swap, StoreError> {
        ledger::swap(self, store, key, expected, new)
    }

    fn legacy_audit(&self) -> Option<&dyn LegacyEntries> {
        None
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every call above returned after its commit, with synchronous_commit on.
        Box::pin(async { Ok(()) })
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn single_process(&self) -> bool {
        false
    }

    fn key_change_guard(&self) -> Result<Option<KeyChangeGuard>, StoreError> {
        self.instances.grant(&self.bridge)
    }
}

mod ledger;
mod rewrap;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
