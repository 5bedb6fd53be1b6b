//! `vault init --config` and the vault's start on PostgreSQL: instances on one database share
//! the folder id and key-check values (in the database), each with its own data folder (audit).

use super::init_config;
use crate::config::{Config, Overrides};
use crate::service::{CoreError, NewPaymentMethod, Vault};
use shared::domain::{AccountId, PaymentMethodId, PaymentType, StoreId};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An instance folder: dev PKI, a postgres `vault.toml`, the URL in an owner-only file.
fn instance_dir(root: &Path, name: &str, url: &str) -> PathBuf {
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

fn open(dir: &Path) -> Result<Vault, CoreError> {
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
