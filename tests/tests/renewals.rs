//! Renewals end to end: `accounts-api dev` (which starts the vault and the sandbox processor),
//! checkout, then `POST /subscriptions/charge` and the periodic job; the sandbox's ledger is the
//! witness of what the processor received.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::accounts::{order_body, start_system, start_system_with_env, unique_token};
use tests::lifecycle::{DAY_MS, TestClock, charges_of, wait_for};
use tests::renewals::{
    charge_now, checkout, crash_mid_rebill, entries, events, of_type, processor_env,
    rebill_with_key, subscription,
};
use tests::sandbox::{self, start_sandbox};
use tests::{all_files, contains_bytes, temp_dir};

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
    assert_eq!(before["sequence"], 1, "the checkout's period");
    // `changed`: created (an instant); `begin`: that day's date (midnight UTC).
    let (begin, created) = (
        before["begin"].as_i64().unwrap_or(-1),
        before["changed"].as_i64().unwrap_or(-1),
    );
    assert!(
        begin % DAY_MS == 0 && (0..DAY_MS).contains(&(created - begin)),
        "changed: created, on the day of begin: {before}"
    );

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
    assert_eq!(after["sequence"], 2, "the renewal began the second period");
    let changed = after["changed"].as_i64().unwrap_or_default();
    assert!(
        changed > before["changed"].as_i64().unwrap_or(i64::MAX),
        "the charge changed it: {after}"
    );
    assert_eq!(after["changedValue"], changed);
    assert_eq!(after["changedInSeconds"], changed / 1000);

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
        // Retries pending: `overdue` (still `active: true`); after the last: `deactivated`.
        assert_eq!(
            s["state"],
            if retry_days.is_some() {
                "overdue"
            } else {
                "deactivated"
            }
        );
        assert_eq!(s["active"], retry_days.is_some());
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
    let mut ev = events(&sys, &sys.demo.store).await;
    ev.sort_by_key(|e| (e.created, e.id.to_string()));
    let order: Vec<(&str, Value)> = ev
        .iter()
        .filter(|e| {
            e.data["subscription"] == sub.as_str() && e.kind.contains("deactivated")
                || e.data["subscription"] == sub.as_str() && e.kind == "subscription.charge.failed"
        })
        .map(|e| (e.kind.as_str(), e.data["attempt"].clone()))
        .collect();
    assert_eq!(
        order,
        vec![
            ("subscription.charge.failed", json!(1)),
            ("subscription.charge.failed", json!(2)),
            ("subscription.charge.failed", json!(3)),
            ("subscription.charge.failed", json!(4)),
            ("subscription.deactivated", Value::Null),
        ],
        "the declines in order, then one deactivation"
    );
    let deactivated = of_type(&ev, "subscription.deactivated", &sub);
    assert_eq!(deactivated[0].data["state"], "deactivated", "the object");
    assert_eq!(deactivated[0].data["active"], false);
    assert_eq!(deactivated[0].data["reason"], "insufficient_funds");
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
    let env = processor_env(&sandbox, "1");
    let data = Arc::new(temp_dir("strongroom-crash-"));
    let sys = start_system_with_env(Arc::clone(&data), &env);
    assert_eq!(sys.processor, sandbox.url);
    let tok = unique_token();
    let (_, sub) = checkout(&sys, &tok, true).await;

    // Start the charge and crash both services while the processor is deciding it.
    let (key, next) = crash_mid_rebill(sys, &sub, &sandbox).await;

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
    // The resumed period is one rebill order, not two.
    let list = entries(&sys, &sub).await;
    assert_eq!(list.len(), 2, "the original order and one rebill: {list:?}");
    assert_eq!(list[1]["beginPeriodDate"], next);
    assert_eq!(list[1]["order"]["total"], 14.95);
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

#[tokio::test]
async fn a_rebill_retried_with_its_idempotency_key_gets_the_first_answer_and_charges_once() {
    let sys = start_system();
    let (_, sub) = checkout(&sys, &unique_token(), true).await;
    let body = json!({"subscriptions": [{"subscription": sub}]});
    let first = rebill_with_key(&sys, &body, "rebill-1").await;
    assert_eq!(
        first.json["subscription"][0]["result"], "success",
        "{}",
        first.text
    );
    let retry = rebill_with_key(&sys, &body, "rebill-1").await;
    assert_eq!(
        (retry.status, &retry.json),
        (first.status, &first.json),
        "the same answer"
    );
    // Without the key, the same request is a new rebill (refused: one per day).
    let fresh = charge_now(&sys, &sub).await;
    assert_eq!(fresh.json["subscription"][0]["result"], "error");
    let other = json!({"subscriptions": [{"subscription": "nope"}]});
    let reused = rebill_with_key(&sys, &other, "rebill-1").await;
    assert_eq!(
        reused.status.as_u16(),
        409,
        "a key reused for another body: {}",
        reused.text
    );
    let all = sandbox::charges(&sys.processor).await;
    assert_eq!(all["charges"].as_array().map(Vec::len), Some(1), "{all}");
}

/// The order objects of `entries` after the first (the rebills').
fn rebill_orders(entries: &[Value]) -> Vec<&Value> {
    entries.iter().skip(1).map(|e| &e["order"]).collect()
}

#[tokio::test]
async fn each_paid_period_is_an_order_in_the_entries_and_in_its_charge_event_and_a_replayed_rebill_makes_none()
 {
    use std::collections::BTreeSet;
    let clock = TestClock::new();
    let mut sys = clock.start_system("strongroom-rebill-orders-");
    let tok = unique_token();
    let (account, sub) = checkout(&sys, &tok, true).await;
    let (store, processor) = (sys.demo.store.clone(), sys.processor.clone());
    let s = subscription(&sys, &sub).await;
    let (original, next) = (s["order"].clone(), s["next"].as_i64().unwrap_or_default());
    let before = entries(&sys, &sub).await;
    assert_eq!(before.len(), 1, "the original order alone: {before:?}");
    assert_eq!(before[0]["order"]["id"], original);
    let reference = before[0]["order"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!reference.is_empty() && !reference.ends_with('B'));

    // Period 2: charged by the job at its date.
    clock.set(next + 3_600_000);
    let s = wait_for(&sys.merchant(&sys.demo), &sub, "the first renewal", |s| {
        s["next"].as_i64() > Some(next)
    })
    .await;
    let next2 = s["next"].as_i64().unwrap_or_default();
    // Period 3: charged on demand two days early under an Idempotency-Key; the request is then
    // replayed with the key, and retried without one (refused: one rebill a day).
    clock.set(next2 - 2 * DAY_MS);
    let body = json!({"subscriptions": [{"subscription": sub}]});
    let first = rebill_with_key(&sys, &body, "rebill-orders-3").await;
    assert_eq!(
        first.json["subscription"][0]["result"], "success",
        "{}",
        first.text
    );
    let replay = rebill_with_key(&sys, &body, "rebill-orders-3").await;
    assert_eq!((replay.status, &replay.json), (first.status, &first.json));
    let retry = charge_now(&sys, &sub).await;
    assert_eq!(retry.json["subscription"][0]["result"], "error");
    let s = subscription(&sys, &sub).await;
    assert_eq!(s["sequence"], 3, "{s}");
    let next3 = s["next"].as_i64().unwrap_or_default();
    assert_eq!(charges_of(&processor, &store, &sub).await.len(), 2);

    // Entries: the original order, then one order per rebill, oldest first.
    let list = entries(&sys, &sub).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["order"]["id"], original);
    let ids: BTreeSet<&str> = list
        .iter()
        .filter_map(|e| e["order"]["id"].as_str())
        .collect();
    let refs: BTreeSet<&str> = list
        .iter()
        .filter_map(|e| e["order"]["reference"].as_str())
        .collect();
    assert_eq!(
        (ids.len(), refs.len()),
        (3, 3),
        "distinct ids and references"
    );
    let periods: Vec<(&Value, &Value)> = list
        .iter()
        .map(|e| (&e["beginPeriodDate"], &e["endPeriodDate"]))
        .collect();
    assert_eq!(
        periods[1..],
        [
            (&json!(next), &json!(next2)),
            (&json!(next2), &json!(next3))
        ]
    );
    let rebills = rebill_orders(&list);
    assert_eq!(
        (&rebills[0]["reference"], &rebills[1]["reference"]),
        (
            &json!(format!("{reference}-1-2B")),
            &json!(format!("{reference}-1-3B"))
        )
    );

    // Each rebill order is an order of the account: read by id, listed, on the account.
    for o in &rebills {
        let id = o["id"].as_str().unwrap_or_default();
        let read = sys
            .call(&sys.demo, "GET", &format!("/orders/{id}"), None)
            .await;
        assert_eq!(read.status.as_u16(), 200, "{}", read.text);
        let r = &read.json;
        assert_eq!((&r["id"], &r["account"]), (&o["id"], &json!(account)));
        assert_eq!(
            (&r["total"], &r["currency"]),
            (&json!(14.95), &json!("USD"))
        );
        assert_eq!((&r["completed"], &r["live"]), (&json!(true), &s["live"]));
        assert_eq!(r["items"].as_array().map(Vec::len), Some(1));
        let item = &r["items"][0];
        assert_eq!(
            (
                &item["product"],
                &item["quantity"],
                &item["price"],
                &item["subscription"]
            ),
            (&json!("pro-plan"), &json!(1), &json!(14.95), &json!(sub))
        );
        assert_eq!(
            (&r["payment"]["creditCard"], &r["payment"]["cardEnding"]),
            (&json!("Visa"), &json!("4242"))
        );
        let mut as_entry = r.clone();
        if let Some(m) = as_entry.as_object_mut() {
            m.remove("action");
            m.remove("result");
        }
        assert_eq!(
            &&as_entry, o,
            "the entry shows the order as GET /orders/{{id}} does"
        );
    }
    let listed = sys.call(&sys.demo, "GET", "/orders?limit=50", None).await;
    assert_eq!(listed.status.as_u16(), 200, "{}", listed.text);
    let listed_ids: BTreeSet<&str> = listed.json["orders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(listed_ids, ids, "the store's orders are these three");
    let acct = sys
        .call(&sys.demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    let on_account: BTreeSet<&str> = acct.json["accounts"][0]["orders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(on_account, ids, "{}", acct.text);

    // Unknown ids and undeclared parameters answer in the envelope.
    let unknown = sys
        .call(
            &sys.demo,
            "GET",
            "/subscriptions/AAAAAAAAAAAAAAAAAAAAAA/entries",
            None,
        )
        .await;
    assert_eq!(unknown.status.as_u16(), 404, "{}", unknown.text);
    assert_eq!(unknown.json["result"], "error");
    let undeclared = sys
        .call(
            &sys.demo,
            "GET",
            &format!("/subscriptions/{sub}/entries?limit=5"),
            None,
        )
        .await;
    assert_eq!(undeclared.status.as_u16(), 422, "{}", undeclared.text);
    assert_eq!(undeclared.json["error"]["limit"], "Unrecognized Key");

    for text in [&first.text, &listed.text, &acct.text] {
        assert!(!text.contains(&tok));
    }
    assert!(!sys.logs().contains(&tok), "token in a log");
    sys.stop();

    // Each charge event carries its period's order, and no rebill sends `order.completed`.
    let ev = events(&sys, &store).await;
    let completed = of_type(&ev, "subscription.charge.completed", &sub);
    assert_eq!(completed.len(), 2);
    for (e, (o, sequence)) in completed.iter().zip(rebills.iter().zip([2, 3])) {
        assert_eq!(
            &e.data["order"], *o,
            "the charge event's order is the entry's"
        );
        assert_eq!(e.data["sequence"], sequence);
        assert!(!e.data.to_string().contains(&tok));
    }
    let order_completed: Vec<&Value> = ev
        .iter()
        .filter(|e| e.kind == "order.completed")
        .map(|e| &e.data["id"])
        .collect();
    assert_eq!(
        order_completed,
        [&original],
        "the checkout's order.completed only"
    );
}
