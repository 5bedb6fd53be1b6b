//! Master key and fingerprint key files: format, generation, loading, and the owner-only check.
//!
//! Master key file format (text, versioned so rotation can add lines later):
//! ```text
//! strongroom-master-key v1
//! 1:<64 hex digits>
//! ```
//! Each `<version>:<hex>` line is one KEK version; the highest seals new records. The same
//! `<version>:<hex>` lines (comma- or newline-separated, or a bare `<hex>` meaning version 1) are
//! accepted from `VAULT_MASTER_KEY`. The fingerprint key file is `strongroom-fingerprint-key v1`
//! then one hex line (`VAULT_FINGERPRINT_KEY` takes the bare hex).
//!
//! Invariants: key bytes are parsed straight into zeroizing buffers; errors name files, never
//! contents; a key file readable by group or others is refused.

use crate::crypto::{KEY_LEN, Kek, Keyring, SecretKey};
use std::path::Path;
use zeroize::Zeroizing;

const MASTER_HEADER: &str = "strongroom-master-key v1";
const FINGERPRINT_HEADER: &str = "strongroom-fingerprint-key v1";

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
    #[error("cannot write key file {path}: {reason}")]
    Write { path: String, reason: String },
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

/// Parses `<version>:<hex>` entries (or one bare `<hex>` = version 1).
fn parse_master_entries<'a>(
    entries: impl Iterator<Item = &'a str>,
    source_name: &str,
) -> Result<Keyring, KeyError> {
    let fmt = |reason| KeyError::Format {
        source_name: source_name.to_owned(),
        reason,
    };
    let mut keks: Vec<Kek> = Vec::new();
    for entry in entries
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'))
    {
        let (version, hex_text) = match entry.split_once(':') {
            Some((v, h)) => (
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| fmt("bad key version"))?,
                h,
            ),
            None => (1, entry),
        };
        if version == 0 {
            return Err(fmt("key versions start at 1"));
        }
        if keks.iter().any(|k| k.version == version) {
            return Err(fmt("duplicate key version"));
        }
        keks.push(Kek {
            version,
            key: parse_hex_key(hex_text, source_name)?,
        });
    }
    Keyring::new(keks).ok_or_else(|| fmt("no key in it"))
}

/// Loads the master keyring from an owner-only file.
pub fn load_master_file(path: &Path) -> Result<Keyring, KeyError> {
    let text = read_secret_file(path)?;
    let name = path.display().to_string();
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(MASTER_HEADER) {
        return Err(KeyError::Format {
            source_name: name,
            reason: "missing header line",
        });
    }
    parse_master_entries(lines, &name)
}

/// Loads the master keyring from the value of `VAULT_MASTER_KEY`.
pub fn parse_master_env(value: &str) -> Result<Keyring, KeyError> {
    parse_master_entries(value.split([',', '\n']), "VAULT_MASTER_KEY")
}

pub fn load_fingerprint_file(path: &Path) -> Result<SecretKey, KeyError> {
    let text = read_secret_file(path)?;
    let name = path.display().to_string();
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(FINGERPRINT_HEADER) {
        return Err(KeyError::Format {
            source_name: name,
            reason: "missing header line",
        });
    }
    let line = lines
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    parse_hex_key(line, &name)
}

pub fn parse_fingerprint_env(value: &str) -> Result<SecretKey, KeyError> {
    parse_hex_key(value, "VAULT_FINGERPRINT_KEY")
}

fn write_new_key_file(path: &Path, header: &str, line: &str) -> Result<bool, KeyError> {
    if path.exists() {
        return Ok(false);
    }
    let text = Zeroizing::new(format!(
        "{header}\n# Owner-only. Never commit, copy into logs, or share.\n{line}\n"
    ));
    shared::pki::write_file(path, text.as_bytes(), 0o600).map_err(|e| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(true)
}

/// Writes a fresh random master key (version 1) unless the file exists. Returns whether it wrote.
pub fn ensure_master_file(path: &Path) -> Result<bool, KeyError> {
    if path.exists() {
        return Ok(false);
    }
    let key = SecretKey::generate().map_err(|e| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let line = Zeroizing::new(format!("1:{}", hex::encode(key.expose_bytes())));
    write_new_key_file(path, MASTER_HEADER, &line)
}

/// Writes a fresh random fingerprint key unless the file exists. Returns whether it wrote.
pub fn ensure_fingerprint_file(path: &Path) -> Result<bool, KeyError> {
    if path.exists() {
        return Ok(false);
    }
    let key = SecretKey::generate().map_err(|e| KeyError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let line = Zeroizing::new(hex::encode(key.expose_bytes()));
    write_new_key_file(path, FINGERPRINT_HEADER, &line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_files_are_owner_only_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("master.key");
        let f = dir.path().join("fingerprint.key");
        assert!(ensure_master_file(&m).unwrap());
        assert!(
            !ensure_master_file(&m).unwrap(),
            "an existing key is never overwritten"
        );
        assert!(ensure_fingerprint_file(&f).unwrap());
        assert_eq!(load_master_file(&m).unwrap().current().version, 1);
        assert!(load_fingerprint_file(&f).is_ok());
    }

    #[test]
    fn a_group_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("master.key");
        ensure_master_file(&m).unwrap();
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
}
