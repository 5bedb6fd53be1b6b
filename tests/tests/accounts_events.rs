//! Events against the real binaries: the stream of a checkout (exactly one `account.created`,
//! also under concurrent first orders), each state change writing its event, and the pull API
//! (`/events/unprocessed`, `/events/processed`, `POST /events/{id}`), scoped per store.

use serde_json::{Value, json};
use tests::accounts::{System, create_store, order_body, start_system, unique_token};

async fn unprocessed(sys: &System) -> Vec<Value> {
    let a = sys
        .call(&sys.demo, "GET", "/events/unprocessed?begin=0", None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["action"], "events.get");
    assert_eq!(a.json["result"], "success");
    a.json["events"].as_array().cloned().unwrap_or_default()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_orders_emit_exactly_one_account_created_and_one_order_completed_each() {
    let sys = start_system();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (http, api, demo) = (sys.http.clone(), sys.api.clone(), sys.demo.clone());
        tasks.push(tokio::spawn(async move {
            tests::accounts::call(
                &http,
                &api,
                Some(&demo),
                "POST",
                "/orders",
                Some(&order_body(
                    "race@example.com",
                    &unique_token(),
                    true,
                    true,
                    true,
                )),
                None,
            )
            .await
        }));
    }
    let mut orders = Vec::new();
    for t in tasks {
        let a = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{}", a.text);
        orders.push(a.json["id"].as_str().unwrap_or_default().to_owned());
    }
    let events = unprocessed(&sys).await;
    let created = of_type(&events, "account.created");
    assert_eq!(
        created.len(),
        1,
        "one account, one account.created: {events:#?}"
    );
    let completed = of_type(&events, "order.completed");
    assert_eq!(completed.len(), 12, "one order.completed per order");
    for o in &orders {
        assert_eq!(
            completed
                .iter()
                .filter(|e| e["data"]["order"] == o.as_str())
                .count(),
            1,
            "order {o} has exactly one order.completed"
        );
    }
    assert_eq!(of_type(&events, "subscription.activated").len(), 12);
    // FastSpring's event shape.
    let e = created[0];
    for k in ["id", "type", "created", "live", "processed", "data"] {
        assert!(e.get(k).is_some(), "{k} missing in {e}");
    }
    assert_eq!(e["processed"], false);
    // The data is the object itself, as FastSpring sends it.
    assert_eq!(e["data"]["contact"]["email"], "race@example.com");
    assert_eq!(completed[0]["data"]["completed"], true);
    assert!(completed[0]["data"]["reference"].is_string());
    assert_eq!(completed[0]["data"]["payment"]["cardEnding"], "4242");
    let activated = of_type(&events, "subscription.activated");
    assert_eq!(activated[0]["data"]["state"], "active");
    assert!(
        !events.iter().any(|e| e.to_string().contains("tok_test_")),
        "no token in any event"
    );
    assert_eq!(e["live"], false);
    assert!(e["created"].as_i64().unwrap_or_default() >= started - 1000);
    // Ids are unique and the list is oldest first.
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), events.len());
    let times: Vec<i64> = events
        .iter()
        .map(|e| e["created"].as_i64().unwrap_or(0))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1] + 5), "{times:?}");
    // `begin` filters by creation time.
    let later = sys
        .call(
            &sys.demo,
            "GET",
            &format!("/events/unprocessed?begin={}", started + 3_600_000),
            None,
        )
        .await;
    assert_eq!(later.json["events"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_state_change_writes_its_event() {
    let sys = start_system();
    let demo = sys.demo.clone();
    let order = sys.subscribe(&demo, "changes@example.com").await;
    let account = order["account"].as_str().unwrap_or_default().to_owned();
    let sub = order["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let upd = sys
        .call(
            &demo,
            "POST",
            &format!("/accounts/{account}"),
            Some(&json!({"contact": {"phone": "+1 555 0100"}})),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    let cancel = sys
        .call(&demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let resume = sys
        .call(
            &demo,
            "POST",
            &format!("/subscriptions/{sub}"),
            Some(&json!({"subscriptions": [{"subscription": sub, "deactivation": null}]})),
        )
        .await;
    assert_eq!(resume.status, 200, "{}", resume.text);
    let pms = sys
        .call(
            &demo,
            "GET",
            &format!("/accounts/{account}/payment-methods"),
            None,
        )
        .await;
    let pm = pms.json["paymentMethods"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rm = sys
        .call(
            &demo,
            "DELETE",
            &format!("/accounts/{account}/payment-methods/{pm}"),
            None,
        )
        .await;
    assert_eq!(rm.status, 200, "{}", rm.text);

    let events = unprocessed(&sys).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        vec![
            "account.created",
            "order.completed",
            "subscription.activated",
            "account.updated",
            "subscription.canceled",
            "subscription.resumed",
            "payment-method.removed",
        ]
    );
    assert_eq!(
        of_type(&events, "subscription.canceled")[0]["data"]["subscription"],
        sub.as_str()
    );
    assert_eq!(
        of_type(&events, "payment-method.removed")[0]["data"]["paymentMethod"],
        pm.as_str()
    );

    // A refused change writes no event: cancelling twice is a 409 and nothing more.
    let once = sys
        .call(&demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(once.status, 200, "{}", once.text);
    let again = sys
        .call(&demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(
        of_type(&unprocessed(&sys).await, "subscription.canceled").len(),
        2,
        "one more cancel succeeded, the refused one wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_an_event_processed_moves_it_to_the_processed_list_within_its_store_only() {
    let sys = start_system();
    let demo = sys.demo.clone();
    let order = sys
        .call(
            &demo,
            "POST",
            "/orders",
            Some(&order_body(
                "pull@example.com",
                &unique_token(),
                false,
                false,
                false,
            )),
        )
        .await;
    assert_eq!(order.status, 200, "{}", order.text);
    let events = unprocessed(&sys).await;
    assert_eq!(events.len(), 2);
    let id = events[0]["id"].as_str().unwrap_or_default().to_owned();

    // Another store sees neither the event nor can it mark it.
    let other = create_store(sys.data.path(), "Other");
    let foreign = sys
        .call(&other, "GET", "/events/unprocessed?begin=0", None)
        .await;
    assert_eq!(foreign.json["events"].as_array().map(Vec::len), Some(0));
    let foreign = sys
        .call(
            &other,
            "POST",
            &format!("/events/{id}"),
            Some(&json!({"processed": true})),
        )
        .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text);

    let bad = sys
        .call(
            &demo,
            "POST",
            &format!("/events/{id}"),
            Some(&json!({"processed": "yes"})),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    let unknown = sys
        .call(
            &demo,
            "POST",
            "/events/0000",
            Some(&json!({"processed": true})),
        )
        .await;
    assert_eq!(unknown.status, 404);

    let mark = sys
        .call(
            &demo,
            "POST",
            &format!("/events/{id}"),
            Some(&json!({"processed": true})),
        )
        .await;
    assert_eq!(mark.status, 200, "{}", mark.text);
    let left = unprocessed(&sys).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], id.as_str());
    let done = sys
        .call(&demo, "GET", "/events/processed?days=1", None)
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    let done = done.json["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["id"], id.as_str());
    assert_eq!(done[0]["processed"], true);
    let one = sys.call(&demo, "GET", &format!("/events/{id}"), None).await;
    assert_eq!(one.json["processed"], true);

    let unauth = tests::accounts::call(
        &sys.http,
        &sys.api,
        None,
        "GET",
        "/events/unprocessed",
        None,
        None,
    )
    .await;
    assert_eq!(unauth.status, 401);
}
