//! The audit chain in the sled folder: the `audit` tree (sequence number, u64 BE → entry JSON)
//! and its head. Record writes append their entry inside their own transaction through
//! [`SledAudit::with_head`]; reads, refusals and admin calls append alone. Also the offline
//! readers `vault audit verify|export` use on a stopped vault.
//!
//! Invariant: appends hold one mutex (the head), and the head advances only after the
//! transaction that wrote the entry committed, so sequence numbers are dense and linear.

use crate::audit::{self, AuditDraft, AuditEntry, Verdict};
use crate::audit_export::Since;
use crate::store::{AuditLog, StoreError};
use std::sync::Mutex;

/// Head of the audit chain: last sequence number and hash.
pub(crate) struct ChainHead {
    pub(crate) seq: u64,
    pub(crate) hash: [u8; 32],
}

pub(crate) struct SledAudit {
    pub(crate) tree: ::sled::Tree,
    head: Mutex<ChainHead>,
}

pub(crate) fn entry_bytes(e: &AuditEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(e).map_err(|_| StoreError::Corrupt("audit encode"))
}

impl SledAudit {
    /// Opens the tree and reads the head (refuses a damaged last entry: the chain could not
    /// continue from it; `verify_tree` still reports where it breaks).
    pub(crate) fn open(db: &::sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("audit")?;
        let head = match tree.last()? {
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
        Ok(Self {
            tree,
            head: Mutex::new(head),
        })
    }

    /// Runs `f` with the chain head locked; `f` must return the entry it wrote, if any, so the
    /// head advances only after a successful commit.
    pub(crate) fn with_head<T>(
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

impl AuditLog for SledAudit {
    fn append(&self, draft: AuditDraft) -> Result<(), StoreError> {
        self.with_head(|head| {
            let entry = AuditEntry::next(head.seq, &head.hash, &draft);
            self.tree
                .insert(audit::key(entry.seq), entry_bytes(&entry)?)?;
            Ok(((), Some(entry)))
        })
    }

    fn length(&self) -> u64 {
        self.head.lock().map(|h| h.seq).unwrap_or(0)
    }

    fn verify(&self) -> Result<Verdict, StoreError> {
        verify_tree(&self.tree)
    }

    fn first_since(&self, since: &Since) -> Result<Option<u64>, StoreError> {
        first_since(&self.tree, since)
    }

    fn export(
        &self,
        from: u64,
        upto: Option<u64>,
        batch: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, StoreError> {
        export(&self.tree, from, upto, batch)
    }
}

pub(crate) fn verify_tree(tree: &::sled::Tree) -> Result<Verdict, StoreError> {
    audit::verify(tree.iter().map(|r| {
        r.map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(StoreError::from)
    }))
}

/// The first sequence number to export (`None`: no entry at or after that time).
pub(crate) fn first_since(tree: &::sled::Tree, since: &Since) -> Result<Option<u64>, StoreError> {
    match since {
        Since::Seq(n) => Ok(Some(*n)),
        Since::Time(t) => {
            for item in tree.iter() {
                let (_, v) = item?;
                let e = AuditEntry::decode(&v).map_err(|_| StoreError::Corrupt("audit entry"))?;
                let at = time::OffsetDateTime::parse(
                    &e.time,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| StoreError::Corrupt("audit entry time"))?;
                if at >= *t {
                    return Ok(Some(e.seq));
                }
            }
            Ok(None)
        }
    }
}

/// Calls `batch` with each entry from `from` to `upto` (inclusive; `None`: to the end) as one
/// JSON line, in batches of lines; stops early when `batch` returns false. Returns the count.
/// Each entry is decoded and re-encoded: a damaged entry stops the export with an error.
pub(crate) fn export(
    tree: &::sled::Tree,
    from: u64,
    upto: Option<u64>,
    batch: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<u64, StoreError> {
    const BATCH_BYTES: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(BATCH_BYTES + 1024);
    let mut n = 0u64;
    let range = match upto {
        Some(u) if u < from => return Ok(0),
        Some(u) => tree.range(audit::key(from)..=audit::key(u)),
        None => tree.range(audit::key(from)..),
    };
    for item in range {
        let (_, v) = item?;
        let e = AuditEntry::decode(&v).map_err(|_| StoreError::Corrupt("audit entry"))?;
        serde_json::to_writer(&mut buf, &e).map_err(|_| StoreError::Corrupt("audit encode"))?;
        buf.push(b'\n');
        n += 1;
        if buf.len() >= BATCH_BYTES && !batch(std::mem::take(&mut buf)) {
            return Ok(n);
        }
    }
    if !buf.is_empty() {
        batch(buf);
    }
    Ok(n)
}
