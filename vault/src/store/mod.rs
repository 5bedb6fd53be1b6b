//! The vault's storage port: the [`Store`] trait the service talks to, and its backends (sled,
//! the embedded default, in [`sled`]; PostgreSQL for several instances, in [`postgres`]). A
//! backend only stores: it keeps each multi-key change
//! in one transaction and enforces the uniqueness rules there (one record per keyed
//! fingerprint, one ledger entry per store + idempotency key); every business rule (sealing,
//! dedupe under several fingerprint versions, the charge protocol, key custody) is the service's.
//!
//! Invariants every backend keeps (checked by the conformance suite, `conformance.rs`):
//! - a record and its index entries change together or not at all;
//! - two concurrent inserts with one fingerprint make one record (the second sees the first);
//! - [`Store::charge_swap`] is a compare-and-swap: of concurrent swaps from one expected value,
//!   exactly one succeeds;
//! - [`Store::meta_put_if_absent`] has one winner: concurrent callers all get the same value;
//! - a write is on disk once [`Store::durable`] resolves (callers acknowledge only then).
//!
//! The audit log is not in the store: it is the service's, in segment files (`crate::audit`),
//! and the service writes a token operation's entry durably before the change reaches the
//! store. A backend of an older folder hands its audit entries over once
//! ([`Store::legacy_audit`]).

pub(crate) mod postgres;
mod record;
pub(crate) mod sled;

#[cfg(test)]
pub(crate) mod conformance;

pub use self::postgres::{MIGRATIONS, PgStore};
pub use self::sled::{SledStore, StoppedFolder, open_db};
pub use record::{ChargeEntry, ChargeLease, RewrapBatch, Stored, StoredRecord};

use crate::audit::log::LegacyEntries;
use shared::domain::{AccountId, PaymentMethodId, StoreId};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Storage failures. No HTTP and no backend types: the API maps every one to a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, its own error); the text is for the log only.
    #[error("storage error: {0}")]
    Backend(String),
    /// Stored bytes do not decode, or an index points nowhere.
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    /// Another process holds the data folder.
    #[error("data folder {path} is in use by another process (is the vault running?)")]
    Locked { path: String },
    #[error("flush to disk failed: {0}")]
    Flush(String),
    #[error("internal lock poisoned")]
    Poisoned,
    /// Start refused: another vault instance held the database's instance lock exclusively (it
    /// is changing keys) for longer than this instance waits.
    #[error(
        "a key change is in progress on another vault instance of this database (waited \
         {waited_secs} s for it): start this instance after it, with the changed key files \
         copied from that instance"
    )]
    KeyChangeElsewhere { waited_secs: u64 },
    /// This instance was cut off from the shared database while another instance changed keys:
    /// its keys in memory are out of date, so it refuses every store call until restarted.
    #[error(
        "another vault instance changed keys while this one was cut off from the database: \
         restart this instance with the changed key files copied from that instance"
    )]
    MissedKeyChange,
}

/// Held for the length of one key change (rotate, retire, fingerprint rotation): the store's
/// word that no other vault process is using it, and that none can start until this is dropped
/// (dropping releases it). A store only one process can open (sled) grants it for nothing; a
/// shared database grants it only while no other instance is registered on it (`postgres`).
#[must_use = "the key change is covered only while the guard is held"]
pub struct KeyChangeGuard {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl KeyChangeGuard {
    /// The guard of a store no other process can open: nothing to release.
    pub fn sole_process() -> Self {
        Self { release: None }
    }

    /// A guard that runs `release` when dropped.
    pub fn releasing(release: impl FnOnce() + Send + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for KeyChangeGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Result of [`Store::charge_swap`].
#[derive(Debug, Clone, PartialEq)]
pub enum Swap {
    /// The entry was what the caller expected and now holds the new value.
    Done,
    /// The entry changed meanwhile: this is what it holds now (`None`: absent).
    Changed(Option<Box<ChargeEntry>>),
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Records per value (a key version), plus the number of records that do not decode.
pub type Counts = (BTreeMap<u32, u64>, u64);

/// The storage port. Every method is blocking except [`Store::durable`]; callers on an async
/// runtime run long scans (`count_by`, batches) off the async workers.
pub trait Store: Send + Sync {
    /// Inserts `record` unless one of `fingerprints` is already indexed (then returns that
    /// record); indexes it under `fingerprints[0]`.
    fn insert(&self, record: StoredRecord, fingerprints: &[[u8; 32]])
    -> Result<Stored, StoreError>;
    /// The record indexed under the first of `fingerprints` that is indexed.
    fn find_fingerprint(
        &self,
        fingerprints: &[[u8; 32]],
    ) -> Result<Option<StoredRecord>, StoreError>;
    /// The record with this id, whatever its store (the service scopes it).
    fn get(&self, id: &PaymentMethodId) -> Result<Option<StoredRecord>, StoreError>;
    /// Records of one account, oldest first.
    fn list(&self, store: &StoreId, account: &AccountId) -> Result<Vec<StoredRecord>, StoreError>;
    /// Removes the record (and with it its wrapped data key) and its index entries if it
    /// belongs to `store`; false if there was none.
    fn delete(&self, store: &StoreId, id: &PaymentMethodId) -> Result<bool, StoreError>;
    /// Removes every record of one account; returns how many.
    fn erase_account(&self, store: &StoreId, account: &AccountId) -> Result<u64, StoreError>;
    fn record_count(&self) -> Result<u64, StoreError>;
    /// Records per value of `f`, plus undecodable ones. A full scan; no token is opened.
    fn count_by(&self, f: &dyn Fn(&StoredRecord) -> u32) -> Result<Counts, StoreError>;
    /// Ids (as stored keys) of up to `limit` records after `after`, in key order.
    fn record_ids_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError>;
    /// In one transaction, replaces the wrapped data key of up to `limit` records after
    /// `after` that are wrapped below `target`, with what `rewrap` returns (hex, version).
    fn rewrap_batch(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        target: u32,
        rewrap: &dyn Fn(&StoredRecord) -> Option<(String, u32)>,
    ) -> Result<RewrapBatch, StoreError>;
    /// Moves one record's dedupe index entry from `old_fingerprint_hex` to `new_fingerprint`
    /// (version `new_version`) with the record, in one transaction; false if the record is gone
    /// or was moved meanwhile.
    fn reindex_one(
        &self,
        id: &[u8],
        old_fingerprint_hex: &str,
        new_fingerprint: [u8; 32],
        new_version: u32,
    ) -> Result<bool, StoreError>;

    /// Small durable settings (key-check values, custody markers, the folder id).
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// `meta` entries whose key starts with `prefix`.
    fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Puts and removes as one atomic change, on disk when it returns.
    fn meta_apply(&self, puts: &[(&str, &[u8])], removes: &[&str]) -> Result<(), StoreError>;
    /// Writes `value` under `key` only if the key is absent, and returns what `key` holds now:
    /// `value`, or what another writer (another instance starting at the same moment) put
    /// there first. Of concurrent calls on an absent key, every caller gets the one winner's
    /// value. On disk when it returns. First-start values (key-check values, the folder id)
    /// go through this, never through an upsert, so a loser sees the winner's value.
    fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// The ledger entry for (store, idempotency key).
    fn charge_get(&self, store: &StoreId, key: &str) -> Result<Option<ChargeEntry>, StoreError>;
    /// Compare-and-swap of one ledger entry: writes `new` only if the entry is `expected`
    /// (`None`: absent, i.e. insert-if-absent).
    fn charge_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<&ChargeEntry>,
        new: &ChargeEntry,
    ) -> Result<Swap, StoreError>;

    /// Audit entries an older format of this backend kept (`None`: none left).
    fn legacy_audit(&self) -> Option<&dyn LegacyEntries>;
    /// Resolves once every write made before the call is on disk (group commit when serving).
    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Blocking flush, for batch jobs that end with one.
    fn flush(&self) -> Result<(), StoreError>;
    /// True when no other process can open this store at the same time (sled locks its
    /// folder): a charge lease left by another process instance is then one of a dead process.
    fn single_process(&self) -> bool;
    /// Permission for one key change: `Some` (hold it for the whole change) when no other
    /// vault process uses this store now, nor can start while the guard is held; `None` when
    /// other instances are running (their key files would miss the change: the caller refuses).
    /// Never granted on the word of a connection that is gone.
    fn key_change_guard(&self) -> Result<Option<KeyChangeGuard>, StoreError>;
}

/// Opens the configured backend. sled: the data folder itself, locked while open. PostgreSQL:
/// the configured database (connect, refuse `synchronous_commit = off`, migrate), and the data
/// folder stays this instance's own (its audit chain), locked while open by a lock file since no
/// database lock covers it. `group_commit` needs a tokio runtime (the server); synchronous tools
/// pass `false`.
pub fn open(
    config: &crate::config::Config,
    group_commit: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    let data_dir = &config.data_dir;
    if let Some(database) = &config.database {
        let lock = lock_folder(data_dir)?;
        return Ok(Arc::new(PgStore::open(database)?.with_folder_lock(lock)));
    }
    let storage = &config.storage;
    let db = open_db(
        data_dir,
        storage.cache_capacity_bytes,
        storage.flush_every_ms,
    )?;
    Ok(Arc::new(SledStore::new(db, group_commit)?))
}

/// Name of the lock file in a data folder whose store is not sled.
pub const LOCK_FILE: &str = "vault.lock";

/// Takes an exclusive, non-blocking `flock` on `data_dir/vault.lock` (std's `File::try_lock`,
/// which is `flock(LOCK_EX | LOCK_NB)` on Linux, as the key-folder lock in `custody`): two vault
/// processes never share one audit folder. Released when the handle is dropped or the process
/// dies.
pub fn lock_folder(data_dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let locked = |_| StoreError::Locked {
        path: data_dir.display().to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(locked(())),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}
