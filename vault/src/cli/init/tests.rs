//! `vault init --config` and the vault's start on PostgreSQL: instances on one database share
//! the folder id and key-check values (in the database), each with its own data folder (audit).

use super::init_config;
use crate::config::{Config, Overrides};
use crate::service::{CoreError, NewPaymentMethod, Vault};
use shared::domain::{AccountId, PaymentMethodId, PaymentType, StoreId};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An instance folder: dev PKI, a postgres `vault.toml`, the URL in an owner-only file.
pub(super) fn instance_dir(root: &Path, name: &str, url: &str) -> PathBuf {
    let dir = root.join(name);
    shared::pki::create_private_dir(&dir).unwrap();
    shared::pki::ensure_dev_pki(&dir.join("pki")).unwrap();
    let url_file = dir.join("database.url");
    std::fs::write(&url_file, url).unwrap();
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = "[storage]\nbackend = \"postgres\"\ndatabase_url_file = \"database.url\"\n";
    std::fs::write(dir.join("vault.toml"), config).unwrap();
    dir
}

pub(super) fn open(dir: &Path) -> Result<Vault, CoreError> {
    let config = Config::load(&dir.join("vault.toml"), Overrides::default(), None).unwrap();
    Vault::open(&config, false)
}

#[test]
fn instances_with_the_same_keys_share_one_database_and_other_keys_are_refused() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let a_dir = instance_dir(root.path(), "a", &url);
    init_config(&a_dir.join("vault.toml"), None).unwrap();
    let a = open(&a_dir).unwrap();
    // A second instance: a copy of the first one's key files, its own data folder.
    let b_dir = instance_dir(root.path(), "b", &url);
    for key in ["master.key", "fingerprint.key"] {
        std::fs::copy(a_dir.join(key), b_dir.join(key)).unwrap();
    }
    init_config(&b_dir.join("vault.toml"), None).unwrap();
    let b = open(&b_dir).unwrap();
    assert!(
        b_dir.join("data").is_dir(),
        "each instance has its data folder"
    );
    // A token stored through one instance opens through the other.
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
    let token = shared::SecretString::new("tok_shared".into());
    let stored = a
        .store_payment_method(&new, &token, crate::audit::AuditDraft::default())
        .unwrap();
    let id = PaymentMethodId::parse(&stored.record().id).unwrap();
    let revealed = b.reveal_token(&new.store, &id).unwrap().unwrap();
    assert_eq!(revealed.as_slice(), b"tok_shared");
    // Key changes would reach one instance's key files only: refused, not left to diverge.
    for refused in [a.rotate(), a.rotate_fingerprint_key()] {
        assert!(
            matches!(refused, Err(CoreError::KeyState(_))),
            "{refused:?}"
        );
    }
    assert!(matches!(a.retire_below(1), Err(CoreError::KeyState(_))));
    // The same data folder twice: refused, as sled refuses it.
    assert!(matches!(
        open(&b_dir),
        Err(CoreError::Store(crate::store::StoreError::Locked { .. }))
    ));
    // New key files for the same database: init binds them to it, the start refuses them.
    let c_dir = instance_dir(root.path(), "c", &url);
    init_config(&c_dir.join("vault.toml"), None).unwrap();
    match open(&c_dir) {
        Err(CoreError::WrongFingerprintKey | CoreError::WrongMasterKey(1)) => {}
        other => panic!("other keys must be refused: {:?}", other.err()),
    }
}

#[test]
fn key_files_of_another_vault_are_not_bound_to_an_empty_database() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // Key files bound to some other vault's data folder (a sled one here).
    let sled_dir = root.path().join("sled");
    super::init_dir(&sled_dir, None).unwrap();
    let pg_dir = instance_dir(root.path(), "pg", &url);
    for key in ["master.key", "fingerprint.key"] {
        std::fs::copy(sled_dir.join(key), pg_dir.join(key)).unwrap();
    }
    let err = init_config(&pg_dir.join("vault.toml"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not the configured database"), "{err}");
}

/// The data folder id the database of instance folder `dir` holds.
fn folder_id_in(dir: &Path) -> String {
    use crate::store::Store;
    let config = Config::load(&dir.join("vault.toml"), Overrides::default(), None).unwrap();
    let db = crate::store::PgStore::open(&config.database.unwrap()).unwrap();
    let id = db.meta_get(crate::service::custody::FOLDER_ID_KEY).unwrap();
    String::from_utf8(id.expect("a folder id")).unwrap()
}

/// Runs `f` for each of `n` racers released at once; their answers in racer order.
fn race<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|t| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                t.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_vaults_with_different_master_keys_starting_at_once_on_an_empty_database_one_opens() {
    use crate::crypto::{Fingerprinter, Kek, Keyring, SecretKey};
    // Several rounds, each on a new empty database: the race is on the first key-check value.
    for round in 0..4u8 {
        let Some(url) = pgtest::fresh_database() else {
            return;
        };
        let settings = shared::pg::PgSettings {
            url: shared::SecretString::new(url),
            pool_size: 4,
            ca: None,
            client_cert: None,
            connect_timeout: std::time::Duration::from_secs(5),
        };
        let audit_root = tempfile::tempdir().unwrap();
        let opened = race(2, |i| {
            let store = crate::store::PgStore::open(&settings).unwrap();
            let byte = u8::try_from(i).unwrap() + 1;
            let ring = Keyring::new(vec![Kek {
                version: 1,
                key: SecretKey::from_slice(&[byte; 32]).unwrap(),
            }])
            .unwrap();
            // One fingerprint key for both: the master key is what differs.
            let fp = Fingerprinter::new(&SecretKey::from_slice(&[9; 32]).unwrap());
            let audit = std::sync::Arc::new(
                crate::audit::SegmentLog::ephemeral(&audit_root.path().join(i.to_string()))
                    .unwrap(),
            );
            Vault::with_store(ring, fp, store, audit).map(drop)
        });
        let refused: Vec<_> = opened.iter().filter(|r| r.is_err()).collect();
        assert_eq!(
            refused.len(),
            1,
            "round {round}: exactly one of two instances with other master keys opens: {opened:?}"
        );
        assert!(
            matches!(refused[0], Err(CoreError::WrongMasterKey(1))),
            "round {round}: {refused:?}"
        );
    }
}

#[test]
fn unbound_keys_racing_onto_an_empty_database_leave_one_vault_and_the_loser_unbound() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // Two instances with key files of their own, not bound to any data folder yet (written
    // before binding existed, or by hand), starting at once on one empty database.
    let dirs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| {
            let dir = instance_dir(root.path(), name, &url);
            crate::keys::ensure_key_file(
                &dir.join("master.key"),
                crate::keys::KeyKind::Master,
                None,
            )
            .unwrap();
            crate::keys::ensure_key_file(
                &dir.join("fingerprint.key"),
                crate::keys::KeyKind::Fingerprint,
                None,
            )
            .unwrap();
            dir
        })
        .collect();
    let opened = race(2, |i| open(&dirs[i]));
    let winner = match opened.iter().position(Result::is_ok) {
        Some(w) => w,
        None => panic!(
            "one instance must open: {:?}",
            opened.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
        ),
    };
    let loser = 1 - winner;
    assert!(
        matches!(
            opened[loser],
            Err(CoreError::WrongFingerprintKey | CoreError::WrongMasterKey(1))
        ),
        "the other keys are refused: {:?}",
        opened[loser].as_ref().err()
    );
    // Both saw one folder id: the winner's key files are bound to the one the database holds,
    // and the refused key files were bound to nothing.
    let id = folder_id_in(&dirs[winner]);
    for key in ["master.key", "fingerprint.key"] {
        assert_eq!(
            crate::keys::binding_of(&dirs[winner].join(key)).unwrap(),
            Some(id.clone())
        );
        assert_eq!(
            crate::keys::binding_of(&dirs[loser].join(key)).unwrap(),
            None
        );
    }
}

#[test]
fn two_inits_racing_on_an_empty_database_bind_both_key_sets_to_its_one_folder_id() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| instance_dir(root.path(), name, &url))
        .collect();
    let inits = race(2, |i| {
        init_config(&dirs[i].join("vault.toml"), None).map_err(|e| e.to_string())
    });
    assert!(inits.iter().all(Result::is_ok), "{inits:?}");
    let id = folder_id_in(&dirs[0]);
    for dir in &dirs {
        for key in ["master.key", "fingerprint.key"] {
            assert_eq!(
                crate::keys::binding_of(&dir.join(key)).unwrap().as_deref(),
                Some(id.as_str()),
                "{}",
                dir.join(key).display()
            );
        }
    }
    // Then the keys decide: one set starts, the other (other keys) is refused.
    let opened = race(2, |i| open(&dirs[i]));
    assert_eq!(
        opened.iter().filter(|r| r.is_ok()).count(),
        1,
        "{:?}",
        opened.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
    );
}
