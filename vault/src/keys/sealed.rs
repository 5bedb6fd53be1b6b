//! The sealed (split-knowledge) master key file.
//!
//!
//! Format (text):
//! ```text
//! strongroom-sealed-master-key v1
//! threshold <K>
//! share-check <x> <hex SHA-256 of the share bytes>      (one line per share, N lines)
//! root-check <hex key-check value of the root key>
//! keyring <hex: the `<version>:<hex>` lines sealed under the root key>
//! ```
//! The root key exists only as N Shamir shares (GF(256), `blahaj`), printed once by `vault init
//! --shares N --threshold K`. The file holds what is needed to *verify* shares and a
//! reconstructed root (per-share SHA-256, a key-check value) and the KEK versions sealed under
//! the root — never the root itself and never a KEK in clear. A share is 33 random-looking bytes,
//! so its SHA-256 reveals nothing a brute force could use.
//!
//! Optionally a `data-folder <id>` line binds the file to its data folder (see `custody`).

use super::{
    DATA_FOLDER_PREFIX, KEY_LEN, KeyError, load_master_file, parse_master_entries,
    read_secret_file, replace_file,
};
use crate::crypto::{Kek, Keyring, SecretKey};
use std::path::Path;
use zeroize::Zeroizing;

const SEALED_HEADER: &str = "strongroom-sealed-master-key v1";
pub(crate) const SHARE_PREFIX: &str = "srs1-";
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
    /// The data folder the file is bound to (`data-folder` line), if any.
    pub data_folder: Option<String>,
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
        if let Some(id) = &self.data_folder {
            t.push_str(&format!("{DATA_FOLDER_PREFIX}{id}\n"));
        }
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
        let mut data_folder = None;
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
                (Some("data-folder"), Some(id), None) => data_folder = Some(id.to_owned()),
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
            data_folder,
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
    folder: Option<&str>,
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
        data_folder: folder.map(str::to_owned),
    }
    .with_keyring(&root, &ring)?;
    shared::pki::write_file(path, file.to_text().as_bytes(), 0o600)
        .map_err(|e| werr(e.to_string()))?;
    Ok(texts)
}

const SEALED_ARCHIVE_HEADER: &str = "strongroom-sealed-retired-master-key v1";
const SEALED_ARCHIVE_AAD: &[u8] = b"strongroom/sealed-retired-keys/v1";

/// Adds retired KEK versions to the sealed archive beside the sealed key file (`<file>.retired`,
/// the versions sealed under the same root key, so the same shares open it). Atomic, owner-only.
pub fn archive_sealed(
    key_file: &Path,
    root: &SecretKey,
    retired: &[(u32, &SecretKey)],
    folder: Option<&str>,
) -> Result<std::path::PathBuf, KeyError> {
    let path = super::archive_path(key_file);
    let rk = root_kek(root)?;
    let name = path.display().to_string();
    let fmt = |reason| KeyError::Format {
        source_name: name.clone(),
        reason,
    };
    let mut all: Vec<Kek> = Vec::new();
    if path.exists() {
        let text = read_secret_file(&path)?;
        let blob = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("keyring "))
            .ok_or_else(|| fmt("no keyring line"))?;
        let sealed = hex::decode(blob.trim()).map_err(|_| fmt("bad keyring"))?;
        let opened = crate::crypto::open(&rk.key, &sealed, SEALED_ARCHIVE_AAD)
            .map_err(|_| fmt("archive does not open with this root key"))?;
        let opened =
            Zeroizing::new(String::from_utf8(opened.to_vec()).map_err(|_| fmt("keyring text"))?);
        let ring = parse_master_entries(opened.lines(), &name)?;
        for k in ring.versions() {
            all.push(Kek {
                version: k.version,
                key: SecretKey::from_slice(k.key.expose_bytes())
                    .map_err(|_| fmt("wrong length"))?,
            });
        }
    }
    for (v, k) in retired {
        if !all.iter().any(|h| h.version == *v) {
            all.push(Kek {
                version: *v,
                key: SecretKey::from_slice(k.expose_bytes()).map_err(|_| fmt("wrong length"))?,
            });
        }
    }
    let ring = Keyring::new(all).ok_or_else(|| fmt("nothing to archive"))?;
    let sealed = crate::crypto::seal(&rk.key, keyring_text(&ring).as_bytes(), SEALED_ARCHIVE_AAD)
        .map_err(|e| KeyError::Write {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    let mut text = format!(
        "{SEALED_ARCHIVE_HEADER}\n# Retired KEK versions, sealed under the root key (the same shares open them).\n"
    );
    if let Some(id) = folder {
        text.push_str(&format!("{DATA_FOLDER_PREFIX}{id}\n"));
    }
    text.push_str(&format!("keyring {}\n", hex::encode(sealed)));
    replace_file(&path, text.as_bytes())?;
    Ok(path)
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
