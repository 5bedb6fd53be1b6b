//! Opening a sled data folder, and the offline view of a stopped vault's folder
//! (`vault init`, `vault audit verify|export`), which must work even where `SledStore::new`
//! refuses (a damaged last audit entry).

use super::audit;
use crate::audit::Verdict;
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

/// Walks the audit chain of an open `Db` (works even when the last entry is damaged, where
/// `SledStore::new` refuses).
fn verify_audit_db(db: &::sled::Db) -> Result<Verdict, StoreError> {
    audit::verify_tree(&db.open_tree("audit")?)
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

    pub fn verify_audit(&self) -> Result<Verdict, StoreError> {
        verify_audit_db(&self.db)
    }

    /// `AuditLog::first_since` then `export` on the folder's chain, to its end.
    pub fn export_audit(
        &self,
        since: &crate::audit_export::Since,
        batch: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let tree = self.db.open_tree("audit")?;
        let Some(from) = audit::first_since(&tree, since)? else {
            return Ok(None);
        };
        Ok(Some((from, audit::export(&tree, from, None, batch)?)))
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
