//! The hash-chained audit log: entries and their chain (here), the append-only segment files
//! that hold them (`segment` for the format, `log` for the writer, `walk` for verify and
//! export, `archive` for archival and retention).
//!
//! Every API request appends one entry: sequence number, time, the vault instance, client
//! identity, operation, record id and store (when there is one), outcome (HTTP status), the
//! previous entry's hash, and this entry's hash = SHA-256 over all of the above. Editing,
//! removing or reordering any entry breaks the chain at that point; each closed segment ends
//! with a checkpoint signed under the audit key, so rewriting a whole segment (or the chain
//! from some point on) is found too. `vault audit verify` reports the first break.
//!
//! Invariants: no secret and no card data ever enters an entry (ids, identity and status only);
//! entries are appended under one lock, so sequence numbers are dense and the chain linear.
//! Limitation (documented in the README): cutting entries off the end of the segment being
//! written is only visible against an externally recorded head (`seq`, `hash`, or the
//! `vault_audit_chain_length` gauge).

pub mod archive;
pub mod log;
mod recover;
pub mod segment;
pub mod walk;

pub use log::{AuditSettings, SegmentLog};

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// The hash "before" the first entry.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What a request contributes to its entry; the chain fields are added on append.
#[derive(Debug, Clone, Default)]
pub struct AuditDraft {
    pub identity: String,
    pub operation: String,
    pub record: Option<String>,
    pub store: Option<String>,
    pub outcome: u16,
}

/// One entry as exported (`vault audit export`, `GET /v1/audit/export`): what a segment line
/// holds plus `prevHash`, so each exported line can be re-verified on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// The vault instance whose chain this is; absent in entries written before segment files
    /// (their hash is the v1 recipe, without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub identity: String,
    pub operation: String,
    #[serde(default)]
    pub record: Option<String>,
    #[serde(default)]
    pub store: Option<String>,
    pub outcome: u16,
    pub prev_hash: String,
    pub hash: String,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The entry hash. v2 (entries with an instance) binds the instance too; v1 is the recipe of
/// entries written before segment files, kept so migrated entries still verify.
#[allow(clippy::too_many_arguments)]
fn entry_hash(
    seq: u64,
    time: &str,
    instance: Option<&str>,
    identity: &str,
    operation: &str,
    record: Option<&str>,
    store: Option<&str>,
    outcome: u16,
    prev_hash: &str,
) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(match instance {
        Some(_) => b"strongroom/audit/v2",
        None => b"strongroom/audit/v1",
    });
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(&seq.to_be_bytes());
    field(time.as_bytes());
    if let Some(i) = instance {
        field(i.as_bytes());
    }
    field(identity.as_bytes());
    field(operation.as_bytes());
    field(record.unwrap_or("\u{0}none").as_bytes());
    field(store.unwrap_or("\u{0}none").as_bytes());
    field(&outcome.to_be_bytes());
    field(prev_hash.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl AuditEntry {
    /// Builds the entry of `instance` that follows `prev` (`seq`, hash) in the chain.
    pub fn next(prev_seq: u64, prev_hash: &[u8; 32], instance: &str, draft: &AuditDraft) -> Self {
        let seq = prev_seq + 1;
        let time = now_rfc3339();
        let prev_hex = hex::encode(prev_hash);
        let hash = entry_hash(
            seq,
            &time,
            Some(instance),
            &draft.identity,
            &draft.operation,
            draft.record.as_deref(),
            draft.store.as_deref(),
            draft.outcome,
            &prev_hex,
        );
        Self {
            seq,
            time,
            instance: Some(instance.to_owned()),
            identity: draft.identity.clone(),
            operation: draft.operation.clone(),
            record: draft.record.clone(),
            store: draft.store.clone(),
            outcome: draft.outcome,
            prev_hash: prev_hex,
            hash: hex::encode(hash),
        }
    }

    /// Decodes one exported entry (outside bytes for the fuzz target: never panics).
    pub fn decode(bytes: &[u8]) -> Result<Self, AuditDecodeError> {
        serde_json::from_slice(bytes).map_err(|_| AuditDecodeError)
    }

    /// Re-checks this entry's own hash (an exported line can be verified on its own; the chain
    /// by following `prevHash`).
    pub fn hash_is_valid(&self) -> bool {
        self.recomputed_hash() == self.hash
    }

    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.hash, &mut out).ok()?;
        Some(out)
    }

    pub(crate) fn recomputed_hash(&self) -> String {
        hex::encode(entry_hash(
            self.seq,
            &self.time,
            self.instance.as_deref(),
            &self.identity,
            &self.operation,
            self.record.as_deref(),
            self.store.as_deref(),
            self.outcome,
            &self.prev_hash,
        ))
    }
}

/// A stored audit entry that does not parse.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("audit entry does not parse")]
pub struct AuditDecodeError;

/// The storage key of entry `seq` in the sled `audit` tree of folders written before segment
/// files: big-endian so sled iterates in chain order.
pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok {
        entries: u64,
    },
    /// `position` is the sequence number of the first entry that does not fit (for a damaged
    /// or missing segment: the first sequence number it should hold).
    Broken {
        position: u64,
        reason: String,
    },
}

/// Audit failures (I/O, a damaged segment the writer cannot continue from).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("audit log is damaged: {0}")]
    Corrupt(String),
    #[error("audit log: {0}")]
    Refused(String),
    #[error("audit log writer stopped after a failed write; restart the vault")]
    Stopped,
}

impl AuditError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The append-only, hash-chained audit log of one vault instance.
pub trait AuditLog: Send + Sync {
    /// Appends one entry; it is in the file (`write(2)`: it survives a kill of the process)
    /// when this returns, on disk after [`AuditLog::durable`] or the next periodic flush.
    fn append(&self, draft: AuditDraft) -> Result<u64, AuditError>;
    /// Resolves once every entry appended before the call is on disk (one group-commit
    /// flusher shares each fsync among concurrent writers).
    fn durable(&self) -> BoxFuture<'_, Result<(), AuditError>>;
    /// Blocking [`AuditLog::durable`].
    fn flush(&self) -> Result<(), AuditError>;
    /// Entries in the chain (the head's sequence number; numbering starts at 1).
    fn length(&self) -> u64;
    /// Walks the whole chain up to the head as it was when the call started.
    fn verify(&self) -> Result<Verdict, AuditError>;
    /// The first sequence number at or after `since` (`None`: no such entry).
    fn first_since(&self, since: &crate::audit_export::Since) -> Result<Option<u64>, AuditError>;
    /// Calls `batch` with the entries `from..=upto` as JSON lines, in batches; stops early when
    /// it returns false. Returns the count.
    fn export(
        &self,
        from: u64,
        upto: Option<u64>,
        batch: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, AuditError>;
    /// Bytes on disk, segment counts and the age of the oldest unarchived closed segment.
    fn stats(&self) -> log::AuditStats;
}

/// Walks legacy `(key, value)` pairs of a sled `audit` tree in key order and checks the chain.
pub fn verify_legacy<I, E>(entries: I) -> Result<Verdict, E>
where
    I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    let mut prev_hash = hex::encode(GENESIS);
    let mut count = 0u64;
    for item in entries {
        let (k, v) = item?;
        let position = count + 1;
        let broken = |reason: &str| {
            Ok(Verdict::Broken {
                position,
                reason: reason.to_owned(),
            })
        };
        let Ok(entry) = serde_json::from_slice::<AuditEntry>(&v) else {
            return broken("entry does not parse");
        };
        if k.as_slice() != key(position).as_slice() || entry.seq != position {
            return broken("sequence number out of order (entry removed, added or moved)");
        }
        if entry.prev_hash != prev_hash {
            return broken("previous-hash link does not match the entry before it");
        }
        if entry.recomputed_hash() != entry.hash {
            return broken("hash does not match the entry's contents (entry edited)");
        }
        prev_hash = entry.hash;
        count = position;
    }
    Ok(Verdict::Ok { entries: count })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let (mut seq, mut hash) = (0u64, GENESIS);
        for i in 0..n {
            let d = AuditDraft {
                identity: "accounts".into(),
                operation: "store".into(),
                record: Some(format!("pm_{i}")),
                store: Some("s".into()),
                outcome: 201,
            };
            let e = legacy_next(seq, &hash, &d);
            seq = e.seq;
            hash = e.hash_bytes().unwrap();
            out.push((key(e.seq).to_vec(), serde_json::to_vec(&e).unwrap()));
        }
        out
    }

    /// An entry as folders before segment files wrote it (v1 hash, no instance).
    fn legacy_next(prev_seq: u64, prev_hash: &[u8; 32], d: &AuditDraft) -> AuditEntry {
        let mut e = AuditEntry::next(prev_seq, prev_hash, "x", d);
        e.instance = None;
        e.hash = e.recomputed_hash();
        e
    }

    fn run(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Verdict {
        verify_legacy::<_, ()>(entries.into_iter().map(Ok)).unwrap()
    }

    #[test]
    fn the_instance_is_bound_into_the_hash_of_new_entries() {
        let d = AuditDraft {
            identity: "accounts".into(),
            operation: "read".into(),
            ..AuditDraft::default()
        };
        let mut e = AuditEntry::next(0, &GENESIS, "inst-a", &d);
        assert!(e.hash_is_valid());
        e.instance = Some("inst-b".into());
        assert!(
            !e.hash_is_valid(),
            "another instance's name must break the hash"
        );
        e.instance = None;
        assert!(
            !e.hash_is_valid(),
            "dropping the instance must break the hash"
        );
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(run(chain(5)), Verdict::Ok { entries: 5 });
        assert_eq!(run(Vec::new()), Verdict::Ok { entries: 0 });
    }

    #[test]
    fn an_edited_outcome_is_found_at_its_entry() {
        let mut c = chain(5);
        let text = String::from_utf8(c[2].1.clone())
            .unwrap()
            .replace("201", "403");
        c[2].1 = text.into_bytes();
        assert!(matches!(run(c), Verdict::Broken { position: 3, .. }));
    }

    #[test]
    fn a_removed_entry_breaks_the_chain() {
        let mut c = chain(5);
        c.remove(1);
        assert!(matches!(run(c), Verdict::Broken { position: 2, .. }));
    }

    #[test]
    fn every_single_flipped_byte_is_detected() {
        let c = chain(3);
        for i in 0..c[1].1.len() {
            let mut t = c.clone();
            t[1].1[i] ^= 0x01;
            assert!(matches!(run(t), Verdict::Broken { .. }), "byte {i}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod segment_tests;
