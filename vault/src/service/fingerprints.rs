//! Fingerprint-key lifecycle: the keyed fingerprint (HMAC-SHA256 of store, account and token)
//! lets the vault recognise a token saved twice without decrypting anything. Rotation adds a
//! version; a background re-index moves every record to it (opening each token in memory, one at
//! a time, into zeroizing buffers); until it completes, a token is recognised under every
//! version held, so dedupe keeps working throughout; then older versions are destroyed.

use super::custody::{self, KeySourceInfo};
use super::rotation::{REWRAP_BATCH, RewrapStatus, VersionCount, progress_status, remind_backup};
use super::{CoreError, Vault};
use crate::crypto::{Fingerprinter, SecretKey};
use crate::keys::{self, KeyKind};
use crate::store::{Store, StoreError, StoredRecord};
use shared::domain::PaymentMethodId;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// One fingerprint-key version. `key` is kept only when it came from a file (to rewrite it).
pub(super) struct FpKey {
    pub(super) version: u32,
    pub(super) key: Option<SecretKey>,
    pub(super) f: Fingerprinter,
}

/// Fingerprint-key versions, ascending; the last is current. More than one only while a
/// fingerprint re-index runs: then a token is recognised under every version held.
pub(super) struct FpRing {
    pub(super) keys: Vec<FpKey>,
}

impl FpRing {
    pub(super) fn current(&self) -> Result<&FpKey, CoreError> {
        self.keys
            .last()
            .ok_or_else(|| CoreError::KeyState("no fingerprint key".into()))
    }
}

fn fp_kcv_key(version: u32) -> String {
    custody::kcv_key(KeyKind::Fingerprint, version)
}

/// Fingerprint-key state as `GET /v1/admin/keys` shows it.
#[derive(Debug, Clone)]
pub struct FingerprintStatus {
    pub current_version: u32,
    /// Versions held, with how many records are indexed under each.
    pub versions: Vec<VersionCount>,
    pub reindex: RewrapStatus,
}

impl Vault {
    pub(super) fn fingerprint_status(&self) -> Result<FingerprintStatus, CoreError> {
        let (counts, _) = self.store.count_by(&StoredRecord::fp_version)?;
        let fps = self.fingerprints.read().map_err(|_| CoreError::Poisoned)?;
        let mut versions: BTreeMap<u32, u64> = fps.keys.iter().map(|k| (k.version, 0)).collect();
        for (v, n) in counts {
            *versions.entry(v).or_insert(0) += n;
        }
        Ok(FingerprintStatus {
            current_version: fps.current()?.version,
            versions: versions
                .into_iter()
                .map(|(version, records)| VersionCount { version, records })
                .collect(),
            reindex: progress_status(&self.reindex),
        })
    }

    /// Adds a fingerprint-key version: check value, then the key file (atomic), then memory.
    /// New stores index under it at once; until [`Self::reindex_fingerprints`] completes, a
    /// token is recognised under every version held, so dedupe keeps working throughout.
    pub fn rotate_fingerprint_key(&self) -> Result<u32, CoreError> {
        let _only_instance = self.key_change_guard()?;
        let _serial = self.persistence.lock().map_err(|_| CoreError::Poisoned)?;
        if self.is_sealed() {
            return Err(CoreError::Sealed);
        }
        let path = self.fp_file.clone().ok_or_else(|| {
            CoreError::KeyState(
                "the fingerprint key comes from the environment; rotate needs a key file".into(),
            )
        })?;
        let mut fps = self.fingerprints.write().map_err(|_| CoreError::Poisoned)?;
        let next =
            custody::next_version(&*self.store, KeyKind::Fingerprint, fps.current()?.version)?;
        if next == u32::MAX {
            return Err(CoreError::KeyState(
                "no fingerprint-key version left".into(),
            ));
        }
        let key = SecretKey::generate()?;
        let f = Fingerprinter::new(&key);
        let (kcv, pending) = (
            fp_kcv_key(next),
            custody::pending_key(KeyKind::Fingerprint, next),
        );
        self.store
            .meta_apply(&[(&kcv, &f.check_value()), (&pending, b"")], &[])?;
        let mut all: Vec<(u32, &SecretKey)> = Vec::new();
        for k in &fps.keys {
            let raw = k.key.as_ref().ok_or_else(|| {
                CoreError::KeyState("fingerprint key material not held; cannot rewrite".into())
            })?;
            all.push((k.version, raw));
        }
        all.push((next, &key));
        if let Err(e) = keys::write_fingerprint_file(&path, &all, self.folder_id.as_deref()) {
            let _ = self.store.meta_apply(&[], &[&kcv, &pending]);
            return Err(e.into());
        }
        fps.keys.push(FpKey {
            version: next,
            key: Some(key),
            f,
        });
        self.store.meta_apply(&[], &[&pending])?;
        tracing::info!(version = next, "fingerprint key rotated");
        remind_backup(&[path]);
        Ok(next)
    }

    /// Re-indexes every record under the current fingerprint key. Needs each token in memory
    /// (an HMAC of it), opened one at a time into zeroizing buffers and never written anywhere.
    /// When every record is moved, the older fingerprint versions are destroyed (file, check
    /// values, memory). Blocking: run it off the async workers.
    pub fn reindex_fingerprints(&self) -> Result<RewrapStatus, CoreError> {
        loop {
            if self.reindex.running.swap(true, Ordering::SeqCst) {
                return Ok(progress_status(&self.reindex));
            }
            let result = self.reindex_passes();
            self.reindex.running.store(false, Ordering::SeqCst);
            let target = result?;
            let current = self
                .fingerprints
                .read()
                .map_err(|_| CoreError::Poisoned)?
                .current()?
                .version;
            if current == target {
                return Ok(progress_status(&self.reindex));
            }
        }
    }

    fn reindex_passes(&self) -> Result<u32, CoreError> {
        let target = self
            .fingerprints
            .read()
            .map_err(|_| CoreError::Poisoned)?
            .current()?
            .version;
        let p = &self.reindex;
        p.target.store(u64::from(target), Ordering::SeqCst);
        let (counts, _) = self.store.count_by(&StoredRecord::fp_version)?;
        p.total.store(
            counts.range(..target).map(|(_, n)| n).sum(),
            Ordering::SeqCst,
        );
        p.done.store(0, Ordering::SeqCst);
        p.failed.store(0, Ordering::SeqCst);
        let mut failed = 0u64;
        for _pass in 0..5 {
            let (mut moved, mut failed_now) = (0u64, 0u64);
            let mut after: Option<Vec<u8>> = None;
            loop {
                let ids = self
                    .store
                    .record_ids_after(after.as_deref(), REWRAP_BATCH)?;
                for id in &ids {
                    match self.reindex_record(id, target) {
                        Ok(true) => moved += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "record cannot be re-indexed");
                            failed_now += 1;
                        }
                    }
                }
                p.done
                    .store(p.done.load(Ordering::SeqCst) + moved, Ordering::SeqCst);
                if ids.len() < REWRAP_BATCH {
                    break;
                }
                after = ids.last().cloned();
            }
            failed = failed_now;
            p.failed.store(failed, Ordering::SeqCst);
            if moved == 0 {
                break;
            }
        }
        self.store.flush()?;
        if failed == 0 {
            self.drop_old_fingerprint_versions(target)?;
        }
        tracing::info!(
            target,
            done = p.done.load(Ordering::SeqCst),
            failed,
            "re-index finished"
        );
        Ok(target)
    }

    /// Moves one record to fingerprint version `target`; `Ok(false)` if nothing to do.
    fn reindex_record(&self, id: &[u8], target: u32) -> Result<bool, CoreError> {
        let id_text = std::str::from_utf8(id).map_err(|_| StoreError::Corrupt("record id"))?;
        let Ok(id_parsed) = PaymentMethodId::parse(id_text) else {
            return Err(StoreError::Corrupt("record id").into());
        };
        let Some(r) = self.store.get(&id_parsed)? else {
            return Ok(false);
        };
        if r.fp_version() >= target {
            return Ok(false);
        }
        let token = {
            let guard = self.keyring.read().map_err(|_| CoreError::Poisoned)?;
            let ring = guard.as_ref().ok_or(CoreError::Sealed)?;
            ring.open_token(&r.store, &r.id, &r.sealed()?)?
        };
        let new_fp = {
            let fps = self.fingerprints.read().map_err(|_| CoreError::Poisoned)?;
            let k = fps
                .keys
                .iter()
                .find(|k| k.version == target)
                .ok_or_else(|| CoreError::KeyState("fingerprint version gone".into()))?;
            k.f.fingerprint(&r.store, &r.account, &token)
        };
        drop(token);
        Ok(self.store.reindex_one(id, &r.fingerprint, new_fp, target)?)
    }

    /// Destroys fingerprint versions below `target` once no record is indexed under them.
    fn drop_old_fingerprint_versions(&self, target: u32) -> Result<(), CoreError> {
        let _serial = self.persistence.lock().map_err(|_| CoreError::Poisoned)?;
        let mut fps = self.fingerprints.write().map_err(|_| CoreError::Poisoned)?;
        if fps.keys.len() < 2 || fps.current()?.version != target {
            return Ok(());
        }
        let (counts, _) = self.store.count_by(&StoredRecord::fp_version)?;
        if counts.range(..target).any(|(_, n)| *n > 0) {
            return Ok(());
        }
        let old: Vec<u32> = fps
            .keys
            .iter()
            .map(|k| k.version)
            .filter(|v| *v < target)
            .collect();
        // Archive first, then mark retired, then shrink the key file: a crash at any point
        // leaves every version either in the key file or in the archive.
        let mut written = Vec::new();
        if let Some(path) = &self.fp_file {
            let retiring = materials(&fps.keys, |k| k.version < target)?;
            written.push(keys::archive_versions(
                path,
                KeyKind::Fingerprint,
                &retiring,
                self.folder_id.as_deref(),
            )?);
            self.mark_retired(KeyKind::Fingerprint, &old)?;
            let cur = material(fps.current()?)?;
            keys::write_fingerprint_file(path, &[cur], self.folder_id.as_deref())?;
            written.push(path.clone());
        } else {
            self.mark_retired(KeyKind::Fingerprint, &old)?;
        }
        fps.keys.retain(|k| k.version >= target);
        tracing::info!(retired = ?old, "old fingerprint key versions retired (kept in the archive)");
        remind_backup(&written);
        Ok(())
    }
}

/// A version's key material with its number, for rewriting the key file or the archive.
fn material(k: &FpKey) -> Result<(u32, &SecretKey), CoreError> {
    k.key.as_ref().map(|raw| (k.version, raw)).ok_or_else(|| {
        CoreError::KeyState("fingerprint key material not held; cannot rewrite".into())
    })
}

/// [`material`] of the versions `pick` selects, ascending.
fn materials(
    keys: &[FpKey],
    pick: impl Fn(&FpKey) -> bool,
) -> Result<Vec<(u32, &SecretKey)>, CoreError> {
    keys.iter().filter(|k| pick(k)).map(material).collect()
}

/// Returns the versions whose retirement this key file has not caught up with
/// ([`finish_fp_retirement`]).
pub(super) fn check_fingerprints(
    ring: &FpRing,
    store: &dyn Store,
    file: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> Result<Vec<u32>, CoreError> {
    for k in &ring.keys {
        let check = k.f.check_value();
        let key = fp_kcv_key(k.version);
        let stored = match store.meta_get(&key)? {
            Some(v) => v,
            // Version 1 on a fresh folder, or a version added to the file by hand: recorded
            // only if still absent, so of two instances starting at once with different keys
            // the second sees the first's value and is refused below.
            None => store.meta_put_if_absent(&key, &check)?,
        };
        if stored.as_slice() != check.as_slice() {
            return Err(CoreError::WrongFingerprintKey);
        }
    }
    let held: Vec<u32> = ring.keys.iter().map(|k| k.version).collect();
    let (in_use, _) = store.count_by(&StoredRecord::fp_version)?;
    let src = KeySourceInfo {
        kind: KeyKind::Fingerprint,
        file,
        data_dir,
    };
    Ok(custody::check_versions(store, &src, &held, &in_use)?)
}

/// The fingerprint side of `rotation::finish_master_retirement`: versions retired on this
/// database but still in this instance's key file are archived, the file is rewritten without
/// them, and they are forgotten (otherwise the instance would think a re-index still runs).
pub(super) fn finish_fp_retirement(
    ring: &mut FpRing,
    file: Option<&std::path::Path>,
    versions: &[u32],
    folder: Option<&str>,
) -> Result<(), CoreError> {
    let current = ring.current()?.version;
    let gone = |k: &FpKey| k.version != current && versions.contains(&k.version);
    if !ring.keys.iter().any(gone) {
        return Ok(());
    }
    let mut written = Vec::new();
    if let Some(path) = file {
        let retiring = materials(&ring.keys, gone)?;
        let kept = materials(&ring.keys, |k| !gone(k))?;
        written.push(keys::archive_versions(
            path,
            KeyKind::Fingerprint,
            &retiring,
            folder,
        )?);
        keys::write_fingerprint_file(path, &kept, folder)?;
        written.push(path.to_owned());
    }
    let retired: Vec<u32> = ring
        .keys
        .iter()
        .filter(|k| gone(k))
        .map(|k| k.version)
        .collect();
    ring.keys.retain(|k| !gone(k));
    tracing::warn!(
        ?retired,
        "fingerprint key versions retired on this database were still in this instance's key \
         file: moved them to the archive (the retirement is finished on this host)"
    );
    remind_backup(&written);
    Ok(())
}
