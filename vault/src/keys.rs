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

/// Loads every version of the fingerprint key: the original single bare-hex line is version 1;
/// after a fingerprint-key rotation the file holds `<version>:<hex>` lines (the highest is
/// current; older ones are kept only until the re-index completes). Sorted by version.
pub fn load_fingerprint_versions(path: &Path) -> Result<Vec<(u32, SecretKey)>, KeyError> {
    let text = read_secret_file(path)?;
    let name = path.display().to_string();
    let fmt = |reason| KeyError::Format {
        source_name: name.clone(),
        reason,
    };
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(FINGERPRINT_HEADER) {
        return Err(fmt("missing header line"));
    }
    let mut out: Vec<(u32, SecretKey)> = Vec::new();
    for entry in lines
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
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
        if version == 0 || out.iter().any(|(v, _)| *v == version) {
            return Err(fmt("bad or duplicate key version"));
        }
        out.push((version, parse_hex_key(hex_text, &name)?));
    }
    if out.is_empty() {
        return Err(fmt("no key in it"));
    }
    out.sort_by_key(|(v, _)| *v);
    Ok(out)
}

/// Rewrites the fingerprint key file with `versions` (atomic, owner-only).
pub fn write_fingerprint_file(path: &Path, versions: &[(u32, &SecretKey)]) -> Result<(), KeyError> {
    let mut text = Zeroizing::new(format!(
        "{FINGERPRINT_HEADER}\n# Owner-only. Never commit, copy into logs, or share.\n"
    ));
    for (v, key) in versions {
        text.push_str(&format!(
            "{v}:{}\n",
            Zeroizing::new(hex::encode(key.expose_bytes())).as_str()
        ));
    }
    replace_file(path, text.as_bytes())
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

/// Rewrites the master key file with every version of `ring` (rotation adds one, retirement
/// removes some). Atomic: a new owner-only file is written and fsynced beside it, then renamed
/// over the old one, then the folder is fsynced — a crash leaves either the old or the new file.
pub fn write_master_file(path: &Path, ring: &Keyring) -> Result<(), KeyError> {
    let mut text = Zeroizing::new(format!(
        "{MASTER_HEADER}\n# Owner-only. Never commit, copy into logs, or share.\n"
    ));
    for kek in ring.versions() {
        text.push_str(&format!(
            "{}:{}\n",
            kek.version,
            Zeroizing::new(hex::encode(kek.key.expose_bytes())).as_str()
        ));
    }
    replace_file(path, text.as_bytes())
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

// ---------------------------------------------------------------------------------------------
// Sealed (split-knowledge) master key file.
//
// Format (text):
// ```text
// strongroom-sealed-master-key v1
// threshold <K>
// share-check <x> <hex SHA-256 of the share bytes>      (one line per share, N lines)
// root-check <hex key-check value of the root key>
// keyring <hex: the `<version>:<hex>` lines sealed under the root key>
// ```
// The root key exists only as N Shamir shares (GF(256), `blahaj`), printed once by `vault init
// --shares N --threshold K`. The file holds what is needed to *verify* shares and a
// reconstructed root (per-share SHA-256, a key-check value) and the KEK versions sealed under
// the root — never the root itself and never a KEK in clear. A share is 33 random-looking bytes,
// so its SHA-256 reveals nothing a brute force could use.
// ---------------------------------------------------------------------------------------------

const SEALED_HEADER: &str = "strongroom-sealed-master-key v1";
const SHARE_PREFIX: &str = "srs1-";
const SEALED_KEYRING_AAD: &[u8] = b"strongroom/sealed-keyring/v1";
const ROOT_KCV_VERSION: u32 = 0;

/// The sealed master key file as parsed: verification data and the sealed keyring.
#[derive(Clone)]
pub struct SealedKeyFile {
    pub threshold: u8,
    /// (x coordinate, SHA-256 of the share bytes) for every share dealt.
    pub share_checks: Vec<(u8, [u8; 32])>,
    pub root_check: Vec<u8>,
    pub sealed_keyring: Vec<u8>,
}

/// What the configured master key file holds.
pub enum MasterKeyFile {
    Plain(Keyring),
    Sealed(SealedKeyFile),
}

fn share_hash(bytes: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"strongroom/share-check/v1");
    ctx.update(bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn root_kek(root: &SecretKey) -> Result<Kek, KeyError> {
    Ok(Kek {
        version: ROOT_KCV_VERSION,
        key: SecretKey::from_slice(root.expose_bytes()).map_err(|_| KeyError::Format {
            source_name: "root key".into(),
            reason: "wrong length",
        })?,
    })
}

fn keyring_text(ring: &Keyring) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::new());
    for kek in ring.versions() {
        text.push_str(&format!(
            "{}:{}\n",
            kek.version,
            Zeroizing::new(hex::encode(kek.key.expose_bytes())).as_str()
        ));
    }
    text
}

impl SealedKeyFile {
    fn to_text(&self) -> String {
        let mut t = format!(
            "{SEALED_HEADER}\n# Holds no key in clear. The root key exists only as shares.\nthreshold {}\n",
            self.threshold
        );
        for (x, h) in &self.share_checks {
            t.push_str(&format!("share-check {x} {}\n", hex::encode(h)));
        }
        t.push_str(&format!("root-check {}\n", hex::encode(&self.root_check)));
        t.push_str(&format!("keyring {}\n", hex::encode(&self.sealed_keyring)));
        t
    }

    fn parse(text: &str, name: &str) -> Result<Self, KeyError> {
        let fmt = |reason| KeyError::Format {
            source_name: name.to_owned(),
            reason,
        };
        let mut threshold = None;
        let mut share_checks = Vec::new();
        let mut root_check = None;
        let mut sealed_keyring = None;
        for line in text.lines().skip(1).map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("threshold"), Some(k), None) => {
                    threshold = Some(k.parse::<u8>().map_err(|_| fmt("bad threshold"))?)
                }
                (Some("share-check"), Some(x), Some(h)) => {
                    let x = x.parse::<u8>().map_err(|_| fmt("bad share-check"))?;
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(h, &mut hash).map_err(|_| fmt("bad share-check"))?;
                    share_checks.push((x, hash));
                }
                (Some("root-check"), Some(h), None) => {
                    root_check = Some(hex::decode(h).map_err(|_| fmt("bad root-check"))?)
                }
                (Some("keyring"), Some(h), None) => {
                    sealed_keyring = Some(hex::decode(h).map_err(|_| fmt("bad keyring"))?)
                }
                _ => return Err(fmt("unknown line in sealed key file")),
            }
        }
        let threshold = threshold.ok_or_else(|| fmt("no threshold"))?;
        if threshold < 2 || (share_checks.len() as u8) < threshold {
            return Err(fmt(
                "threshold must be at least 2 and at most the number of shares",
            ));
        }
        Ok(Self {
            threshold,
            share_checks,
            root_check: root_check.ok_or_else(|| fmt("no root-check"))?,
            sealed_keyring: sealed_keyring.ok_or_else(|| fmt("no keyring"))?,
        })
    }

    /// Checks one submitted share against the file: `Some(share bytes)` if it is one of the
    /// dealt shares. Parse and compare without echoing the text anywhere.
    pub fn check_share(&self, text: &str) -> Option<Zeroizing<Vec<u8>>> {
        use base64::Engine;
        let body = text.trim().strip_prefix(SHARE_PREFIX)?;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .ok()?,
        );
        if bytes.len() != KEY_LEN + 1 {
            return None;
        }
        let h = share_hash(&bytes);
        self.share_checks
            .iter()
            // Comparing hashes of the caller's own input: timing reveals nothing about a share.
            .any(|(x, c)| *x == bytes[0] && *c == h)
            .then_some(bytes)
    }

    /// Rebuilds the root key from `threshold` distinct checked shares, verifies it against the
    /// root-check value, and opens the keyring. The combined root is returned for re-sealing on
    /// rotation; the share bytes are the caller's (zeroizing) buffers.
    pub fn unseal(&self, shares: &[Zeroizing<Vec<u8>>]) -> Result<(SecretKey, Keyring), KeyError> {
        let fmt = |reason| KeyError::Format {
            source_name: "unseal".to_owned(),
            reason,
        };
        let parsed: Vec<blahaj::Share> = shares
            .iter()
            .map(|s| blahaj::Share::try_from(s.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|_| fmt("share does not parse"))?;
        let secret = Zeroizing::new(
            blahaj::Sharks(self.threshold)
                .recover(&parsed)
                .map_err(|_| fmt("not enough shares"))?,
        );
        drop(parsed); // `Share` zeroizes on drop (blahaj `zeroize_memory`).
        let root = SecretKey::from_slice(&secret).map_err(|_| fmt("wrong length"))?;
        let rk = root_kek(&root)?;
        if !Keyring::verify_key_check(&rk, &self.root_check) {
            return Err(fmt("shares do not rebuild the root key"));
        }
        let text = crate::crypto::open(&rk.key, &self.sealed_keyring, SEALED_KEYRING_AAD)
            .map_err(|_| fmt("keyring does not open"))?;
        let text =
            Zeroizing::new(String::from_utf8(text.to_vec()).map_err(|_| fmt("keyring text"))?);
        let ring = parse_master_entries(text.lines(), "sealed keyring")?;
        Ok((root, ring))
    }

    /// The same file with `ring` sealed under `root` (after rotation or retirement).
    pub fn with_keyring(&self, root: &SecretKey, ring: &Keyring) -> Result<Self, KeyError> {
        let rk = root_kek(root)?;
        let sealed =
            crate::crypto::seal(&rk.key, keyring_text(ring).as_bytes(), SEALED_KEYRING_AAD)
                .map_err(|e| KeyError::Write {
                    path: "sealed keyring".into(),
                    reason: e.to_string(),
                })?;
        Ok(Self {
            sealed_keyring: sealed,
            ..self.clone()
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        replace_file(path, self.to_text().as_bytes())
    }
}

/// Creates a sealed master key file with a fresh root key split into `shares` shares of which
/// `threshold` rebuild it, and a fresh KEK version 1. Returns the share texts (print them once,
/// then drop them: they zeroize). Refuses to overwrite an existing file.
pub fn create_sealed_master_file(
    path: &Path,
    shares: u8,
    threshold: u8,
) -> Result<Vec<Zeroizing<String>>, KeyError> {
    use base64::Engine;
    let werr = |reason: String| KeyError::Write {
        path: path.display().to_string(),
        reason,
    };
    if path.exists() {
        return Err(werr(
            "file exists; refusing to overwrite a master key".into(),
        ));
    }
    if threshold < 2 || shares < threshold {
        return Err(werr("need 2 <= threshold <= shares".into()));
    }
    let root = SecretKey::generate().map_err(|e| werr(e.to_string()))?;
    let kek = Kek {
        version: 1,
        key: SecretKey::generate().map_err(|e| werr(e.to_string()))?,
    };
    let ring = Keyring::new(vec![kek]).ok_or_else(|| werr("empty keyring".into()))?;
    let mut texts = Vec::with_capacity(shares as usize);
    let mut share_checks = Vec::with_capacity(shares as usize);
    for share in blahaj::Sharks(threshold)
        .dealer(root.expose_bytes())
        .take(shares as usize)
    {
        let bytes = Zeroizing::new(Vec::<u8>::from(&share));
        share_checks.push((bytes[0], share_hash(&bytes)));
        texts.push(Zeroizing::new(format!(
            "{SHARE_PREFIX}{}",
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]))
                .as_str()
        )));
    }
    let rk = root_kek(&root)?;
    let file = SealedKeyFile {
        threshold,
        share_checks,
        root_check: Keyring::key_check_value(&rk).map_err(|e| werr(e.to_string()))?,
        sealed_keyring: Vec::new(),
    }
    .with_keyring(&root, &ring)?;
    shared::pki::write_file(path, file.to_text().as_bytes(), 0o600)
        .map_err(|e| werr(e.to_string()))?;
    Ok(texts)
}

/// Loads the configured master key file in either form.
pub fn load_master_any(path: &Path) -> Result<MasterKeyFile, KeyError> {
    let text = read_secret_file(path)?;
    let name = path.display().to_string();
    match text.lines().next().map(str::trim) {
        Some(SEALED_HEADER) => Ok(MasterKeyFile::Sealed(SealedKeyFile::parse(&text, &name)?)),
        _ => load_master_file(path).map(MasterKeyFile::Plain),
    }
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

    #[test]
    fn a_sealed_key_file_opens_with_any_threshold_of_shares_and_not_with_fewer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.sealed");
        let shares = create_sealed_master_file(&p, 5, 3).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        for s in &shares {
            assert!(!text.contains(s.trim_start_matches(SHARE_PREFIX)));
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
