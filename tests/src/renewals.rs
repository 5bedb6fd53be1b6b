//! Helpers of the renewal end-to-end tests (`tests/renewals.rs`, and the rebill orders there):
//! checkout with a monthly subscription, `POST /subscriptions/charge`, reads of a subscription,
//! its entries and the events of a stopped database. The dev clock, the processor's charges of
//! one subscription and polling a subscription are `crate::lifecycle`'s.

use crate::accounts::{System, order_body};
use accounts_api::model::EventRecord;
use accounts_api::storage::{SledStorage, Storage as _};
use serde_json::{Value, json};

/// Completes a checkout with one monthly subscription; returns (account id, subscription id).
pub async fn checkout(sys: &System, token: &str, save: bool) -> (String, String) {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let body = order_body(&email, token, true, true, save);
    let o = sys.call(&sys.demo, "POST", "/orders", Some(&body)).await;
    assert!(o.status.is_success(), "checkout: {}", o.text);
    assert!(!o.text.contains(token));
    let account = o.json["account"].as_str().unwrap_or_default().to_owned();
    let sub = o.json["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!account.is_empty() && !sub.is_empty(), "{}", o.text);
    (account, sub)
}

pub async fn charge_now(sys: &System, sub: &str) -> crate::accounts::Answer {
    let body = json!({"subscriptions": [{"subscription": sub}]});
    let a = sys
        .call(&sys.demo, "POST", "/subscriptions/charge", Some(&body))
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);
    a
}

pub async fn subscription(sys: &System, sub: &str) -> Value {
    let a = sys
        .call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
        .await;
    assert!(a.status.is_success(), "{}", a.text);
    a.json
}

/// Every event accounts-api wrote for `store`, processed or not, read from its stopped
/// database through the storage port: a row that cannot be read or decoded fails the test
/// instead of silently dropping out of a negative assertion.
pub async fn events(sys: &System, store: &str) -> Vec<EventRecord> {
    let db = SledStorage::open(&sys.accounts_dir().join("db")).unwrap_or_else(|e| panic!("{e}"));
    let store = accounts_api::model::StoreId::parse(store).unwrap_or_else(|e| panic!("{e}"));
    let mut all = Vec::new();
    for processed in [false, true] {
        let (page, more) = db
            .events(&store, 0, processed, usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("events unreadable: {e}"));
        assert!(!more);
        all.extend(page);
    }
    assert!(!all.is_empty(), "the store has events at all");
    all
}

pub fn of_type<'a>(events: &'a [EventRecord], kind: &str, sub: &str) -> Vec<&'a EventRecord> {
    events
        .iter()
        .filter(|e| e.kind == kind && e.data["subscription"] == sub)
        .collect()
}

/// `POST /subscriptions/charge` with `body` under an Idempotency-Key.
pub async fn rebill_with_key(sys: &System, body: &Value, key: &str) -> crate::accounts::Answer {
    let path = "/subscriptions/charge";
    sys.call_with_key(&sys.demo, "POST", path, Some(body), key)
        .await
}

/// `GET /subscriptions/{sub}/entries`: the subscription's orders, oldest first.
pub async fn entries(sys: &System, sub: &str) -> Vec<Value> {
    let a = sys
        .call(
            &sys.demo,
            "GET",
            &format!("/subscriptions/{sub}/entries"),
            None,
        )
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);
    a.json
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("entries are an array: {}", a.text))
}
