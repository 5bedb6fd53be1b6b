//! Renewals end to end: `accounts-api dev` (which starts the vault and the sandbox processor),
//! checkout, then `POST /subscriptions/charge` and the periodic job; the sandbox's ledger is the
//! witness of what the processor received.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::accounts::{System, order_body, start_system, start_system_with_env, unique_token};
use tests::lifecycle::{
    DAY_MS, TestClock, charges_of, some_job_runs, through_a_pause_to_its_resume_date, wait_for,
};
use tests::renewals::{
    charge_now, checkout, entries, events, of_type, rebill_with_key, subscription,
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
    assert_eq!(before["changed"], before["begin"], "changed: created");

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

/// The environment of a system whose vault charges through `sandbox` (which outlives the
/// system), with the renewal job every `interval` seconds (`0`: on demand only).
fn processor_env<'a>(sandbox: &'a sandbox::Sandbox, interval: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("VAULT_PROCESSOR_URL", sandbox.url.as_str()),
        ("VAULT_PROCESSOR_SECRET_KEY", sandbox::SECRET),
        ("STRONGROOM_RENEWALS_INTERVAL_SECS", interval),
    ]
}

/// Sends a rebill of `sub` and kills accounts-api and the vault (SIGKILL) 1.5 s later, while
/// the processor (`sandbox`, started with `--delay-ms 3000`, outliving the system) is deciding
/// it; waits until the processor has it. Returns the period's processor key and `next` then.
async fn crash_mid_rebill(mut sys: System, sub: &str, sandbox: &sandbox::Sandbox) -> (String, i64) {
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
    (key, next)
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

// ---------------------------------------------------------------------------------------------
// The subscription lifecycle (issue 13): time moves through `accounts-api dev`'s test clock
// (`tests::lifecycle`), never by sleeping through a period.

/// `POST /subscriptions/{sub}/pause` with `body`.
async fn pause(sys: &System, sub: &str, body: &Value) -> tests::accounts::Answer {
    let path = format!("/subscriptions/{sub}/pause");
    sys.call(&sys.demo, "POST", &path, Some(body)).await
}

#[tokio::test]
async fn a_subscription_canceled_at_period_end_runs_until_then_and_deactivates_once_and_billing_period_0_ends_one_now()
 {
    let clock = TestClock::new();
    let mut sys = clock.start_system("strongroom-cancel-");
    let m = sys.merchant(&sys.demo);
    let (_, sub) = checkout(&sys, &unique_token(), true).await;
    let (_, now_sub) = checkout(&sys, &unique_token(), true).await;
    let created = subscription(&sys, &sub).await;
    let next = created["next"].as_i64().unwrap_or_default();

    let c = sys
        .call(&sys.demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(c.status.as_u16(), 200, "{}", c.text);
    let s = subscription(&sys, &sub).await;
    assert_eq!(
        (&s["state"], &s["active"]),
        (&json!("canceled"), &json!(true))
    );
    assert_eq!(s["deactivationDate"], next, "it ends with the paid period");
    assert_eq!(s["changed"], s["canceledDate"], "the cancel changed it");
    assert!(s["changed"].as_i64() > created["changed"].as_i64(), "{s}");
    assert_eq!(s["sequence"], 1, "a cancel starts no period");

    // Cancel now: deactivated at once.
    let bad = sys
        .call(
            &sys.demo,
            "DELETE",
            &format!("/subscriptions/{now_sub}?billingPeriod=2"),
            None,
        )
        .await;
    assert_eq!(bad.status.as_u16(), 422, "{}", bad.text);
    assert_eq!(
        subscription(&sys, &now_sub).await["state"],
        "active",
        "nothing changed"
    );
    let c = sys
        .call(
            &sys.demo,
            "DELETE",
            &format!("/subscriptions/{now_sub}?billingPeriod=0"),
            None,
        )
        .await;
    assert_eq!(c.status.as_u16(), 200, "{}", c.text);
    let s = subscription(&sys, &now_sub).await;
    assert_eq!(
        (&s["state"], &s["active"]),
        (&json!("deactivated"), &json!(false))
    );

    // A day before the period ends it still runs.
    clock.set(next - DAY_MS);
    some_job_runs().await;
    let s = subscription(&sys, &sub).await;
    assert_eq!(
        (&s["state"], &s["active"]),
        (&json!("canceled"), &json!(true))
    );

    // At the end of the period the job deactivates it.
    clock.set(next + 60_000);
    let s = wait_for(&m, &sub, "deactivated at period end", |s| {
        s["state"] == "deactivated"
    })
    .await;
    assert_eq!(s["active"], false);
    assert_eq!(
        s["deactivationDate"].as_i64().map(|d| d >= next),
        Some(true)
    );
    assert_eq!(
        s["changed"], s["deactivationDate"],
        "the deactivation changed it"
    );
    some_job_runs().await;
    let (store, processor) = (sys.demo.store.clone(), sys.processor.clone());
    for s in [&sub, &now_sub] {
        assert!(
            charges_of(&processor, &store, s).await.is_empty(),
            "never charged"
        );
    }
    sys.stop();
    let ev = events(&sys, &store).await;
    for s in [&sub, &now_sub] {
        let d = of_type(&ev, "subscription.deactivated", s);
        assert_eq!(d.len(), 1, "exactly one deactivation of {s}");
        assert_eq!(d[0].data["reason"], "canceled");
        assert_eq!(d[0].data["active"], false);
        assert_eq!(of_type(&ev, "subscription.canceled", s).len(), 1);
    }
}

#[tokio::test]
async fn a_rebill_that_failed_while_the_vault_was_down_is_dropped_when_the_customer_cancels_and_never_charged()
 {
    let sandbox = start_sandbox(&[]);
    let env = processor_env(&sandbox, "1");
    let data = Arc::new(temp_dir("strongroom-outage-cancel-"));
    let mut sys = start_system_with_env(Arc::clone(&data), &env);
    let (_, sub) = checkout(&sys, &unique_token(), true).await;
    let store = sys.demo.store.clone();

    // The vault goes away; the rebill records its intent and fails before reaching it. Only
    // once nothing accepts connections at the vault's address: a request that got in while it
    // was dying may have reached it, and such an intent is (rightly) finished, not dropped.
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(sys.vault_pid.to_string())
        .status();
    let vault: std::net::SocketAddr = sys.vault_addr.parse().unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(vault).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the vault still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = charge_now(&sys, &sub).await;
    assert_eq!(
        a.json["subscription"][0]["error"]["subscription"], "VAULT_UNAVAILABLE",
        "{}",
        a.text
    );
    // The customer cancels meanwhile.
    let c = sys
        .call(&sys.demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(c.status.as_u16(), 200, "{}", c.text);
    sys.stop();
    drop(sys);

    // The vault is back (the whole system restarts on the same data): no charge, ever.
    let mut sys = start_system_with_env(Arc::clone(&data), &env);
    let a = charge_now(&sys, &sub).await;
    assert_eq!(
        a.json["subscription"][0]["error"]["subscription"], "SUBSCRIPTION_NOT_ACTIVE",
        "{}",
        a.text
    );
    some_job_runs().await;
    assert!(
        charges_of(&sandbox.url, &store, &sub).await.is_empty(),
        "the processor never saw a charge: {}",
        sandbox::charges(&sandbox.url).await
    );
    assert_eq!(subscription(&sys, &sub).await["state"], "canceled");
    sys.stop();
    let ev = events(&sys, &store).await;
    let dropped = of_type(&ev, "subscription.charge.canceled", &sub);
    assert_eq!(
        dropped.len(),
        1,
        "an event says the pending charge was dropped"
    );
    assert_eq!(dropped[0].data["reason"], "subscription_canceled");
    assert!(of_type(&ev, "subscription.charge.completed", &sub).is_empty());
}

#[tokio::test]
async fn a_renewal_that_may_have_reached_the_processor_is_finished_once_with_its_key_even_after_a_cancel()
 {
    // The processor decides each charge after 3 s; both services are killed while it decides.
    let sandbox = start_sandbox(&["--delay-ms", "3000"]);
    // No periodic job (`0`): only the calls below act.
    let env = processor_env(&sandbox, "0");
    let data = Arc::new(temp_dir("strongroom-reached-cancel-"));
    let sys = start_system_with_env(Arc::clone(&data), &env);
    let (_, sub) = checkout(&sys, &unique_token(), true).await;
    let store = sys.demo.store.clone();
    let (key, next) = crash_mid_rebill(sys, &sub, &sandbox).await;

    // The customer cancels before the intent is finished: it may have been charged, so it is
    // not dropped; the next rebill finishes it with the same key — one processor charge.
    let mut sys = start_system_with_env(Arc::clone(&data), &env);
    let c = sys
        .call(&sys.demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(c.status.as_u16(), 200, "{}", c.text);
    let a = charge_now(&sys, &sub).await;
    assert_eq!(a.json["subscription"][0]["result"], "success", "{}", a.text);
    let s = subscription(&sys, &sub).await;
    assert_eq!(s["state"], "canceled", "still canceled");
    assert!(
        s["next"].as_i64().unwrap_or_default() - next >= MONTH_MS_MIN,
        "the paid period counts: {s}"
    );
    let again = charge_now(&sys, &sub).await;
    assert_eq!(
        again.json["subscription"][0]["error"]["subscription"],
        "SUBSCRIPTION_NOT_ACTIVE"
    );
    assert_eq!(sandbox::charges_with_key(&sandbox.url, &key).await.len(), 1);
    assert_eq!(
        charges_of(&sandbox.url, &store, &sub).await.len(),
        1,
        "exactly one charge"
    );
    sys.stop();
    let ev = events(&sys, &store).await;
    assert_eq!(of_type(&ev, "subscription.charge.completed", &sub).len(), 1);
    assert!(of_type(&ev, "subscription.charge.canceled", &sub).is_empty());
}

#[tokio::test]
async fn a_pause_of_2_periods_skips_them_and_charges_on_the_resume_date_and_resume_ends_a_pause_early()
 {
    use accounts_api::model::{IntervalUnit, add_interval};
    let clock = TestClock::new();
    let mut sys = clock.start_system("strongroom-pause-");
    let m = sys.merchant(&sys.demo);
    let (_, sub) = checkout(&sys, &unique_token(), true).await;
    let (_, early) = checkout(&sys, &unique_token(), true).await;
    let (store, processor) = (sys.demo.store.clone(), sys.processor.clone());
    let next = subscription(&sys, &sub).await["next"]
        .as_i64()
        .unwrap_or_default();

    for bad in [
        json!({}),
        json!({"pausePeriodCount": 0}),
        json!({"pausePeriodCount": 13}),
        json!({"pausePeriodCount": 2, "extra": 1}),
    ] {
        let a = pause(&sys, &sub, &bad).await;
        assert_eq!(a.status.as_u16(), 422, "{bad}: {}", a.text);
    }
    let a = pause(&sys, &sub, &json!({"pausePeriodCount": 2})).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);
    assert_eq!(
        (&a.json["state"], &a.json["isPauseScheduled"]),
        (&json!("active"), &json!(true))
    );
    let a = pause(&sys, &early, &json!({"pausePeriodCount": 3})).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);

    // The charge date: no charge, the pause begins; `next` is the resume date.
    let resume = add_interval(
        add_interval(next, IntervalUnit::Month, 1),
        IntervalUnit::Month,
        1,
    );
    clock.set(next + 3_600_000);
    let s = wait_for(&m, &sub, "paused at the charge date", |s| {
        s["state"] == "paused"
    })
    .await;
    assert_eq!((&s["next"], &s["active"]), (&json!(resume), &json!(true)));
    wait_for(&m, &early, "paused", |s| s["state"] == "paused").await;

    // Resume early: active at once, and charged now.
    let a = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/subscriptions/{early}/resume"),
            None,
        )
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);
    assert_eq!(a.json["state"], "active");
    let deadline = Instant::now() + Duration::from_secs(20);
    while charges_of(&processor, &store, &early).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the early resume was never charged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/subscriptions/{early}/resume"),
            None,
        )
        .await;
    assert_eq!(
        again.status.as_u16(),
        409,
        "not paused any more: {}",
        again.text
    );

    // Through both paused periods no charge; on the resume date charged for that period, once.
    through_a_pause_to_its_resume_date(&clock, &m, &processor, &sub, resume).await;
    sys.stop();
    let ev = events(&sys, &store).await;
    assert_eq!(of_type(&ev, "subscription.paused", &sub).len(), 1);
    assert_eq!(of_type(&ev, "subscription.resumed", &sub).len(), 1);
    assert_eq!(of_type(&ev, "subscription.resumed", &early).len(), 1);
    assert_eq!(
        of_type(&ev, "subscription.updated", &sub).len(),
        1,
        "the pause scheduled"
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
