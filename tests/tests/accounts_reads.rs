//! FastSpring's reads and filters (issue 13, part 3), in process (`tests::inproc`): the order
//! listing pages through every order exactly once; multi-id reads answer every id, with an error
//! item for an unknown one; each `/subscriptions` filter and each event range changes the
//! answer; a query parameter a route does not declare is a 422 naming it.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use tests::accounts::{Merchant, SaveBox, one_off_order, subscription_order};
use tests::inproc::spawn_app;

/// A well-formed id that names nothing.
const UNKNOWN: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// `yyyy-mm-dd` of today (UTC) plus `days`.
fn day(days: i64) -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(days);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The same day as `M/D/YY`, as FastSpring's order listings show dates.
fn day_us(days: i64) -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(days);
    format!("{}/{}/{:02}", u8::from(d.month()), d.day(), d.year() % 100)
}

fn total(a: &tests::accounts::Answer) -> u64 {
    assert_eq!(a.status, 200, "{}", a.text);
    a.json["total"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_by_date_range_page_through_250_orders_exactly_once_each() {
    let app = spawn_app();
    // 250 one-off orders, 8 at a time (so many share a millisecond); every 5th is an add-on.
    let merchant: Merchant = (*app).clone();
    let mut created = BTreeSet::new();
    let mut addons = BTreeSet::new();
    for batch in 0..32 {
        let mut set = tokio::task::JoinSet::new();
        for i in (batch * 8)..((batch + 1) * 8).min(250) {
            let m = merchant.clone();
            set.spawn(async move {
                let mut body = one_off_order(&format!("page{i}@example.com"));
                if i % 5 == 0 {
                    body["items"][0]["product"] = json!("add-on");
                }
                let a = m.complete_order(&body).await;
                assert_eq!(a.status, 200, "{}", a.text);
                (a.str("/id"), i % 5 == 0)
            });
        }
        while let Some(r) = set.join_next().await {
            let (id, addon) = r.unwrap_or_else(|e| panic!("{e}"));
            if addon {
                addons.insert(id.clone());
            }
            created.insert(id);
        }
    }
    assert_eq!(created.len(), 250);

    let (begin, end) = (day(-1), day(2));
    let mut seen = Vec::new();
    let mut last_changed = 0;
    let mut page = 1;
    loop {
        let a = app
            .list_orders(&[
                ("begin", &begin),
                ("end", &end),
                ("limit", "17"),
                ("page", &page.to_string()),
            ])
            .await;
        assert_eq!(total(&a), 250);
        assert_eq!(a.json["action"], "order.lookup");
        assert_eq!(a.json["result"], "success");
        assert_eq!(
            (a.json["page"].as_u64(), a.json["limit"].as_u64()),
            (Some(page), Some(17))
        );
        assert_eq!(a.json["begin"], begin.as_str());
        let orders = a.json["orders"].as_array().cloned().unwrap_or_default();
        assert!(!orders.is_empty() && orders.len() <= 17);
        for o in &orders {
            let changed = o["changed"].as_i64().unwrap_or_default();
            assert!(changed >= last_changed, "by completion time");
            last_changed = changed;
            assert!(o.get("action").is_none(), "listed orders carry no action");
            seen.push(o["id"].as_str().unwrap_or_default().to_owned());
        }
        match a.json["nextPage"].as_u64() {
            Some(n) => {
                assert_eq!(n, page + 1);
                page = n;
            }
            None => break,
        }
    }
    assert_eq!(page, 15, "250 / 17 rounded up");
    assert_eq!(seen.len(), 250, "no order twice");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), created);

    // Each range and filter changes the answer.
    let us = app
        .list_orders(&[("begin", &day_us(-1)), ("end", &day_us(2))])
        .await;
    assert_eq!(total(&us), 250, "M/D/YY reads as yyyy-mm-dd");
    assert_eq!(
        us.json["orders"].as_array().map(Vec::len),
        Some(50),
        "limit 50 by default"
    );
    let later = app
        .list_orders(&[("begin", &day(1)), ("end", &day(2))])
        .await;
    assert_eq!(total(&later), 0);
    assert_eq!(later.json["nextPage"], Value::Null);
    assert_eq!(
        total(&app.list_orders(&[("end", &day(0))]).await),
        0,
        "end's day excluded"
    );
    assert_eq!(total(&app.list_orders(&[("end", &day(1))]).await), 250);
    let addon = app
        .list_orders(&[("products", "add-on"), ("limit", "1000")])
        .await;
    assert_eq!(total(&addon), 50);
    let ids: BTreeSet<String> = addon.json["orders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, addons);
    let both = app
        .list_orders(&[
            ("products", "add-on,pro-plan"),
            ("begin", &begin),
            ("end", &end),
        ])
        .await;
    assert_eq!(total(&both), 250);
    assert_eq!(total(&app.list_orders(&[("returns", "true")]).await), 0);
    assert_eq!(total(&app.list_orders(&[("returns", "false")]).await), 250);

    // Refusals name the field.
    let bad = app.list_orders(&[("begin", "2024-13-01")]).await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert_eq!(bad.json["error"]["begin"], "Invalid begin date");
    let reversed = app
        .list_orders(&[("begin", &day(1)), ("end", &day(1))])
        .await;
    assert_eq!(reversed.status, 422);
    assert_eq!(
        reversed.json["error"]["end"],
        "End date must be after begin date"
    );
    let typo = app.list_orders(&[("product", "add-on")]).await;
    assert_eq!(typo.status, 422, "{}", typo.text);
    assert_eq!(typo.json["action"], "order.lookup");
    assert_eq!(typo.json["error"]["product"], "Unrecognized Key");

    // Another store lists none of them.
    let other = app.as_store(&app.create_store("Other").await);
    assert_eq!(total(&other.list_orders(&[]).await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_id_reads_answer_every_found_id_and_an_error_for_an_unknown_one() {
    let app = spawn_app();
    let mut orders = Vec::new();
    for i in 0..2 {
        let o = app
            .complete_order(&subscription_order(
                &format!("multi{i}@example.com"),
                SaveBox::Unticked,
            ))
            .await;
        assert_eq!(o.status, 200, "{}", o.text);
        orders.push(o);
    }
    let (o1, o2) = (orders[0].str("/id"), orders[1].str("/id"));
    let (s1, s2) = (
        orders[0].str("/items/0/subscription"),
        orders[1].str("/items/0/subscription"),
    );
    let (a1, a2) = (orders[0].str("/account"), orders[1].str("/account"));

    // One id: the answer it always had.
    let one = app.get_order(&o1).await;
    assert_eq!(one.status, 200);
    assert_eq!(
        (one.str("/id"), one.str("/action")),
        (o1.clone(), "order.get".to_owned())
    );

    let many = app.get_order(&format!("{o1},{UNKNOWN},{o2}")).await;
    assert_eq!(many.status, 200, "{}", many.text);
    let list = many.json["orders"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["id"], o1.as_str());
    assert_eq!(list[0]["result"], "success");
    assert_eq!(
        list[1],
        json!({"action": "order.get", "order": UNKNOWN, "result": "error",
            "error": {"order": "Not found"}})
    );
    assert_eq!(list[2]["id"], o2.as_str());
    let none = app
        .get_order(&format!("{UNKNOWN},BBBBBBBBBBBBBBBBBBBBBB"))
        .await;
    assert_eq!(none.status, 404, "{}", none.text);
    assert_eq!(none.json["orders"].as_array().map(Vec::len), Some(2));

    let one = app.get_subscription(&s1).await;
    assert_eq!((one.status.as_u16(), one.str("/id")), (200, s1.clone()));
    let many = app.get_subscription(&format!("{s1},{UNKNOWN},{s2}")).await;
    assert_eq!(many.status, 200, "{}", many.text);
    let list = many.json["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["id"], s1.as_str());
    assert_eq!(
        list[1],
        json!({"subscription": UNKNOWN, "action": "subscription.get", "result": "error",
            "error": {"subscription": "Subscription not found"}})
    );
    assert_eq!(list[2]["id"], s2.as_str());
    assert_eq!(list[2]["state"], "active");

    let links = app
        .call(
            "GET",
            &format!("/accounts/{a1},{UNKNOWN},{a2}/authenticate"),
            None,
        )
        .await;
    assert_eq!(links.status, 200, "{}", links.text);
    let list = links.json["accounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["account"], a1.as_str());
    assert!(
        list[0]["url"]
            .as_str()
            .unwrap_or_default()
            .contains("/account/sso/")
    );
    assert_eq!(list[1]["error"]["account"], "Not found");
    assert_eq!(list[1]["account"], UNKNOWN);
    assert_eq!(list[2]["account"], a2.as_str());
    assert_ne!(list[0]["url"], list[2]["url"], "a link per account");

    // Another store's ids are unknown ones there.
    let other = app.as_store(&app.create_store("Other").await);
    let foreign = other.get_subscription(&format!("{s1},{s2}")).await;
    assert_eq!(foreign.status, 404, "{}", foreign.text);
}

/// A query as `(name, value)` pairs.
type Query<'a> = Vec<(&'a str, String)>;

/// The ids of a `GET /subscriptions` page.
fn sub_ids(a: &tests::accounts::Answer) -> BTreeSet<String> {
    assert_eq!(a.status, 200, "{}", a.text);
    a.json["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().or_else(|| v["id"].as_str()).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_filter_and_each_event_range_changes_the_answer() {
    let app = spawn_app();
    let started = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 1000;
    let mut subs = Vec::new();
    let mut accounts = Vec::new();
    for (i, product) in ["pro-plan", "pro-plan", "team-plan"].iter().enumerate() {
        let mut body = subscription_order(&format!("filter{i}@example.com"), SaveBox::Unticked);
        body["items"][0]["product"] = json!(product);
        let o = app.complete_order(&body).await;
        assert_eq!(o.status, 200, "{}", o.text);
        subs.push(o.str("/items/0/subscription"));
        accounts.push(o.str("/account"));
    }
    let canceled = app.cancel_subscription(&subs[1]).await;
    assert_eq!(canceled.status, 200, "{}", canceled.text);

    let all: BTreeSet<String> = subs.iter().cloned().collect();
    assert_eq!(sub_ids(&app.list_subscriptions(&[]).await), all);
    let set = |ids: &[&String]| ids.iter().map(|s| (*s).clone()).collect::<BTreeSet<_>>();
    let cases: Vec<(Query, BTreeSet<String>)> = vec![
        (vec![("products", "team-plan".into())], set(&[&subs[2]])),
        (vec![("status", "canceled".into())], set(&[&subs[1]])),
        (
            vec![("status", "active,deactivated".into())],
            set(&[&subs[0], &subs[2]]),
        ),
        (vec![("scope", "live".into())], BTreeSet::new()),
        (vec![("begin", day(1))], BTreeSet::new()),
        (vec![("end", day(0))], BTreeSet::new()),
        (vec![("event", "canceled".into())], set(&[&subs[1]])),
        (
            vec![("event", "canceled".into()), ("begin", day(1))],
            BTreeSet::new(),
        ),
        (vec![("event", "charged".into())], BTreeSet::new()),
        (
            vec![("products", "pro-plan".into()), ("status", "active".into())],
            set(&[&subs[0]]),
        ),
    ];
    for (query, expected) in &cases {
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = app.list_subscriptions(&q).await;
        assert_eq!(&sub_ids(&got), expected, "{query:?}");
        assert_ne!(&all, expected, "{query:?} changes the answer");
    }
    // Filters that keep everything, as a control.
    for q in [
        vec![("scope", "test".to_owned())],
        vec![("begin", day(-1)), ("end", day(1))],
        vec![("products", "pro-plan,team-plan".to_owned())],
    ] {
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(sub_ids(&app.list_subscriptions(&q).await), all, "{q:?}");
    }
    // With accountId the answer is the account's objects, filtered the same way.
    let mine = app
        .list_subscriptions(&[("accountId", &accounts[1]), ("status", "active")])
        .await;
    assert_eq!(
        mine.json["subscriptions"].as_array().map(Vec::len),
        Some(0),
        "{}",
        mine.text
    );
    let mine = app
        .list_subscriptions(&[("accountId", &accounts[1]), ("status", "canceled")])
        .await;
    assert_eq!(sub_ids(&mine), set(&[&subs[1]]));
    for (k, v) in [
        ("status", "paused-ish"),
        ("scope", "sandbox"),
        ("event", "born"),
    ] {
        let bad = app.list_subscriptions(&[(k, v)]).await;
        assert_eq!(bad.status, 422, "{k}: {}", bad.text);
        assert!(bad.json["error"][k].is_string(), "{k}: {}", bad.text);
    }
    let typo = app.list_subscriptions(&[("product", "team-plan")]).await;
    assert_eq!(typo.status, 422);
    assert_eq!(typo.json["action"], "subscription.getall");
    assert_eq!(typo.json["error"]["product"], "Unrecognized Key");

    // Event ranges: begin, end and days each change the answer, on both lists.
    let count = |a: tests::accounts::Answer| {
        assert_eq!(a.status, 200, "{}", a.text);
        a.json["events"].as_array().map_or(0, Vec::len)
    };
    let now = started + 1000;
    let everything = count(app.unprocessed_events(&[]).await);
    assert!(
        everything >= 7,
        "3 orders, 3 accounts, 1 cancel: {everything}"
    );
    let s = |t: i64| t.to_string();
    assert_eq!(
        count(app.unprocessed_events(&[("end", &s(started))]).await),
        0
    );
    assert_eq!(
        count(
            app.unprocessed_events(&[("begin", &s(now + 3_600_000))])
                .await
        ),
        0
    );
    assert_eq!(
        count(app.unprocessed_events(&[("days", "1")]).await),
        everything
    );
    let first = app.unprocessed_events(&[("limit", "1")]).await;
    let first_created = first.json["events"][0]["created"]
        .as_i64()
        .unwrap_or_default();
    let before_first = count(
        app.unprocessed_events(&[("end", &s(first_created + 1))])
            .await,
    );
    assert!(
        before_first >= 1,
        "the oldest event is before its own creation + 1 ms"
    );

    let id = first.json["events"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mark = app.mark_event(&id, &json!({"processed": true})).await;
    assert_eq!(mark.status, 200, "{}", mark.text);
    assert_eq!(count(app.processed_events(&[]).await), 1);
    assert_eq!(count(app.processed_events(&[("days", "1")]).await), 1);
    assert_eq!(
        count(app.processed_events(&[("end", &s(started))]).await),
        0
    );
    assert_eq!(
        count(
            app.processed_events(&[("begin", &s(now + 3_600_000))])
                .await
        ),
        0
    );
    assert_eq!(
        count(
            app.processed_events(&[("begin", "0"), ("end", &s(now + 3_600_000))])
                .await
        ),
        1
    );
    let bad = app.processed_events(&[("end", "soon")]).await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json["error"]["end"], "Can not parse end.");
    let typo = app.unprocessed_events(&[("since", "0")]).await;
    assert_eq!(typo.status, 422);
    assert_eq!(typo.json["error"]["since"], "Unrecognized Key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_query_parameter_is_a_422_naming_it_on_every_kind_of_route() {
    let app = spawn_app();
    let o = app.complete_order(&one_off_order("typo@example.com")).await;
    assert_eq!(o.status, 200, "{}", o.text);
    let (order, account) = (o.str("/id"), o.str("/account"));
    for (method, path, action) in [
        ("GET", format!("/orders/{order}?expand=1"), "order.get"),
        (
            "GET",
            format!("/accounts/{account}?expand=1"),
            "account.get",
        ),
        ("GET", "/accounts?expand=1".to_owned(), "account.lookup"),
        (
            "POST",
            format!("/accounts/{account}?expand=1"),
            "account.update",
        ),
        ("GET", "/webhooks?expand=1".to_owned(), ""),
    ] {
        let body = (method == "POST").then(|| json!({"contact": {"phone": "+1 555"}}));
        let a = app.call(method, &path, body.as_ref()).await;
        assert_eq!(a.status, 422, "{method} {path}: {}", a.text);
        assert_eq!(
            a.json["error"]["expand"], "Unrecognized Key",
            "{method} {path}"
        );
        if !action.is_empty() {
            assert_eq!(a.json["action"], action, "{method} {path}");
        }
    }
    // The refused update changed nothing.
    let after = app.get_account(&account).await;
    assert_ne!(after.json["accounts"][0]["contact"]["phone"], "+1 555");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriptions_entries_are_its_original_order_and_another_stores_id_is_a_404() {
    let app = spawn_app();
    let o = app
        .complete_order(&subscription_order(
            "entries@example.com",
            SaveBox::Unticked,
        ))
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let sub = o.str("/items/0/subscription");
    let s = app.get_subscription(&sub).await;
    let path = format!("/subscriptions/{sub}/entries");
    let e = app.call("GET", &path, None).await;
    assert_eq!(e.status, 200, "{}", e.text);
    let list = e.json.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "the original order alone: {}", e.text);
    assert_eq!(
        (&list[0]["order"]["id"], &list[0]["order"]["reference"]),
        (&o.json["id"], &o.json["reference"])
    );
    assert_eq!(
        (&list[0]["beginPeriodDate"], &list[0]["endPeriodDate"]),
        (&s.json["begin"], &s.json["next"]),
        "the first period"
    );
    assert!(list[0]["order"].get("action").is_none());

    // An unknown id, and this store's subscription asked by another store: 404 in the envelope.
    let other = app.as_store(&app.create_store("Other").await);
    for (who, path) in [
        (&*app, format!("/subscriptions/{UNKNOWN}/entries")),
        (&other, path.clone()),
    ] {
        let a = who.call("GET", &path, None).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text);
        assert_eq!(
            (&a.json["result"], &a.json["error"]["subscription"]),
            (&json!("error"), &json!("Subscription not found")),
            "{path}"
        );
    }
}
