//! Master-key lifecycle: rotation (a new KEK version, persisted before use), background
//! re-wrap of every data key (no token is decrypted), retirement of old versions once nothing
//! uses them (archived first), the key status admin view, and the key-check at open.
//!
//! Order of every key change (crash-safe): check value + pending marker, then the key file,
//! then memory; retirement archives, marks retired, shrinks the file, then forgets.

use super::custody::{self, KeySourceInfo};
use super::{CoreError, KeyPersistence, Vault};
use crate::crypto::{Kek, Keyring, SecretKey};
use crate::keys::{self, KeyKind};
use crate::store::{KeyChangeGuard, Store, StoredRecord};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use super::fingerprints::FingerprintStatus;

fn kcv_key(version: u32) -> String {
    custody::kcv_key(KeyKind::Master, version)
}

/// Re-wrap progress, readable without locks.
#[derive(Default)]
pub struct RewrapProgress {
    pub(super) running: AtomicBool,
    pub(super) target: AtomicU64,
    pub(super) total: AtomicU64,
    pub(super) done: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// A snapshot of [`RewrapProgress`].
#[derive(Debug, Clone, Copy)]
pub struct RewrapStatus {
    pub running: bool,
    /// Version data keys are being moved to (0 before any rotation).
    pub target_version: u32,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
}

/// State of the master keys as `GET /v1/admin/keys` shows it: versions and counts only, never
/// key material. No `Debug` derive, by the rule for key-named types.
#[derive(Clone)]
pub struct KeyStatus {
    pub sealed: bool,
    pub current_version: Option<u32>,
    /// Every KEK version held, with how many records it wraps.
    pub versions: Vec<VersionCount>,
    /// Records that do not decode (counted, never opened).
    pub corrupt_records: u64,
    pub rewrap: RewrapStatus,
    pub fingerprint: FingerprintStatus,
}

#[derive(Debug, Clone)]
pub struct VersionCount {
    pub version: u32,
    pub records: u64,
}

/// The 409 of a key change while other instances share the store: the sole-instance procedure.
pub const OTHER_INSTANCES_RUNNING: &str = "other vault instances are running on this database: \
     a key change made here would not reach their key files. Stop the other vault instances, \
     run the key command on this one, copy its changed key files (master.key or master.sealed, \
     fingerprint.key, and the .retired archives beside them) to every other instance's key \
     folder, then start them. (Right after a database restart, retry in a few seconds: the \
     running instances register again first.)";

/// Records per re-wrap transaction: small enough that concurrent writers barely wait.
pub(super) const REWRAP_BATCH: usize = 256;

impl Vault {
    /// Permission for one key change (rotate, retire, fingerprint rotation), held by the caller
    /// until the change is done. A change made by one instance of a store several processes
    /// share (PostgreSQL) would reach only that instance's key files: the others could not open
    /// its new records (master key) or would fingerprint under an old key and store duplicates
    /// (fingerprint key). So the store grants it only while no other instance runs, and keeps
    /// new ones from starting until it is dropped (`Store::key_change_guard`); otherwise 409
    /// naming the sole-instance procedure, never a change left to diverge.
    ///
    /// The re-wrap and re-index a change starts run without it: they move records between
    /// versions every instance holding the changed key files has, and an instance started with
    /// the old files meanwhile is refused by the custody checks (it lacks the new version).
    pub(super) fn key_change_guard(&self) -> Result<KeyChangeGuard, CoreError> {
        self.store
            .key_change_guard()?
            .ok_or_else(|| CoreError::KeyState(OTHER_INSTANCES_RUNNING.into()))
    }

    /// Adds a new master-key version: key-check value first, then the persisted key file, then
    /// memory — a crash in between leaves a harmless extra check value, never a key in memory
    /// only. New writes use it at once. Returns the new version.
    pub fn rotate(&self) -> Result<u32, CoreError> {
        let _only_instance = self.key_change_guard()?;
        let mut persistence = self.persistence.lock().map_err(|_| CoreError::Poisoned)?;
        if self.is_sealed() {
            return Err(CoreError::Sealed);
        }
        if matches!(*persistence, KeyPersistence::Unpersisted) {
            return Err(CoreError::KeyState(
                "the master key comes from the environment; rotate needs a key file".into(),
            ));
        }
        let held_max = {
            let guard = self.keyring.read().map_err(|_| CoreError::Poisoned)?;
            guard.as_ref().ok_or(CoreError::Sealed)?.current().version
        };
        // Above every version this folder ever knew: a stored check value is never overwritten.
        let next = custody::next_version(&*self.store, KeyKind::Master, held_max)?;
        if next == u32::MAX {
            return Err(CoreError::KeyState("no master-key version left".into()));
        }
        let kek = Kek {
            version: next,
            key: SecretKey::generate()?,
        };
        let (kcv, pending) = (kcv_key(next), custody::pending_key(KeyKind::Master, next));
        self.store.meta_apply(
            &[(&kcv, &Keyring::key_check_value(&kek)?), (&pending, b"")],
            &[],
        )?;
        let mut guard = self.keyring.write().map_err(|_| CoreError::Poisoned)?;
        let ring = guard.as_mut().ok_or(CoreError::Sealed)?;
        ring.add(kek);
        if let Err(e) = persist(&mut persistence, ring, self.folder_id.as_deref()) {
            // Not persisted: undo in memory so no record is sealed under a key a restart loses,
            // and forget the version (a restart would drop the pending marker anyway).
            ring.remove_version(next);
            let _ = self.store.meta_apply(&[], &[&kcv, &pending]);
            return Err(e);
        }
        drop(guard);
        self.store.meta_apply(&[], &[&pending])?;
        self.rewrap.target.store(u64::from(next), Ordering::SeqCst);
        tracing::info!(version = next, "master key rotated");
        remind_backup(&self.backup_paths());
        Ok(next)
    }

    /// Re-wraps every data key below the current version, in batches; safe to run while reads
    /// and writes go on. Loops until a full pass finds nothing left (a write sealed just before
    /// the rotation may land during the first pass). Blocking: run it off the async workers.
    pub fn rewrap_all(&self) -> Result<RewrapStatus, CoreError> {
        loop {
            if self.rewrap.running.swap(true, Ordering::SeqCst) {
                // Another task is re-wrapping; it re-checks the current version when it ends.
                return Ok(self.rewrap_status());
            }
            let result = self.rewrap_passes();
            self.rewrap.running.store(false, Ordering::SeqCst);
            let target = result?;
            // A rotation that happened meanwhile found this task running: take its target too.
            if self.current_version()? == target {
                return Ok(self.rewrap_status());
            }
        }
    }

    /// Re-wraps everything below the current version; returns that version.
    fn rewrap_passes(&self) -> Result<u32, CoreError> {
        let target = self.current_version()?;
        self.rewrap
            .target
            .store(u64::from(target), Ordering::SeqCst);
        let (counts, _) = self.store.count_by(&StoredRecord::wrap_version)?;
        let total: u64 = counts.range(..target).map(|(_, n)| n).sum();
        self.rewrap.total.store(total, Ordering::SeqCst);
        self.rewrap.done.store(0, Ordering::SeqCst);
        self.rewrap.failed.store(0, Ordering::SeqCst);
        // A store sealed under the old version just before the rotation may land after the
        // first pass went by: passes repeat until one finds nothing to do (or only failures).
        for _pass in 0..5 {
            let (mut rewrapped, mut failed) = (0u64, 0u64);
            let mut after: Option<Vec<u8>> = None;
            loop {
                let batch = {
                    let guard = self.keyring.read().map_err(|_| CoreError::Poisoned)?;
                    let ring = guard.as_ref().ok_or(CoreError::Sealed)?;
                    let rewrap = |r: &StoredRecord| {
                        let sealed = r.sealed().ok()?;
                        match ring.rewrap_dek(&r.store, &r.id, &sealed) {
                            Ok((w, v)) => Some((hex::encode(w), v)),
                            Err(_) => {
                                tracing::error!(record = %r.id, "data key does not re-wrap (corrupt record?)");
                                None
                            }
                        }
                    };
                    self.store
                        .rewrap_batch(after.as_deref(), REWRAP_BATCH, target, &rewrap)?
                };
                rewrapped += batch.rewrapped;
                failed += batch.failed;
                self.rewrap
                    .done
                    .fetch_add(batch.rewrapped, Ordering::SeqCst);
                match batch.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            self.rewrap.failed.store(failed, Ordering::SeqCst);
            if rewrapped == 0 {
                break;
            }
        }
        self.store.flush()?;
        tracing::info!(
            target,
            done = self.rewrap.done.load(Ordering::SeqCst),
            failed = self.rewrap.failed.load(Ordering::SeqCst),
            "re-wrap finished"
        );
        Ok(target)
    }

    fn current_version(&self) -> Result<u32, CoreError> {
        let guard = self.keyring.read().map_err(|_| CoreError::Poisoned)?;
        Ok(guard.as_ref().ok_or(CoreError::Sealed)?.current().version)
    }

    pub fn rewrap_status(&self) -> RewrapStatus {
        progress_status(&self.rewrap)
    }

    pub fn reindex_status(&self) -> RewrapStatus {
        progress_status(&self.reindex)
    }
}

pub(super) fn progress_status(p: &RewrapProgress) -> RewrapStatus {
    RewrapStatus {
        running: p.running.load(Ordering::SeqCst),
        target_version: u32::try_from(p.target.load(Ordering::SeqCst)).unwrap_or(0),
        total: p.total.load(Ordering::SeqCst),
        done: p.done.load(Ordering::SeqCst),
        failed: p.failed.load(Ordering::SeqCst),
    }
}

impl Vault {
    /// Versions held, records per version, re-wrap progress. A full scan of the records.
    pub fn key_status(&self) -> Result<KeyStatus, CoreError> {
        let (counts, corrupt) = self.store.count_by(&StoredRecord::wrap_version)?;
        let guard = self.keyring.read().map_err(|_| CoreError::Poisoned)?;
        let mut versions: BTreeMap<u32, u64> = BTreeMap::new();
        if let Some(ring) = guard.as_ref() {
            for k in ring.versions() {
                versions.insert(k.version, 0);
            }
        }
        for (v, n) in counts {
            *versions.entry(v).or_insert(0) += n;
        }
        let fingerprint = self.fingerprint_status()?;
        Ok(KeyStatus {
            fingerprint,
            sealed: guard.is_none(),
            current_version: guard.as_ref().map(|r| r.current().version),
            versions: versions
                .into_iter()
                .map(|(version, records)| VersionCount { version, records })
                .collect(),
            corrupt_records: corrupt,
            rewrap: self.rewrap_status(),
        })
    }

    /// Loaded master key versions, ascending (the last seals new records; empty while sealed).
    pub fn key_versions(&self) -> Vec<u32> {
        self.keyring
            .read()
            .ok()
            .and_then(|g| {
                g.as_ref()
                    .map(|r| r.versions().map(|k| k.version).collect())
            })
            .unwrap_or_default()
    }

    /// Whether work from an earlier rotation is left (old KEK or fingerprint versions held),
    /// e.g. after a restart in the middle of a re-wrap or re-index.
    pub fn has_background_work(&self) -> (bool, bool) {
        let rewrap = self
            .keyring
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|r| r.versions().count() > 1))
            .unwrap_or(false);
        let reindex = self
            .fingerprints
            .read()
            .map(|f| f.keys.len() > 1)
            .unwrap_or(false);
        (rewrap, reindex)
    }

    /// Destroys every version below `below` — refused, with counts, while any record is still
    /// wrapped under one of them, and refused for the current version. Holds the keyring write
    /// lock across the check and the removal, so no store can slip a record in between.
    pub fn retire_below(&self, below: u32) -> Result<Vec<u32>, CoreError> {
        let _only_instance = self.key_change_guard()?;
        let mut persistence = self.persistence.lock().map_err(|_| CoreError::Poisoned)?;
        let mut guard = self.keyring.write().map_err(|_| CoreError::Poisoned)?;
        let ring = guard.as_mut().ok_or(CoreError::Sealed)?;
        if below > ring.current().version {
            return Err(CoreError::KeyState(format!(
                "cannot retire the current master-key version {}",
                ring.current().version
            )));
        }
        let (counts, _) = self.store.count_by(&StoredRecord::wrap_version)?;
        let still: Vec<String> = counts
            .range(..below)
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| format!("{n} record(s) under version {v}"))
            .collect();
        if !still.is_empty() {
            return Err(CoreError::KeyState(format!(
                "refused: still wrapped below version {below}: {}",
                still.join(", ")
            )));
        }
        let retired: Vec<u32> = ring
            .versions()
            .map(|k| k.version)
            .filter(|v| *v < below)
            .collect();
        if retired.is_empty() {
            return Ok(retired);
        }
        // Persist the smaller keyring first; only then forget the keys in memory.
        let mut smaller = Vec::new();
        for k in ring.versions().filter(|k| k.version >= below) {
            smaller.push(Kek {
                version: k.version,
                key: SecretKey::from_slice(k.key.expose_bytes())?,
            });
        }
        let smaller = Keyring::new(smaller).ok_or(CoreError::KeyState("empty keyring".into()))?;
        // Archive, then mark retired, then shrink the key file, then forget in memory: a crash
        // at any point leaves every version in the key file or the archive, and a start with
        // the smaller file accepts the missing versions only because they are marked retired.
        let retiring: Vec<(u32, &SecretKey)> = ring
            .versions()
            .filter(|k| k.version < below)
            .map(|k| (k.version, &k.key))
            .collect();
        let folder = self.folder_id.as_deref();
        let archive = archive_master(&persistence, &retiring, folder)?;
        self.mark_retired(KeyKind::Master, &retired)?;
        if let Err(e) = persist(&mut persistence, &smaller, folder) {
            let marks: Vec<String> = retired
                .iter()
                .map(|v| custody::retired_key(KeyKind::Master, *v))
                .collect();
            let refs: Vec<&str> = marks.iter().map(String::as_str).collect();
            let _ = self.store.meta_apply(&[], &refs);
            return Err(e);
        }
        ring.remove_below(below);
        tracing::info!(?retired, archive = %archive.display(), "master key versions retired (kept in the archive)");
        let mut paths = self.backup_paths();
        paths.push(archive);
        remind_backup(&paths);
        Ok(retired)
    }

    /// Marks versions retired (durably) before they leave a key file.
    pub(super) fn mark_retired(&self, kind: KeyKind, versions: &[u32]) -> Result<(), CoreError> {
        let marks: Vec<String> = versions
            .iter()
            .map(|v| custody::retired_key(kind, *v))
            .collect();
        let puts: Vec<(&str, &[u8])> = marks.iter().map(|k| (k.as_str(), &b""[..])).collect();
        self.store.meta_apply(&puts, &[])?;
        Ok(())
    }

    /// The key files an operator must back up after a key change: the master key file (plain or
    /// sealed), the fingerprint key file, and the archives beside them that exist.
    pub fn backup_paths(&self) -> Vec<std::path::PathBuf> {
        let mut out: Vec<std::path::PathBuf> = self.master_file.iter().cloned().collect();
        if let Some(fp) = &self.fp_file {
            out.push(fp.clone());
        }
        let archives: Vec<std::path::PathBuf> = out
            .iter()
            .map(|p| keys::archive_path(p))
            .filter(|a| a.exists())
            .collect();
        out.extend(archives);
        out
    }
}

/// Checks (or, for a fresh folder or a newly added key version, records) the key-check values,
/// so that a wrong key is a clear refusal at start and never garbage later; then that the
/// keyring covers every version the folder uses or knows (`custody`).
/// Returns the versions whose retirement this key file has not caught up with
/// ([`finish_master_retirement`]).
pub(super) fn check_keyring(
    keyring: &Keyring,
    store: &dyn Store,
    file: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> Result<Vec<u32>, CoreError> {
    for kek in keyring.versions() {
        let key = kcv_key(kek.version);
        let kcv = match store.meta_get(&key)? {
            Some(kcv) => kcv,
            // A fresh folder, or a version added to the file by hand: recorded only if still
            // absent. Another instance starting at the same moment on the same (empty) database
            // may record its own first; then that is the value checked below, and a different
            // key is refused here instead of both instances running with their own.
            None => store.meta_put_if_absent(&key, &Keyring::key_check_value(kek)?)?,
        };
        if !Keyring::verify_key_check(kek, &kcv) {
            return Err(CoreError::WrongMasterKey(kek.version));
        }
    }
    let held: Vec<u32> = keyring.versions().map(|k| k.version).collect();
    let (in_use, _) = store.count_by(&StoredRecord::wrap_version)?;
    let src = KeySourceInfo {
        kind: KeyKind::Master,
        file,
        data_dir,
    };
    Ok(custody::check_versions(store, &src, &held, &in_use)?)
}

/// Adds master-key versions to the archive beside the key file (plain or sealed).
fn archive_master(
    persistence: &KeyPersistence,
    retiring: &[(u32, &SecretKey)],
    folder: Option<&str>,
) -> Result<std::path::PathBuf, CoreError> {
    match persistence {
        KeyPersistence::File(path) => Ok(keys::archive_versions(
            path,
            KeyKind::Master,
            retiring,
            folder,
        )?),
        KeyPersistence::Sealed {
            path,
            root: Some(root),
            ..
        } => Ok(keys::archive_sealed(path, root, retiring, folder)?),
        KeyPersistence::Sealed { root: None, .. } => Err(CoreError::Sealed),
        KeyPersistence::Unpersisted => Err(CoreError::KeyState(
            "the master key comes from the environment; it cannot be changed".into(),
        )),
    }
}

/// Finishes on this host a retirement the database records but this key file has not caught
/// up with (`custody::check_versions` names the versions): archive, rewrite the key file
/// without them, forget them. Same order as [`Vault::retire_below`], so a crash leaves every
/// version in the file or the archive. A key from the environment is only forgotten.
pub(super) fn finish_master_retirement(
    persistence: &mut KeyPersistence,
    ring: &mut Keyring,
    versions: &[u32],
    folder: Option<&str>,
) -> Result<(), CoreError> {
    let current = ring.current().version;
    let versions: Vec<u32> = versions
        .iter()
        .copied()
        .filter(|v| *v != current && ring.versions().any(|k| k.version == *v))
        .collect();
    if versions.is_empty() {
        return Ok(());
    }
    let mut kept = Vec::new();
    for k in ring.versions().filter(|k| !versions.contains(&k.version)) {
        kept.push(Kek {
            version: k.version,
            key: SecretKey::from_slice(k.key.expose_bytes())?,
        });
    }
    let smaller = Keyring::new(kept).ok_or(CoreError::KeyState("empty keyring".into()))?;
    let mut written = Vec::new();
    if !matches!(persistence, KeyPersistence::Unpersisted) {
        let retiring: Vec<(u32, &SecretKey)> = ring
            .versions()
            .filter(|k| versions.contains(&k.version))
            .map(|k| (k.version, &k.key))
            .collect();
        written.push(archive_master(persistence, &retiring, folder)?);
        persist(persistence, &smaller, folder)?;
        if let KeyPersistence::File(p) | KeyPersistence::Sealed { path: p, .. } = &*persistence {
            written.push(p.clone());
        }
    }
    *ring = smaller;
    tracing::warn!(
        retired = ?versions,
        "master key versions retired on this database were still in this instance's key file: \
         moved them to the archive (the retirement is finished on this host)"
    );
    remind_backup(&written);
    Ok(())
}

pub(super) fn persist(
    persistence: &mut KeyPersistence,
    ring: &Keyring,
    folder: Option<&str>,
) -> Result<(), CoreError> {
    match persistence {
        KeyPersistence::File(path) => Ok(keys::write_master_file(path, ring, folder)?),
        KeyPersistence::Sealed {
            path,
            file,
            root: Some(root),
        } => {
            let mut updated = file.with_keyring(root, ring)?;
            if updated.data_folder.is_none() {
                updated.data_folder = folder.map(str::to_owned);
            }
            updated.write(path)?;
            *file = updated;
            Ok(())
        }
        KeyPersistence::Sealed { root: None, .. } => Err(CoreError::Sealed),
        KeyPersistence::Unpersisted => Err(CoreError::KeyState(
            "the master key comes from the environment; it cannot be changed".into(),
        )),
    }
}

/// Logs the reminder every key change ends with: the files an operator must back up again.
pub(super) fn remind_backup(paths: &[std::path::PathBuf]) {
    for p in paths {
        tracing::warn!(path = %p.display(), "key files changed: back up the key file now");
    }
}
