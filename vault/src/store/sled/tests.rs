//! Unit tests of the sled backend (the shared contract runs in `store::conformance`).

use super::*;
use std::path::Path;
use std::sync::Arc;

fn open(dir: &Path) -> SledStore {
    SledStore::new(open_db(dir, 1 << 20, 500).unwrap(), false).unwrap()
}

/// The storage contract, run against sled (each case on a fresh folder).
#[test]
fn sled_passes_the_store_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    crate::store::conformance::run_all(&|| {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Store> = Arc::new(open(dir.path()));
        dirs.lock().unwrap().push(dir);
        s
    });
}

#[test]
fn a_folder_of_the_previous_format_hands_its_audit_entries_over_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        assert!(
            s.legacy_audit().is_none(),
            "a new folder has no sled audit tree"
        );
        let tree = s.db().open_tree("audit").unwrap();
        tree.insert(1u64.to_be_bytes(), &b"{}"[..]).unwrap();
        tree.insert(2u64.to_be_bytes(), &b"{\"x\":1}"[..]).unwrap();
        s.db().flush().unwrap();
    }
    let s = open(dir.path());
    let legacy = s.legacy_audit().expect("the old tree is offered");
    let mut seen = Vec::new();
    let n = legacy
        .each(&mut |b| {
            seen.push(b.to_vec());
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen, vec![b"{}".to_vec(), b"{\"x\":1}".to_vec()]);
    legacy.remove().unwrap();
    assert!(s.legacy_audit().is_none(), "removed once handed over");
}

#[test]
fn a_record_value_under_the_wrong_key_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r = crate::store::conformance::record("pm_a", "s1", "a1");
    let v = r.encode().unwrap();
    let z = PaymentMethodId::parse(&format!("pm_{}", "f".repeat(32))).unwrap();
    s.records.insert(z.as_str(), v).unwrap();
    assert!(matches!(s.get(&z), Err(StoreError::Corrupt(_))));
    let y = PaymentMethodId::parse(&format!("pm_{}", "e".repeat(32))).unwrap();
    s.records.insert(y.as_str(), &b"{not json"[..]).unwrap();
    assert!(matches!(s.get(&y), Err(StoreError::Corrupt(_))));
}
