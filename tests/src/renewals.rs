//! Helpers of the renewal end-to-end tests (`tests/renewals.rs`, and the rebill orders there):
//! checkout with a monthly subscription, `POST /subscriptions/charge`, reads of a subscription,
//! its entries and the events of a stopped database, the processor's charges of one
//! subscription, and a dev clock (`STRONGROOM_DEV_CLOCK_FILE`: an offset in ms added to the
//! system clock) that moves the lifecycle's "now" instead of sleeping through a period.

use crate::accounts::{System, order_body, start_system_with_env};
use crate::sandbox;
use crate::temp_dir;
use accounts_api::model::EventRecord;
use accounts_api::storage::{SledStorage, Storage as _};
use serde_json::{Value, json};
use std::sync::Arc;
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

/// A dev clock: the offset file and the environment that points `accounts-api dev` at it.
pub struct TestClock {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
}

impl TestClock {
    pub fn new() -> Self {
        let dir = temp_dir("strongroom-clock-");
        let file = dir.path().join("offset-ms");
        std::fs::write(&file, "0").unwrap_or_else(|e| panic!("{e}"));
        Self { _dir: dir, file }
    }

    /// `accounts-api dev` on this clock, its renewal job running every second.
    pub fn start_system(&self, prefix: &str) -> System {
        let env = [
            (
                "STRONGROOM_DEV_CLOCK_FILE",
                self.file.to_str().unwrap_or_default(),
            ),
            ("STRONGROOM_RENEWALS_INTERVAL_SECS", "1"),
        ];
        start_system_with_env(Arc::new(temp_dir(prefix)), &env)
    }

    /// Moves the lifecycle's "now" to `at` (ms).
    pub fn set(&self, at: i64) {
        let offset = at - accounts_api::model::now_ms();
        std::fs::write(&self.file, offset.to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Polls `GET /subscriptions/{sub}` until `done` holds (the renewal job runs every second).
pub async fn wait_for(sys: &System, sub: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = subscription(sys, sub).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The processor's charges for `sub` (its idempotency keys are `{store}:{sub}:…`).
pub async fn charges_of(processor: &str, store: &str, sub: &str) -> Vec<Value> {
    let prefix = format!("{store}:{sub}:");
    sandbox::charges(processor).await["charges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c["idempotencyKey"]
                .as_str()
                .is_some_and(|k| k.starts_with(&prefix))
        })
        .collect()
}

/// `POST /subscriptions/charge` with `body` under an Idempotency-Key.
pub async fn rebill_with_key(sys: &System, body: &Value, key: &str) -> crate::accounts::Answer {
    let path = "/subscriptions/charge";
    sys.call_with_key(&sys.demo, "POST", path, Some(body), key)
        .await
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
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
