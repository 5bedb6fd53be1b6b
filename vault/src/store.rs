//! Record storage behind a seam (`RecordStore`), with the sled implementation.
//!
//! sled layout (one `Db`, five trees):
//! - `records`:      record id → [`StoredRecord`] JSON (masked view fields + sealed token)
//! - `fingerprints`: keyed fingerprint (32 bytes) → record id; dedupe without decryption
//! - `by_account`:   `store \0 account \0 id` → empty; lists and erasure per account
//! - `audit`:        sequence number (u64 BE) → [`AuditEntry`] JSON
//! - `meta`:         key-check values for the master and fingerprint keys
//! - `charges`:      `store \0 idempotency key` → [`ChargeEntry`] JSON (the exactly-once ledger
//!   of the charge route: intent written and flushed before the processor call, outcome after)
//!
//! Invariants:
//! - A record and its index entries (and, for writes, the request's audit entry) change together
//!   in one sled transaction: no half-written record, no dangling index.
//! - Store and account ids are 1–64 chars of `A-Za-z0-9_-` (parsed newtypes), so the `\0`
//!   separator in `by_account` keys cannot be forged.
//! - Audit appends hold one mutex (the chain head), so sequence numbers are dense and linear.
//! - Callers acknowledge a write only after [`RecordStore::durable`] resolves (group commit).

use crate::audit::{self, AuditDraft, AuditEntry};
use crate::crypto::SealedToken;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("data folder {path} is in use by another process (is the vault running?)")]
    Locked { path: String },
    #[error("flush to disk failed: {0}")]
    Flush(String),
    #[error("internal lock poisoned")]
    Poisoned,
}

/// One stored payment method: the masked fields in clear, the token sealed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredRecord {
    /// Record format version.
    pub v: u8,
    pub id: String,
    pub store: String,
    pub account: String,
    pub kind: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<u8>,
    pub exp_year: Option<u16>,
    pub masked_email: Option<String>,
    pub created: String,
    /// Master-key version that was current when the token was sealed. Bound into the token's
    /// AAD; never changes (see `crypto` on rotation).
    pub key_version: u32,
    /// Master-key version that wraps the data key now. Absent in records written before
    /// rotation existed, where it equals `key_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap_version: Option<u32>,
    /// `nonce || ciphertext || tag` of the data key under the master key (hex).
    pub wrapped_dek: String,
    /// `nonce || ciphertext || tag` of the token under the data key (hex).
    pub sealed_token: String,
    /// Keyed fingerprint (hex), to remove its index entry on delete.
    pub fingerprint: String,
    /// Fingerprint-key version of `fingerprint`; absent = 1 (before fingerprint rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp_version: Option<u32>,
}

impl StoredRecord {
    pub fn view(&self) -> shared::vault_api::PaymentMethodView {
        shared::vault_api::PaymentMethodView {
            id: self.id.clone(),
            store: self.store.clone(),
            account: self.account.clone(),
            kind: self.kind.clone(),
            brand: self.brand.clone(),
            last4: self.last4.clone(),
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            masked_email: self.masked_email.clone(),
            created: self.created.clone(),
        }
    }

    /// The sealed token as the crypto layer reads it. Decode failures are errors, never panics.
    pub fn sealed(&self) -> Result<SealedToken, StoreError> {
        Ok(SealedToken {
            key_version: self.key_version,
            wrap_version: self.wrap_version(),
            wrapped_dek: hex::decode(&self.wrapped_dek)
                .map_err(|_| StoreError::Corrupt("wrapped key"))?,
            ciphertext: hex::decode(&self.sealed_token)
                .map_err(|_| StoreError::Corrupt("sealed token"))?,
        })
    }

    /// The fingerprint-key version of `fingerprint`.
    pub fn fp_version(&self) -> u32 {
        self.fp_version.unwrap_or(1)
    }

    /// The KEK version that wraps this record's data key.
    pub fn wrap_version(&self) -> u32 {
        self.wrap_version.unwrap_or(self.key_version)
    }

    /// Decodes a stored record value (outside bytes for the fuzz target: never panics).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt("record"))
    }
}

/// One charge in the ledger. `status` is `pending` from the moment the intent is recorded until
/// the processor answered; `succeeded`/`declined` are final (replayed, never re-sent), `failed`
/// is retryable with the same processor idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeEntry {
    pub v: u8,
    pub payment_method: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub reason: Option<String>,
    pub reference: Option<String>,
    /// Processor calls made for this key (replays of a final outcome are not calls).
    pub attempts: u32,
    pub created: String,
    pub updated: String,
}

fn charge_key(store: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(store.len() + key.len() + 1);
    k.extend_from_slice(store.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Outcome of one re-wrap batch.
#[derive(Debug, Default, Clone)]
pub struct RewrapBatch {
    /// Records examined in this batch.
    pub scanned: u64,
    /// Records whose data key was re-wrapped.
    pub rewrapped: u64,
    /// Records that could not be re-wrapped (corrupt or under an unknown version); left as
    /// they are and logged by id.
    pub failed: u64,
    /// Last record id of the batch; `None` when the scan reached the end.
    pub next_after: Option<Vec<u8>>,
}

/// Result of a store request.
pub enum Stored {
    Created(StoredRecord),
    /// The same token was already stored for this store and account.
    Existing(StoredRecord),
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The seam handlers talk to. A networked backend (PostgreSQL) would implement the same contract:
/// each write and its audit entry in one transaction, dedupe enforced inside it.
pub trait RecordStore: Send + Sync {
    /// Inserts `record` unless its fingerprint is already indexed; appends the audit entry
    /// (outcome 201 or 200) in the same transaction.
    fn insert(
        &self,
        record: StoredRecord,
        fingerprint: [u8; 32],
        audit: AuditDraft,
    ) -> Result<Stored, StoreError>;
    fn get(&self, id: &str) -> Result<Option<StoredRecord>, StoreError>;
    fn list(&self, store: &str, account: &str) -> Result<Vec<StoredRecord>, StoreError>;
    /// Removes the record (and with it its wrapped data key) if it belongs to `store`.
    /// Appends the audit entry (204 or 404) in the same transaction. Returns whether it existed.
    fn delete(&self, store: &str, id: &str, audit: AuditDraft) -> Result<bool, StoreError>;
    /// Removes every record of one account; returns how many.
    fn erase_account(
        &self,
        store: &str,
        account: &str,
        audit: AuditDraft,
    ) -> Result<u64, StoreError>;
    /// Appends one audit entry (for requests that write nothing else).
    fn append_audit(&self, audit: AuditDraft) -> Result<(), StoreError>;
    /// Resolves once every write made before the call is on disk.
    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Head of the audit chain: last sequence number and hash.
struct ChainHead {
    seq: u64,
    hash: [u8; 32],
}

pub struct SledStore {
    db: sled::Db,
    records: sled::Tree,
    fingerprints: sled::Tree,
    by_account: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    charges: sled::Tree,
    head: Mutex<ChainHead>,
    commit: Option<shared::durable::GroupCommit>,
}

fn account_prefix(store: &str, account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(store.len() + account.len() + 2);
    k.extend_from_slice(store.as_bytes());
    k.push(0);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k
}

fn account_key(store: &str, account: &str, id: &str) -> Vec<u8> {
    let mut k = account_prefix(store, account);
    k.extend_from_slice(id.as_bytes());
    k
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// Opens a sled folder with a bounded cache. A folder held by a running vault is reported as
/// such (sled locks it) instead of as an opaque I/O error.
pub fn open_db(
    path: &Path,
    cache_capacity: u64,
    flush_every_ms: u64,
) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .flush_every_ms(Some(flush_every_ms.max(1)))
        .open()
        .map_err(|e| match e {
            sled::Error::Io(ref io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11) =>
            {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            }
            sled::Error::Io(ref io) if io.to_string().contains("lock") => StoreError::Locked {
                path: path.display().to_string(),
            },
            other => StoreError::Sled(other),
        })
}

/// Walks the audit chain of an open `Db` (works even when the last entry is damaged, where
/// `SledStore::new` refuses).
pub fn verify_audit_db(db: &sled::Db) -> Result<audit::Verdict, StoreError> {
    let tree = db.open_tree("audit")?;
    audit::verify(tree.iter().map(|r| {
        r.map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(StoreError::Sled)
    }))
}

impl SledStore {
    /// Wraps an open `Db`. Group commit needs a tokio runtime: pass `with_group_commit = false`
    /// from synchronous tools (audit verify, tests), where `durable` then flushes inline.
    pub fn new(db: sled::Db, with_group_commit: bool) -> Result<Self, StoreError> {
        let audit = db.open_tree("audit")?;
        let head = match audit.last()? {
            None => ChainHead {
                seq: 0,
                hash: audit::GENESIS,
            },
            Some((_, v)) => {
                let e: AuditEntry = serde_json::from_slice(&v)
                    .map_err(|_| StoreError::Corrupt("last audit entry"))?;
                let hash = e
                    .hash_bytes()
                    .ok_or(StoreError::Corrupt("last audit entry"))?;
                ChainHead { seq: e.seq, hash }
            }
        };
        let commit = with_group_commit.then(|| shared::durable::GroupCommit::start(db.clone()));
        Ok(Self {
            records: db.open_tree("records")?,
            fingerprints: db.open_tree("fingerprints")?,
            by_account: db.open_tree("by_account")?,
            meta: db.open_tree("meta")?,
            charges: db.open_tree("charges")?,
            audit,
            head: Mutex::new(head),
            commit,
            db,
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Reads a `meta` value.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    /// Writes a `meta` value and flushes it.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// The ledger entry for (store, idempotency key), if any.
    pub fn charge_get(&self, store: &str, key: &str) -> Result<Option<ChargeEntry>, StoreError> {
        match self.charges.get(charge_key(store, key))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("charge entry")),
        }
    }

    /// Writes the ledger entry for (store, idempotency key). Callers serialise per key and wait
    /// for [`RecordStore::durable`] before acting on it.
    pub fn charge_put(
        &self,
        store: &str,
        key: &str,
        entry: &ChargeEntry,
    ) -> Result<(), StoreError> {
        let v = serde_json::to_vec(entry).map_err(|_| StoreError::Corrupt("charge encode"))?;
        self.charges.insert(charge_key(store, key), v)?;
        Ok(())
    }

    /// Entries in the audit chain (the head's sequence number; numbering starts at 1).
    pub fn audit_length(&self) -> u64 {
        self.head.lock().map(|h| h.seq).unwrap_or(0)
    }

    /// Number of stored records.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// How many records each KEK version wraps (by `wrap_version`), plus the number of records
    /// that do not decode. A full scan: it reads every record (no token is opened).
    pub fn count_by_wrap_version(
        &self,
    ) -> Result<(std::collections::BTreeMap<u32, u64>, u64), StoreError> {
        self.count_by(StoredRecord::wrap_version)
    }

    /// Records per value of `f` (e.g. a key version), plus undecodable records. A full scan.
    pub fn count_by(
        &self,
        f: impl Fn(&StoredRecord) -> u32,
    ) -> Result<(std::collections::BTreeMap<u32, u64>, u64), StoreError> {
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

    /// Ids of records after `after` (at most `limit`), for batch walks.
    pub fn record_ids_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
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

    /// Moves one record's dedupe index entry to a new fingerprint (fingerprint-key rotation),
    /// in one transaction with the record. Skips (returns false) if the record is gone or was
    /// re-indexed meanwhile.
    pub fn reindex_one(
        &self,
        id: &[u8],
        old_fingerprint_hex: &str,
        new_fingerprint: [u8; 32],
        new_version: u32,
    ) -> Result<bool, StoreError> {
        (&self.records, &self.fingerprints)
            .transaction(|(records, fps)| {
                let Some(bytes) = records.get(id)? else {
                    return Ok(false);
                };
                let mut r = match StoredRecord::decode(&bytes) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
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
                let value = match serde_json::to_vec(&r) {
                    Ok(v) => v,
                    Err(_) => return abort(StoreError::Corrupt("record encode")),
                };
                records.insert(id, value)?;
                Ok(true)
            })
            .map_err(tx_err)
    }

    /// Re-wraps, in one transaction, up to `limit` records after `after` whose data key is
    /// wrapped below `target`. `rewrap` gets the decoded record and returns the new wrapped DEK
    /// (hex) and its version. Reads and writes of other records go on meanwhile; a record
    /// deleted or changed concurrently is re-read inside the transaction.
    pub fn rewrap_batch(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        target: u32,
        rewrap: &dyn Fn(&StoredRecord) -> Option<(String, u32)>,
    ) -> Result<RewrapBatch, StoreError> {
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
                            let Ok(value) = serde_json::to_vec(&r) else {
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

    /// `meta` entries whose key starts with `prefix` (key text, value).
    pub fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(prefix) {
            let (k, v) = item?;
            let k = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("meta key"))?;
            out.push((k, v.to_vec()));
        }
        Ok(out)
    }

    /// Applies several `meta` puts and removes as one atomic batch, then flushes.
    pub fn meta_apply(&self, puts: &[(&str, &[u8])], removes: &[&str]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
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

    /// Removes a `meta` value and flushes.
    pub fn meta_remove(&self, key: &str) -> Result<(), StoreError> {
        self.meta.remove(key)?;
        self.db.flush()?;
        Ok(())
    }

    /// Walks the audit chain.
    pub fn verify_audit(&self) -> Result<audit::Verdict, StoreError> {
        verify_audit_db(&self.db)
    }

    /// Runs `f` with the chain head locked; `f` gets the next entry builder and must return the
    /// entry it wrote, if any, so the head advances only after a successful commit.
    fn with_head<T>(
        &self,
        f: impl FnOnce(&ChainHead) -> Result<(T, Option<AuditEntry>), StoreError>,
    ) -> Result<T, StoreError> {
        let mut head = self.head.lock().map_err(|_| StoreError::Poisoned)?;
        let (out, entry) = f(&head)?;
        if let Some(e) = entry {
            head.seq = e.seq;
            head.hash = e.hash_bytes().ok_or(StoreError::Corrupt("audit hash"))?;
        }
        Ok(out)
    }
}

fn entry_bytes(e: &AuditEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(e).map_err(|_| StoreError::Corrupt("audit encode"))
}

impl SledStore {
    /// `insert`, also recognising the token by fingerprints under older fingerprint-key
    /// versions (`also`) while a fingerprint re-index runs: old and new both dedupe.
    pub fn insert_checking(
        &self,
        record: StoredRecord,
        fingerprint: [u8; 32],
        also: &[[u8; 32]],
        draft: AuditDraft,
    ) -> Result<Stored, StoreError> {
        let value =
            serde_json::to_vec(&record).map_err(|_| StoreError::Corrupt("record encode"))?;
        let akey = account_key(&record.store, &record.account, &record.id);
        self.with_head(|head| {
            let trees = (
                &self.records,
                &self.fingerprints,
                &self.by_account,
                &self.audit,
            );
            let (result, entry) = trees
                .transaction(|(records, fps, by_account, audit_tree)| {
                    // Dedupe inside the transaction: two concurrent stores of one token cannot
                    // both create a record.
                    let mut hit = fps.get(fingerprint)?;
                    for fp in also {
                        if hit.is_none() {
                            hit = fps.get(fp)?;
                        }
                    }
                    if let Some(existing_id) = hit {
                        let Some(bytes) = records.get(&existing_id)? else {
                            return abort(StoreError::Corrupt("fingerprint index points nowhere"));
                        };
                        let existing = match StoredRecord::decode(&bytes) {
                            Ok(r) => r,
                            Err(e) => return abort(e),
                        };
                        let mut d = draft.clone();
                        d.outcome = 200;
                        d.record = Some(existing.id.clone());
                        let entry = AuditEntry::next(head.seq, &head.hash, &d);
                        let eb = match entry_bytes(&entry) {
                            Ok(b) => b,
                            Err(e) => return abort(e),
                        };
                        audit_tree.insert(&audit::key(entry.seq), eb)?;
                        return Ok((Stored::Existing(existing), entry));
                    }
                    records.insert(record.id.as_bytes(), value.as_slice())?;
                    fps.insert(&fingerprint, record.id.as_bytes())?;
                    by_account.insert(akey.as_slice(), &[][..])?;
                    let mut d = draft.clone();
                    d.outcome = 201;
                    d.record = Some(record.id.clone());
                    let entry = AuditEntry::next(head.seq, &head.hash, &d);
                    let eb = match entry_bytes(&entry) {
                        Ok(b) => b,
                        Err(e) => return abort(e),
                    };
                    audit_tree.insert(&audit::key(entry.seq), eb)?;
                    Ok((Stored::Created(record.clone()), entry))
                })
                .map_err(tx_err)?;
            Ok((result, Some(entry)))
        })
    }
}

impl RecordStore for SledStore {
    fn insert(
        &self,
        record: StoredRecord,
        fingerprint: [u8; 32],
        draft: AuditDraft,
    ) -> Result<Stored, StoreError> {
        self.insert_checking(record, fingerprint, &[], draft)
    }

    fn get(&self, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        let Some(v) = self.records.get(id)? else {
            return Ok(None);
        };
        let r = StoredRecord::decode(&v)?;
        // A record value moved under another key is corrupt, not a different record.
        if r.id != id {
            return Err(StoreError::Corrupt("record id does not match its key"));
        }
        Ok(Some(r))
    }

    fn list(&self, store: &str, account: &str) -> Result<Vec<StoredRecord>, StoreError> {
        let prefix = account_prefix(store, account);
        let mut out = Vec::new();
        for item in self.by_account.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = k
                .get(prefix.len()..)
                .ok_or(StoreError::Corrupt("account index key"))?;
            if let Some(v) = self.records.get(id)? {
                out.push(StoredRecord::decode(&v)?);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn delete(&self, store: &str, id: &str, draft: AuditDraft) -> Result<bool, StoreError> {
        self.with_head(|head| {
            let trees = (
                &self.records,
                &self.fingerprints,
                &self.by_account,
                &self.audit,
            );
            let (found, entry) = trees
                .transaction(|(records, fps, by_account, audit_tree)| {
                    let existing = match records.get(id.as_bytes())? {
                        Some(bytes) => match StoredRecord::decode(&bytes) {
                            Ok(r) => Some(r),
                            Err(e) => return abort(e),
                        },
                        None => None,
                    };
                    // Another store's record is answered exactly like a missing one.
                    let existing = existing.filter(|r| r.store == store);
                    let mut d = draft.clone();
                    d.record = Some(id.to_owned());
                    d.outcome = if existing.is_some() { 204 } else { 404 };
                    if let Some(r) = &existing {
                        // Removing the record removes its wrapped data key: crypto-shredding.
                        records.remove(id.as_bytes())?;
                        if let Ok(fp) = hex::decode(&r.fingerprint) {
                            fps.remove(fp)?;
                        }
                        by_account.remove(account_key(&r.store, &r.account, &r.id))?;
                    }
                    let entry = AuditEntry::next(head.seq, &head.hash, &d);
                    let eb = match entry_bytes(&entry) {
                        Ok(b) => b,
                        Err(e) => return abort(e),
                    };
                    audit_tree.insert(&audit::key(entry.seq), eb)?;
                    Ok((existing.is_some(), entry))
                })
                .map_err(tx_err)?;
            Ok((found, Some(entry)))
        })
    }

    fn erase_account(
        &self,
        store: &str,
        account: &str,
        draft: AuditDraft,
    ) -> Result<u64, StoreError> {
        // sled transactions cannot iterate, so collect the ids first; each is re-checked inside
        // the transaction. A record stored concurrently with the erase may survive it (the
        // caller sees it in the next list); none is ever half-removed.
        let prefix = account_prefix(store, account);
        let mut ids = Vec::new();
        for item in self.by_account.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = k
                .get(prefix.len()..)
                .ok_or(StoreError::Corrupt("account index key"))?;
            ids.push(id.to_vec());
        }
        self.with_head(|head| {
            let trees = (
                &self.records,
                &self.fingerprints,
                &self.by_account,
                &self.audit,
            );
            let (n, entry) = trees
                .transaction(|(records, fps, by_account, audit_tree)| {
                    let mut n = 0u64;
                    for id in &ids {
                        let Some(bytes) = records.get(id)? else {
                            continue;
                        };
                        let r = match StoredRecord::decode(&bytes) {
                            Ok(r) => r,
                            Err(e) => return abort(e),
                        };
                        if r.store != store || r.account != account {
                            continue;
                        }
                        records.remove(id.as_slice())?;
                        if let Ok(fp) = hex::decode(&r.fingerprint) {
                            fps.remove(fp)?;
                        }
                        by_account.remove(account_key(&r.store, &r.account, &r.id))?;
                        n += 1;
                    }
                    let mut d = draft.clone();
                    d.outcome = 200;
                    let entry = AuditEntry::next(head.seq, &head.hash, &d);
                    let eb = match entry_bytes(&entry) {
                        Ok(b) => b,
                        Err(e) => return abort(e),
                    };
                    audit_tree.insert(&audit::key(entry.seq), eb)?;
                    Ok((n, entry))
                })
                .map_err(tx_err)?;
            Ok((n, Some(entry)))
        })
    }

    fn append_audit(&self, draft: AuditDraft) -> Result<(), StoreError> {
        self.with_head(|head| {
            let entry = AuditEntry::next(head.seq, &head.hash, &draft);
            self.audit
                .insert(audit::key(entry.seq), entry_bytes(&entry)?)?;
            Ok(((), Some(entry)))
        })
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match &self.commit {
                Some(gc) => gc
                    .commit()
                    .await
                    .map_err(|e| StoreError::Flush(e.to_string())),
                None => self.db.flush().map(|_| ()).map_err(StoreError::Sled),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn record(id: &str, account: &str) -> StoredRecord {
        StoredRecord {
            v: 1,
            id: id.to_owned(),
            store: "s1".into(),
            account: account.into(),
            kind: "card".into(),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
            exp_month: Some(12),
            exp_year: Some(2030),
            masked_email: None,
            created: "2026-01-01T00:00:00Z".into(),
            key_version: 1,
            wrap_version: None,
            wrapped_dek: "00".into(),
            sealed_token: "00".into(),
            fingerprint: hex::encode([id.len() as u8; 32]),
            fp_version: None,
        }
    }

    fn draft() -> AuditDraft {
        AuditDraft {
            identity: "accounts".into(),
            operation: "store".into(),
            ..AuditDraft::default()
        }
    }

    fn open(dir: &Path) -> SledStore {
        SledStore::new(open_db(dir, 1 << 20, 500).unwrap(), false).unwrap()
    }

    #[test]
    fn a_second_insert_with_the_same_fingerprint_returns_the_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let fp = [7u8; 32];
        assert!(matches!(
            s.insert(record("pm_a", "a1"), fp, draft()).unwrap(),
            Stored::Created(_)
        ));
        match s.insert(record("pm_b", "a1"), fp, draft()).unwrap() {
            Stored::Existing(r) => assert_eq!(r.id, "pm_a"),
            Stored::Created(_) => panic!("duplicate created"),
        }
        assert_eq!(s.record_count(), 1);
    }

    #[test]
    fn delete_removes_record_and_indexes_and_respects_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let r = record("pm_a", "a1");
        let fp: [u8; 32] = hex::decode(&r.fingerprint).unwrap().try_into().unwrap();
        s.insert(r, fp, draft()).unwrap();
        assert!(
            !s.delete("s2", "pm_a", draft()).unwrap(),
            "another store's delete must miss"
        );
        assert!(s.delete("s1", "pm_a", draft()).unwrap());
        assert!(s.get("pm_a").unwrap().is_none());
        assert!(s.list("s1", "a1").unwrap().is_empty());
        // The fingerprint index entry went with it: the same token can be stored anew.
        assert!(matches!(
            s.insert(record("pm_c", "a1"), fp, draft()).unwrap(),
            Stored::Created(_)
        ));
    }

    #[test]
    fn erase_account_removes_only_that_accounts_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(record("pm_a", "a1"), [1; 32], draft()).unwrap();
        s.insert(record("pm_bb", "a1"), [2; 32], draft()).unwrap();
        s.insert(record("pm_ccc", "a10"), [3; 32], draft()).unwrap();
        assert_eq!(s.erase_account("s1", "a1", draft()).unwrap(), 2);
        assert_eq!(
            s.list("s1", "a10").unwrap().len(),
            1,
            "prefix a1 must not match account a10"
        );
    }

    #[test]
    fn the_audit_chain_continues_across_a_reopen_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.append_audit(draft()).unwrap();
            s.insert(record("pm_a", "a1"), [1; 32], draft()).unwrap();
            s.db().flush().unwrap();
        }
        let s = open(dir.path());
        s.append_audit(draft()).unwrap();
        assert_eq!(s.verify_audit().unwrap(), audit::Verdict::Ok { entries: 3 });
    }

    #[test]
    fn a_record_value_under_the_wrong_key_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(record("pm_a", "a1"), [1; 32], draft()).unwrap();
        let v = s.records.get("pm_a").unwrap().unwrap();
        s.records.insert("pm_z", v).unwrap();
        assert!(matches!(s.get("pm_z"), Err(StoreError::Corrupt(_))));
        s.records.insert("pm_y", &b"{not json"[..]).unwrap();
        assert!(matches!(s.get("pm_y"), Err(StoreError::Corrupt(_))));
    }
}
