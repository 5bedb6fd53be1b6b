//! `accounts-api dev --database-url URL --instances 2` (issue 11): two vaults and two
//! accounts-api instances (plus the sandbox processor) on one throwaway PostgreSQL, with
//! requests alternating between the instances. Instance i talks to vault i, so these also show
//! the vaults sharing records and the charge ledger. Without PostgreSQL the tests print SKIPPED
//! (and fail under STRONGROOM_REQUIRE_TOOLS=1).

use reqwest::StatusCode;
use serde_json::json;
use tests::accounts::{
    Merchant, SaveBox, System, start_cluster, start_cluster_with_env, subscription_order,
};
use tests::lifecycle::{
    DAY_MS, TestClock, charges_of, some_job_runs, subscription_of,
    through_a_pause_to_its_resume_date, wait_for,
};
use tests::sandbox;

fn cluster() -> Option<System> {
    let url = pgtest::fresh_database()?;
    let sys = start_cluster(&url, 2);
    assert_eq!(sys.apis.len(), 2, "READY lists both instances");
    assert_eq!(sys.vaults.len(), 2, "READY lists both vaults");
    assert_eq!(sys.apis[0], sys.api, "api stays the first instance");
    assert_ne!(sys.vaults[0], sys.vaults[1]);
    Some(sys)
}

fn on(sys: &System, i: usize) -> Merchant {
    Merchant::new(&sys.http, &sys.apis[i], &sys.demo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_saved_through_one_instance_and_vault_shows_on_the_other() {
    let Some(sys) = cluster() else { return };
    let (a, b) = (on(&sys, 0), on(&sys, 1));
    // The demo store works on both.
    for m in [&a, &b] {
        assert_eq!(m.list_accounts(&[]).await.status, StatusCode::OK);
    }
    let order = b
        .complete_order(&subscription_order("card@example.com", SaveBox::Ticked))
        .await;
    assert_eq!(order.status, StatusCode::OK, "{}", order.text);
    let account = order.str("/account");
    // Saved through instance B and vault 2; listed through instance A, which asks vault 1.
    let methods = a.payment_methods(&account).await;
    assert_eq!(methods.status, StatusCode::OK, "{}", methods.text);
    assert!(methods.text.contains("4242"), "{}", methods.text);
    let sub = order.str("/items/0/subscription");
    let on_a = a.get_subscription(&sub).await;
    assert_eq!(on_a.status, StatusCode::OK, "{}", on_a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebill_sent_to_both_instances_at_once_charges_each_subscription_once() {
    let Some(sys) = cluster() else { return };
    let (a, b) = (on(&sys, 0), on(&sys, 1));
    let mut subs = Vec::new();
    for i in 0..12 {
        let m = if i % 2 == 0 { &a } else { &b };
        let o = m
            .complete_order(&subscription_order(
                &format!("rebill{i}@example.com"),
                SaveBox::Ticked,
            ))
            .await;
        assert_eq!(o.status, StatusCode::OK, "{}", o.text);
        subs.push(o.str("/items/0/subscription"));
    }
    let ledger = sandbox::charges(&sys.processor).await;
    let before = ledger["charges"].as_array().map(Vec::len).unwrap_or(0);
    let replays_before = ledger["replays"].as_u64().unwrap_or(0);
    // Each subscription charged on demand through both instances (and so both vaults) at once.
    let mut set = tokio::task::JoinSet::new();
    for sub in &subs {
        for m in [&a, &b] {
            let (m, sub) = (m.clone(), sub.clone());
            set.spawn(async move {
                let body = json!({"subscriptions": [{"subscription": sub}]});
                m.call("POST", "/subscriptions/charge", Some(&body)).await
            });
        }
    }
    while let Some(r) = set.join_next().await {
        let answer = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
    let all = sandbox::charges(&sys.processor).await;
    let after = all["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        after.len() - before,
        subs.len(),
        "one processor charge per subscription: {all}"
    );
    assert_eq!(
        all["replays"].as_u64().unwrap_or(0),
        replays_before,
        "no charge key reached the processor a second time: {all}"
    );
    assert_one_charge_each(&after, &subs);
    for sub in &subs {
        // Both instances see the subscription after the renewal.
        let s = b.get_subscription(sub).await;
        assert_eq!(s.status, StatusCode::OK, "{}", s.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn due_subscriptions_renewed_by_both_instances_jobs_are_charged_exactly_once_each() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    // Both instances' renewal jobs run every second, racing for the same due subscriptions.
    let sys = start_cluster_with_env(&url, 2, &[("STRONGROOM_RENEWALS_INTERVAL_SECS", "1")]);
    let n = 200;
    let subs = saved_card_subscriptions(&sys, n, "due").await;
    let before = charge_count(&sys).await;
    let due = make_all_due(&url, n);
    wait_for_charges(&sys, before + n, 90).await;
    // Both jobs keep running a while longer: nothing is charged twice.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let all = sandbox::charges(&sys.processor).await;
    let charges = all["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        charges.len() - before,
        n,
        "exactly one charge per due subscription"
    );
    assert_eq!(all["replays"].as_u64().unwrap_or(0), 0, "{all}");
    assert_one_charge_each(&charges, &subs);
    // Each advanced one period, seen from either instance.
    let s = on(&sys, 1).get_subscription(&subs[0]).await;
    assert!(
        s.json["next"].as_i64().unwrap_or_default() > due,
        "{}",
        s.text
    );
}

/// `n` checkouts of a monthly subscription with a saved card, alternating between the two
/// instances; the subscription ids.
async fn saved_card_subscriptions(sys: &System, n: usize, prefix: &str) -> Vec<String> {
    let mut subs = Vec::new();
    for i in 0..n {
        let o = on(sys, i % 2)
            .complete_order(&subscription_order(
                &format!("{prefix}{i}@example.com"),
                SaveBox::Ticked,
            ))
            .await;
        assert_eq!(o.status, StatusCode::OK, "{}", o.text);
        subs.push(o.str("/items/0/subscription"));
    }
    subs
}

/// Every subscription of `subs` has exactly one charge (by its idempotency key) in `charges`.
fn assert_one_charge_each(charges: &[serde_json::Value], subs: &[String]) {
    for sub in subs {
        let mine = charges
            .iter()
            .filter(|c| {
                c["idempotencyKey"]
                    .as_str()
                    .is_some_and(|k| k.contains(sub.as_str()))
            })
            .count();
        assert_eq!(mine, 1, "{sub}");
    }
}

/// How many charges the sandbox processor received so far.
async fn charge_count(sys: &System) -> usize {
    sandbox::charges(&sys.processor).await["charges"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

/// A month passes for every subscription of the database at once: their next charge date is
/// now in the past (the row's `next` and its indexed `work_at`). Returns that date.
fn make_all_due(url: &str, n: usize) -> i64 {
    let server = pgtest::require().unwrap_or_else(|| panic!("the server runs"));
    let db = url.rsplit('/').next().unwrap_or_default();
    let due = chrono_free_now_ms() - 1000;
    let changed = server
        .psql_in(
            db,
            &format!(
                "WITH u AS (UPDATE subscriptions SET work_at = {due}, \
                 doc = jsonb_set(doc, '{{next}}', to_jsonb({due}::bigint)) RETURNING 1) \
                 SELECT count(*) FROM u"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(changed, n.to_string());
    due
}

/// Waits until the sandbox holds `total` charges.
async fn wait_for_charges(sys: &System, total: usize, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let all = sandbox::charges(&sys.processor).await;
        let count = all["charges"].as_array().map(Vec::len).unwrap_or(0);
        if count >= total {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} of {total} charges in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn chrono_free_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_an_instance_was_charging_when_killed_are_finished_once_by_the_other() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    // Slow charges (1.5 s at the processor) and a short renewal lease, so instance 2 can be
    // killed with charges in flight and instance 1 takes them over within seconds.
    let sys = start_cluster_with_env(
        &url,
        2,
        &[
            ("STRONGROOM_RENEWALS_INTERVAL_SECS", "1"),
            ("STRONGROOM_RENEWAL_LEASE_MS", "3000"),
            ("SANDBOX_CHARGE_DELAY_MS", "1500"),
        ],
    );
    assert_eq!(sys.api_pids.len(), 2);
    // More due subscriptions than one job run charges at once (32), so both instances' jobs
    // hold intents at the same time.
    let n = 80;
    let subs = saved_card_subscriptions(&sys, n, "kill").await;
    let before = charge_count(&sys).await;
    make_all_due(&url, n);
    // Wait until both instances hold charge intents in flight, then kill -9 instance 2.
    let server = pgtest::require().unwrap_or_else(|| panic!("the server runs"));
    let db = url.rsplit('/').next().unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let holders = server
            .psql_in(
                db,
                "SELECT count(DISTINCT doc -> 'renewal' -> 'lease' ->> 'holder') FROM subscriptions \
                 WHERE doc -> 'renewal' -> 'pending' <> 'null'::jsonb",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        if holders == "2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both instances never charged at once"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &sys.api_pids[1].to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    // Instance 1 finishes everything, including the intents instance 2 held.
    wait_for_charges(&sys, before + n, 90).await;
    let a = on(&sys, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for sub in &subs {
        loop {
            let s = a.get_subscription(sub).await;
            assert_eq!(s.status, StatusCode::OK, "{}", s.text);
            let pending = server
                .psql_in(
                    db,
                    &format!(
                        "SELECT doc -> 'renewal' -> 'pending' = 'null'::jsonb \
                         OR NOT (doc -> 'renewal' ? 'pending') FROM subscriptions \
                         WHERE id = '{sub}'"
                    ),
                )
                .unwrap_or_else(|e| panic!("{e}"));
            if pending == "t" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{sub} still pending");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let all = sandbox::charges(&sys.processor).await;
    let charges = all["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        charges.len() - before,
        n,
        "exactly one charge per subscription: {all}"
    );
    assert_one_charge_each(&charges, &subs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_the_vault_refuses_is_final_deactivates_and_never_reaches_the_processor() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let sys = start_cluster(&url, 1);
    let a = on(&sys, 0);
    let sub = saved_card_subscriptions(&sys, 1, "refused").await.remove(0);
    // An amount the vault refuses to charge (above its limit), as a subscription written before
    // checkout refused such amounts would have.
    let server = pgtest::require().unwrap_or_else(|| panic!("the server runs"));
    let db = url.rsplit('/').next().unwrap_or_default();
    let changed = server
        .psql_in(
            db,
            &format!(
                "WITH u AS (UPDATE subscriptions SET doc = jsonb_set(doc, '{{price}}', \
                 '200000000') WHERE id = '{sub}' RETURNING 1) SELECT count(*) FROM u"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(changed, "1");
    let before = charge_count(&sys).await;
    let body = json!({"subscriptions": [{"subscription": sub}]});
    let first = a.call("POST", "/subscriptions/charge", Some(&body)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(
        first.json["subscription"][0]["error"]["subscription"], "VAULT_REJECTED",
        "{}",
        first.text
    );
    // Final: deactivated at once, not retried on the next run or the next rebill.
    let s = a.get_subscription(&sub).await;
    assert_eq!(s.json["state"], "deactivated", "{}", s.text);
    assert_eq!(s.json["active"], false, "{}", s.text);
    let again = a.call("POST", "/subscriptions/charge", Some(&body)).await;
    assert_eq!(
        again.json["subscription"][0]["error"]["subscription"], "SUBSCRIPTION_NOT_ACTIVE",
        "{}",
        again.text
    );
    assert_eq!(
        charge_count(&sys).await,
        before,
        "the processor was never called"
    );
    let events = a.unprocessed_events(&[("begin", "0")]).await;
    let count = |kind: &str| {
        events.json["events"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|e| e["type"] == kind && e["data"]["subscription"] == sub.as_str())
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(count("subscription.charge.failed"), 1, "{}", events.text);
    assert_eq!(count("subscription.deactivated"), 1, "{}", events.text);
}

// ---------------------------------------------------------------------------------------------
// The subscription lifecycle on PostgreSQL (issue 13): both instances' renewal jobs run every
// second on one dev clock (`tests::lifecycle`), racing for the same time-driven transitions.

/// The events of `kind` about `sub`, processed or not, as the store's event API lists them (all
/// of them: `more` must be false).
async fn events_of(m: &Merchant, kind: &str, sub: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for list in [
        m.unprocessed_events(&[("begin", "0")]).await,
        m.processed_events(&[("begin", "0")]).await,
    ] {
        assert_eq!(list.status, StatusCode::OK, "{}", list.text);
        assert_eq!(list.json["more"], false, "one page holds them all");
        let all = list.json["events"].as_array().cloned().unwrap_or_default();
        found.extend(
            all.into_iter()
                .filter(|e| e["type"] == kind && e["data"]["subscription"] == sub),
        );
    }
    found
}

/// A cluster of 2 on a fresh database, both instances on one dev clock, their renewal jobs
/// running every second; `None` (SKIPPED) without PostgreSQL.
fn lifecycle_cluster() -> Option<(TestClock, System)> {
    let url = pgtest::fresh_database()?;
    let clock = TestClock::new();
    let sys = clock.start_cluster(&url, 2);
    assert_eq!(sys.apis.len(), 2);
    Some((clock, sys))
}

/// One saved-card monthly subscription checked out through `m`; its id and `next`.
async fn one_subscription(m: &Merchant, email: &str) -> (String, i64) {
    let o = m
        .complete_order(&subscription_order(email, SaveBox::Ticked))
        .await;
    assert_eq!(o.status, StatusCode::OK, "{}", o.text);
    let sub = o.str("/items/0/subscription");
    let next = subscription_of(m, &sub).await["next"]
        .as_i64()
        .unwrap_or_default();
    assert!(next > 0, "{sub}");
    (sub, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_cluster_a_subscription_canceled_at_period_end_deactivates_once_and_billing_period_0_ends_one_now()
 {
    let Some((clock, sys)) = lifecycle_cluster() else {
        return;
    };
    let (a, b) = (on(&sys, 0), on(&sys, 1));
    let (sub, next) = one_subscription(&a, "cancel-end@example.com").await;
    let (now_sub, _) = one_subscription(&b, "cancel-now@example.com").await;

    // Canceled through instance 2: it runs until the paid period ends, seen from either.
    let c = b.cancel_subscription(&sub).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    for m in [&a, &b] {
        let s = subscription_of(m, &sub).await;
        assert_eq!(
            (&s["state"], &s["active"]),
            (&json!("canceled"), &json!(true))
        );
        assert_eq!(s["deactivationDate"], next, "it ends with the paid period");
    }

    // A day before the period ends both jobs have run on the moved clock: still running.
    clock.set(next - DAY_MS);
    some_job_runs().await;
    for m in [&a, &b] {
        let s = subscription_of(m, &sub).await;
        assert_eq!(
            (&s["state"], &s["active"]),
            (&json!("canceled"), &json!(true))
        );
    }

    // Cancel now through instance 2, which reads the same clock: deactivated at once, at the
    // moved "now" (a month ahead of the system clock).
    let path = format!("/subscriptions/{now_sub}?billingPeriod=0");
    let c = b.call("DELETE", &path, None).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    let s = subscription_of(&a, &now_sub).await;
    assert_eq!(
        (&s["state"], &s["active"]),
        (&json!("deactivated"), &json!(false))
    );
    let ended = s["deactivationDate"].as_i64().unwrap_or_default();
    assert!(
        ended >= next - DAY_MS && ended < next,
        "instance 2 deactivated it on the dev clock: {s}"
    );
    assert_eq!(s["changed"], ended, "{s}");

    // The period ends: one of the two jobs deactivates it; both keep running afterwards.
    clock.set(next + 60_000);
    let s = wait_for(&b, &sub, "deactivated at period end", |s| {
        s["state"] == "deactivated"
    })
    .await;
    assert_eq!(s["active"], false);
    assert!(s["deactivationDate"].as_i64() >= Some(next), "{s}");
    some_job_runs().await;
    for s in [&sub, &now_sub] {
        assert!(
            charges_of(&sys.processor, &sys.demo.store, s)
                .await
                .is_empty(),
            "{s} never charged"
        );
        let d = events_of(&a, "subscription.deactivated", s).await;
        assert_eq!(d.len(), 1, "exactly one deactivation of {s}: {d:?}");
        assert_eq!(d[0]["data"]["reason"], "canceled");
        assert_eq!(d[0]["data"]["active"], false);
        assert_eq!(d[0]["data"]["state"], "deactivated");
        assert_eq!(events_of(&a, "subscription.canceled", s).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_cluster_a_pause_of_1_period_is_not_charged_in_it_and_charged_once_on_the_resume_date()
 {
    use accounts_api::model::{IntervalUnit, add_interval};
    let Some((clock, sys)) = lifecycle_cluster() else {
        return;
    };
    let (a, b) = (on(&sys, 0), on(&sys, 1));
    let (sub, next) = one_subscription(&a, "pause@example.com").await;
    let path = format!("/subscriptions/{sub}/pause");
    let p = b
        .call("POST", &path, Some(&json!({"pausePeriodCount": 1})))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(
        (&p.json["state"], &p.json["isPauseScheduled"]),
        (&json!("active"), &json!(true))
    );

    // The charge date: the pause begins instead of a charge; `next` is the resume date.
    let resume = add_interval(next, IntervalUnit::Month, 1);
    clock.set(next + 3_600_000);
    let s = wait_for(&a, &sub, "paused at the charge date", |s| {
        s["state"] == "paused"
    })
    .await;
    assert_eq!((&s["next"], &s["active"]), (&json!(resume), &json!(true)));

    // Through the paused period no charge; on the resume date charged once, both jobs running.
    through_a_pause_to_its_resume_date(&clock, &b, &sys.processor, &sub, resume).await;
    for (kind, n) in [
        ("subscription.updated", 1),
        ("subscription.paused", 1),
        ("subscription.resumed", 1),
        ("subscription.charge.completed", 1),
    ] {
        assert_eq!(events_of(&a, kind, &sub).await.len(), n, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_cluster_a_paid_renewal_writes_one_rebill_order_that_every_instance_reads() {
    let Some((clock, sys)) = lifecycle_cluster() else {
        return;
    };
    let (a, b) = (on(&sys, 0), on(&sys, 1));
    let (sub, next) = one_subscription(&a, "rebill@example.com").await;
    let original = subscription_of(&a, &sub).await["order"].clone();
    let entries = |m: &Merchant| {
        let (m, path) = (m.clone(), format!("/subscriptions/{sub}/entries"));
        async move {
            let e = m.call("GET", &path, None).await;
            assert_eq!(e.status, StatusCode::OK, "{}", e.text);
            e.json.as_array().cloned().unwrap_or_default()
        }
    };
    let first = entries(&b).await;
    assert_eq!(first.len(), 1, "the original order alone: {first:?}");
    let reference = first[0]["order"]["reference"].clone();

    // The date passes with both instances' jobs running: the period is charged once, and its
    // rebill order is written once, in the same transaction.
    clock.set(next + 3_600_000);
    let s = wait_for(&a, &sub, "the first renewal", |s| {
        s["next"].as_i64() > Some(next)
    })
    .await;
    assert_eq!(s["sequence"], 2, "{s}");
    some_job_runs().await;
    let store = a.creds.store.as_str();
    assert_eq!(charges_of(&sys.processor, store, &sub).await.len(), 1);

    // Both instances list the same two entries; the rebill is an order either one reads.
    let (on_a, on_b) = (entries(&a).await, entries(&b).await);
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    assert_eq!(on_a[0]["order"]["id"], original);
    let rebill = &on_a[1]["order"];
    assert_eq!(
        rebill["reference"],
        format!("{}-1-2B", reference.as_str().unwrap_or_default())
    );
    assert_eq!(
        (&on_a[1]["beginPeriodDate"], &on_a[1]["endPeriodDate"]),
        (&json!(next), &s["next"])
    );
    let id = rebill["id"].as_str().unwrap_or_default();
    for m in [&a, &b] {
        let read = m.call("GET", &format!("/orders/{id}"), None).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text);
        assert_eq!(
            (&read.json["id"], &read.json["total"]),
            (&json!(id), &json!(14.95))
        );
    }

    // One charge event, carrying that order; no order.completed for a rebill.
    let completed = events_of(&b, "subscription.charge.completed", &sub).await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(
        (
            &completed[0]["data"]["order"]["id"],
            &completed[0]["data"]["sequence"]
        ),
        (&json!(id), &json!(2))
    );
    let mut completed_orders = Vec::new();
    for list in [
        a.unprocessed_events(&[("begin", "0")]).await,
        a.processed_events(&[("begin", "0")]).await,
    ] {
        assert_eq!(list.status, StatusCode::OK, "{}", list.text);
        let all = list.json["events"].as_array().cloned().unwrap_or_default();
        completed_orders.extend(
            all.into_iter()
                .filter(|e| e["type"] == "order.completed")
                .map(|e| e["data"]["id"].clone()),
        );
    }
    assert!(completed_orders.contains(&original), "{completed_orders:?}");
    assert!(
        !completed_orders.contains(&json!(id)),
        "a rebill is not a completed checkout"
    );
}
