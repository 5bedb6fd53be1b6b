//! Audit export as JSON lines (`seq`, `time`, …, `prevHash`, `hash` per line): one function for
//! both `vault audit export` on a stopped vault and `GET /v1/audit/export` on a running one, so
//! the two produce the same bytes for the same range. An external system recomputes each hash
//! and follows `prevHash` to re-verify (`AuditEntry::hash_is_valid` shows the recipe).
//!
//! Entries are appended in sequence and time order and never change, so a range read while
//! writes go on is the same as the range read later: a running export stops at the head it saw
//! when it started (`upto`), and the next export continues from `upto + 1`.

use crate::audit::{self, AuditEntry};
use crate::store::StoreError;

/// Where an export starts: a sequence number (1-based) or the first entry at or after a time.
pub enum Since {
    Seq(u64),
    Time(time::OffsetDateTime),
}

impl Since {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match text.parse::<u64>() {
            Ok(n) => Ok(Self::Seq(n.max(1))),
            Err(_) => {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map(Self::Time)
                    .map_err(|_| "--since must be a sequence number or an RFC 3339 time")
            }
        }
    }
}

/// The first sequence number to export (`None`: no entry at or after that time).
pub fn start(tree: &sled::Tree, since: &Since) -> Result<Option<u64>, StoreError> {
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

/// Calls `line` with each entry from `from` to `upto` (inclusive; `None`: to the end) as one
/// JSON line, in batches of lines; stops early when `line` returns false. Returns the count.
/// Each entry is decoded and re-encoded: a damaged entry stops the export with an error.
pub fn export(
    tree: &sled::Tree,
    from: u64,
    upto: Option<u64>,
    mut batch: impl FnMut(Vec<u8>) -> bool,
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
