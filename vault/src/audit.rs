//! The hash-chained audit log.
//!
//! Every API request appends one entry: sequence number, time, client identity, operation,
//! record id and store (when there is one), outcome (HTTP status), the previous entry's hash, and
//! this entry's hash = SHA-256 over all of the above. Editing, removing or reordering any entry
//! breaks the chain at that point; `vault audit verify` finds the first break.
//!
//! Invariants: no secret and no card data ever enters an entry (ids, identity and status only);
//! entries are appended under one lock, so sequence numbers are dense and the chain linear.
//! Limitation (documented in the README): a chain proves integrity of what is there; cutting
//! entries off the end is only visible against an externally recorded head (`seq`, `hash`).

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
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

fn entry_hash(seq: u64, time: &str, d: &AuditDraft, prev_hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"strongroom/audit/v1");
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(&seq.to_be_bytes());
    field(time.as_bytes());
    field(d.identity.as_bytes());
    field(d.operation.as_bytes());
    field(d.record.as_deref().unwrap_or("\u{0}none").as_bytes());
    field(d.store.as_deref().unwrap_or("\u{0}none").as_bytes());
    field(&d.outcome.to_be_bytes());
    field(prev_hash.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl AuditEntry {
    /// Builds the entry that follows `prev` (`seq`, hash) in the chain.
    pub fn next(prev_seq: u64, prev_hash: &[u8; 32], draft: &AuditDraft) -> Self {
        let seq = prev_seq + 1;
        let time = now_rfc3339();
        let prev_hex = hex::encode(prev_hash);
        let hash = entry_hash(seq, &time, draft, &prev_hex);
        Self {
            seq,
            time,
            identity: draft.identity.clone(),
            operation: draft.operation.clone(),
            record: draft.record.clone(),
            store: draft.store.clone(),
            outcome: draft.outcome,
            prev_hash: prev_hex,
            hash: hex::encode(hash),
        }
    }

    /// Decodes one stored entry (outside bytes for the fuzz target: never panics).
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

    fn recomputed_hash(&self) -> String {
        let draft = AuditDraft {
            identity: self.identity.clone(),
            operation: self.operation.clone(),
            record: self.record.clone(),
            store: self.store.clone(),
            outcome: self.outcome,
        };
        hex::encode(entry_hash(self.seq, &self.time, &draft, &self.prev_hash))
    }
}

/// A stored audit entry that does not parse.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("audit entry does not parse")]
pub struct AuditDecodeError;

/// The storage key of entry `seq`: big-endian so sled iterates in chain order.
pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok { entries: u64 },
    Broken { position: u64, reason: String },
}

/// Walks `(key, value)` pairs in key order and checks the chain. `position` in a break is the
/// 1-based position of the first entry that does not fit.
pub fn verify<I, E>(entries: I) -> Result<Verdict, E>
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
            let e = AuditEntry::next(seq, &hash, &d);
            seq = e.seq;
            hash = e.hash_bytes().unwrap();
            out.push((key(e.seq).to_vec(), serde_json::to_vec(&e).unwrap()));
        }
        out
    }

    fn run(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Verdict {
        verify::<_, ()>(entries.into_iter().map(Ok)).unwrap()
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
