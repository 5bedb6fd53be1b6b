//! Key changes with several vault instances on one PostgreSQL database: the sole-instance
//! procedure of the README ("Running on PostgreSQL", **Key changes**) end to end. Refused with
//! the procedure while another instance runs; granted once it is stopped; the stopped
//! instance's old key files refused at its next start, with what to do; the copied key files
//! opening what was written after the change — and, for the fingerprint key, no duplicate.

use super::init_config;
use super::tests::{instance_dir, open};
use crate::service::{CoreError, NewPaymentMethod, Stored, Vault};
use shared::domain::{AccountId, PaymentMethodId, PaymentType, StoreId};
use std::path::{Path, PathBuf};

/// Two initialised instances on `url`: `a`, and `b` with a copy of a's key files.
fn two_instances(root: &Path, url: &str) -> (PathBuf, PathBuf) {
    let a = instance_dir(root, "a", url);
    init_config(&a.join("vault.toml"), None).unwrap();
    let b = instance_dir(root, "b", url);
    copy_key_files(&a, &b);
    init_config(&b.join("vault.toml"), None).unwrap();
    (a, b)
}

/// The procedure's copy step: every key file of `from` (archives included) into `to`.
fn copy_key_files(from: &Path, to: &Path) {
    for name in [
        "master.key",
        "fingerprint.key",
        "master.key.retired",
        "fingerprint.key.retired",
    ] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

fn store(v: &Vault, token: &str) -> Stored {
    let new = NewPaymentMethod {
        store: StoreId::parse("s1").unwrap(),
        account: AccountId::parse("a1").unwrap(),
        kind: PaymentType::Paypal,
        brand: None,
        last4: None,
        expiry: None,
        masked_email: None,
        processor_customer: None,
    };
    let token = shared::SecretString::new(token.to_owned());
    v.store_payment_method(&new, &token, crate::audit::AuditDraft::default())
        .unwrap()
}

fn created(v: &Vault, token: &str) -> PaymentMethodId {
    match store(v, token) {
        Stored::Created(r) => PaymentMethodId::parse(&r.id).unwrap(),
        Stored::Existing(r) => panic!("{token} was already stored as {}", r.id),
    }
}

fn reveals(v: &Vault, id: &PaymentMethodId, token: &str) {
    let store = StoreId::parse("s1").unwrap();
    let got = v.reveal_token(&store, id).unwrap().expect("the record");
    assert_eq!(got.as_slice(), token.as_bytes());
}

/// The 409 of a key change while another instance runs names the procedure.
fn assert_refused_with_the_procedure<T: std::fmt::Debug>(r: Result<T, CoreError>) {
    match r {
        Err(CoreError::KeyState(m)) => assert!(
            m.contains("Stop the other vault instances")
                && m.contains("copy its changed key files")
                && m.contains("then start them"),
            "{m}"
        ),
        other => panic!("a key change with another instance running: {other:?}"),
    }
}

/// The start of an instance whose key files lag the database is refused, saying to copy them.
fn assert_stale_keys_refused(dir: &Path) {
    let err = open(dir)
        .err()
        .expect("old key files are refused")
        .to_string();
    assert!(
        err.contains("changed keys: copy its key files") && err.contains("refusing to start"),
        "{err}"
    );
}

#[test]
fn master_key_rotation_needs_the_sole_instance_and_the_copied_key_file_opens_new_records() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = two_instances(root.path(), &url);
    let (a, b) = (open(&a_dir).unwrap(), open(&b_dir).unwrap());
    let before = created(&a, "tok_before");
    assert_refused_with_the_procedure(a.rotate());
    assert_refused_with_the_procedure(b.rotate());
    assert_eq!(a.key_versions(), vec![1], "nothing changed");
    // Step 1 of the procedure: stop the other instance.
    drop(b);
    assert_eq!(a.rotate().unwrap(), 2);
    // Started with its old key file before any record uses the new version: refused (the
    // database knows a version it lacks), with what to do.
    assert_stale_keys_refused(&b_dir);
    assert_eq!(a.rewrap_all().unwrap().failed, 0);
    reveals(&a, &before, "tok_before");
    let after = created(&a, "tok_after");
    assert_eq!(
        a.get(&StoreId::parse("s1").unwrap(), &after)
            .unwrap()
            .unwrap()
            .key_version,
        2
    );
    // And once records use it.
    assert_stale_keys_refused(&b_dir);
    copy_key_files(&a_dir, &b_dir);
    let b = open(&b_dir).unwrap();
    reveals(&b, &after, "tok_after");
    reveals(&b, &before, "tok_before");
    // And with b running again, the next change is refused again.
    assert_refused_with_the_procedure(a.rotate());
}

#[test]
fn fingerprint_rotation_needs_the_sole_instance_and_leaves_no_duplicate_across_instances() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = two_instances(root.path(), &url);
    let (a, b) = (open(&a_dir).unwrap(), open(&b_dir).unwrap());
    let first = created(&a, "tok_dup");
    assert_refused_with_the_procedure(a.rotate_fingerprint_key());
    assert_refused_with_the_procedure(b.rotate_fingerprint_key());
    drop(b);
    assert_eq!(a.rotate_fingerprint_key().unwrap(), 2);
    let reindexed = a.reindex_fingerprints().unwrap();
    assert_eq!((reindexed.failed, reindexed.done), (0, 1));
    let after = created(&a, "tok_after");
    // The old fingerprint key would miss both records and store duplicates: refused.
    assert_stale_keys_refused(&b_dir);
    copy_key_files(&a_dir, &b_dir);
    let b = open(&b_dir).unwrap();
    for (token, id) in [("tok_dup", &first), ("tok_after", &after)] {
        match store(&b, token) {
            Stored::Existing(r) => assert_eq!(r.id, id.as_str(), "{token}"),
            Stored::Created(r) => panic!("{token} stored twice: {} and {}", id.as_str(), r.id),
        }
    }
    let status = b.key_status().unwrap().fingerprint;
    assert_eq!(status.current_version, 2);
    let counts: Vec<(u32, u64)> = status
        .versions
        .iter()
        .map(|v| (v.version, v.records))
        .collect();
    assert_eq!(counts, vec![(2, 2)], "two records, both under version 2");
}

#[test]
fn retirement_needs_the_sole_instance_and_the_copied_key_files_open_the_data() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = two_instances(root.path(), &url);
    let old_master = root.path().join("b-master.key.before");
    std::fs::copy(b_dir.join("master.key"), &old_master).unwrap();
    let a = open(&a_dir).unwrap();
    let before = created(&a, "tok_before");
    assert_eq!(a.rotate().unwrap(), 2);
    assert_eq!(a.rewrap_all().unwrap().failed, 0);
    // b, with a's rotated key files, runs: retiring is refused, and changes nothing.
    copy_key_files(&a_dir, &b_dir);
    let b = open(&b_dir).unwrap();
    assert_refused_with_the_procedure(a.retire_below(2));
    assert_eq!(a.key_versions(), vec![1, 2]);
    reveals(&b, &before, "tok_before");
    drop(b);
    assert_eq!(a.retire_below(2).unwrap(), vec![1]);
    assert!(a_dir.join("master.key.retired").exists());
    reveals(&a, &before, "tok_before");
    let after = created(&a, "tok_after");
    // b's key file from before the rotation: refused, saying to copy.
    std::fs::copy(&old_master, b_dir.join("master.key")).unwrap();
    assert_stale_keys_refused(&b_dir);
    copy_key_files(&a_dir, &b_dir);
    let b = open(&b_dir).unwrap();
    assert_eq!(b.key_versions(), vec![2]);
    reveals(&b, &after, "tok_after");
    reveals(&b, &before, "tok_before");
}

/// Key files copied after a rotation but before its retirement (the copy step of the procedure
/// done too early) still hold versions the database has retired. The instance starts, and
/// finishes the retirement on its host as the changer did on its own: the versions move to its
/// archive and leave its key files and its memory, so no host keeps a destroyed key live.
#[test]
fn key_files_copied_before_a_retirement_have_it_finished_at_start() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = two_instances(root.path(), &url);
    let a = open(&a_dir).unwrap();
    let before = created(&a, "tok_before");
    assert_eq!(a.rotate().unwrap(), 2);
    assert_eq!(a.rewrap_all().unwrap().failed, 0);
    assert_eq!(a.rotate_fingerprint_key().unwrap(), 2);
    // The copy taken too early: master 1+2, fingerprint 1+2, no archive yet.
    let early = root.path().join("early");
    std::fs::create_dir(&early).unwrap();
    copy_key_files(&a_dir, &early);
    assert_eq!(a.reindex_fingerprints().unwrap().failed, 0);
    assert_eq!(a.retire_below(2).unwrap(), vec![1]);
    let after = created(&a, "tok_after");
    drop(a);
    copy_key_files(&early, &b_dir);
    let held = |file: &str| -> Vec<u32> {
        match crate::keys::load_master_any(&b_dir.join(file)).unwrap() {
            crate::keys::MasterKeyFile::Plain(ring) => ring.versions().map(|k| k.version).collect(),
            crate::keys::MasterKeyFile::Sealed(_) => panic!("a plain key file"),
        }
    };
    let fp_held = || -> Vec<u32> {
        crate::keys::load_fingerprint_versions(&b_dir.join("fingerprint.key"))
            .unwrap()
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    };
    let archived = |kind| -> Vec<u32> {
        let file = b_dir.join(match kind {
            crate::keys::KeyKind::Master => "master.key",
            crate::keys::KeyKind::Fingerprint => "fingerprint.key",
        });
        crate::keys::load_archive(&file, kind)
            .unwrap()
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    };
    assert_eq!((held("master.key"), fp_held()), (vec![1, 2], vec![1, 2]));
    let b = open(&b_dir).unwrap();
    assert_eq!(b.key_versions(), vec![2], "version 1 forgotten in memory");
    assert_eq!(held("master.key"), vec![2], "and gone from the key file");
    assert_eq!(
        archived(crate::keys::KeyKind::Master),
        vec![1],
        "kept in the archive"
    );
    assert_eq!(fp_held(), vec![2]);
    assert_eq!(archived(crate::keys::KeyKind::Fingerprint), vec![1]);
    assert_eq!(
        b.has_background_work(),
        (false, false),
        "no re-index left to run"
    );
    // The archives match the changer's: the same key under the same version.
    for name in ["master.key.retired", "fingerprint.key.retired"] {
        let (ours, theirs) = (b_dir.join(name), a_dir.join(name));
        let strip = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("data-folder"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(strip(&ours), strip(&theirs), "{name}");
    }
    reveals(&b, &before, "tok_before");
    reveals(&b, &after, "tok_after");
    for (token, id) in [("tok_before", &before), ("tok_after", &after)] {
        match store(&b, token) {
            Stored::Existing(r) => assert_eq!(r.id, id.as_str(), "{token}"),
            Stored::Created(r) => panic!("{token} stored twice: {} and {}", id.as_str(), r.id),
        }
    }
    // The next start has nothing left to finish, and keeps working.
    drop(b);
    let b = open(&b_dir).unwrap();
    assert_eq!(b.key_versions(), vec![2]);
    reveals(&b, &before, "tok_before");
}
