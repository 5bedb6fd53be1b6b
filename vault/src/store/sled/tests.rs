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

/// What a crash in the middle of a store can leave (its index entries written, its record
/// not; sled recovers a prefix of its log and the record is written last): entries pointing
/// to no record. They read as absent, the next store of that token takes the fingerprint, and
/// deleting that record later removes only its own entry.
#[test]
fn index_entries_a_crash_left_without_their_record_read_as_absent_and_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (store, account) = (
        StoreId::parse("s1").unwrap(),
        AccountId::parse("a1").unwrap(),
    );
    let lost = format!("pm_{}", "a".repeat(32));
    let fp: [u8; 32] = [7; 32];
    s.fingerprints.insert(fp, lost.as_bytes()).unwrap();
    s.fp_filter.add(&fp);
    s.by_account
        .insert(account_key("s1", "a1", &lost), &[][..])
        .unwrap();
    assert!(s.find_fingerprint(&[fp]).unwrap().is_none());
    assert!(s.list(&store, &account).unwrap().is_empty());
    assert!(
        s.get(&PaymentMethodId::parse(&lost).unwrap())
            .unwrap()
            .is_none()
    );
    // The token stored again: created, and found by its fingerprint from now on.
    let id = format!("pm_{}", "b".repeat(32));
    let mut r = crate::store::conformance::record(&id, "s1", "a1");
    r.fingerprint = hex::encode(fp);
    assert!(matches!(
        s.insert(r.clone(), &[fp]).unwrap(),
        Stored::Created(_)
    ));
    assert_eq!(
        s.find_fingerprint(&[fp]).unwrap().map(|r| r.id),
        Some(id.clone())
    );
    assert!(matches!(s.insert(r, &[fp]).unwrap(), Stored::Existing(e) if e.id == id));
    let listed: Vec<String> = s
        .list(&store, &account)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        listed,
        vec![id.clone()],
        "the dangling account entry is skipped"
    );
    // Erasure counts real records only; deleting removes the record's own entries.
    assert_eq!(s.erase_account(&store, &account).unwrap(), 1);
    assert!(s.fingerprints.get(fp).unwrap().is_none());
    assert!(s.find_fingerprint(&[fp]).unwrap().is_none());
}

/// A delete removes the fingerprint entry only while it still points to the deleted record.
#[test]
fn deleting_a_record_leaves_a_fingerprint_entry_another_record_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let store = StoreId::parse("s1").unwrap();
    let fp: [u8; 32] = [9; 32];
    let (old, new) = (
        format!("pm_{}", "c".repeat(32)),
        format!("pm_{}", "d".repeat(32)),
    );
    let mut r = crate::store::conformance::record(&old, "s1", "a1");
    r.fingerprint = hex::encode(fp);
    s.records
        .insert(old.as_bytes(), r.encode().unwrap())
        .unwrap();
    s.fingerprints.insert(fp, new.as_bytes()).unwrap();
    assert!(
        s.delete(&store, &PaymentMethodId::parse(&old).unwrap())
            .unwrap()
    );
    assert_eq!(
        s.fingerprints.get(fp).unwrap().as_deref(),
        Some(new.as_bytes())
    );
}
