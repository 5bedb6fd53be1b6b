//! Retention (issue 12 part 4) end to end, on `accounts-api dev`'s clock
//! (`STRONGROOM_DEV_CLOCK_FILE`: an offset in ms added to the system clock; the retention
//! sweeper takes its cut-offs from it and sweeps as soon as it moved a minute). Time moves by
//! writing the offset, never by sleeping through a window; each step waits for the sweep that
//! the move triggers (`accounts_api_retention_sweeps_total`) before it looks.

use std::sync::Arc;
use std::time::Duration;
use tests::accounts::{Merchant, System, one_off_order, start_system_with_env};
use tests::temp_dir;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The value of a metric series (`name` or `name{labels}` exactly), 0 when absent.
async fn metric(sys: &System, series: &str) -> f64 {
    let page = sys
        .http
        .get(format!("{}/metrics", sys.api))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .or_else(|| l.strip_prefix(&format!("{series}{{}} ")))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the sweeper has run at least `n` sweeps in all; returns how many it ran.
async fn swept(sys: &System, n: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = metric(sys, "accounts_api_retention_sweeps_total").await;
        if got >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweep {n} did not run ({got} so far)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idempotency_answers_and_processed_events_expire_on_the_clock_while_unprocessed_events_stay()
 {
    let clock_dir = temp_dir("strongroom-retention-clock-");
    let clock = clock_dir.path().join("offset-ms");
    let set =
        |offset: i64| std::fs::write(&clock, offset.to_string()).unwrap_or_else(|e| panic!("{e}"));
    set(0);
    let sys = start_system_with_env(
        Arc::new(temp_dir("strongroom-retention-")),
        &[(
            "STRONGROOM_DEV_CLOCK_FILE",
            clock.to_str().unwrap_or_default(),
        )],
    );
    let store: Merchant = sys.merchant(&sys.demo);
    // The sweep at start; from here on (the test takes well under a minute) only a move of the
    // clock makes another.
    let mut sweeps = swept(&sys, 1.0).await;

    let body = one_off_order("retained@example.com");
    let keyed = store.with_key("retention-key-1");
    let first = keyed.complete_order(&body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let order = first.str("/id");
    assert!(!order.is_empty(), "{}", first.text);
    let events = store.unprocessed_events(&[("begin", "0")]).await;
    let find = |kind: &str| -> String {
        events.json["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == kind)
            .and_then(|e| e["id"].as_str())
            .unwrap_or_else(|| panic!("no {kind} in {}", events.text))
            .to_owned()
    };
    let (processed, unprocessed) = (find("account.created"), find("order.completed"));
    let mark = store
        .mark_event(&processed, &serde_json::json!({"processed": true}))
        .await;
    assert_eq!(mark.status, 200, "{}", mark.text);

    // 23 hours on: inside the 24 h window, the retry gets the first answer.
    set(23 * HOUR_MS);
    sweeps = swept(&sys, sweeps + 1.0).await;
    let retry = keyed.complete_order(&body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(
        retry
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "a replay inside the window"
    );
    assert_eq!(retry.str("/id"), order);

    // 25 hours on: the key's record is gone, the same request under it is a new order.
    set(25 * HOUR_MS);
    sweeps = swept(&sys, sweeps + 1.0).await;
    assert!(
        metric(
            &sys,
            "accounts_api_retention_swept_total{kind=\"idempotency_keys\"}"
        )
        .await
            >= 1.0
    );
    let again = keyed.complete_order(&body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert!(
        again.headers.get("idempotent-replayed").is_none(),
        "executed again: {:?}",
        again.headers
    );
    assert_ne!(again.str("/id"), order, "a new order");
    assert_eq!(
        store.get_event(&processed).await.status,
        200,
        "30 days not over"
    );

    // 31 days on: the processed event is gone, the unprocessed one (older still) stays.
    set(31 * DAY_MS);
    swept(&sys, sweeps + 1.0).await;
    assert!(metric(&sys, "accounts_api_retention_swept_total{kind=\"events\"}").await >= 1.0);
    let gone = store.get_event(&processed).await;
    assert_eq!(gone.status, 404, "{}", gone.text);
    let kept = store.get_event(&unprocessed).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(kept.json["processed"], false, "{}", kept.text);
}
