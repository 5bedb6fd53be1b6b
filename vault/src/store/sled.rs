//! The sled backend of [`Store`]: one embedded folder, zero setup. The only module that names
//! sled.
//!
//! Layout (one `Db`, five trees; folders written before segment files also hold an `audit`
//! tree, moved into audit segment 1 at the first start and then dropped):
//! - `records`:      record id → [`StoredRecord`], compact (older records JSON; see
//!   `store::record`): masked view fields + sealed token
//! - `fingerprints`: keyed fingerprint (32 bytes) → record id; dedupe without decryption
//! - `by_account`:   `store \0 account \0 id` → empty; lists and erasure per account
//! - `meta`:         key-check values, custody markers, the data folder id
//! - `charges`:      `store \0 idempotency key` → [`ChargeEntry`] JSON (the charge ledger)
//!
//! Invariants:
//! - A store writes the index entries first and the record last, as plain writes under the
//!   token's fingerprint shard (no sled transaction: those take a process-wide exclusive lock
//!   and roll the log buffer, which capped durable stores at a third of the rate). sled
//!   recovers a prefix of its log, so a record never lacks its index entries; a crash can only
//!   leave entries that point to no record, which readers treat as absent, the next store of
//!   that token overwrites (a dangling account entry stays: it cannot be told from a store in
//!   progress, and lists skip it). Deletes, erasures, re-wraps and re-indexes
//!   stay transactions (no record half-removed); a re-index takes the shard too, so a store
//!   never checks the index while a record moves between fingerprints.
//! - Store and account ids are 1–64 chars of `A-Za-z0-9_-` (parsed newtypes), so the `\0`
//!   separator in `by_account` and `charges` keys cannot be forged.
//! - `durable` goes through one group-commit flusher (RUST-NOTES trap 4: concurrent
//!   `flush_async` deadlocks sled 0.34).

mod filter;
mod folder;

pub use folder::{StoppedFolder, open_db};

use self::filter::FpFilter;

use crate::audit::AuditError;
use crate::audit::log::LegacyEntries;
use crate::store::{
    BoxFuture, ChargeEntry, Counts, KeyChangeGuard, RewrapBatch, Store, StoreError, Stored,
    StoredRecord, Swap,
};
use ::sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use shared::domain::{AccountId, PaymentMethodId, StoreId};

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub struct SledStore {
    db: ::sled::Db,
    records: ::sled::Tree,
    fingerprints: ::sled::Tree,
    by_account: ::sled::Tree,
    meta: ::sled::Tree,
    charges: ::sled::Tree,
    /// Which fingerprints may be indexed (no false "no"; see `filter`).
    fp_filter: FpFilter,
    /// Inserts of one primary fingerprint run one at a time (sharded): the filter check, the
    /// index read when it says "maybe" and the insert happen as one step in this process, the
    /// only one that can open the folder.
    fp_locks: Vec<std::sync::Mutex<()>>,
    commit: Option<shared::durable::GroupCommit>,
    /// Always true (sled locks its folder); tests turn it off to play a shared database.
    single_process: bool,
}

fn joined(parts: &[&str], trailing: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    if trailing {
        k.push(0);
    }
    k
}

fn account_prefix(store: &str, account: &str) -> Vec<u8> {
    joined(&[store, account], true)
}

fn account_key(store: &str, account: &str, id: &str) -> Vec<u8> {
    joined(&[store, account, id], false)
}

fn charge_key(store: &str, key: &str) -> Vec<u8> {
    joined(&[store, key], false)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

impl SledStore {
    /// Wraps an open `Db`. Group commit needs a tokio runtime: pass `with_group_commit = false`
    /// from synchronous tools (tests, the benchmark), where `durable` then flushes inline.
    pub fn new(db: ::sled::Db, with_group_commit: bool) -> Result<Self, StoreError> {
        let commit = with_group_commit.then(|| shared::durable::GroupCommit::start(db.clone()));
        let fingerprints = db.open_tree("fingerprints")?;
        let fp_filter = FpFilter::with_capacity(2 * fingerprints.len() as u64);
        for item in fingerprints.iter().keys() {
            if let Ok(fp) = <[u8; 32]>::try_from(item?.as_ref()) {
                fp_filter.add(&fp);
            }
        }
        Ok(Self {
            records: db.open_tree("records")?,
            fingerprints,
            fp_filter,
            fp_locks: (0..256).map(|_| std::sync::Mutex::new(())).collect(),
            by_account: db.open_tree("by_account")?,
            meta: db.open_tree("meta")?,
            charges: db.open_tree("charges")?,
            commit,
            single_process: true,
            db,
        })
    }

    pub fn db(&self) -> &::sled::Db {
        &self.db
    }

    /// Answers `single_process() == false`, as a database several vault processes share
    /// would: lets one test process play two vault instances on one store.
    #[cfg(test)]
    pub(crate) fn shared_for_test(mut self) -> Self {
        self.single_process = false;
        self
    }

    fn ids_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let range = match after {
            Some(a) => self
                .records
                .range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.records.iter(),
        };
        let mut ids = Vec::with_capacity(limit);
        for item in range.take(limit) {
            let (k, _) = item?;
            ids.push(k.to_vec());
        }
        Ok(ids)
    }

    /// The record a fingerprint index entry points to; `None` for no entry, or for one left
    /// pointing to no record (a crash mid-insert, or an insert in progress under its shard).
    fn indexed(&self, fp: &[u8; 32]) -> Result<Option<StoredRecord>, StoreError> {
        let Some(id) = self.fingerprints.get(fp)? else {
            return Ok(None);
        };
        match self.records.get(&id)? {
            Some(bytes) => Ok(Some(StoredRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn account_ids(&self, store: &str, account: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = account_prefix(store, account);
        let mut ids = Vec::new();
        for item in self.by_account.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = k
                .get(prefix.len()..)
                .ok_or(StoreError::Corrupt("account index key"))?;
            ids.push(id.to_vec());
        }
        Ok(ids)
    }
}

/// Removes a record and its index entries inside a transaction (crypto-shredding: the wrapped
/// data key goes with the record).
fn remove_in_tx(
    records: &TransactionalTree,
    fps: &TransactionalTree,
    by_account: &TransactionalTree,
    r: &StoredRecord,
) -> TxResult<()> {
    records.remove(r.id.as_bytes())?;
    // Only this record's entry: a store of the same token after a crash may have taken it.
    if let Ok(fp) = hex::decode(&r.fingerprint)
        && fps.get(&fp)?.as_deref() == Some(r.id.as_bytes())
    {
        fps.remove(fp)?;
    }
    by_account.remove(account_key(&r.store, &r.account, &r.id))?;
    Ok(())
}

fn decode_in_tx(bytes: &[u8]) -> TxResult<StoredRecord> {
    StoredRecord::decode(bytes).or_else(abort)
}

impl Store for SledStore {
    fn insert(
        &self,
        record: StoredRecord,
        fingerprints: &[[u8; 32]],
    ) -> Result<Stored, StoreError> {
        let Some(primary) = fingerprints.first() else {
            return Err(StoreError::Corrupt("insert without a fingerprint"));
        };
        let value = record.encode()?;
        let akey = account_key(&record.store, &record.account, &record.id);
        let _serial = self.fp_locks[usize::from(primary[0])]
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        // Dedupe: with the shard held, an index entry for one of `fingerprints` either exists
        // already (then the filter says maybe and it is read here) or cannot appear before this
        // insert ends (stores and re-indexes of one token take the same shard).
        if fingerprints.iter().any(|f| self.fp_filter.may_contain(f)) {
            for fp in fingerprints {
                if let Some(r) = self.indexed(fp)? {
                    return Ok(Stored::Existing(r));
                }
            }
        }
        // No transaction (sled's serialise every reader and writer of the process on one lock,
        // and roll the log buffer twice): index entries first, the record last, each a plain
        // write. sled recovers a prefix of its log, so after a crash a record always has its
        // index entries; what a crash can leave is an entry pointing to no record, which every
        // reader treats as absent and the next store of that token overwrites.
        self.fp_filter.add(primary);
        self.fingerprints.insert(primary, record.id.as_bytes())?;
        self.by_account.insert(akey.as_slice(), &[][..])?;
        self.records.insert(record.id.as_bytes(), value)?;
        Ok(Stored::Created(record))
    }

    fn find_fingerprint(
        &self,
        fingerprints: &[[u8; 32]],
    ) -> Result<Option<StoredRecord>, StoreError> {
        for fp in fingerprints
            .iter()
            .filter(|f| self.fp_filter.may_contain(f))
        {
            if let Some(r) = self.indexed(fp)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn get(&self, id: &PaymentMethodId) -> Result<Option<StoredRecord>, StoreError> {
        let Some(v) = self.records.get(id.as_str())? else {
            return Ok(None);
        };
        let r = StoredRecord::decode(&v)?;
        // A record value moved under another key is corrupt, not a different record.
        if r.id != id.as_str() {
            return Err(StoreError::Corrupt("record id does not match its key"));
        }
        Ok(Some(r))
    }

    fn list(&self, store: &StoreId, account: &AccountId) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        for id in self.account_ids(store.as_str(), account.as_str())? {
            if let Some(v) = self.records.get(id)? {
                out.push(StoredRecord::decode(&v)?);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn delete(&self, store: &StoreId, id: &PaymentMethodId) -> Result<bool, StoreError> {
        let trees = (&self.records, &self.fingerprints, &self.by_account);
        trees
            .transaction(|(records, fps, by_account)| {
                let existing = match records.get(id.as_str())? {
                    Some(bytes) => Some(decode_in_tx(&bytes)?),
                    None => None,
                };
                // Another store's record is answered exactly like a missing one.
                let existing = existing.filter(|r| r.store == store.as_str());
                if let Some(r) = &existing {
                    remove_in_tx(records, fps, by_account, r)?;
                }
                Ok(existing.is_some())
            })
            .map_err(tx_err)
    }

    fn erase_account(&self, store: &StoreId, account: &AccountId) -> Result<u64, StoreError> {
        // sled transactions cannot iterate, so collect the ids first; each is re-checked inside
        // the transaction. A record stored concurrently with the erase may survive it (the
        // caller sees it in the next list); none is ever half-removed.
        let ids = self.account_ids(store.as_str(), account.as_str())?;
        let trees = (&self.records, &self.fingerprints, &self.by_account);
        trees
            .transaction(|(records, fps, by_account)| {
                let mut n = 0u64;
                for id in &ids {
                    let Some(bytes) = records.get(id)? else {
                        // An entry pointing to no record: a crash mid-store left it (harmless,
                        // lists skip it), or a store is writing that record right now, whose
                        // entry must stay (removing it would leave that record unlisted).
                        continue;
                    };
                    let r = decode_in_tx(&bytes)?;
                    if r.store != store.as_str() || r.account != account.as_str() {
                        continue;
                    }
                    remove_in_tx(records, fps, by_account, &r)?;
                    n += 1;
                }
                Ok(n)
            })
            .map_err(tx_err)
    }

    fn record_count(&self) -> Result<u64, StoreError> {
        Ok(self.records.len() as u64)
    }

    fn count_by(&self, f: &dyn Fn(&StoredRecord) -> u32) -> Result<Counts, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        let mut corrupt = 0u64;
        for item in self.records.iter() {
            let (_, v) = item?;
            match StoredRecord::decode(&v) {
                Ok(r) => *counts.entry(f(&r)).or_insert(0u64) += 1,
                Err(_) => corrupt += 1,
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
        let ids = self.ids_after(after, limit)?;
        let next_after = if ids.len() < limit {
            None
        } else {
            ids.last().cloned()
        };
        let scanned = ids.len() as u64;
        let (rewrapped, failed) = self
            .records
            .transaction(|records| {
                let (mut done, mut failed) = (0u64, 0u64);
                for id in &ids {
                    let Some(bytes) = records.get(id)? else {
                        // An entry pointing to no record: a crash mid-store left it (harmless,
                        // lists skip it), or a store is writing that record right now, whose
                        // entry must stay (removing it would leave that record unlisted).
                        continue;
                    };
                    let Ok(mut r) = StoredRecord::decode(&bytes) else {
                        failed += 1;
                        continue;
                    };
                    if r.wrap_version() >= target || r.id.as_bytes() != id.as_slice() {
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
                            records.insert(id.as_slice(), value)?;
                            done += 1;
                        }
                        None => failed += 1,
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>((done, failed))
            })
            .map_err(tx_err)?;
        Ok(RewrapBatch {
            scanned,
            rewrapped,
            failed,
            next_after,
        })
    }

    fn reindex_one(
        &self,
        id: &[u8],
        old_fingerprint_hex: &str,
        new_fingerprint: [u8; 32],
        new_version: u32,
    ) -> Result<bool, StoreError> {
        // Serialised with stores of the same token (which check the index outside any
        // transaction): their primary fingerprint is under the new version, as this one.
        let _serial = self.fp_locks[usize::from(new_fingerprint[0])]
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        // Before the index entry exists: the filter never answers a false "no".
        self.fp_filter.add(&new_fingerprint);
        (&self.records, &self.fingerprints)
            .transaction(|(records, fps)| {
                let Some(bytes) = records.get(id)? else {
                    return Ok(false);
                };
                let mut r = decode_in_tx(&bytes)?;
                if r.fingerprint != old_fingerprint_hex {
                    return Ok(false);
                }
                if let Ok(old) = hex::decode(old_fingerprint_hex)
                    && fps.get(&old)?.as_deref() == Some(id)
                {
                    fps.remove(old)?;
                }
                fps.insert(&new_fingerprint, id)?;
                r.fingerprint = hex::encode(new_fingerprint);
                r.fp_version = Some(new_version);
                let value = r.encode().or_else(abort)?;
                records.insert(id, value)?;
                Ok(true)
            })
            .map_err(tx_err)
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(prefix) {
            let (k, v) = item?;
            let k = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("meta key"))?;
            out.push((k, v.to_vec()));
        }
        Ok(out)
    }

    fn meta_apply(&self, puts: &[(&str, &[u8])], removes: &[&str]) -> Result<(), StoreError> {
        let mut batch = ::sled::Batch::default();
        for (k, v) in puts {
            batch.insert(k.as_bytes(), *v);
        }
        for k in removes {
            batch.remove(k.as_bytes());
        }
        self.meta.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        // A single-key compare-and-swap from "absent": sled decides the winner, and a lost
        // swap reports the value that won. A key removed in between is absent again: retry.
        for _ in 0..3 {
            let current = match self
                .meta
                .compare_and_swap(key, None::<&[u8]>, Some(value))?
            {
                Ok(()) => value.to_vec(),
                Err(lost) => match lost.current {
                    Some(winner) => winner.to_vec(),
                    None => continue,
                },
            };
            // The winner's value too: the caller acts on it, so it must be on disk.
            self.db.flush()?;
            return Ok(current);
        }
        Err(StoreError::Backend(
            "a settings key kept changing hands during one insert".into(),
        ))
    }

    fn charge_get(&self, store: &StoreId, key: &str) -> Result<Option<ChargeEntry>, StoreError> {
        match self.charges.get(charge_key(store.as_str(), key))? {
            None => Ok(None),
            Some(v) => ChargeEntry::decode(&v).map(Some),
        }
    }

    fn charge_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<&ChargeEntry>,
        new: &ChargeEntry,
    ) -> Result<Swap, StoreError> {
        let k = charge_key(store.as_str(), key);
        let value = new.encode()?;
        // A single-key compare-and-swap, not a sled transaction: sled 0.34 serialises every
        // transaction of a `Db` behind one lock, and a transaction per claim and per outcome
        // cut charges through the vault from ~8k/s to ~2.5k/s at c=32. The compare is on the
        // decoded entry (an entry written by an older format still matches); the swap is on
        // the exact bytes read, so a change in between makes it retry with the new entry.
        loop {
            let raw = self.charges.get(&k)?;
            let current = match &raw {
                Some(bytes) => Some(ChargeEntry::decode(bytes)?),
                None => None,
            };
            if current.as_ref() != expected {
                return Ok(Swap::Changed(current.map(Box::new)));
            }
            match self
                .charges
                .compare_and_swap(&k, raw.as_deref(), Some(value.as_slice()))?
            {
                Ok(()) => break,
                Err(_) => continue,
            }
        }
        Ok(Swap::Done)
    }

    fn legacy_audit(&self) -> Option<&dyn LegacyEntries> {
        let has = self.db.tree_names().iter().any(|n| n.as_ref() == b"audit");
        has.then_some(self as &dyn LegacyEntries)
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match &self.commit {
                Some(gc) => gc
                    .commit()
                    .await
                    .map_err(|e| StoreError::Flush(e.to_string())),
                None => self.flush(),
            }
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn single_process(&self) -> bool {
        self.single_process
    }

    fn key_change_guard(&self) -> Result<Option<KeyChangeGuard>, StoreError> {
        // The folder lock already keeps every other process out, for as long as this one runs.
        Ok(self.single_process.then(KeyChangeGuard::sole_process))
    }
}

/// The `audit` tree of folders written before segment files.
impl LegacyEntries for SledStore {
    fn each(&self, f: &mut dyn FnMut(&[u8]) -> Result<(), AuditError>) -> Result<u64, AuditError> {
        let tree = self
            .db
            .open_tree("audit")
            .map_err(|e| AuditError::Corrupt(e.to_string()))?;
        let mut n = 0;
        for item in tree.iter() {
            let (_, v) = item.map_err(|e| AuditError::Corrupt(e.to_string()))?;
            f(&v)?;
            n += 1;
        }
        Ok(n)
    }

    fn remove(&self) -> Result<(), AuditError> {
        self.db
            .drop_tree("audit")
            .and_then(|_| self.db.flush())
            .map(|_| ())
            .map_err(|e| AuditError::Corrupt(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
