//! Events, in process (`tests::inproc`; the real vault binary where a checkout saves a token):
//! the stream of a checkout (exactly one `account.created`, also under concurrent first orders),
//! each state change writing its event, and the pull API (`/events/unprocessed`,
//! `/events/processed`, `POST /events/{id}`), scoped per store.

use serde_json::{Value, json};
use tests::accounts::{Merchant, SaveBox, one_off_order, subscription_order};
use tests::inproc::{spawn_app, spawn_app_with_vault};

async fn unprocessed(store: &Merchant) -> Vec<Value> {
    let a = store.unprocessed_events(&[("begin", "0")]).await;
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
    let app = spawn_app_with_vault();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let demo = Merchant::clone(&app);
        tasks.push(tokio::spawn(async move {
            demo.complete_order(&subscription_order("race@example.com", SaveBox::Ticked))
                .await
        }));
    }
    let mut orders = Vec::new();
    for t in tasks {
        let a = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{}", a.text);
        orders.push(a.json["id"].as_str().unwrap_or_default().to_owned());
    }
    let events = unprocessed(&app).await;
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
    // FastSpring's events repeat their id as `event`, after the data.
    for ev in &events {
        assert!(ev["id"].is_string(), "{ev}");
        assert_eq!(ev["event"], ev["id"], "{ev}");
    }
    // Ids are unique and the list is oldest first.
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), events.len());
    let times: Vec<i64> = events
        .iter()
        .map(|e| e["created"].as_i64().unwrap_or(0))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1] + 5), "{times:?}");
    // `begin` filters by creation time.
    let later = app
        .unprocessed_events(&[("begin", &(started + 3_600_000).to_string())])
        .await;
    assert_eq!(later.json["events"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_state_change_writes_its_event() {
    let app = spawn_app_with_vault();
    let order = app
        .complete_order(&subscription_order("changes@example.com", SaveBox::Ticked))
        .await;
    assert_eq!(order.status, 200, "{}", order.text);
    let account = order.str("/account");
    let sub = order.str("/items/0/subscription");
    let upd = app
        .update_account(&account, &json!({"contact": {"phone": "+1 555 0100"}}))
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    let cancel = app.cancel_subscription(&sub).await;
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let resume = app.resume_subscription(&sub).await;
    assert_eq!(resume.status, 200, "{}", resume.text);
    // Uncancel is idempotent, as FastSpring's: the retry succeeds and changes nothing (no
    // second `subscription.uncanceled` below).
    let again = app.resume_subscription(&sub).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(app.get_subscription(&sub).await.json["state"], "active");
    let pm = app
        .payment_methods(&account)
        .await
        .str("/paymentMethods/0/id");
    let rm = app.remove_payment_method(&account, &pm).await;
    assert_eq!(rm.status, 200, "{}", rm.text);

    let events = unprocessed(&app).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        vec![
            "account.created",
            "order.completed",
            "subscription.activated",
            "account.updated",
            "subscription.canceled",
            "subscription.uncanceled",
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
    // account.updated carries the account as changed (FastSpring's data is the object).
    let updated = &of_type(&events, "account.updated")[0]["data"];
    assert_eq!(updated["id"], account.as_str());
    assert_eq!(updated["contact"]["phone"], "+1 555 0100");
    assert_eq!(updated["contact"]["email"], "changes@example.com");

    // A refused change writes no event: cancelling twice is a 409 and nothing more.
    let once = app.cancel_subscription(&sub).await;
    assert_eq!(once.status, 200, "{}", once.text);
    let again = app.cancel_subscription(&sub).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(
        of_type(&unprocessed(&app).await, "subscription.canceled").len(),
        2,
        "one more cancel succeeded, the refused one wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_an_event_processed_moves_it_to_the_processed_list_within_its_store_only() {
    let app = spawn_app();
    let order = app.complete_order(&one_off_order("pull@example.com")).await;
    assert_eq!(order.status, 200, "{}", order.text);
    let events = unprocessed(&app).await;
    assert_eq!(events.len(), 2);
    let id = events[0]["id"].as_str().unwrap_or_default().to_owned();

    // Another store sees neither the event nor can it mark it.
    let other = app.as_store(&app.create_store("Other").await);
    let foreign = other.unprocessed_events(&[("begin", "0")]).await;
    assert_eq!(foreign.json["events"].as_array().map(Vec::len), Some(0));
    let foreign = other.mark_event(&id, &json!({"processed": true})).await;
    assert_eq!(foreign.status, 404, "{}", foreign.text);

    let bad = app.mark_event(&id, &json!({"processed": "yes"})).await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    let unknown = app.mark_event("0000", &json!({"processed": true})).await;
    assert_eq!(unknown.status, 404);

    let mark = app.mark_event(&id, &json!({"processed": true})).await;
    assert_eq!(mark.status, 200, "{}", mark.text);
    let left = unprocessed(&app).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], id.as_str());
    let done = app.processed_events(&[("days", "1")]).await;
    assert_eq!(done.status, 200, "{}", done.text);
    let done = done.json["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["id"], id.as_str());
    assert_eq!(done[0]["processed"], true);
    let one = app.get_event(&id).await;
    assert_eq!(one.json["processed"], true);

    let unauth = tests::accounts::call(
        &app.http,
        &app.api,
        None,
        "GET",
        "/events/unprocessed",
        None,
        None,
    )
    .await;
    assert_eq!(unauth.status, 401);
}
