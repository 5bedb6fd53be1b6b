//! The merchant API, in process (`tests::inproc`: the real router on 127.0.0.1:0; the real
//! vault binary where a checkout saves a token): accounts CRUD, lookups, pagination,
//! subscriptions, idempotency, and every kind of bad input.

use serde_json::{Value, json};
use tests::accounts::{SaveBox, one_off_order, order_body, subscription_order, unique_token};
use tests::inproc::{App, spawn_app, spawn_app_with_vault};

fn account_body(email: &str) -> Value {
    json!({"contact": {"first": "Leeroy", "last": "Jenkins", "email": email, "company": "ABC",
        "phone": "+1254789654"}, "language": "en", "country": "US",
        "address": {"addressLine1": "801 Garden St", "city": "Santa Barbara", "region": "CA",
        "postalCode": "93101"}})
}

/// `POST /accounts` as the demo store, which must succeed; the new account's id.
async fn new_account(app: &App, body: &Value) -> String {
    let a = app.create_account(body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["action"], "account.create");
    a.str("/account")
}

async fn account_total(app: &App) -> u64 {
    let all = app.list_accounts(&[]).await;
    assert_eq!(all.status, 200, "{}", all.text);
    all.json["total"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_created_read_and_partially_updated() {
    let app = spawn_app();
    let mut body = account_body("leeroy@example.com");
    body["lookup"] = json!({"custom": "cust-0001"});
    let id = new_account(&app, &body).await;
    let got = app.get_account(&id).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..]),
        "personal data is not cached"
    );
    assert_eq!(
        got.headers
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..]),
        "nor read as anything but JSON"
    );
    let missing = app.get_account("AaJRpxUqdLCLGE4PT6DK5w").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..]),
        "nor is an error answer"
    );
    assert_eq!(
        missing
            .headers
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    let a = &got.json["accounts"][0];
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["account"], id.as_str());
    assert_eq!(a["result"], "success");
    assert_eq!(a["contact"]["first"], "Leeroy");
    assert_eq!(a["address"]["city"], "Santa Barbara");
    assert_eq!(a["lookup"]["custom"], "cust-0001");
    assert!(a["lookup"]["global"].is_string());
    assert_eq!(a["payment"], json!({"methods": 0, "active": 0}));
    for k in ["orders", "subscriptions", "charges"] {
        assert!(a[k].is_array(), "{k}");
    }
    assert_eq!(a["subscribed"], false);
    // The account's `url` leads to a working page: without a session, how to sign in.
    let page = app
        .http
        .get(format!("{}{}", app.api, a["url"].as_str().unwrap_or("?")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.status().as_u16(), 401, "the sign-in page, not a 404");
    let html = page.text().await.unwrap_or_default();
    assert!(html.contains("sign-in link"), "{html}");

    // Only the phone and the city change; everything else stays.
    let upd = app
        .update_account(
            &id,
            &json!({"contact": {"phone": "+44 1234"}, "address": {"city": "Goleta"}}),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    let got = app.get_account(&id).await;
    let a = &got.json["accounts"][0];
    assert_eq!(a["contact"]["phone"], "+44 1234");
    assert_eq!(a["contact"]["first"], "Leeroy");
    assert_eq!(a["contact"]["email"], "leeroy@example.com");
    assert_eq!(a["address"]["city"], "Goleta");
    assert_eq!(a["address"]["addressLine1"], "801 Garden St");
    assert_eq!(a["country"], "US");
    assert_eq!(a["lookup"]["custom"], "cust-0001");

    // A new email moves the lookup with it.
    let upd = app
        .update_account(&id, &json!({"contact": {"email": "new@example.com"}}))
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    assert_eq!(app.lookup("email", "new@example.com").await.status, 200);
    assert_eq!(app.lookup("email", "leeroy@example.com").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_find_the_account_by_every_filter() {
    let app = spawn_app();
    let mut body = account_body("find.me@example.com");
    body["lookup"] = json!({"custom": "crm_42"});
    let id = new_account(&app, &body).await;
    new_account(&app, &account_body("someone.else@example.com")).await;
    let mut order = subscription_order("ignored@example.com", SaveBox::Unticked);
    order["account"] = json!(id);
    let o = app.complete_order(&order).await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(
        o.json["account"],
        id.as_str(),
        "a pre-created account id is used as given"
    );
    let global = app.get_account(&id).await.str("/accounts/0/lookup/global");
    let filters = [
        ("email", "FIND.ME@example.com".to_owned()),
        ("custom", "crm_42".to_owned()),
        ("global", global),
        ("orderId", o.str("/id")),
        ("orderReference", o.str("/reference")),
        ("subscriptionId", o.str("/items/0/subscription")),
    ];
    for (f, v) in &filters {
        let a = app.lookup(f, v).await;
        assert_eq!(a.status, 200, "{f}: {}", a.text);
        assert_eq!(a.json["accounts"][0]["id"], id.as_str(), "{f}");
        assert_eq!(a.json["action"], "account.lookup");
    }
    let miss = app.lookup("custom", "nobody").await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.json["error"]["custom"], "Account not found");
    let two = app
        .list_accounts(&[("email", "a@b.co"), ("custom", "crm_42")])
        .await;
    assert_eq!(two.status, 422);
    // Another store's filters find nothing.
    let other = app.as_store(&app.create_store("Other").await);
    assert_eq!(other.lookup("custom", "crm_42").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_without_a_filter_pages_through_account_ids() {
    let app = spawn_app();
    let mut created = std::collections::BTreeSet::new();
    for i in 0..7 {
        created.insert(new_account(&app, &account_body(&format!("p{i}@example.com"))).await);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut page = 1;
    loop {
        let a = app
            .list_accounts(&[("limit", "3"), ("page", &page.to_string())])
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json["total"], 7);
        let ids = a.json["accounts"].as_array().cloned().unwrap_or_default();
        assert!(ids.len() <= 3);
        seen.extend(ids.iter().filter_map(Value::as_str).map(str::to_owned));
        match a.json["nextPage"].as_u64() {
            Some(n) => {
                assert_eq!(n, page + 1);
                page = n;
            }
            None => break,
        }
    }
    assert_eq!(page, 3);
    assert_eq!(seen, created);
    let default = app.list_accounts(&[]).await;
    assert_eq!(default.json["limit"], 50);
    assert_eq!(app.list_accounts(&[("limit", "0")]).await.status, 422);
    assert_eq!(app.list_accounts(&[("page", "x")]).await.status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_account_field_is_a_422_naming_it_and_nothing_is_written() {
    let app = spawn_app();
    let long = "x".repeat(256);
    let cases: Vec<(&str, Value)> = vec![
        (
            "first",
            json!({"contact": {"last": "L", "email": "a@example.com"}}),
        ),
        (
            "last",
            json!({"contact": {"first": "F", "email": "a@example.com"}}),
        ),
        ("email", json!({"contact": {"first": "F", "last": "L"}})),
        (
            "email",
            json!({"contact": {"first": "F", "last": "L", "email": "not-an-email"}}),
        ),
        (
            "company",
            json!({"contact": {"first": "F", "last": "L", "email": "a@example.com", "company": long}}),
        ),
        (
            "country",
            json!({"contact": {"first": "F", "last": "L", "email": "a@example.com"}, "country": "XX"}),
        ),
        (
            "language",
            json!({"contact": {"first": "F", "last": "L", "email": "a@example.com"}, "language": "english"}),
        ),
        (
            "custom",
            json!({"contact": {"first": "F", "last": "L", "email": "a@example.com"}, "lookup": {"custom": "abc"}}),
        ),
        (
            "custom",
            json!({"contact": {"first": "F", "last": "L", "email": "a@example.com"}, "lookup": {"custom": "has space"}}),
        ),
        (
            "first",
            json!({"contact": {"first": 5, "last": "L", "email": "a@example.com"}}),
        ),
    ];
    for (field, body) in &cases {
        let a = app.create_account(body).await;
        assert_eq!(a.status, 422, "{field}: {}", a.text);
        assert_eq!(a.json["result"], "error");
        assert_eq!(a.json["action"], "account.create");
        assert!(
            a.json["error"][*field].is_string(),
            "{field} not named: {}",
            a.text
        );
    }
    assert_eq!(account_total(&app).await, 0);
    // Partial update validates the same way and changes nothing.
    let id = new_account(&app, &account_body("ok@example.com")).await;
    let bad = app
        .update_account(&id, &json!({"contact": {"phone": "1", "email": "nope"}}))
        .await;
    assert_eq!(bad.status, 422);
    let got = app.get_account(&id).await;
    assert_eq!(got.json["accounts"][0]["contact"]["phone"], "+1254789654");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_checkout_field_is_a_422_naming_it_and_nothing_is_written() {
    let app = spawn_app();
    let token = unique_token();
    let base = order_body("buyer@example.com", &token, true, true, true);
    let with = |path: &[&str], v: Value| {
        let mut b = base.clone();
        let mut cur = &mut b;
        for p in &path[..path.len() - 1] {
            cur = if let Ok(i) = p.parse::<usize>() {
                &mut cur[i]
            } else {
                &mut cur[*p]
            };
        }
        cur[path[path.len() - 1]] = v;
        b
    };
    let without = |outer: &str, inner: Option<&str>| {
        let mut b = base.clone();
        match inner {
            Some(k) => {
                b[outer].as_object_mut().map(|m| m.remove(k));
            }
            None => {
                b.as_object_mut().map(|m| m.remove(outer));
            }
        }
        b
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "customer.email",
            with(&["customer", "email"], json!("nope")),
        ),
        ("customer.first", with(&["customer", "first"], json!(""))),
        ("items", with(&["items"], json!([]))),
        (
            "items[0].quantity",
            with(&["items", "0", "quantity"], json!(0)),
        ),
        ("items[0].price", with(&["items", "0", "price"], json!(-1))),
        // A subscription whose renewals could never be charged: nothing, or above the vault's
        // charge limit (10^8 minor units).
        ("items[0].price", with(&["items", "0", "price"], json!(0))),
        (
            "items[0].price",
            with(&["items", "0", "price"], json!(1_000_000.01)),
        ),
        (
            "items[0].price",
            with(&["items", "0", "price"], json!(1.001)),
        ),
        (
            "items[0].currency",
            with(&["items", "0", "currency"], json!("XYZ")),
        ),
        (
            "items[0].subscription.intervalUnit",
            with(
                &["items", "0", "subscription", "intervalUnit"],
                json!("fortnight"),
            ),
        ),
        (
            "items[0].subscription.intervalLength",
            with(&["items", "0", "subscription", "intervalLength"], json!(0)),
        ),
        ("payment.last4", with(&["payment", "last4"], json!("42a2"))),
        (
            "payment.expMonth",
            with(&["payment", "expMonth"], json!(13)),
        ),
        ("payment.expYear", with(&["payment", "expYear"], json!(30))),
        (
            "payment.expYear",
            with(&["payment", "expYear"], json!(2001)),
        ),
        (
            "payment.brand",
            with(&["payment", "brand"], json!("bitcoin")),
        ),
        ("payment.type", with(&["payment", "type"], json!("cheque"))),
        // The processor's customer id (Stripe `cus_…`): an id's charset and length, a string.
        (
            "payment.processorCustomer",
            with(&["payment", "processorCustomer"], json!("cus 1; drop")),
        ),
        (
            "payment.processorCustomer",
            with(&["payment", "processorCustomer"], json!("")),
        ),
        (
            "payment.processorCustomer",
            with(&["payment", "processorCustomer"], json!("c".repeat(65))),
        ),
        (
            "payment.processorCustomer",
            with(&["payment", "processorCustomer"], json!(42)),
        ),
        ("payment.token", without("payment", Some("token"))),
        (
            "payment.token",
            with(&["payment", "token"], json!("has space")),
        ),
        ("consent", without("consent", None)),
        (
            "consent.accepted",
            with(&["consent", "accepted"], json!("yes")),
        ),
        ("country", with(&["country"], json!("ZZ"))),
        ("surprise", with(&["surprise"], json!(1))),
    ];
    for (field, body) in &cases {
        let a = app.complete_order(body).await;
        assert_eq!(a.status, 422, "{field}: {}", a.text);
        assert!(
            a.json["error"][*field].is_string(),
            "{field} not named: {}",
            a.text
        );
        assert!(!a.text.contains(&token), "the token was echoed");
    }
    // A second item in another currency.
    let mut mixed = base.clone();
    mixed["items"] =
        json!([base["items"][0], {"product": "b", "quantity": 1, "price": 1, "currency": "EUR"}]);
    let a = app.complete_order(&mixed).await;
    assert_eq!(a.status, 422);
    assert!(
        a.json["error"]["items[1].currency"].is_string(),
        "{}",
        a.text
    );
    // An unknown pre-created account.
    let a = app.complete_order(&with(&["account"], json!("nope"))).await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(account_total(&app).await, 0, "nothing half-written");
    let subs = app.list_subscriptions(&[]).await;
    assert_eq!(subs.json["total"], 0);
    // Free is fine for a one-off item: only a subscription needs something to charge.
    let mut free = one_off_order("free@example.com");
    free["items"][0]["price"] = json!(0);
    let a = app.complete_order(&free).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_and_oversized_bodies_are_413_in_the_envelope() {
    let app = spawn_app();
    for path in ["/accounts", "/orders"] {
        let resp = app
            .http
            .post(format!("{}{path}", app.api))
            .basic_auth(&app.demo.username, Some(&app.demo.password))
            .header("content-type", "application/json")
            .body("{\"contact\": ")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 400, "{path}");
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(v["result"], "error");
        assert!(v["error"].is_object());

        let big = format!(
            "{{\"contact\": {{\"first\": \"{}\"}}}}",
            "a".repeat(200 * 1024)
        );
        let resp = app
            .http
            .post(format!("{}{path}", app.api))
            .basic_auth(&app.demo.username, Some(&app.demo.password))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 413, "{path}");
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(v["result"], "error", "{v}");
    }
    // A path that is not UTF-8 after percent-decoding: still the envelope, never plain text.
    let bad_path = app.get_account("%FF%FE").await;
    assert_eq!(bad_path.status, 400);
    assert_eq!(bad_path.json["result"], "error", "{}", bad_path.text);
    assert_eq!(account_total(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_are_401_with_a_basic_challenge() {
    let app = spawn_app();
    let mut wrong = app.demo.clone();
    wrong.password.push('x');
    let mut unknown = app.demo.clone();
    unknown.username = "sr_nobody".into();
    for creds in [None, Some(&wrong), Some(&unknown)] {
        for (m, p) in [
            ("GET", "/accounts"),
            ("POST", "/orders"),
            ("GET", "/subscriptions/x"),
        ] {
            let a = tests::accounts::call(&app.http, &app.api, creds, m, p, Some(&json!({})), None)
                .await;
            assert_eq!(a.status, 401, "{m} {p}");
            let challenge = a
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert_eq!(challenge, "Basic realm=\"strongroom\"");
            assert_eq!(a.json["result"], "error");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stores_ids_answer_404_and_are_left_alone() {
    let app = spawn_app_with_vault();
    let o = app
        .complete_order(&subscription_order("mine@example.com", SaveBox::NotShown))
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let account = o.str("/account");
    let sub = o.str("/items/0/subscription");
    let other = app.as_store(&app.create_store("Intruder").await);
    let checks = [
        ("GET account", other.get_account(&account).await),
        (
            "POST account",
            other
                .update_account(&account, &json!({"contact": {"first": "X"}}))
                .await,
        ),
        ("GET order", other.get_order(&o.str("/id")).await),
        ("GET subscription", other.get_subscription(&sub).await),
        ("DELETE subscription", other.cancel_subscription(&sub).await),
        (
            "GET subscriptions?accountId",
            other.list_subscriptions(&[("accountId", &account)]).await,
        ),
        (
            "GET accounts?subscriptionId",
            other.lookup("subscriptionId", &sub).await,
        ),
    ];
    for (what, a) in &checks {
        assert_eq!(a.status, 404, "{what}: {}", a.text);
    }
    let mut order = one_off_order("x@example.com");
    order["account"] = json!(account);
    assert_eq!(other.complete_order(&order).await.status, 404);
    let mine = app.get_subscription(&sub).await;
    assert_eq!(mine.json["state"], "active");
    let acc = app.get_account(&account).await;
    assert_eq!(acc.json["accounts"][0]["contact"]["first"], "Jane");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_email_or_custom_id_is_409_naming_the_existing_account() {
    let app = spawn_app();
    let mut body = account_body("dup@example.com");
    body["lookup"] = json!({"custom": "dup-key"});
    let id = new_account(&app, &body).await;
    let again = app.create_account(&account_body("DUP@example.com")).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(
        again.json["error"]["email"]
            .as_str()
            .unwrap_or_default()
            .contains(&id)
    );
    let mut custom = account_body("other@example.com");
    custom["lookup"] = json!({"custom": "dup-key"});
    let c = app.create_account(&custom).await;
    assert_eq!(c.status, 409, "{}", c.text);
    assert!(
        c.json["error"]["custom"]
            .as_str()
            .unwrap_or_default()
            .contains(&id)
    );
    assert_eq!(
        account_total(&app).await,
        1,
        "the refused account left no trace"
    );
    assert_eq!(app.lookup("email", "other@example.com").await.status, 404);
    // An update may not take another account's email or custom id either.
    let second = new_account(&app, &account_body("second@example.com")).await;
    let u = app
        .update_account(&second, &json!({"contact": {"email": "dup@example.com"}}))
        .await;
    assert_eq!(u.status, 409);
    let u = app
        .update_account(&second, &json!({"lookup": {"custom": "dup-key"}}))
        .await;
    assert_eq!(u.status, 409);
    // The same email in another store is fine.
    let other = app.as_store(&app.create_store("Elsewhere").await);
    let a = other.create_account(&body).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_returns_the_first_answer_and_changes_nothing() {
    let app = spawn_app_with_vault();
    let body = subscription_order("idem@example.com", SaveBox::NotShown);
    let first = app.with_key("order-key-1").complete_order(&body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let retry = app.with_key("order-key-1").complete_order(&body).await;
    assert_eq!(retry.status, 200);
    assert_eq!(
        retry.json, first.json,
        "the retry answers exactly what the first call answered"
    );
    assert_eq!(
        retry
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let account = first.str("/account");
    let acc = app.get_account(&account).await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        app.vault_payment_methods(&app.demo.store, &account)
            .await
            .len(),
        1
    );

    let changed = subscription_order("idem@example.com", SaveBox::NotShown);
    let conflict = app.with_key("order-key-1").complete_order(&changed).await;
    assert_eq!(conflict.status, 409, "{}", conflict.text);
    assert!(conflict.json["error"]["idempotencyKey"].is_string());

    // Ten concurrent requests with one new key: one execution, ten identical answers.
    let body = one_off_order("idem2@example.com");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (keyed, body) = (app.with_key("order-key-2"), body.clone());
        tasks.push(tokio::spawn(
            async move { keyed.complete_order(&body).await },
        ));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let a = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{}", a.text);
        answers.push(a.json);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    let acc = app.lookup("email", "idem2@example.com").await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1)
    );

    // Other mutating routes honour the header too.
    let a1 = app
        .with_key("acct-1")
        .create_account(&account_body("k@example.com"))
        .await;
    let a2 = app
        .with_key("acct-1")
        .create_account(&account_body("k@example.com"))
        .await;
    assert_eq!(
        (a1.status.as_u16(), a2.status.as_u16()),
        (200, 200),
        "{}",
        a2.text
    );
    assert_eq!(a1.json, a2.json);
    let sub = first.str("/items/0/subscription");
    let c1 = app.with_key("cancel-1").cancel_subscription(&sub).await;
    let c2 = app.with_key("cancel-1").cancel_subscription(&sub).await;
    assert_eq!((c1.status.as_u16(), c2.status.as_u16()), (200, 200));
    let c3 = app.cancel_subscription(&sub).await;
    assert_eq!(
        c3.status, 409,
        "without the key a second cancel is refused: {}",
        c3.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_read_listed_by_account_canceled_and_resumed() {
    let app = spawn_app_with_vault();
    let mut body = subscription_order("subs@example.com", SaveBox::NotShown);
    body["items"] = json!([
        {"product": "monthly", "quantity": 2, "price": 9.99, "currency": "USD", "subscription": {"intervalUnit": "month", "intervalLength": 1}},
        {"product": "yearly", "quantity": 1, "price": 99, "currency": "USD", "subscription": {"intervalUnit": "year", "intervalLength": 1}},
        {"product": "ebook", "quantity": 1, "price": 5, "currency": "USD"},
    ]);
    let o = app.complete_order(&body).await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(o.json["total"], 123.98);
    let account = o.str("/account");
    let sub = o.str("/items/0/subscription");
    assert!(o.json["items"][2]["subscription"].is_null());
    let s = app.get_subscription(&sub).await;
    assert_eq!(s.status, 200);
    for (k, v) in [
        ("account", json!(account)),
        ("product", json!("monthly")),
        ("state", json!("active")),
        ("active", json!(true)),
        ("autoRenew", json!(true)),
        ("cardType", json!("VISA")),
        ("cardEnding", json!("4242")),
        ("expiry", json!("12/30")),
        ("price", json!(9.99)),
        ("currency", json!("USD")),
        ("intervalUnit", json!("month")),
        ("intervalLength", json!(1)),
    ] {
        assert_eq!(s.json[k], v, "{k}: {}", s.text);
    }
    assert!(s.json["next"].as_i64().unwrap_or(0) > s.json["begin"].as_i64().unwrap_or(i64::MAX));
    let list = app.list_subscriptions(&[("accountId", &account)]).await;
    assert_eq!(
        list.json["subscriptions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        list.text
    );

    let c = app.cancel_subscription(&sub).await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["subscriptions"][0]["action"], "subscription.cancel");
    assert_eq!(app.get_subscription(&sub).await.json["state"], "canceled");
    let r = app.resume_subscription(&sub).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.get_subscription(&sub).await.json["state"], "active");
    assert_eq!(app.get_subscription("unknown").await.status, 404);
}
