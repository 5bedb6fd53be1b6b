//! The subscription lifecycle end to end on `accounts-api dev` (issue 13): cancel at period end
//! and now, a cancel during a vault outage, a renewal that may have reached the processor, and
//! pauses. Split from `renewals.rs` (it had grown past 900 lines); the helpers are shared
//! through `tests::renewals` and `tests::lifecycle`.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::accounts::{System, start_system_with_env, unique_token};
use tests::lifecycle::{
    DAY_MS, TestClock, charges_of, some_job_runs, still_running_at,
    through_a_pause_to_its_resume_date, wait_for,
};
use tests::renewals::{
    charge_now, checkout, crash_mid_rebill, events, of_type, processor_env, subscription,
};
use tests::sandbox::{self, start_sandbox};
use tests::temp_dir;

const MONTH_MS_MIN: i64 = 28 * 86_400_000;

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
    still_running_at(&clock, &m, &sub, next - DAY_MS, "canceled").await;

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
async fn an_unpaid_manual_subscription_is_reminded_then_overdue_at_its_date_then_ends_after_the_grace_never_charged()
 {
    let clock = TestClock::new();
    let mut sys = clock.start_system("strongroom-manual-");
    let m = sys.merchant(&sys.demo);
    // Consent box shown and not ticked: no saved card, the renewal is manual.
    let (_, sub) = checkout(&sys, &unique_token(), false).await;
    let created = subscription(&sys, &sub).await;
    assert_eq!(created["autoRenew"], false);
    let (begin, next) = (
        created["begin"].as_i64().unwrap_or(1),
        created["next"].as_i64().unwrap_or(1),
    );
    // FastSpring's `begin` and `next` are dates: midnight UTC of the purchase day, and of the
    // day one interval later.
    assert_eq!((begin % DAY_MS, next % DAY_MS), (0, 0), "{created}");
    let today = accounts_api::model::now_ms();
    assert!(begin <= today && today - begin < DAY_MS, "{created}");
    assert!(next - begin >= MONTH_MS_MIN, "{created}");

    // Two days before its date: reminded, still running.
    still_running_at(&clock, &m, &sub, next - 2 * DAY_MS, "active").await;

    // Its date passes unpaid: overdue (still active), with its next date unchanged.
    clock.set(next + 60_000);
    let s = wait_for(&m, &sub, "overdue at its date", |s| s["state"] == "overdue").await;
    assert_eq!((&s["active"], &s["next"]), (&json!(true), &json!(next)));
    assert!(
        s["changed"].as_i64() >= Some(next),
        "the change is dated: {s}"
    );

    // A day before the grace ends it is still overdue; at the end it is deactivated.
    clock.set(next + 4 * DAY_MS);
    some_job_runs().await;
    assert_eq!(subscription(&sys, &sub).await["state"], "overdue");
    clock.set(next + 5 * DAY_MS + 60_000);
    let s = wait_for(&m, &sub, "ended after the grace", |s| {
        s["state"] == "deactivated"
    })
    .await;
    assert_eq!(s["active"], false);
    some_job_runs().await;
    let store = sys.demo.store.clone();
    assert!(
        charges_of(&sys.processor, &store, &sub).await.is_empty(),
        "a manual subscription is never charged"
    );
    sys.stop();

    // One event for each step, in order.
    let ev = events(&sys, &store).await;
    let mut mine: Vec<_> = ev
        .iter()
        .filter(|e| e.data["subscription"] == sub.as_str() && e.kind != "subscription.activated")
        .collect();
    mine.sort_by_key(|e| e.created);
    let steps: Vec<&str> = mine.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        steps,
        [
            "subscription.payment.reminder",
            "subscription.payment.overdue",
            "subscription.deactivated",
        ]
    );
    let overdue = of_type(&ev, "subscription.payment.overdue", &sub);
    assert_eq!(
        (&overdue[0].data["state"], &overdue[0].data["id"]),
        (&json!("overdue"), &json!(sub))
    );
    let ended = of_type(&ev, "subscription.deactivated", &sub);
    assert_eq!(
        (&ended[0].data["reason"], &ended[0].data["active"]),
        (&json!("not_paid"), &json!(false))
    );
}
