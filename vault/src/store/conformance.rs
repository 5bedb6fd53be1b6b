//! The storage contract, written once against [`Store`] and run against every backend
//! (`run_all(&make)`; sled runs it in `store/sled.rs`'s tests, a PostgreSQL backend runs it
//! unchanged). Each case gets a fresh, empty store from `make`.
//!
//! Cases: uniqueness under a race (16 concurrent stores of one token → one record), atomicity
//! (record + indexes together), the ledger claim (concurrent insert-if-absent of
//! one idempotency key → one winner; compare-and-swap from a stale value fails), delete and
//! erase (index entries gone, other stores untouched), list by account (no prefix bleed), first
//! writes of a setting (16 concurrent insert-if-absent with different values → all see one).
//! Concurrency uses scoped threads, bounded at 16.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{ChargeEntry, Store, Stored, StoredRecord, Swap};

use shared::domain::{AccountId, CardBrand, Last4, PaymentMethodId, PaymentType, StoreId};
use std::sync::{Arc, Barrier};

const RACERS: usize = 16;

/// Runs every case, each on a store fresh from `make`.
pub fn run_all(make: &dyn Fn() -> Arc<dyn Store>) {
    concurrent_stores_of_one_token_make_exactly_one_record(&*make());
    a_record_and_its_indexes_are_written_together(&*make());
    concurrent_claims_of_one_idempotency_key_have_one_winner(&*make());
    a_swap_from_a_stale_entry_fails_and_shows_the_current_one(&*make());
    delete_removes_the_record_and_its_index_entries_and_respects_the_store(&*make());
    erase_removes_only_that_accounts_records(&*make());
    list_returns_one_accounts_records_oldest_first(&*make());
    meta_changes_apply_together(&*make());
    concurrent_first_writes_of_a_setting_all_see_the_one_winner(&*make());
}

fn id(n: usize) -> String {
    format!("pm_{n:032x}")
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

fn aid(s: &str) -> AccountId {
    AccountId::parse(s).unwrap()
}

fn pid(s: &str) -> PaymentMethodId {
    PaymentMethodId::parse(s).unwrap()
}

/// A record as the service would build it (crypto fields are placeholders: backends never
/// look inside them).
pub fn record(id: &str, store: &str, account: &str) -> StoredRecord {
    StoredRecord {
        v: 1,
        id: id.to_owned(),
        store: store.into(),
        account: account.into(),
        kind: PaymentType::Card,
        brand: Some(CardBrand::Visa),
        last4: Some(Last4::parse("4242").unwrap()),
        exp_month: Some(12),
        exp_year: Some(2030),
        masked_email: None,
        created: format!("2026-01-01T00:00:{:02}Z", id.len() % 60),
        key_version: 1,
        wrap_version: None,
        wrapped_dek: "00".into(),
        sealed_token: "00".into(),
        fingerprint: hex::encode(fp_of(id)),
        fp_version: None,
        processor_customer: None,
    }
}

fn fp_of(id: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    d.as_ref().try_into().unwrap()
}

fn insert(s: &dyn Store, r: StoredRecord, fp: [u8; 32]) -> Stored {
    s.insert(r, &[fp]).unwrap()
}

fn concurrent_stores_of_one_token_make_exactly_one_record(s: &dyn Store) {
    let fp = [7u8; 32];
    let barrier = Barrier::new(RACERS);
    let results: Vec<(bool, String)> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let barrier = &barrier;
                t.spawn(move || {
                    barrier.wait();
                    let r = record(&id(i + 1), "s1", "a1");
                    match insert(s, r, fp) {
                        Stored::Created(r) => (true, r.id),
                        Stored::Existing(r) => (false, r.id),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<_> = results.iter().filter(|(c, _)| *c).collect();
    assert_eq!(created.len(), 1, "exactly one store creates: {results:?}");
    assert!(
        results.iter().all(|(_, i)| *i == created[0].1),
        "every racer answers the one record: {results:?}"
    );
    assert_eq!(s.record_count().unwrap(), 1);
    assert_eq!(s.list(&sid("s1"), &aid("a1")).unwrap().len(), 1);
}

fn a_record_and_its_indexes_are_written_together(s: &dyn Store) {
    let r = record(&id(1), "s1", "a1");
    let fp = fp_of(&r.id);
    assert!(s.find_fingerprint(&[fp]).unwrap().is_none());
    assert!(matches!(insert(s, r.clone(), fp), Stored::Created(_)));
    // The record, the account index and the fingerprint index.
    assert_eq!(
        s.find_fingerprint(&[[9; 32], fp]).unwrap().map(|g| g.id),
        Some(r.id.clone())
    );
    assert_eq!(
        s.get(&pid(&r.id)).unwrap().map(|g| g.id),
        Some(r.id.clone())
    );
    assert_eq!(s.list(&sid("s1"), &aid("a1")).unwrap().len(), 1);
    match insert(s, record(&id(2), "s1", "a1"), fp) {
        Stored::Existing(e) => assert_eq!(e.id, r.id),
        Stored::Created(_) => panic!("the fingerprint index was not written"),
    }
    assert_eq!(s.record_count().unwrap(), 1);
    // An older fingerprint version recognises the record too (re-index in progress).
    match s.insert(record(&id(3), "s1", "a1"), &[[9; 32], fp]) {
        Ok(Stored::Existing(e)) => assert_eq!(e.id, r.id),
        _ => panic!("an older fingerprint must dedupe"),
    }
}

fn pending(pm: &str, attempts: u32) -> ChargeEntry {
    ChargeEntry {
        v: 1,
        payment_method: pm.to_owned(),
        amount: 1495,
        currency: "USD".into(),
        status: "pending".into(),
        reason: None,
        reference: None,
        attempts,
        created: "2026-01-01T00:00:00Z".into(),
        updated: "2026-01-01T00:00:00Z".into(),
        lease: None,
    }
}

fn concurrent_claims_of_one_idempotency_key_have_one_winner(s: &dyn Store) {
    let barrier = Barrier::new(RACERS);
    let wins: usize = std::thread::scope(|t| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let barrier = &barrier;
                t.spawn(move || {
                    barrier.wait();
                    let mine = pending(&id(i + 1), 1);
                    match s.charge_swap(&sid("s1"), "sub:1", None, &mine).unwrap() {
                        Swap::Done => 1,
                        Swap::Changed(Some(_)) => 0,
                        Swap::Changed(None) => panic!("lost claim sees no entry"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1, "one idempotency key, one claim");
    assert!(s.charge_get(&sid("s1"), "sub:1").unwrap().is_some());
    assert!(
        s.charge_get(&sid("s2"), "sub:1").unwrap().is_none(),
        "keys are per store"
    );
}

fn a_swap_from_a_stale_entry_fails_and_shows_the_current_one(s: &dyn Store) {
    let (st, key) = (sid("s1"), "sub:2");
    let first = pending(&id(1), 1);
    assert_eq!(s.charge_swap(&st, key, None, &first).unwrap(), Swap::Done);
    let mut done = first.clone();
    done.status = "succeeded".into();
    assert_eq!(
        s.charge_swap(&st, key, Some(&first), &done).unwrap(),
        Swap::Done
    );
    // A second writer still holding `first` loses.
    assert_eq!(
        s.charge_swap(&st, key, Some(&first), &pending(&id(1), 2))
            .unwrap(),
        Swap::Changed(Some(Box::new(done.clone())))
    );
    assert_eq!(s.charge_get(&st, key).unwrap(), Some(done));
}

fn delete_removes_the_record_and_its_index_entries_and_respects_the_store(s: &dyn Store) {
    let r = record(&id(1), "s1", "a1");
    let fp = fp_of(&r.id);
    insert(s, r.clone(), fp);
    assert!(
        !s.delete(&sid("s2"), &pid(&r.id)).unwrap(),
        "another store's delete must miss"
    );
    assert!(s.get(&pid(&r.id)).unwrap().is_some());
    assert!(s.delete(&sid("s1"), &pid(&r.id)).unwrap());
    assert!(s.get(&pid(&r.id)).unwrap().is_none());
    assert!(s.list(&sid("s1"), &aid("a1")).unwrap().is_empty());
    // The fingerprint index entry went with it: the same token can be stored anew.
    assert!(matches!(
        insert(s, record(&id(2), "s1", "a1"), fp),
        Stored::Created(_)
    ));
}

fn erase_removes_only_that_accounts_records(s: &dyn Store) {
    for (n, store, account) in [
        (1, "s1", "a1"),
        (2, "s1", "a1"),
        (3, "s1", "a10"),
        (4, "s2", "a1"),
    ] {
        let r = record(&id(n), store, account);
        let fp = fp_of(&r.id);
        insert(s, r, fp);
    }
    assert_eq!(s.erase_account(&sid("s1"), &aid("a1")).unwrap(), 2);
    assert!(s.list(&sid("s1"), &aid("a1")).unwrap().is_empty());
    assert_eq!(
        s.list(&sid("s1"), &aid("a10")).unwrap().len(),
        1,
        "prefix a1 must not match account a10"
    );
    assert_eq!(s.list(&sid("s2"), &aid("a1")).unwrap().len(), 1);
    // Erased fingerprints are free again.
    let again = record(&id(5), "s1", "a1");
    assert!(matches!(
        insert(s, again, fp_of(&id(1))),
        Stored::Created(_)
    ));
}

fn list_returns_one_accounts_records_oldest_first(s: &dyn Store) {
    for n in [3usize, 1, 2] {
        let mut r = record(&id(n), "s1", "a1");
        r.created = format!("2026-01-0{n}T00:00:00Z");
        let fp = fp_of(&r.id);
        insert(s, r, fp);
    }
    let r = record(&id(9), "s1", "a2");
    let fp = fp_of(&r.id);
    insert(s, r, fp);
    let ids: Vec<String> = s
        .list(&sid("s1"), &aid("a1"))
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![id(1), id(2), id(3)]);
}

fn meta_changes_apply_together(s: &dyn Store) {
    s.meta_apply(&[("kcv/master/1", b"a"), ("kcv/master/2", b"b")], &[])
        .unwrap();
    s.meta_apply(&[("custody/x", b"")], &["kcv/master/1"])
        .unwrap();
    let keys: Vec<String> = s
        .meta_scan("kcv/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["kcv/master/2".to_owned()]);
    assert_eq!(s.meta_get("custody/x").unwrap(), Some(Vec::new()));
}

fn concurrent_first_writes_of_a_setting_all_see_the_one_winner(s: &dyn Store) {
    let barrier = Barrier::new(RACERS);
    let seen: Vec<(Vec<u8>, Vec<u8>)> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let barrier = &barrier;
                t.spawn(move || {
                    let mine = format!("value of racer {i}").into_bytes();
                    barrier.wait();
                    let stored = s.meta_put_if_absent("kcv/master/1", &mine).unwrap();
                    (mine, stored)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winner = s
        .meta_get("kcv/master/1")
        .unwrap()
        .expect("one value stored");
    assert!(
        seen.iter().all(|(_, stored)| *stored == winner),
        "every racer answers the stored value: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|(mine, _)| *mine == winner).count(),
        1,
        "the stored value is one racer's own"
    );
    // Later calls change nothing and answer the winner too.
    assert_eq!(
        s.meta_put_if_absent("kcv/master/1", b"late").unwrap(),
        winner
    );
    assert_eq!(s.meta_put_if_absent("custody/y", b"new").unwrap(), b"new");
}
