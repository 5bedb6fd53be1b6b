//! Helpers of the renewal end-to-end tests (`tests/renewals.rs`, and the rebill orders there):
//! checkout with a monthly subscription, `POST /subscriptions/charge`, reads of a subscription,
//! its entries and the events of a stopped database. The dev clock, the processor's charges of
//! one subscription and polling a subscription are `crate::lifecycle`'s.

use crate::accounts::{System, order_body};
use accounts_api::model::EventRecord;
use accounts_api::storage::{SledStorage, Storage as _};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

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

/// The environment of a system whose vault charges through `sandbox` (which outlives the
/// system), with the renewal job every `interval` seconds (`0`: on demand only).
pub fn processor_env<'a>(
    sandbox: &'a crate::sandbox::Sandbox,
    interval: &'a str,
) -> [(&'a str, &'a str); 3] {
    [
        ("VAULT_PROCESSOR_URL", sandbox.url.as_str()),
        ("VAULT_PROCESSOR_SECRET_KEY", crate::sandbox::SECRET),
        ("STRONGROOM_RENEWALS_INTERVAL_SECS", interval),
    ]
}

/// Sends a rebill of `sub` and kills accounts-api and the vault (SIGKILL) 1.5 s later, while
/// the processor (`sandbox`, started with `--delay-ms 3000`, outliving the system) is deciding
/// it; waits until the processor has it. Returns the period's processor key and `next` then.
pub async fn crash_mid_rebill(
    mut sys: System,
    sub: &str,
    sandbox: &crate::sandbox::Sandbox,
) -> (String, i64) {
    let next = subscription(&sys, sub).await["next"]
        .as_i64()
        .unwrap_or_default();
    let http = sys.http.clone();
    let url = format!("{}/subscriptions/charge", sys.api);
    let (user, pass) = (sys.demo.username.clone(), sys.demo.password.clone());
    let body = json!({"subscriptions": [{"subscription": sub}]}).to_string();
    let in_flight = tokio::spawn(async move {
        http.post(url)
            .basic_auth(user, Some(pass))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sys.service.kill();
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(sys.vault_pid.to_string())
        .status();
    assert!(
        in_flight.await.map(|r| r.is_err()).unwrap_or(true),
        "the client saw the crash"
    );
    let key = format!("{}:{sub}:{next}", sys.demo.store);
    drop(sys);
    // The processor completes the charge it received.
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::sandbox::charges_with_key(&sandbox.url, &key)
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the charge never reached the sandbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (key, next)
}
