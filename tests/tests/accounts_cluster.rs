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
