//! Key custody that fails closed: the checks that stand between a data folder and key files
//! that do not belong to it. Each closes a data-loss path found in a production drill:
//!
//! 1. **Versions cover the data.** At start (and at unseal) every key version a record is
//!    wrapped or indexed under must be held, and every version this folder has a key-check value
//!    for must be held or marked retired. A stale key file (restored from before a rotation, or a
//!    post-retire file with pre-retire data) is refused with the version it lacks, instead of
//!    starting "ready" and answering every charge with "ciphertext does not authenticate".
//! 2. **Check values are never overwritten.** A rotation picks a version above every version the
//!    folder has ever known (held, pending or retired), and writes its check value together with
//!    a *pending* marker before the key file; the marker is cleared once the key file holds the
//!    version. A crash in between leaves a pending version no record uses, dropped at the next
//!    start. Retirement marks versions *retired* (keeping their check values, so an archived key
//!    restored later is still verified) before it removes them from the key file.
//! 3. **Key files are bound to their data folder.** `vault init` writes one random id into the
//!    data folder and a `data-folder <id>` line into the key files. A key file bound to another
//!    folder, or bound key files with a new empty folder (the restore-drill mistake that rotated
//!    the live fingerprint key from another `data_dir`), are refused at start. Files written
//!    before binding existed are bound on their first start.
//! 4. **One vault per key folder.** The folder holding the master key file is locked (`flock`)
//!    for the life of the process, so a second vault on another data folder cannot rewrite the
//!    live key files while the first runs.

use crate::keys::{self, KeyError, KeyKind};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `meta` key holding the data folder's id.
pub const FOLDER_ID_KEY: &str = "custody/data-folder-id";

/// Why the keys and the data folder do not go together. Messages name files, folders, versions
/// and counts, never key material.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// A version the folder knows (check value stored, not retired) is missing from the keys.
    #[error(
        "{source_name} lacks {kind} key version {version}, which data folder {data_dir} was \
         written with: the key file is older than the data ({hint}); refusing to start"
    )]
    StaleKeyFile {
        kind: &'static str,
        version: u32,
        source_name: String,
        data_dir: String,
        hint: &'static str,
    },
    /// Records use a version the keys do not hold.
    #[error(
        "{records} record(s) in data folder {data_dir} are {how} {kind} key version {version}, \
         which {source_name} lacks; refusing to start (they could not be opened). {hint}"
    )]
    MissingVersion {
        kind: &'static str,
        how: &'static str,
        version: u32,
        records: u64,
        source_name: String,
        data_dir: String,
        hint: String,
    },
    /// The key file is bound to another data folder.
    #[error(
        "key file {path} belongs to data folder {file_id}, but {data_dir} is data folder \
         {folder_id}: refusing to start (wrong key file or wrong data folder; a key file is never \
         used with another vault's data)"
    )]
    ForeignKeyFile {
        path: String,
        file_id: String,
        folder_id: String,
        data_dir: String,
    },
    /// Bound key files with a new, empty data folder.
    #[error(
        "key file {path} belongs to data folder {file_id}, but {data_dir} is a new, empty data \
         folder: refusing to start. To restore, put the data backup at {data_dir}; to start a new \
         vault, run `vault init` with new key files"
    )]
    NewFolderWithBoundKeys {
        path: String,
        file_id: String,
        data_dir: String,
    },
    /// Another process holds the key folder.
    #[error(
        "key folder {0} is in use by another vault process: refusing to start a second vault on \
         the same key files"
    )]
    KeyFolderInUse(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Master => "master",
        KeyKind::Fingerprint => "fingerprint",
    }
}

/// `meta` key of a version's key-check value (the layout predates this module).
pub fn kcv_key(kind: KeyKind, version: u32) -> String {
    match (kind, version) {
        (KeyKind::Master, v) => format!("kcv/master/{v}"),
        (KeyKind::Fingerprint, 1) => "kcv/fingerprint".to_owned(),
        (KeyKind::Fingerprint, v) => format!("kcv/fingerprint/{v}"),
    }
}

fn kcv_versions(store: &dyn Store, kind: KeyKind) -> Result<BTreeSet<u32>, StoreError> {
    let prefix = match kind {
        KeyKind::Master => "kcv/master/",
        KeyKind::Fingerprint => "kcv/fingerprint",
    };
    let mut out = BTreeSet::new();
    for (k, _) in store.meta_scan(prefix)? {
        let rest = &k[prefix.len()..];
        let v = match (kind, rest) {
            (KeyKind::Fingerprint, "") => Some(1),
            (KeyKind::Fingerprint, r) => r.strip_prefix('/').and_then(|r| r.parse().ok()),
            (KeyKind::Master, r) => r.parse().ok(),
        };
        if let Some(v) = v {
            out.insert(v);
        }
    }
    Ok(out)
}

/// `meta` key of a pending (rotation started, key file not yet written) version.
pub fn pending_key(kind: KeyKind, version: u32) -> String {
    format!("custody/pending/{}/{version}", kind_name(kind))
}

/// `meta` key of a retired version (removed from the key file, kept in the archive).
pub fn retired_key(kind: KeyKind, version: u32) -> String {
    format!("custody/retired/{}/{version}", kind_name(kind))
}

fn marked(store: &dyn Store, what: &str, kind: KeyKind) -> Result<BTreeSet<u32>, StoreError> {
    let prefix = format!("custody/{what}/{}/", kind_name(kind));
    Ok(store
        .meta_scan(&prefix)?
        .into_iter()
        .filter_map(|(k, _)| k[prefix.len()..].parse().ok())
        .collect())
}

/// The version a rotation may use: above every version the folder has known, so no stored
/// check value is ever overwritten.
pub fn next_version(store: &dyn Store, kind: KeyKind, held_max: u32) -> Result<u32, StoreError> {
    let known = kcv_versions(store, kind)?
        .into_iter()
        .chain(marked(store, "pending", kind)?)
        .chain(marked(store, "retired", kind)?)
        .max()
        .unwrap_or(0);
    Ok(held_max.max(known).saturating_add(1))
}

/// Where the keys of one kind come from, for messages and hints.
pub struct KeySourceInfo<'a> {
    pub kind: KeyKind,
    /// The key file, or `None` for a key from the environment.
    pub file: Option<&'a Path>,
    pub data_dir: &'a Path,
}

impl KeySourceInfo<'_> {
    fn name(&self) -> String {
        match (self.file, self.kind) {
            (Some(p), _) => p.display().to_string(),
            (None, KeyKind::Master) => "VAULT_MASTER_KEY".to_owned(),
            (None, KeyKind::Fingerprint) => "VAULT_FINGERPRINT_KEY".to_owned(),
        }
    }
}

/// Point 1 and 2 of the module header for one kind of key: `held` are the versions loaded,
/// `in_use` the records per version (by wrap version, or by fingerprint version).
///
/// Returns the versions whose retirement this key file has not caught up with: held, marked
/// retired, used by no record and not the current (highest) one. That is a key file copied
/// from another instance after a rotation but before the retire, or this instance's own file
/// after a crash between "mark retired" and "rewrite the key file". The caller finishes the
/// retirement on this host (archive, rewrite, forget) instead of keeping a destroyed version.
/// A retired version that records use stays held: an operator copied it back from the archive
/// to open restored data, as the refusal told them to.
pub fn check_versions(
    store: &dyn Store,
    src: &KeySourceInfo<'_>,
    held: &[u32],
    in_use: &BTreeMap<u32, u64>,
) -> Result<Vec<u32>, CustodyError> {
    let kind = src.kind;
    let held: BTreeSet<u32> = held.iter().copied().collect();
    let pending = marked(store, "pending", kind)?;
    let retired = marked(store, "retired", kind)?;
    let data_dir = src.data_dir.display().to_string();
    if let Some((&version, &records)) = in_use.iter().find(|(v, n)| **n > 0 && !held.contains(v)) {
        return Err(CustodyError::MissingVersion {
            kind: kind_name(kind),
            how: match kind {
                KeyKind::Master => "wrapped under",
                KeyKind::Fingerprint => "indexed under",
            },
            version,
            records,
            source_name: src.name(),
            data_dir,
            hint: missing_hint(src, version, !store.single_process()),
        });
    }
    for version in kcv_versions(store, kind)? {
        if held.contains(&version) || retired.contains(&version) {
            continue;
        }
        if pending.contains(&version) {
            // A rotation that stopped before its key file was written: no record can use the
            // version (memory takes it only after the file), so forget it.
            tracing::warn!(
                kind = kind_name(kind),
                version,
                "dropping a key version whose rotation never reached the key file"
            );
            store.meta_apply(&[], &[&kcv_key(kind, version), &pending_key(kind, version)])?;
            continue;
        }
        return Err(CustodyError::StaleKeyFile {
            kind: kind_name(kind),
            version,
            source_name: src.name(),
            data_dir,
            hint: if store.single_process() {
                "restore the key file backed up after the last key change"
            } else {
                COPY_KEY_FILES
            },
        });
    }
    // Rotations that reached the key file: their pending markers are done.
    let done: Vec<String> = pending
        .iter()
        .filter(|v| held.contains(v))
        .map(|v| pending_key(kind, *v))
        .collect();
    if !done.is_empty() {
        let refs: Vec<&str> = done.iter().map(String::as_str).collect();
        store.meta_apply(&[], &refs)?;
    }
    let current = held.iter().max().copied();
    Ok(retired
        .iter()
        .copied()
        .filter(|v| held.contains(v) && Some(*v) != current)
        .filter(|v| in_use.get(v).copied().unwrap_or(0) == 0)
        .collect())
}

/// Why a key file lags a database that several instances share, and what to do.
const COPY_KEY_FILES: &str = "another vault instance on this database changed keys: copy its key \
     files (master.key or master.sealed, fingerprint.key, and the .retired archives beside them) \
     into this instance's key folder, as every instance on one database needs the same key files";

fn missing_hint(src: &KeySourceInfo<'_>, version: u32, shared: bool) -> String {
    let Some(file) = src.file else {
        return "Set the key with that version in the environment.".to_owned();
    };
    let archive = keys::archive_path(file);
    let archived = keys::load_archive(file, src.kind)
        .map(|a| a.iter().any(|(v, _)| *v == version))
        .unwrap_or(false);
    if archived {
        format!(
            "Version {version} was retired and is kept in {}: copy its `{version}:` line back \
             into {} to open this data",
            archive.display(),
            file.display()
        )
    } else if shared {
        let mut hint = format!("{COPY_KEY_FILES}.");
        hint[..1].make_ascii_uppercase();
        hint
    } else {
        "Restore the key file that was backed up with this data.".to_owned()
    }
}

/// A data folder with no key-check value and no record: nothing was ever written with a key.
fn is_fresh(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(store.record_count()? == 0 && store.meta_scan("kcv/")?.is_empty())
}

/// Point 3 of the module header. `files` are the key files in use (environment keys have none).
/// Returns the folder id, recording one in a folder (or database) that has none. The key files
/// are bound by [`bind_key_files`] only after the key-check values accepted the keys.
///
/// The id is recorded with insert-if-absent: instances starting at the same moment on one empty
/// database all take the first one's id (the key-check values then decide which keys run), so
/// no instance works with an id the database does not hold.
pub fn check_binding(
    store: &dyn Store,
    data_dir: &Path,
    files: &[&Path],
) -> Result<String, CustodyError> {
    let folder_id = store
        .meta_get(FOLDER_ID_KEY)?
        .and_then(|v| String::from_utf8(v).ok());
    let mut bound: Vec<(&Path, String)> = Vec::new();
    for f in files {
        if let Some(id) = keys::binding_of(f)? {
            bound.push((f, id));
        }
    }
    let data = data_dir.display().to_string();
    let id = match (&folder_id, bound.first()) {
        (Some(folder), _) => {
            if let Some((p, file_id)) = bound.iter().find(|(_, id)| id != folder) {
                return Err(CustodyError::ForeignKeyFile {
                    path: p.display().to_string(),
                    file_id: file_id.clone(),
                    folder_id: folder.clone(),
                    data_dir: data,
                });
            }
            folder.clone()
        }
        (None, Some((p, file_id))) => {
            if let Some((q, other)) = bound.iter().find(|(_, id)| id != file_id) {
                return Err(CustodyError::ForeignKeyFile {
                    path: q.display().to_string(),
                    file_id: other.clone(),
                    folder_id: file_id.clone(),
                    data_dir: format!("{data} (its other key file {})", p.display()),
                });
            }
            if is_fresh(store)? {
                return Err(CustodyError::NewFolderWithBoundKeys {
                    path: p.display().to_string(),
                    file_id: file_id.clone(),
                    data_dir: data,
                });
            }
            // Data written before binding existed, restored next to key files bound since:
            // the key-check values decide whether the keys fit.
            file_id.clone()
        }
        (None, None) => uuid::Uuid::new_v4().to_string(),
    };
    if folder_id.is_some() {
        return Ok(id);
    }
    let recorded = store.meta_put_if_absent(FOLDER_ID_KEY, id.as_bytes())?;
    let recorded = String::from_utf8(recorded).map_err(|_| StoreError::Corrupt("folder id"))?;
    if recorded == id {
        tracing::info!(data_folder = %id, "data folder id recorded");
        return Ok(id);
    }
    // Another instance recorded its id first: the checks above, against that id.
    if let Some((p, file_id)) = bound.iter().find(|(_, b)| *b != recorded) {
        return Err(CustodyError::ForeignKeyFile {
            path: p.display().to_string(),
            file_id: file_id.clone(),
            folder_id: recorded,
            data_dir: data,
        });
    }
    Ok(recorded)
}

/// Binds the key files among `files` that are not bound yet to data folder `id` (point 3):
/// files written before binding existed, or keys a first start just accepted. Called once the
/// key-check values accepted the keys, so a refused key file is never bound to a folder it
/// does not open.
pub fn bind_key_files(files: &[&Path], id: &str) -> Result<(), CustodyError> {
    for f in files {
        if keys::binding_of(f)?.is_some() {
            continue;
        }
        match keys::bind_file(f, id) {
            Ok(()) => tracing::warn!(
                path = %f.display(),
                "key file bound to its data folder: back up the key file now"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "key file is not bound to its data folder (give the vault write access to its \
                 key folder)"
            ),
        }
    }
    Ok(())
}

/// Point 4 of the module header: locks the folder holding `key_file` until the returned handle
/// is dropped (the process ends).
pub fn lock_key_folder(key_file: &Path) -> Result<std::fs::File, CustodyError> {
    let dir = key_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let handle = std::fs::File::open(&dir).map_err(|e| KeyError::Read {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(CustodyError::KeyFolderInUse(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(KeyError::Read {
            path: dir.display().to_string(),
            reason: format!("cannot lock: {e}"),
        }
        .into()),
    }
}
