//! The merchant API against the real binaries: accounts CRUD, lookups, pagination,
//! subscriptions, idempotency, and every kind of bad input.

use serde_json::{Value, json};
use tests::accounts::{System, create_store, order_body, start_system, unique_token};

fn account_body(email: &str) -> Value {
    json!({"contact": {"first": "Leeroy", "last": "Jenkins", "email": email, "company": "ABC",
        "phone": "+1254789654"}, "language": "en", "country": "US",
        "address": {"addressLine1": "801 Garden St", "city": "Santa Barbara", "region": "CA",
        "postalCode": "93101"}})
}

async fn create_account(sys: &System, body: &Value) -> String {
    let a = sys.call(&sys.demo, "POST", "/accounts", Some(body)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["action"], "account.create");
    a.json["account"].as_str().unwrap_or_default().to_owned()
}

async fn account_total(sys: &System) -> u64 {
    let all = sys.call(&sys.demo, "GET", "/accounts", None).await;
    assert_eq!(all.status, 200, "{}", all.text);
    all.json["total"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_created_read_and_partially_updated() {
    let sys = start_system();
    let mut body = account_body("leeroy@example.com");
    body["lookup"] = json!({"custom": "cust-0001"});
    let id = create_account(&sys, &body).await;
    let got = sys
        .call(&sys.demo, "GET", &format!("/accounts/{id}"), None)
        .await;
    assert_eq!(got.status, 200);
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

    // Only the phone and the city change; everything else stays.
    let upd = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/accounts/{id}"),
            Some(&json!({"contact": {"phone": "+44 1234"}, "address": {"city": "Goleta"}})),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    let got = sys
        .call(&sys.demo, "GET", &format!("/accounts/{id}"), None)
        .await;
    let a = &got.json["accounts"][0];
    assert_eq!(a["contact"]["phone"], "+44 1234");
    assert_eq!(a["contact"]["first"], "Leeroy");
    assert_eq!(a["contact"]["email"], "leeroy@example.com");
    assert_eq!(a["address"]["city"], "Goleta");
    assert_eq!(a["address"]["addressLine1"], "801 Garden St");
    assert_eq!(a["country"], "US");
    assert_eq!(a["lookup"]["custom"], "cust-0001");

    // A new email moves the lookup with it.
    let upd = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/accounts/{id}"),
            Some(&json!({"contact": {"email": "new@example.com"}})),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    assert_eq!(
        sys.call(&sys.demo, "GET", "/accounts?email=new@example.com", None)
            .await
            .status,
        200
    );
    assert_eq!(
        sys.call(&sys.demo, "GET", "/accounts?email=leeroy@example.com", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_find_the_account_by_every_filter() {
    let sys = start_system();
    let mut body = account_body("find.me@example.com");
    body["lookup"] = json!({"custom": "crm_42"});
    let id = create_account(&sys, &body).await;
    create_account(&sys, &account_body("someone.else@example.com")).await;
    let mut order = order_body("ignored@example.com", &unique_token(), true, true, false);
    order["account"] = json!(id);
    let o = sys.call(&sys.demo, "POST", "/orders", Some(&order)).await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(
        o.json["account"],
        id.as_str(),
        "a pre-created account id is used as given"
    );
    let global = sys
        .call(&sys.demo, "GET", &format!("/accounts/{id}"), None)
        .await
        .json["accounts"][0]["lookup"]["global"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let filters = [
        ("email", "FIND.ME@example.com".to_owned()),
        ("custom", "crm_42".to_owned()),
        ("global", global),
        (
            "orderId",
            o.json["id"].as_str().unwrap_or_default().to_owned(),
        ),
        (
            "orderReference",
            o.json["reference"].as_str().unwrap_or_default().to_owned(),
        ),
        (
            "subscriptionId",
            o.json["items"][0]["subscription"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
    ];
    for (f, v) in &filters {
        let a = sys
            .call(&sys.demo, "GET", &format!("/accounts?{f}={v}"), None)
            .await;
        assert_eq!(a.status, 200, "{f}: {}", a.text);
        assert_eq!(a.json["accounts"][0]["id"], id.as_str(), "{f}");
        assert_eq!(a.json["action"], "account.lookup");
    }
    let miss = sys
        .call(&sys.demo, "GET", "/accounts?custom=nobody", None)
        .await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.json["error"]["custom"], "Account not found");
    let two = sys
        .call(
            &sys.demo,
            "GET",
            "/accounts?email=a@b.co&custom=crm_42",
            None,
        )
        .await;
    assert_eq!(two.status, 422);
    // Another store's filters find nothing.
    let other = create_store(sys.data.path(), "Other");
    assert_eq!(
        sys.call(&other, "GET", "/accounts?custom=crm_42", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_without_a_filter_pages_through_account_ids() {
    let sys = start_system();
    let mut created = std::collections::BTreeSet::new();
    for i in 0..7 {
        created.insert(create_account(&sys, &account_body(&format!("p{i}@example.com"))).await);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut page = 1;
    loop {
        let a = sys
            .call(
                &sys.demo,
                "GET",
                &format!("/accounts?limit=3&page={page}"),
                None,
            )
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
    let default = sys.call(&sys.demo, "GET", "/accounts", None).await;
    assert_eq!(default.json["limit"], 50);
    assert_eq!(
        sys.call(&sys.demo, "GET", "/accounts?limit=0", None)
            .await
            .status,
        422
    );
    assert_eq!(
        sys.call(&sys.demo, "GET", "/accounts?page=x", None)
            .await
            .status,
        422
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_account_field_is_a_422_naming_it_and_nothing_is_written() {
    let sys = start_system();
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
        let a = sys.call(&sys.demo, "POST", "/accounts", Some(body)).await;
        assert_eq!(a.status, 422, "{field}: {}", a.text);
        assert_eq!(a.json["result"], "error");
        assert_eq!(a.json["action"], "account.create");
        assert!(
            a.json["error"][*field].is_string(),
            "{field} not named: {}",
            a.text
        );
    }
    assert_eq!(account_total(&sys).await, 0);
    // Partial update validates the same way and changes nothing.
    let id = create_account(&sys, &account_body("ok@example.com")).await;
    let bad = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/accounts/{id}"),
            Some(&json!({"contact": {"phone": "1", "email": "nope"}})),
        )
        .await;
    assert_eq!(bad.status, 422);
    let got = sys
        .call(&sys.demo, "GET", &format!("/accounts/{id}"), None)
        .await;
    assert_eq!(got.json["accounts"][0]["contact"]["phone"], "+1254789654");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_checkout_field_is_a_422_naming_it_and_nothing_is_written() {
    let sys = start_system();
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
        let a = sys.call(&sys.demo, "POST", "/orders", Some(body)).await;
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
    let a = sys.call(&sys.demo, "POST", "/orders", Some(&mixed)).await;
    assert_eq!(a.status, 422);
    assert!(
        a.json["error"]["items[1].currency"].is_string(),
        "{}",
        a.text
    );
    // An unknown pre-created account.
    let a = sys
        .call(
            &sys.demo,
            "POST",
            "/orders",
            Some(&with(&["account"], json!("nope"))),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(account_total(&sys).await, 0, "nothing half-written");
    let subs = sys.call(&sys.demo, "GET", "/subscriptions", None).await;
    assert_eq!(subs.json["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_and_oversized_bodies_are_413_in_the_envelope() {
    let sys = start_system();
    for path in ["/accounts", "/orders"] {
        let resp = sys
            .http
            .post(format!("{}{path}", sys.api))
            .basic_auth(&sys.demo.username, Some(&sys.demo.password))
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
        let resp = sys
            .http
            .post(format!("{}{path}", sys.api))
            .basic_auth(&sys.demo.username, Some(&sys.demo.password))
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
    let bad_path = sys.call(&sys.demo, "GET", "/accounts/%FF%FE", None).await;
    assert_eq!(bad_path.status, 400);
    assert_eq!(bad_path.json["result"], "error", "{}", bad_path.text);
    assert_eq!(account_total(&sys).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_are_401_with_a_basic_challenge() {
    let sys = start_system();
    let mut wrong = sys.demo.clone();
    wrong.password.push('x');
    let mut unknown = sys.demo.clone();
    unknown.username = "sr_nobody".into();
    for creds in [None, Some(&wrong), Some(&unknown)] {
        for (m, p) in [
            ("GET", "/accounts"),
            ("POST", "/orders"),
            ("GET", "/subscriptions/x"),
        ] {
            let a = tests::accounts::call(&sys.http, &sys.api, creds, m, p, Some(&json!({})), None)
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
    let sys = start_system();
    let o = sys
        .call(
            &sys.demo,
            "POST",
            "/orders",
            Some(&order_body(
                "mine@example.com",
                &unique_token(),
                true,
                false,
                false,
            )),
        )
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let account = o.json["account"].as_str().unwrap_or_default();
    let sub = o.json["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default();
    let other = create_store(sys.data.path(), "Intruder");
    let checks = [
        ("GET", format!("/accounts/{account}"), None),
        (
            "POST",
            format!("/accounts/{account}"),
            Some(json!({"contact": {"first": "X"}})),
        ),
        (
            "GET",
            format!("/orders/{}", o.json["id"].as_str().unwrap_or_default()),
            None,
        ),
        ("GET", format!("/subscriptions/{sub}"), None),
        ("DELETE", format!("/subscriptions/{sub}"), None),
        ("GET", format!("/subscriptions?accountId={account}"), None),
        ("GET", format!("/accounts?subscriptionId={sub}"), None),
    ];
    for (m, p, body) in &checks {
        let a = sys.call(&other, m, p, body.as_ref()).await;
        assert_eq!(a.status, 404, "{m} {p}: {}", a.text);
    }
    let mut order = order_body("x@example.com", &unique_token(), false, false, false);
    order["account"] = json!(account);
    assert_eq!(
        sys.call(&other, "POST", "/orders", Some(&order))
            .await
            .status,
        404
    );
    let mine = sys
        .call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(mine.json["state"], "active");
    let acc = sys
        .call(&sys.demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    assert_eq!(acc.json["accounts"][0]["contact"]["first"], "Jane");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_email_or_custom_id_is_409_naming_the_existing_account() {
    let sys = start_system();
    let mut body = account_body("dup@example.com");
    body["lookup"] = json!({"custom": "dup-key"});
    let id = create_account(&sys, &body).await;
    let again = sys
        .call(
            &sys.demo,
            "POST",
            "/accounts",
            Some(&account_body("DUP@example.com")),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(
        again.json["error"]["email"]
            .as_str()
            .unwrap_or_default()
            .contains(&id)
    );
    let mut custom = account_body("other@example.com");
    custom["lookup"] = json!({"custom": "dup-key"});
    let c = sys
        .call(&sys.demo, "POST", "/accounts", Some(&custom))
        .await;
    assert_eq!(c.status, 409, "{}", c.text);
    assert!(
        c.json["error"]["custom"]
            .as_str()
            .unwrap_or_default()
            .contains(&id)
    );
    assert_eq!(
        account_total(&sys).await,
        1,
        "the refused account left no trace"
    );
    assert_eq!(
        sys.call(&sys.demo, "GET", "/accounts?email=other@example.com", None)
            .await
            .status,
        404
    );
    // An update may not take another account's email or custom id either.
    let second = create_account(&sys, &account_body("second@example.com")).await;
    let u = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/accounts/{second}"),
            Some(&json!({"contact": {"email": "dup@example.com"}})),
        )
        .await;
    assert_eq!(u.status, 409);
    let u = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/accounts/{second}"),
            Some(&json!({"lookup": {"custom": "dup-key"}})),
        )
        .await;
    assert_eq!(u.status, 409);
    // The same email in another store is fine.
    let other = create_store(sys.data.path(), "Elsewhere");
    let a = sys.call(&other, "POST", "/accounts", Some(&body)).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_returns_the_first_answer_and_changes_nothing() {
    let sys = start_system();
    let body = order_body("idem@example.com", &unique_token(), true, false, false);
    let first = sys
        .call_with_key(&sys.demo, "POST", "/orders", Some(&body), "order-key-1")
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let retry = sys
        .call_with_key(&sys.demo, "POST", "/orders", Some(&body), "order-key-1")
        .await;
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
    let account = first.json["account"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let acc = sys
        .call(&sys.demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        sys.vault_payment_methods(&sys.demo.store, &account)
            .await
            .len(),
        1
    );

    let changed = order_body("idem@example.com", &unique_token(), true, false, false);
    let conflict = sys
        .call_with_key(&sys.demo, "POST", "/orders", Some(&changed), "order-key-1")
        .await;
    assert_eq!(conflict.status, 409, "{}", conflict.text);
    assert!(conflict.json["error"]["idempotencyKey"].is_string());

    // Ten concurrent requests with one new key: one execution, ten identical answers.
    let body = order_body("idem2@example.com", &unique_token(), false, false, false);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (http, api, demo, body) = (
            sys.http.clone(),
            sys.api.clone(),
            sys.demo.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tests::accounts::call(
                &http,
                &api,
                Some(&demo),
                "POST",
                "/orders",
                Some(&body),
                Some("order-key-2"),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let a = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{}", a.text);
        answers.push(a.json);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    let acc = sys
        .call(&sys.demo, "GET", "/accounts?email=idem2@example.com", None)
        .await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1)
    );

    // Other mutating routes honour the header too.
    let a1 = sys
        .call_with_key(
            &sys.demo,
            "POST",
            "/accounts",
            Some(&account_body("k@example.com")),
            "acct-1",
        )
        .await;
    let a2 = sys
        .call_with_key(
            &sys.demo,
            "POST",
            "/accounts",
            Some(&account_body("k@example.com")),
            "acct-1",
        )
        .await;
    assert_eq!(
        (a1.status.as_u16(), a2.status.as_u16()),
        (200, 200),
        "{}",
        a2.text
    );
    assert_eq!(a1.json, a2.json);
    let sub = first.json["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default();
    let c1 = sys
        .call_with_key(
            &sys.demo,
            "DELETE",
            &format!("/subscriptions/{sub}"),
            None,
            "cancel-1",
        )
        .await;
    let c2 = sys
        .call_with_key(
            &sys.demo,
            "DELETE",
            &format!("/subscriptions/{sub}"),
            None,
            "cancel-1",
        )
        .await;
    assert_eq!((c1.status.as_u16(), c2.status.as_u16()), (200, 200));
    let c3 = sys
        .call(&sys.demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(
        c3.status, 409,
        "without the key a second cancel is refused: {}",
        c3.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_read_listed_by_account_canceled_and_resumed() {
    let sys = start_system();
    let mut body = order_body("subs@example.com", &unique_token(), true, false, false);
    body["items"] = json!([
        {"product": "monthly", "quantity": 2, "price": 9.99, "currency": "USD", "subscription": {"intervalUnit": "month", "intervalLength": 1}},
        {"product": "yearly", "quantity": 1, "price": 99, "currency": "USD", "subscription": {"intervalUnit": "year", "intervalLength": 1}},
        {"product": "ebook", "quantity": 1, "price": 5, "currency": "USD"},
    ]);
    let o = sys.call(&sys.demo, "POST", "/orders", Some(&body)).await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(o.json["total"], 123.98);
    let account = o.json["account"].as_str().unwrap_or_default();
    let sub = o.json["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(o.json["items"][2]["subscription"].is_null());
    let s = sys
        .call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
        .await;
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
    let list = sys
        .call(
            &sys.demo,
            "GET",
            &format!("/subscriptions?accountId={account}"),
            None,
        )
        .await;
    assert_eq!(
        list.json["subscriptions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        list.text
    );

    let c = sys
        .call(&sys.demo, "DELETE", &format!("/subscriptions/{sub}"), None)
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["subscriptions"][0]["action"], "subscription.cancel");
    assert_eq!(
        sys.call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
            .await
            .json["state"],
        "canceled"
    );
    let resume = json!({"subscriptions": [{"subscription": sub, "deactivation": null}]});
    let r = sys
        .call(
            &sys.demo,
            "POST",
            &format!("/subscriptions/{sub}"),
            Some(&resume),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        sys.call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
            .await
            .json["state"],
        "active"
    );
    assert_eq!(
        sys.call(&sys.demo, "GET", "/subscriptions/unknown", None)
            .await
            .status,
        404
    );
}
