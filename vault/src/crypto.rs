//! Envelope encryption of payment tokens, and the keyed fingerprint used for dedupe.
//!
//! Invariants:
//! - Every record has its own random 256-bit data key (DEK). The token is sealed under the DEK
//!   with AES-256-GCM, a fresh random 96-bit nonce, and associated data (AAD) that binds the
//!   ciphertext to its record: store, record id and master-key version. A ciphertext copied onto
//!   another record fails authentication instead of opening as the wrong token.
//! - The DEK is stored only wrapped (AES-256-GCM) by a versioned master key (KEK), with its own
//!   AAD (same binding, different domain label) so a wrapped DEK cannot be swapped either.
//! - Rotation (issue 6): a record carries two versions. `key_version` is the KEK version that was
//!   current when the token was sealed; it is bound into the token AAD and never changes (it is a
//!   label, not a key: retiring that KEK does not affect it). `wrap_version` is the KEK version
//!   that wraps the DEK *now*; it is bound into the DEK AAD. Re-wrapping under a new KEK opens
//!   and re-seals only the 32-byte DEK and rewrites `wrap_version`: the token ciphertext and its
//!   AAD stay byte-for-byte the same, so no token is decrypted for rotation. Records written
//!   before rotation existed have `wrap_version == key_version`, which is exactly the binding
//!   they were sealed with, so they open unchanged (no migration).
//! - Key material lives in `Zeroizing` buffers and in types without `Debug`.
//! - Every decode checks lengths before slicing; malformed input is an error, never a panic.
//!
//! Why random nonces are safe here: each DEK seals exactly one message, and each KEK wraps one
//! DEK per record, far below the 2^32 messages per key that random 96-bit nonces allow.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of every symmetric key in the vault (AES-256, HMAC-SHA256 keys).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Smallest valid sealed blob: nonce + tag around an empty message.
pub const MIN_SEALED_LEN: usize = NONCE_LEN + TAG_LEN;

/// Crypto failures. Deliberately without detail: which check failed is not something a caller
/// (or an attacker probing with edited records) should learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong associated data, or edited/truncated ciphertext.
    #[error("ciphertext does not authenticate")]
    Open,
    /// The operating system's random generator failed.
    #[error("random generator failed")]
    Random,
    /// A key had the wrong length.
    #[error("key has the wrong length")]
    KeyLength,
    /// Sealing failed (plaintext beyond AES-GCM limits).
    #[error("encryption failed")]
    Seal,
}

/// A 256-bit symmetric key in zeroizing memory. No `Debug`, no `Clone`.
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut k[..])
            .map_err(|_| CryptoError::Random)?;
        Ok(Self(k))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// Raw key bytes: only for writing key files and for building ciphers.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| CryptoError::Random)?;
    Ok(n)
}

/// AES-256-GCM seal with a fresh random nonce. Output: `nonce || ciphertext || tag`.
pub fn seal(key: &SecretKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_nonce()?;
    seal_with_nonce(key, &nonce, plaintext, aad)
}

fn seal_with_nonce(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher =
        Aes256Gcm::new_from_slice(key.expose_bytes()).map_err(|_| CryptoError::KeyLength)?;
    let ct = cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Seal)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens `nonce || ciphertext || tag`. The plaintext comes back in zeroizing memory.
pub fn open(key: &SecretKey, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    // Length check before any slicing: a truncated blob is an error, not a panic.
    if sealed.len() < MIN_SEALED_LEN {
        return Err(CryptoError::Open);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Open)?;
    let cipher =
        Aes256Gcm::new_from_slice(key.expose_bytes()).map_err(|_| CryptoError::KeyLength)?;
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Open)
}

/// Length-prefixed concatenation, so that ("ab","c") and ("a","bc") give different AAD.
fn framed(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(label);
    for p in parts {
        // Parts are ids (≤ 64 bytes) and tokens (≤ 512 bytes): u32 cannot overflow.
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// What a sealed token is bound to.
#[derive(Debug, Clone, Copy)]
pub struct RecordBinding<'a> {
    pub store: &'a str,
    pub record_id: &'a str,
    /// KEK version current at seal time (immutable; token AAD).
    pub key_version: u32,
    /// KEK version wrapping the DEK now (DEK AAD).
    pub wrap_version: u32,
}

impl RecordBinding<'_> {
    fn token_aad(&self) -> Vec<u8> {
        framed(
            b"strongroom/token/v1",
            &[
                self.store.as_bytes(),
                self.record_id.as_bytes(),
                &self.key_version.to_be_bytes(),
            ],
        )
    }
    fn dek_aad(&self) -> Vec<u8> {
        framed(
            b"strongroom/dek/v1",
            &[
                self.store.as_bytes(),
                self.record_id.as_bytes(),
                &self.wrap_version.to_be_bytes(),
            ],
        )
    }
}

/// One version of the master key (key-encryption key).
pub struct Kek {
    pub version: u32,
    pub key: SecretKey,
}

/// A sealed token as stored: the wrapped DEK and the token ciphertext, both
/// `nonce || ciphertext || tag`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    /// KEK version current when the token was sealed (bound into the token AAD, immutable).
    pub key_version: u32,
    /// KEK version that wraps `wrapped_dek` (bound into the DEK AAD; changes on re-wrap).
    pub wrap_version: u32,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The master keys the vault holds, newest version used for new records.
pub struct Keyring {
    keks: Vec<Kek>,
}

impl Keyring {
    /// `keks` must be non-empty; the highest version seals new records.
    pub fn new(mut keks: Vec<Kek>) -> Option<Self> {
        if keks.is_empty() {
            return None;
        }
        keks.sort_by_key(|k| k.version);
        Some(Self { keks })
    }

    /// Adds a new KEK version; it becomes current if it is the highest.
    pub fn add(&mut self, kek: Kek) {
        self.keks.retain(|k| k.version != kek.version);
        self.keks.push(kek);
        self.keks.sort_by_key(|k| k.version);
    }

    /// Drops (and so zeroizes) every version below `below`, never the current one.
    pub fn remove_below(&mut self, below: u32) -> Vec<u32> {
        let current = self.current().version;
        let mut removed = Vec::new();
        self.keks.retain(|k| {
            let drop = k.version < below && k.version != current;
            if drop {
                removed.push(k.version);
            }
            !drop
        });
        removed
    }

    /// Drops one version (undo of a rotation that could not be persisted); never the last.
    pub fn remove_version(&mut self, version: u32) {
        if self.keks.len() > 1 {
            self.keks.retain(|k| k.version != version);
        }
    }

    pub fn has(&self, version: u32) -> bool {
        self.get(version).is_some()
    }

    pub fn current(&self) -> &Kek {
        // Non-empty by construction.
        &self.keks[self.keks.len() - 1]
    }

    pub fn versions(&self) -> impl Iterator<Item = &Kek> {
        self.keks.iter()
    }

    fn get(&self, version: u32) -> Option<&Kek> {
        self.keks.iter().find(|k| k.version == version)
    }

    /// Seals `token` for one record under a fresh DEK wrapped by the current KEK.
    pub fn seal_token(
        &self,
        store: &str,
        record_id: &str,
        token: &[u8],
    ) -> Result<SealedToken, CryptoError> {
        let kek = self.current();
        let binding = RecordBinding {
            store,
            record_id,
            key_version: kek.version,
            wrap_version: kek.version,
        };
        let dek = SecretKey::generate()?;
        let ciphertext = seal(&dek, token, &binding.token_aad())?;
        let wrapped_dek = seal(&kek.key, dek.expose_bytes(), &binding.dek_aad())?;
        Ok(SealedToken {
            key_version: kek.version,
            wrap_version: kek.version,
            wrapped_dek,
            ciphertext,
        })
    }

    /// Re-wraps a record's DEK under the current KEK. Only the DEK is opened (in zeroizing
    /// memory); the token ciphertext is not touched. Returns the new wrapped DEK and version.
    pub fn rewrap_dek(
        &self,
        store: &str,
        record_id: &str,
        sealed: &SealedToken,
    ) -> Result<(Vec<u8>, u32), CryptoError> {
        let old = self.get(sealed.wrap_version).ok_or(CryptoError::Open)?;
        let new = self.current();
        let mut binding = RecordBinding {
            store,
            record_id,
            key_version: sealed.key_version,
            wrap_version: sealed.wrap_version,
        };
        let dek = open(&old.key, &sealed.wrapped_dek, &binding.dek_aad())?;
        binding.wrap_version = new.version;
        Ok((seal(&new.key, &dek, &binding.dek_aad())?, new.version))
    }

    /// Opens a record's token. Fails if anything (key, record binding, bytes) does not match.
    pub fn open_token(
        &self,
        store: &str,
        record_id: &str,
        sealed: &SealedToken,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let kek = self.get(sealed.wrap_version).ok_or(CryptoError::Open)?;
        let binding = RecordBinding {
            store,
            record_id,
            key_version: sealed.key_version,
            wrap_version: sealed.wrap_version,
        };
        let dek_bytes = open(&kek.key, &sealed.wrapped_dek, &binding.dek_aad())?;
        let dek = SecretKey::from_slice(&dek_bytes).map_err(|_| CryptoError::Open)?;
        open(&dek, &sealed.ciphertext, &binding.token_aad())
    }

    /// A key-check value for one KEK version: a known block sealed under it. Stored next to the
    /// data so that starting with the wrong master key is refused instead of producing garbage.
    pub fn key_check_value(kek: &Kek) -> Result<Vec<u8>, CryptoError> {
        seal(&kek.key, KCV_PLAINTEXT, &kcv_aad(kek.version))
    }

    /// True if `kcv` was made by [`Self::key_check_value`] with this very key.
    pub fn verify_key_check(kek: &Kek, kcv: &[u8]) -> bool {
        matches!(open(&kek.key, kcv, &kcv_aad(kek.version)), Ok(p) if p.as_slice() == KCV_PLAINTEXT)
    }
}

const KCV_PLAINTEXT: &[u8] = b"strongroom key check block v1..";

fn kcv_aad(version: u32) -> Vec<u8> {
    framed(b"strongroom/kcv/v1", &[&version.to_be_bytes()])
}

/// The keyed fingerprint of a token within one store and account: HMAC-SHA256 under a key that
/// is separate from the master key, so it recognises a repeated token without any decryption,
/// and without the key it reveals nothing (an unkeyed hash of a low-entropy card number would).
pub struct Fingerprinter {
    key: ring::hmac::Key,
}

impl Fingerprinter {
    pub fn new(key: &SecretKey) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose_bytes()),
        }
    }

    pub fn fingerprint(&self, store: &str, account: &str, token: &[u8]) -> [u8; 32] {
        let msg = Zeroizing::new(framed(
            b"strongroom/fingerprint/v1",
            &[store.as_bytes(), account.as_bytes(), token],
        ));
        let tag = ring::hmac::sign(&self.key, &msg);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A check value for the fingerprint key (as for the master key: a different key would
    /// silently break dedupe, so it is refused at start).
    pub fn check_value(&self) -> [u8; 32] {
        self.fingerprint("", "", b"strongroom fingerprint key check")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
