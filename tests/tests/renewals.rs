//! Renewals end to end: `accounts-api dev` (which starts the vault and the sandbox processor),
//! checkout, then `POST /subscriptions/charge` and the periodic job; the sandbox's ledger is the
//! witness of what the processor received.

use accounts_api::model::EventRecord;
use accounts_api::storage::{SledStorage, Storage as _};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::accounts::{System, order_body, start_system, start_system_with_env, unique_token};
use tests::sandbox::{self, start_sandbox};
use tests::{all_files, contains_bytes, temp_dir};

/// Completes a checkout with one monthly subscription; returns (account id, subscription id).
async fn checkout(sys: &System, token: &str, save: bool) -> (String, String) {
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

async fn charge_now(sys: &System, sub: &str) -> tests::accounts::Answer {
    let body = json!({"subscriptions": [{"subscription": sub}]});
    let a = sys
        .call(&sys.demo, "POST", "/subscriptions/charge", Some(&body))
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);
    a
}

async fn subscription(sys: &System, sub: &str) -> Value {
    let a = sys
        .call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
        .await;
    assert!(a.status.is_success(), "{}", a.text);
    a.json
}

/// Every event accounts-api wrote for `store`, processed or not, read from its stopped
/// database through the storage port: a row that cannot be read or decoded fails the test
/// instead of silently dropping out of a negative assertion.
async fn events(sys: &System, store: &str) -> Vec<EventRecord> {
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

fn of_type<'a>(events: &'a [EventRecord], kind: &str, sub: &str) -> Vec<&'a EventRecord> {
    events
        .iter()
        .filter(|e| e.kind == kind && e.data["subscription"] == sub)
        .collect()
}

const MONTH_MS_MIN: i64 = 28 * 86_400_000;

#[tokio::test]
async fn a_due_automatic_subscription_is_charged_exactly_once_its_period_advances_and_the_charge_is_listed()
 {
    let mut sys = start_system();
    assert!(
        sys.processor.starts_with("http://127.0.0.1:"),
        "dev starts the sandbox"
    );
    let tok = unique_token();
    let (account, sub) = checkout(&sys, &tok, true).await;
    let before = subscription(&sys, &sub).await;
    let next = before["next"].as_i64().unwrap_or_default();

    let a = charge_now(&sys, &sub).await;
    assert_eq!(
        a.json,
        json!({"subscription": [{"subscription": sub, "action": "subscription.charge", "result": "success"}]})
    );

    let key = format!("{}:{sub}:{next}", sys.demo.store);
    let charged = sandbox::charges_with_key(&sys.processor, &key).await;
    assert_eq!(charged.len(), 1, "exactly one processor charge");
    assert_eq!(charged[0]["amount"], 1495);
    assert_eq!(charged[0]["status"], "succeeded");
    assert_eq!(
        charged[0]["paymentMethod"], tok,
        "the processor is the one party that sees the token"
    );
    let all = sandbox::charges(&sys.processor).await;
    assert_eq!(all["charges"].as_array().map(Vec::len), Some(1), "{all}");

    let after = subscription(&sys, &sub).await;
    let new_next = after["next"].as_i64().unwrap_or_default();
    assert!(
        new_next - next >= MONTH_MS_MIN,
        "period advanced by a month: {next} -> {new_next}"
    );
    assert_eq!(after["declineReason"], Value::Null);

    let acct = sys
        .call(&sys.demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    // The checkout's own charge, then the renewal's.
    let charges: Vec<Value> = acct.json["accounts"][0]["charges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["subscription"] == sub.as_str())
        .collect();
    assert_eq!(charges.len(), 1, "{}", acct.text);
    assert_eq!(charges[0]["subscription"], sub.as_str());
    assert_eq!(charges[0]["total"], 14.95);
    assert_eq!(charges[0]["currency"], "USD");
    assert_eq!(charges[0]["status"], "successful");

    // A retried rebill the same day is refused, not charged again.
    let again = charge_now(&sys, &sub).await;
    assert_eq!(again.json["subscription"][0]["result"], "error");
    let all = sandbox::charges(&sys.processor).await;
    assert_eq!(all["charges"].as_array().map(Vec::len), Some(1));

    // The token is in no log, no response and no file of accounts-api.
    for text in [&a.text, &acct.text, &again.text] {
        assert!(!text.contains(&tok));
    }
    assert!(!sys.logs().contains(&tok), "token in a log");
    sys.stop();
    for (path, bytes) in all_files(&sys.accounts_dir()) {
        assert!(
            !contains_bytes(&bytes, tok.as_bytes()),
            "token in {}",
            path.display()
        );
    }
    for (path, bytes) in all_files(&sys.vault_dir()) {
        assert!(
            !contains_bytes(&bytes, tok.as_bytes()),
            "token in clear in {}",
            path.display()
        );
    }
    let ev = events(&sys, &sys.demo.store).await;
    assert_eq!(
        of_type(&ev, "subscription.charge.completed", &sub).len(),
        1,
        "one charge event"
    );
}

#[tokio::test]
async fn a_declined_renewal_records_the_reason_retries_after_1_3_5_days_and_deactivates_after_the_last()
 {
    let mut sys = start_system();
    let tok = format!(
        "tok_decline_insufficient_funds_{}",
        uuid::Uuid::new_v4().simple()
    );
    let (_, sub) = checkout(&sys, &tok, true).await;
    let next = subscription(&sys, &sub).await["next"]
        .as_i64()
        .unwrap_or_default();
    let day = 86_400_000i64;
    for (attempt, retry_days) in [(1, Some(1)), (2, Some(3)), (3, Some(5)), (4, None)] {
        let a = charge_now(&sys, &sub).await;
        assert_eq!(
            a.json["subscription"][0]["error"]["subscription"], "INSUFFICIENT_FUNDS",
            "attempt {attempt}: {}",
            a.text
        );
        let s = subscription(&sys, &sub).await;
        assert_eq!(s["declineReason"], "insufficient_funds");
        assert_eq!(s["failedAttempts"], attempt);
        assert_eq!(
            s["nextRetry"].as_i64(),
            retry_days.map(|d: i64| next + d * day),
            "attempt {attempt}"
        );
        assert_eq!(
            s["state"],
            if retry_days.is_some() {
                "active"
            } else {
                "deactivated"
            }
        );
        assert_eq!(s["next"], next, "a decline does not advance the period");
    }
    let a = charge_now(&sys, &sub).await;
    assert_eq!(
        a.json["subscription"][0]["error"]["subscription"],
        "SUBSCRIPTION_NOT_ACTIVE"
    );
    let all = sandbox::charges(&sys.processor).await;
    let charges = all["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(charges.len(), 4, "one processor call per attempt: {all}");
    assert!(charges.iter().all(|c| c["status"] == "declined"));
    assert!(!sys.logs().contains(&tok));
    sys.stop();
    let ev = events(&sys, &sys.demo.store).await;
    assert_eq!(of_type(&ev, "subscription.charge.failed", &sub).len(), 4);
    assert_eq!(of_type(&ev, "subscription.deactivated", &sub).len(), 1);
}

#[tokio::test]
async fn a_manual_subscription_is_never_charged_and_gets_a_payment_reminder_event() {
    let mut sys = start_system();
    let tok = unique_token();
    // Consent box shown and not ticked: the token is not saved, renewal is manual.
    let (_, sub) = checkout(&sys, &tok, false).await;
    let a = charge_now(&sys, &sub).await;
    assert_eq!(
        a.json["subscription"][0]["error"]["subscription"],
        "MANUAL_RENEWAL"
    );
    let again = charge_now(&sys, &sub).await;
    assert_eq!(again.json["subscription"][0]["result"], "error");
    let all = sandbox::charges(&sys.processor).await;
    assert_eq!(
        all["charges"].as_array().map(Vec::len),
        Some(0),
        "no charge: {all}"
    );
    sys.stop();
    let ev = events(&sys, &sys.demo.store).await;
    assert_eq!(
        of_type(&ev, "subscription.payment.reminder", &sub).len(),
        1,
        "one reminder per period"
    );
    assert!(of_type(&ev, "subscription.charge.completed", &sub).is_empty());
}

#[tokio::test]
async fn killing_accounts_api_and_the_vault_mid_charge_then_restarting_charges_the_period_exactly_once()
 {
    // A sandbox of our own that outlives the crash, deciding each charge after 3 s.
    let sandbox = start_sandbox(&["--delay-ms", "3000"]);
    let env = [
        ("VAULT_PROCESSOR_URL", sandbox.url.as_str()),
        ("VAULT_PROCESSOR_SECRET_KEY", sandbox::SECRET),
        ("STRONGROOM_RENEWALS_INTERVAL_SECS", "1"),
    ];
    let data = Arc::new(temp_dir("strongroom-crash-"));
    let mut sys = start_system_with_env(Arc::clone(&data), &env);
    assert_eq!(sys.processor, sandbox.url);
    let tok = unique_token();
    let (_, sub) = checkout(&sys, &tok, true).await;
    let next = subscription(&sys, &sub).await["next"]
        .as_i64()
        .unwrap_or_default();

    // Start the charge and crash both services while the processor is deciding it.
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
    let store = sys.demo.store.clone();
    drop(sys);

    // The processor completes the charge it received.
    let key = format!("{store}:{sub}:{next}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while sandbox::charges_with_key(&sandbox.url, &key)
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the charge never reached the sandbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Restart on the same data: the job resumes the pending intent with the same key.
    let sys = start_system_with_env(Arc::clone(&data), &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = subscription(&sys, &sub).await;
        if s["next"].as_i64() != Some(next) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pending renewal was not resumed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let charged = sandbox::charges_with_key(&sandbox.url, &key).await;
    assert_eq!(
        charged.len(),
        1,
        "exactly one processor charge for the period"
    );
    let all = sandbox::charges(&sandbox.url).await;
    assert_eq!(all["charges"].as_array().map(Vec::len), Some(1), "{all}");
    assert!(
        all["replays"].as_u64() >= Some(1),
        "the resumed call reached the processor with the same key and was replayed: {all}"
    );
    assert!(!sys.logs().contains(&tok), "token in a log");
}

#[tokio::test]
async fn bad_charge_requests_are_422_in_the_envelope_and_unknown_subscriptions_are_per_item_errors()
{
    let sys = start_system();
    for body in [
        json!({}),
        json!({"subscriptions": []}),
        json!({"subscriptions": [{"sub": "x"}]}),
    ] {
        let a = sys
            .call(&sys.demo, "POST", "/subscriptions/charge", Some(&body))
            .await;
        assert_eq!(a.status.as_u16(), 422, "{body}: {}", a.text);
        assert_eq!(a.json["result"], "error");
    }
    let a = charge_now(&sys, "no-such-subscription").await;
    assert_eq!(
        a.json["subscription"][0]["error"]["subscription"],
        "NOT_FOUND"
    );
    let all = sandbox::charges(&sys.processor).await;
    assert_eq!(all["charges"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn a_card_that_expires_before_the_next_charge_is_flagged_ahead_of_time_with_one_event() {
    let data = Arc::new(temp_dir("strongroom-expiry-"));
    let mut sys = start_system_with_env(data, &[("STRONGROOM_RENEWALS_INTERVAL_SECS", "1")]);
    let now = time::OffsetDateTime::now_utc();
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let mut body = order_body(&email, &unique_token(), true, true, true);
    // Valid this month only; the next charge is a month away.
    body["payment"]["expMonth"] = json!(u8::from(now.month()));
    body["payment"]["expYear"] = json!(now.year());
    let o = sys.call(&sys.demo, "POST", "/orders", Some(&body)).await;
    assert!(o.status.is_success(), "{}", o.text);
    let sub = o.json["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = subscription(&sys, &sub).await;
        if s["cardExpiring"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never flagged: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Flagging is not charging.
    let all = sandbox::charges(&sys.processor).await;
    assert_eq!(all["charges"].as_array().map(Vec::len), Some(0));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sys.stop();
    let ev = events(&sys, &sys.demo.store).await;
    assert_eq!(
        of_type(&ev, "subscription.card.expiring", &sub).len(),
        1,
        "one expiring event per period, however often the job runs"
    );
}
