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

#[test]
#[ignore]
fn scratch_bench_txn_vs_batch() {
    use ::sled::Transactional;
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path(), 16 << 20, 500).unwrap();
    let (a, b, c) = (db.open_tree("a").unwrap(), db.open_tree("b").unwrap(), db.open_tree("c").unwrap());
    let one = db.open_tree("one").unwrap();
    let val = vec![7u8; 700];
    let n = 20_000u32;
    let t = std::time::Instant::now();
    for i in 0..n {
        let k = uuid::Uuid::now_v7().simple().to_string();
        let fp = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
        (&a, &b, &c).transaction(|(a, b, c)| {
            let _ = b.get(fp.as_ref())?;
            a.insert(k.as_bytes(), val.as_slice())?;
            b.insert(fp.as_ref(), k.as_bytes())?;
            c.insert(format!("s\0a\0{k}").as_bytes(), &[][..])?;
            Ok::<_, ::sled::transaction::ConflictableTransactionError<()>>(())
        }).unwrap();
    }
    eprintln!("txn 3 trees: {:.0}/s", f64::from(n) / t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    for i in 0..n {
        let k = uuid::Uuid::now_v7().simple().to_string();
        let fp = ring::digest::digest(&ring::digest::SHA256, &(i + n).to_be_bytes());
        let mut fk = b"f".to_vec(); fk.extend_from_slice(fp.as_ref());
        let _ = one.get(&fk).unwrap();
        let mut batch = ::sled::Batch::default();
        batch.insert(format!("r{k}").as_bytes(), val.as_slice());
        batch.insert(fk, k.as_bytes());
        batch.insert(format!("a s\0a\0{k}").as_bytes(), &[][..]);
        one.apply_batch(batch).unwrap();
    }
    eprintln!("batch 1 tree: {:.0}/s", f64::from(n) / t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    for i in 0..n {
        let k = uuid::Uuid::now_v7().simple().to_string();
        let fp = ring::digest::digest(&ring::digest::SHA256, &(i + 2 * n).to_be_bytes());
        let _ = b.get(fp.as_ref()).unwrap();
        a.insert(k.as_bytes(), val.as_slice()).unwrap();
        b.insert(fp.as_ref(), k.as_bytes()).unwrap();
        c.insert(format!("s\0a\0{k}").as_bytes(), &[][..]).unwrap();
    }
    eprintln!("3 plain inserts: {:.0}/s", f64::from(n) / t.elapsed().as_secs_f64());
}
