//! Opening a sled data folder, and the offline view of a stopped vault's folder
//! (`vault init`, and `vault audit verify|export` on a folder whose audit entries are still in
//! its sled `audit` tree: written before segment files, not yet started since).

use crate::audit::{self, AuditEntry, Verdict};
use crate::store::StoreError;
use std::path::Path;

/// Opens a sled folder with a bounded cache. A folder held by a running vault is reported as
/// such (sled locks it) instead of as an opaque I/O error.
pub fn open_db(
    path: &Path,
    cache_capacity: u64,
    flush_every_ms: u64,
) -> Result<::sled::Db, StoreError> {
    ::sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .flush_every_ms(Some(flush_every_ms.max(1)))
        .open()
        .map_err(|e| match e {
            ::sled::Error::Io(ref io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11) =>
            {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            }
            ::sled::Error::Io(ref io) if io.to_string().contains("lock") => StoreError::Locked {
                path: path.display().to_string(),
            },
            other => other.into(),
        })
}

fn verify_tree(tree: &::sled::Tree) -> Result<Verdict, StoreError> {
    audit::verify_legacy(tree.iter().map(|r| {
        r.map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(StoreError::from)
    }))
}

/// The first sequence number to export (`None`: no entry at or after that time).
fn first_since(
    tree: &::sled::Tree,
    since: &crate::audit_export::Since,
) -> Result<Option<u64>, StoreError> {
    use crate::audit_export::Since;
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

/// Each entry from `from` to the end as one JSON line, in batches. Returns the count.
fn export(
    tree: &::sled::Tree,
    from: u64,
    batch: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<u64, StoreError> {
    const BATCH_BYTES: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(BATCH_BYTES + 1024);
    let mut n = 0u64;
    for item in tree.range(audit::key(from)..) {
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

/// A stopped vault's data folder, for the offline commands (`vault init`, `vault audit
/// verify|export`): reads that must work even where `SledStore::new` refuses (damaged chain).
pub struct StoppedFolder {
    db: ::sled::Db,
}

impl StoppedFolder {
    pub fn open(path: &Path, cache_capacity: u64, flush_every_ms: u64) -> Result<Self, StoreError> {
        Ok(Self {
            db: open_db(path, cache_capacity, flush_every_ms)?,
        })
    }

    /// Whether the folder still holds audit entries in its sled `audit` tree.
    pub fn has_legacy_audit(&self) -> bool {
        self.db.tree_names().iter().any(|n| n.as_ref() == b"audit")
    }

    /// Walks the sled `audit` tree (works even on a damaged last entry).
    pub fn verify_legacy_audit(&self) -> Result<Verdict, StoreError> {
        verify_tree(&self.db.open_tree("audit")?)
    }

    /// `first_since` then `export` on the sled `audit` tree, to its end.
    pub fn export_legacy_audit(
        &self,
        since: &crate::audit_export::Since,
        batch: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let tree = self.db.open_tree("audit")?;
        let Some(from) = first_since(&tree, since)? else {
            return Ok(None);
        };
        Ok(Some((from, export(&tree, from, batch)?)))
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.open_tree("meta")?.get(key)?.map(|v| v.to_vec()))
    }

    /// Writes a `meta` value and flushes it.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree("meta")?.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }
}
