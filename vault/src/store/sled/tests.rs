//! Unit tests of the sled backend (the shared contract runs in `store::conformance`).

use super::*;
use crate::audit::Verdict;
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
fn the_audit_chain_continues_across_a_reopen_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = AuditDraft {
        identity: "accounts".into(),
        operation: "store".into(),
        ..AuditDraft::default()
    };
    {
        let s = open(dir.path());
        s.audit().append(d.clone()).unwrap();
        s.audit().append(d.clone()).unwrap();
        s.db().flush().unwrap();
    }
    let s = open(dir.path());
    s.audit().append(d).unwrap();
    assert_eq!(s.audit().verify().unwrap(), Verdict::Ok { entries: 3 });
    assert_eq!(s.audit().length(), 3);
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
