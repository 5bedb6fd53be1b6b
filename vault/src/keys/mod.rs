//! Master key and fingerprint key files: format, generation, loading, the owner-only check,
//! the data-folder binding line and the archive of retired versions.
//!
//! Master key file format (text, versioned so rotation can add lines later):
//! ```text
//! strongroom-master-key v1
//! # comments are ignored
//! data-folder 0b6c1d7e-…        (optional; written by `vault init`, see `custody`)
//! 1:<64 hex digits>
//! 2:<64 hex digits>
//! ```
//! Each `<version>:<hex>` line is one KEK version (256 bits as 64 hex digits, e.g. from
//! `openssl rand -hex 32`); the highest seals new records. The same `<version>:<hex>` lines
//! (comma- or newline-separated, or a bare `<hex>` meaning version 1) are accepted from
//! `VAULT_MASTER_KEY`. The fingerprint key file is `strongroom-fingerprint-key v1`, an optional
//! `data-folder` line, then `<version>:<hex>` lines (or one bare hex line = version 1;
//! `VAULT_FINGERPRINT_KEY` takes the bare hex). Retired versions move to an archive beside the
//! key file (`<file>.retired`, header `strongroom-retired-master-key v1` or
//! `strongroom-retired-fingerprint-key v1`, the same `<version>:<hex>` lines).
//!
//! Invariants: key bytes are parsed straight into zeroizing buffers; errors name files, never
//! contents; a key file readable by group or others is refused; every rewrite is atomic
//! (owner-only temp file, fsync, rename, fsync of the folder).

use crate::crypto::{KEY_LEN, Kek, Keyring, SecretKey};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const MASTER_HEADER: &str = "strongroom-master-key v1";
const FINGERPRINT_HEADER: &str = "strongroom-fingerprint-key v1";
const RETIRED_MASTER_HEADER: &str = "strongroom-retired-master-key v1";
const RETIRED_FINGERPRINT_HEADER: &str = "strongroom-retired-fingerprint-key v1";
/// The audit key signs the checkpoint that closes each audit segment (`audit::segment`). One
/// version: it never rotates, since archived segments must stay verifiable for years.
const AUDIT_HEADER: &str = "strongroom-audit-key v1";
/// Start of the line that binds a key file to its data folder.
pub(crate) const DATA_FOLDER_PREFIX: &str = "data-folder ";
const WARNING: &str =
    "# Owner-only. Never commit, copy into logs, or share. Back it up after every key change.\n";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("{source_name} is not a valid key: {reason}")]
    Format {
        source_name: String,
        reason: &'static str,
    },
    /// The key file (or its folder) cannot be written: nothing was changed.
    #[error("cannot write key file {path}: {reason}")]
    Write { path: String, reason: String },
}

/// Which key a file or archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Master,
    Fingerprint,
}

impl KeyKind {
    fn header(self) -> &'static str {
        match self {
            Self::Master => MASTER_HEADER,
            Self::Fingerprint => FINGERPRINT_HEADER,
        }
    }
    fn retired_header(self) -> &'static str {
        match self {
            Self::Master => RETIRED_MASTER_HEADER,
            Self::Fingerprint => RETIRED_FINGERPRINT_HEADER,
        }
    }
}

/// Refuses a file that group or others can read or write (mode & 0o077 != 0).
pub fn check_owner_only(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|e| KeyError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    check_owner_only(path)?;
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

fn parse_hex_key(hex_text: &str, source_name: &str) -> Result<SecretKey, KeyError> {
    let fmt = |reason| KeyError::Format {
        source_name: source_name.to_owned(),
        reason,
    };
    let hex_text = hex_text.trim();
    if hex_text.len() != KEY_LEN * 2 {
        return Err(fmt("expected 64 hex digits (256 bits)"));
    }
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(hex_text, &mut bytes[..]).map_err(|_| fmt("not hexadecimal"))?;
    SecretKey::from_slice(&bytes[..]).map_err(|_| fmt("wrong length"))
}

/// The key lines of a file body: not blank, not a comment, not the binding line.
fn key_entries<'a>(lines: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    lines
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#') && !e.starts_with(DATA_FOLDER_PREFIX))
}

/// Parses `<version>:<hex>` entries (or one bare `<hex>` = version 1), distinct versions only,
/// sorted by version.
fn parse_versions<'a>(
    entries: impl Iterator<Item = &'a str>,
    source_name: &str,
) -> Result<Vec<(u32, SecretKey)>, KeyError> {
    let fmt = |reason| KeyError::Format {
        source_name: source_name.to_owned(),
        reason,
    };
    let mut out: Vec<(u32, SecretKey)> = Vec::new();
    for entry in key_entries(entries) {
        let (version, hex_text) = match entry.split_once(':') {
            Some((v, h)) => (
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| fmt("bad key version (expected `<version>:<64 hex digits>`)"))?,
                h,
            ),
            None => (1, entry),
        };
        if version == 0 {
            return Err(fmt("key versions start at 1"));
        }
        if out.iter().any(|(v, _)| *v == version) {
            return Err(fmt("duplicate key version"));
        }
        out.push((version, parse_hex_key(hex_text, source_name)?));
    }
    out.sort_by_key(|(v, _)| *v);
    Ok(out)
}

fn parse_master_entries<'a>(
    entries: impl Iterator<Item = &'a str>,
    source_name: &str,
) -> Result<Keyring, KeyError> {
    let keks = parse_versions(entries, source_name)?
        .into_iter()
        .map(|(version, key)| Kek { version, key })
        .collect();
    Keyring::new(keks).ok_or_else(|| KeyError::Format {
        source_name: source_name.to_owned(),
        reason: "no key in it",
    })
}

/// Reads a key file and checks its header line.
fn read_with_header(path: &Path, header: &str) -> Result<Zeroizing<String>, KeyError> {
    let text = read_secret_file(path)?;
    if text.lines().next().map(str::trim) != Some(header) {
        return Err(KeyError::Format {
            source_name: path.display().to_string(),
            reason: if header == MASTER_HEADER {
                "missing header line `strongroom-master-key v1` (see the README: key file format)"
            } else if header == AUDIT_HEADER {
                "missing header line `strongroom-audit-key v1` (see the README: key file format)"
            } else {
                "missing header line `strongroom-fingerprint-key v1` (see the README: key file format)"
            },
        });
    }
    Ok(text)
}

/// Loads the master keyring from an owner-only file.
pub fn load_master_file(path: &Path) -> Result<Keyring, KeyError> {
    let text = read_with_header(path, MASTER_HEADER)?;
    parse_master_entries(text.lines().skip(1), &path.display().to_string())
}

/// Loads the master keyring from the value of `VAULT_MASTER_KEY`.
pub fn parse_master_env(value: &str) -> Result<Keyring, KeyError> {
    parse_master_entries(value.split([',', '\n']), "VAULT_MASTER_KEY")
}

/// Loads every version of the fingerprint key: the original single bare-hex line is version 1;
/// after a fingerprint-key rotation the file holds `<version>:<hex>` lines (the highest is
/// current; older ones are kept only until the re-index completes). Sorted by version.
pub fn load_fingerprint_versions(path: &Path) -> Result<Vec<(u32, SecretKey)>, KeyError> {
    let text = read_with_header(path, FINGERPRINT_HEADER)?;
    let name = path.display().to_string();
    let out = parse_versions(text.lines().skip(1), &name)?;
    if out.is_empty() {
        return Err(KeyError::Format {
            source_name: name,
            reason: "no key in it",
        });
    }
    Ok(out)
}

pub fn parse_fingerprint_env(value: &str) -> Result<SecretKey, KeyError> {
    parse_hex_key(value, "VAULT_FINGERPRINT_KEY")
}

/// Loads the audit key (version 1 of an `strongroom-audit-key v1` file).
pub fn load_audit_key(path: &Path) -> Result<SecretKey, KeyError> {
    let text = read_with_header(path, AUDIT_HEADER)?;
    let name = path.display().to_string();
    parse_versions(text.lines().skip(1), &name)?
        .into_iter()
        .find(|(v, _)| *v == 1)
        .map(|(_, k)| k)
        .ok_or(KeyError::Format {
            source_name: name,
            reason: "no key version 1 in it",
        })
}

pub fn parse_audit_env(value: &str) -> Result<SecretKey, KeyError> {
    parse_hex_key(value, "VAULT_AUDIT_KEY")
}

/// Writes a fresh random audit key unless the file exists (owner-only, bound to `folder`).
/// Returns whether it wrote.
pub fn ensure_audit_key_file(path: &Path, folder: Option<&str>) -> Result<bool, KeyError> {
    if path.exists() {
        return Ok(false);
    }
    let key = SecretKey::generate().map_err(|e| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let text = key_file_text(AUDIT_HEADER, folder, std::iter::once((1, &key)));
    // Atomic (temp file, fsync, rename): a crash never leaves a half-written key.
    replace_file(path, text.as_bytes())?;
    Ok(true)
}

/// The data-folder id a key file is bound to (`None` for a file written before binding, or
/// one written by hand without the line).
pub fn binding_of(path: &Path) -> Result<Option<String>, KeyError> {
    let text = read_secret_file(path)?;
    Ok(binding_in(&text))
}

pub(crate) fn binding_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(DATA_FOLDER_PREFIX))
        .map(|id| id.trim().to_owned())
}

/// Writes the binding line into an unbound key file (atomically). An existing, different
/// binding is never replaced.
pub fn bind_file(path: &Path, folder: &str) -> Result<(), KeyError> {
    let text = read_secret_file(path)?;
    match binding_in(&text) {
        Some(existing) if existing == folder => return Ok(()),
        Some(_) => {
            return Err(KeyError::Write {
                path: path.display().to_string(),
                reason: "the file is bound to another data folder; refusing to rebind it".into(),
            });
        }
        None => {}
    }
    let mut out = Zeroizing::new(String::with_capacity(text.len() + 64));
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        out.push_str(first);
        out.push('\n');
    }
    out.push_str(&format!("{DATA_FOLDER_PREFIX}{folder}\n"));
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    replace_file(path, out.as_bytes())
}

/// A key file's text: header, warning, binding line, one `<version>:<hex>` line per key.
fn key_file_text<'a>(
    header: &str,
    folder: Option<&str>,
    versions: impl Iterator<Item = (u32, &'a SecretKey)>,
) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!("{header}\n{WARNING}"));
    if let Some(id) = folder {
        text.push_str(&format!("{DATA_FOLDER_PREFIX}{id}\n"));
    }
    for (v, key) in versions {
        text.push_str(&format!(
            "{v}:{}\n",
            Zeroizing::new(hex::encode(key.expose_bytes())).as_str()
        ));
    }
    text
}

/// Rewrites the fingerprint key file with `versions` (atomic, owner-only).
pub fn write_fingerprint_file(
    path: &Path,
    versions: &[(u32, &SecretKey)],
    folder: Option<&str>,
) -> Result<(), KeyError> {
    let text = key_file_text(
        FINGERPRINT_HEADER,
        folder,
        versions.iter().map(|(v, k)| (*v, *k)),
    );
    replace_file(path, text.as_bytes())
}

/// Rewrites the master key file with every version of `ring` (rotation adds one, retirement
/// removes some). Atomic: a crash leaves either the old or the new file.
pub fn write_master_file(
    path: &Path,
    ring: &Keyring,
    folder: Option<&str>,
) -> Result<(), KeyError> {
    let text = key_file_text(
        MASTER_HEADER,
        folder,
        ring.versions().map(|k| (k.version, &k.key)),
    );
    replace_file(path, text.as_bytes())
}

/// Writes a fresh random key (version 1) unless the file exists. Returns whether it wrote.
pub fn ensure_key_file(path: &Path, kind: KeyKind, folder: Option<&str>) -> Result<bool, KeyError> {
    if path.exists() {
        return Ok(false);
    }
    let key = SecretKey::generate().map_err(|e| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let text = key_file_text(kind.header(), folder, std::iter::once((1, &key)));
    shared::pki::write_file(path, text.as_bytes(), 0o600).map_err(|e| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(true)
}

/// The archive of retired versions beside a key file: `<file>.retired`.
pub fn archive_path(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".retired");
    PathBuf::from(name)
}

/// Versions held in the archive beside `key_file` (empty when there is none).
pub fn load_archive(key_file: &Path, kind: KeyKind) -> Result<Vec<(u32, SecretKey)>, KeyError> {
    let path = archive_path(key_file);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = read_secret_file(&path)?;
    if text.lines().next().map(str::trim) != Some(kind.retired_header()) {
        return Err(KeyError::Format {
            source_name: path.display().to_string(),
            reason: "missing header line of a retired-key archive",
        });
    }
    parse_versions(text.lines().skip(1), &path.display().to_string())
}

/// Adds retired versions to the archive beside `key_file` before they leave the key file, so an
/// old data backup stays restorable by choice. Atomic and owner-only; an archived version is
/// never replaced by a different key.
pub fn archive_versions(
    key_file: &Path,
    kind: KeyKind,
    retired: &[(u32, &SecretKey)],
    folder: Option<&str>,
) -> Result<PathBuf, KeyError> {
    let path = archive_path(key_file);
    let held = load_archive(key_file, kind)?;
    let mut all: Vec<(u32, &SecretKey)> = held.iter().map(|(v, k)| (*v, k)).collect();
    for (v, k) in retired {
        match all.iter().find(|(hv, _)| hv == v) {
            Some((_, hk)) if hk.expose_bytes() == k.expose_bytes() => {}
            Some(_) => {
                return Err(KeyError::Write {
                    path: path.display().to_string(),
                    reason: format!("the archive already holds a different version {v}"),
                });
            }
            None => all.push((*v, *k)),
        }
    }
    all.sort_by_key(|(v, _)| *v);
    let text = key_file_text(kind.retired_header(), folder, all.into_iter());
    replace_file(&path, text.as_bytes())?;
    Ok(path)
}

fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let werr = |e: std::io::Error| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp-rotate");
    let _ = std::fs::remove_file(&tmp);
    shared::pki::write_file(&tmp, bytes, 0o600).map_err(|e| KeyError::Write {
        path: tmp.display().to_string(),
        reason: e.to_string(),
    })?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(werr)?;
    }
    Ok(())
}

mod sealed;
pub use sealed::{
    MasterKeyFile, SealedKeyFile, archive_sealed, create_sealed_master_file, load_master_any,
};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_files_are_owner_only_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("master.key");
        let f = dir.path().join("fingerprint.key");
        assert!(ensure_key_file(&m, KeyKind::Master, Some("f1")).unwrap());
        assert!(
            !ensure_key_file(&m, KeyKind::Master, None).unwrap(),
            "an existing key is never overwritten"
        );
        assert!(ensure_key_file(&f, KeyKind::Fingerprint, None).unwrap());
        assert_eq!(load_master_file(&m).unwrap().current().version, 1);
        assert_eq!(load_fingerprint_versions(&f).unwrap().len(), 1);
        assert_eq!(binding_of(&m).unwrap().as_deref(), Some("f1"));
        assert_eq!(binding_of(&f).unwrap(), None);
        bind_file(&f, "f1").unwrap();
        assert_eq!(binding_of(&f).unwrap().as_deref(), Some("f1"));
        assert!(bind_file(&f, "f2").is_err(), "a binding is never replaced");
        assert_eq!(load_fingerprint_versions(&f).unwrap().len(), 1);
    }

    #[test]
    fn a_group_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("master.key");
        ensure_key_file(&m, KeyKind::Master, None).unwrap();
        std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_master_file(&m),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn env_keys_accept_versions_and_reject_garbage_without_echoing_it() {
        let hex1 = "11".repeat(32);
        let hex2 = "22".repeat(32);
        let ring = parse_master_env(&format!("1:{hex1},2:{hex2}")).unwrap();
        assert_eq!(ring.current().version, 2);
        assert_eq!(parse_master_env(&hex1).unwrap().current().version, 1);
        let bad = "zz".repeat(32);
        let err = parse_master_env(&bad).err().map(|e| e.to_string()).unwrap();
        assert!(!err.contains(&bad));
        assert!(parse_master_env("").is_err());
        assert!(parse_master_env(&format!("1:{hex1},1:{hex2}")).is_err());
    }

    #[test]
    fn a_hand_written_key_file_in_the_documented_format_loads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("master.key");
        let hex = "ab".repeat(32);
        std::fs::write(&m, format!("strongroom-master-key v1\n1:{hex}\n")).unwrap();
        std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_master_file(&m).unwrap().current().version, 1);
        std::fs::write(&m, format!("{hex}\n")).unwrap();
        let err = load_master_file(&m).err().map(|e| e.to_string()).unwrap();
        assert!(err.contains("strongroom-master-key v1"), "{err}");
        assert!(!err.contains(&hex), "the error never echoes key material");
    }

    #[test]
    fn retired_versions_are_archived_owner_only_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("master.key");
        let k1 = SecretKey::generate().unwrap();
        let k2 = SecretKey::generate().unwrap();
        let path = archive_versions(&m, KeyKind::Master, &[(1, &k1)], Some("f")).unwrap();
        assert_eq!(path, dir.path().join("master.key.retired"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        archive_versions(&m, KeyKind::Master, &[(2, &k2), (1, &k1)], Some("f")).unwrap();
        let held = load_archive(&m, KeyKind::Master).unwrap();
        assert_eq!(held.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(held[0].1.expose_bytes(), k1.expose_bytes());
        assert!(archive_versions(&m, KeyKind::Master, &[(1, &k2)], None).is_err());
        assert_eq!(binding_of(&path).unwrap().as_deref(), Some("f"));
    }

    #[test]
    fn a_sealed_key_file_opens_with_any_threshold_of_shares_and_not_with_fewer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.sealed");
        let shares = create_sealed_master_file(&p, 5, 3, Some("f")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        for s in &shares {
            assert!(!text.contains(s.trim_start_matches(sealed::SHARE_PREFIX)));
        }
        let MasterKeyFile::Sealed(file) = load_master_any(&p).unwrap() else {
            panic!("expected the sealed form")
        };
        let checked: Vec<_> = shares
            .iter()
            .map(|s| file.check_share(s).unwrap())
            .collect();
        let (root, ring) = file.unseal(&checked[2..5]).unwrap();
        assert_eq!(ring.current().version, 1);
        assert!(file.unseal(&checked[..2]).is_err());
        assert!(file.check_share("srs1-AAAA").is_none());
        let mut wrong = shares[0].to_string();
        wrong.pop();
        wrong.push(if shares[0].ends_with('A') { 'B' } else { 'A' });
        assert!(file.check_share(&wrong).is_none());
        // Re-sealing a rotated keyring keeps the same shares working.
        let mut ring = ring;
        ring.add(Kek {
            version: 2,
            key: SecretKey::generate().unwrap(),
        });
        file.with_keyring(&root, &ring).unwrap().write(&p).unwrap();
        let MasterKeyFile::Sealed(file) = load_master_any(&p).unwrap() else {
            panic!("expected the sealed form")
        };
        let (_, ring) = file.unseal(&checked[..3]).unwrap();
        assert_eq!(ring.current().version, 2);
    }
}
