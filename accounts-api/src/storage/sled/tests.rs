//! Unit tests of the sled backend (beside the conformance suite every backend runs).

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::model::test_id;

fn json(record: &impl Serialize) -> String {
    serde_json::to_string(record).unwrap()
}

const STORE: &str = r#"{"id":"acme-1a2b3c4d","name":"Acme","username":"sr_00","salt":"00","password_hash":"11","created":1}"#;
const ACCOUNT: &str = r#"{"id":"AZLd3wv9cTyMHb8FtDqE1w","store":"acme-1a2b3c4d","global":"AZLd3wv9cTyMHb8FtDqE1x","contact":{"first":"J","last":"D","email":"j@example.com","company":null,"phone":null},"address":null,"country":"US","language":"en","custom":"cust-1","orders":["AZLd3wv9cTyMHb8FtDqE1y"],"subscriptions":["AZLd3wv9cTyMHb8FtDqE1z"],"paymentMethods":[{"id":"pm_0123456789abcdef0123456789abcdef","kind":"card","brand":"visa","last4":"4242","expMonth":12,"expYear":2030}],"charges":[{"currency":"USD","total":1495,"status":"successful","order":"AZLd3wv9cTyMHb8FtDqE1y","orderReference":"SR260101-0001-00001","subscription":null,"timestamp":2},{"currency":"USD","total":1495,"status":"successful","order":null,"orderReference":null,"subscription":"AZLd3wv9cTyMHb8FtDqE1z","timestamp":3}],"created":1}"#;
const ORDER: &str = r#"{"id":"AZLd3wv9cTyMHb8FtDqE1y","reference":"SR260101-0001-00001","store":"acme-1a2b3c4d","account":"AZLd3wv9cTyMHb8FtDqE1w","customer":{"first":"J","last":"D","email":"j@example.com","company":null,"phone":null},"address":null,"country":"US","language":"en","currency":"USD","items":[{"product":"pro","quantity":1,"price":1495,"subscription":"AZLd3wv9cTyMHb8FtDqE1z"}],"total":1495,"payment":{"kind":"card","brand":"visa","last4":"4242"},"paymentMethod":"pm_0123456789abcdef0123456789abcdef","completed":2,"live":false}"#;
const SUBSCRIPTION: &str = r#"{"id":"AZLd3wv9cTyMHb8FtDqE1z","store":"acme-1a2b3c4d","account":"AZLd3wv9cTyMHb8FtDqE1w","order":"AZLd3wv9cTyMHb8FtDqE1y","product":"pro","quantity":1,"price":1495,"currency":"USD","intervalUnit":"month","intervalLength":1,"state":"active","autoRenew":true,"paymentMethod":"pm_0123456789abcdef0123456789abcdef","paymentKind":"card","brand":"visa","last4":"4242","expiry":"12/30","begin":2,"next":4,"canceled":null,"renewal":{"pending":null,"declineReason":null,"failedAttempts":0,"retryAt":null,"cardExpiring":false,"expiringNotified":null,"reminded":null,"lastCharged":3},"live":false}"#;
const EVENT: &str = r#"{"id":"019b7a3c4d5e7f00a1b2c3d4e5f60718","type":"order.completed","created":2,"live":false,"processed":false,"data":{"id":"AZLd3wv9cTyMHb8FtDqE1y"}}"#;
const WEBHOOKS: &str = r#"[{"id":"AZLd3wv9cTyMHb8FtDqE10","url":"http://127.0.0.1:9/hook","secret":null,"created":1}]"#;
const SESSION: &str = r#"{"store":"acme-1a2b3c4d","account":"AZLd3wv9cTyMHb8FtDqE1w","expires":9999999999999,"csrf":"c"}"#;
const LINK: &str =
    r#"{"store":"acme-1a2b3c4d","account":"AZLd3wv9cTyMHb8FtDqE1w","expires":9999999999999}"#;

/// Rows exactly as accounts-api wrote them while ids were plain strings: they decode
/// through the typed port, and encode back to the same bytes (the JSON of a typed id is
/// the string it was).
#[tokio::test]
async fn records_written_before_ids_were_typed_decode_and_encode_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStorage::open(dir.path()).unwrap();
    let st = "acme-1a2b3c4d";
    let (a, o, b) = (
        "AZLd3wv9cTyMHb8FtDqE1w",
        "AZLd3wv9cTyMHb8FtDqE1y",
        "AZLd3wv9cTyMHb8FtDqE1z",
    );
    let ev = "019b7a3c4d5e7f00a1b2c3d4e5f60718";
    let rows: Vec<(String, &str)> = vec![
        (format!("s/{st}"), STORE),
        ("u/sr_00".into(), st),
        (format!("a/{st}/{a}"), ACCOUNT),
        (format!("e/{st}/j@example.com"), a),
        (format!("c/{st}/cust-1"), a),
        (format!("g/{st}/AZLd3wv9cTyMHb8FtDqE1x"), a),
        (format!("o/{st}/{o}"), ORDER),
        (format!("r/{st}/SR260101-0001-00001"), o),
        (format!("b/{st}/{b}"), SUBSCRIPTION),
        (format!("v/{st}/{ev}"), EVENT),
        (format!("wh/{st}"), WEBHOOKS),
        (
            format!("wo/{st}/AZLd3wv9cTyMHb8FtDqE10/{ev}"),
            r#"{"attempts":0,"due":0}"#,
        ),
        ("ses/h".into(), SESSION),
        ("sso/h".into(), LINK),
    ];
    for (k, v) in &rows {
        s.tree().insert(k.as_bytes(), v.as_bytes()).unwrap();
    }
    let store: StoreId = test_id(st);
    let account: AccountId = test_id(a);

    let rec = s.store_by_username("sr_00").unwrap().unwrap();
    assert_eq!((rec.id.as_str(), json(&rec).as_str()), (st, STORE));
    let rec = Storage::account(&s, &store, &account)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(json(&rec), ACCOUNT);
    for (index, key) in [
        (Index::Email, "j@example.com"),
        (Index::Custom, "cust-1"),
        (Index::Global, "AZLd3wv9cTyMHb8FtDqE1x"),
    ] {
        assert_eq!(
            Storage::account_by(&s, &store, index, key).await.unwrap(),
            Some(account.clone())
        );
    }
    assert_eq!(
        Storage::list_accounts(&s, &store, 0, 10).await.unwrap(),
        (vec![account.clone()], 1)
    );
    let order: OrderId = test_id(o);
    assert_eq!(
        Storage::order_by_reference(&s, &store, "SR260101-0001-00001")
            .await
            .unwrap(),
        Some(order.clone())
    );
    let rec = Storage::order(&s, &store, &order).await.unwrap().unwrap();
    assert_eq!(json(&rec), ORDER);
    let sub: SubscriptionId = test_id(b);
    let rec = Storage::subscription(&s, &store, &sub)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(json(&rec), SUBSCRIPTION);
    assert_eq!(
        Storage::list_subscriptions(&s, &store, 0, 10)
            .await
            .unwrap(),
        (vec![sub], 1)
    );
    let rec = Storage::event(&s, &store, &test_id(ev))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(json(&rec), EVENT);
    let hooks = Storage::webhooks(&s, &store).await.unwrap();
    assert_eq!(serde_json::to_string(&hooks).unwrap(), WEBHOOKS);
    let due = Storage::outbox_due(&s, &crate::storage::DueScan::all(1, 10))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (
            due[0].store.as_str(),
            due[0].hook.as_str(),
            due[0].event.as_str()
        ),
        (st, "AZLd3wv9cTyMHb8FtDqE10", ev)
    );
    let rec = Storage::session(&s, "h").await.unwrap().unwrap();
    assert_eq!(json(&rec), SESSION);
    let rec = Storage::take_sso_token(&s, "h").await.unwrap().unwrap();
    assert_eq!(json(&rec), LINK);
}

/// A database written before retention existed: its Idempotency-Key records (which had no
/// time) and processed events are indexed once at open, so they expire too — the records one
/// window after the upgrade, the events by when they were processed.
#[tokio::test]
async fn records_written_before_retention_are_indexed_once_and_then_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStorage::open(dir.path()).unwrap();
    let st = "acme-1a2b3c4d";
    let processed = r#"{"id":"019b7a3c4d5e7f00a1b2c3d4e5f60719","type":"order.completed","created":2,"live":false,"processed":true,"data":{},"processed_at":3}"#;
    let rows = [
        (
            format!("i/{st}/old/key"),
            r#"{"request_hash":"h","status":201,"body":"{}"}"#,
        ),
        (format!("v/{st}/019b7a3c4d5e7f00a1b2c3d4e5f60718"), EVENT),
        (
            format!("v/{st}/019b7a3c4d5e7f00a1b2c3d4e5f60719"),
            processed,
        ),
    ];
    for (k, v) in &rows {
        s.tree().insert(k.as_bytes(), v.as_bytes()).unwrap();
    }
    // Not indexed yet: the database was already opened (and marked) before these rows.
    assert_eq!(events_swept(&s, i64::MAX).await, 0);
    s.tree().remove(b"m/retention-indexed").unwrap();
    let before = crate::model::now_ms();
    retention::backfill(s.tree()).unwrap();
    let after = crate::model::now_ms();
    let store: StoreId = test_id(st);
    let rec: IdempotencyRecord = s
        .get(format!("i/{st}/old/key").as_bytes())
        .unwrap()
        .unwrap();
    let stamped = rec.created.unwrap();
    assert!(
        (before..=after).contains(&stamped),
        "stamped with the upgrade's time"
    );

    assert_eq!(s.sweep_idempotency(stamped - 1, 10).await.unwrap(), 0);
    assert_eq!(s.sweep_idempotency(stamped, 10).await.unwrap(), 1);
    assert!(
        s.get::<IdempotencyRecord>(format!("i/{st}/old/key").as_bytes())
            .unwrap()
            .is_none()
    );
    assert_eq!(events_swept(&s, 2).await, 0, "processed at 3, not 2");
    assert_eq!(events_swept(&s, 3).await, 1);
    let (unprocessed, _) = SledStorage::events(&s, &store, 0, None, false, 10).unwrap();
    assert_eq!(unprocessed.len(), 1, "the unprocessed event stays");
    // Once: a second backfill finds the marker and changes nothing.
    s.tree()
        .insert(
            format!("i/{st}/late"),
            &br#"{"request_hash":"h","status":201,"body":"{}"}"#[..],
        )
        .unwrap();
    retention::backfill(s.tree()).unwrap();
    let late: IdempotencyRecord = s.get(format!("i/{st}/late").as_bytes()).unwrap().unwrap();
    assert_eq!(late.created, None);
}

async fn events_swept(s: &SledStorage, cutoff: i64) -> usize {
    crate::storage::Storage::sweep_events(s, cutoff, 10)
        .await
        .unwrap()
}
