//! The vault's HTTP API against the real binary: the happy paths, dedupe, store scoping, and the
//! "Bad input" list of issue 2 (each error answered with the standard body, nothing written).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tests::temp_dir;
use tests::vault::{VaultProcess, card_body, start_vault};

async fn post(v: &VaultProcess, client: &reqwest::Client, body: &str) -> (u16, Value) {
    let resp = client
        .post(v.url("/v1/payment-methods"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn list_len(v: &VaultProcess, client: &reqwest::Client, store: &str, account: &str) -> usize {
    let (status, body) = get(
        client,
        v.url(&format!(
            "/v1/payment-methods?store={store}&account={account}"
        )),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["paymentMethods"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_stored_card_is_read_back_masked_listed_and_deleted() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let c = v.client("accounts");

    let (status, created) = post(
        &v,
        &c,
        &card_body("s1", "a1", "tok_happy_path_1").to_string(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pm_"));
    assert_eq!(created["last4"], "4242");
    assert_eq!(created["brand"], "visa");
    assert_eq!(created["expMonth"], 12);
    assert_eq!(created["expYear"], 2030);
    assert_eq!(created["type"], "card");
    assert!(created.get("token").is_none());

    let (status, view) = get(&c, v.url(&format!("/v1/payment-methods/{id}?store=s1"))).await;
    assert_eq!(status, 200);
    assert_eq!(view, created);

    let (status, list) = get(&c, v.url("/v1/payment-methods?store=s1&account=a1")).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!({ "paymentMethods": [created] }));

    // renewals may read masked data too.
    let (status, _) = get(
        &v.client("renewals"),
        v.url(&format!("/v1/payment-methods/{id}?store=s1")),
    )
    .await;
    assert_eq!(status, 200);

    let resp = c
        .delete(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, body) = get(&c, v.url(&format!("/v1/payment-methods/{id}?store=s1"))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let resp = c
        .delete(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "a second delete finds nothing");
}

#[tokio::test]
async fn the_same_token_for_the_same_account_returns_the_existing_id_with_200() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    let body = card_body("s1", "a1", "tok_dedupe_1").to_string();
    let (s1, first) = post(&v, &c, &body).await;
    let (s2, second) = post(&v, &c, &body).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first["id"], second["id"]);
    // The same token for another account or another store is a different payment method.
    let (s3, other_account) =
        post(&v, &c, &card_body("s1", "a2", "tok_dedupe_1").to_string()).await;
    let (s4, other_store) = post(&v, &c, &card_body("s2", "a1", "tok_dedupe_1").to_string()).await;
    assert_eq!((s3, s4), (201, 201));
    assert_ne!(other_account["id"], first["id"]);
    assert_ne!(other_store["id"], first["id"]);
    assert_eq!(list_len(&v, &c, "s1", "a1").await, 1);
}

#[tokio::test]
async fn a_paypal_method_shows_only_a_masked_email() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    let body = json!({"store":"s1","account":"a1","token":"tok_pp_1","type":"paypal","email":"jane.doe@example.com"});
    let (status, created) = post(&v, &c, &body.to_string()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["maskedEmail"], "j***@example.com");
    assert!(!created.to_string().contains("jane.doe"));
}

#[tokio::test]
async fn another_stores_id_answers_404_like_an_unknown_one() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    let (_, created) = post(&v, &c, &card_body("s1", "a1", "tok_scope_1").to_string()).await;
    let id = created["id"].as_str().unwrap();
    let (status, foreign) = get(&c, v.url(&format!("/v1/payment-methods/{id}?store=s2"))).await;
    let (status2, unknown) = get(
        &c,
        v.url("/v1/payment-methods/pm_00000000000000000000000000000000?store=s1"),
    )
    .await;
    assert_eq!((status, status2), (404, 404));
    assert_eq!(foreign, unknown, "the two 404s must be indistinguishable");
    let resp = c
        .delete(v.url(&format!("/v1/payment-methods/{id}?store=s2")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (status, _) = get(&c, v.url(&format!("/v1/payment-methods/{id}?store=s1"))).await;
    assert_eq!(
        status, 200,
        "a delete through another store must not remove the record"
    );
}

#[tokio::test]
async fn erasing_an_account_removes_all_its_methods_and_nothing_else() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    for i in 0..3 {
        post(
            &v,
            &c,
            &card_body("s1", "a1", &format!("tok_erase_{i}")).to_string(),
        )
        .await;
    }
    post(&v, &c, &card_body("s1", "a2", "tok_erase_keep").to_string()).await;
    post(
        &v,
        &c,
        &card_body("s2", "a1", "tok_erase_other_store").to_string(),
    )
    .await;
    let resp = c
        .delete(v.url("/v1/accounts/a1/payment-methods?store=s1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"erased": 3}));
    assert_eq!(list_len(&v, &c, "s1", "a1").await, 0);
    assert_eq!(list_len(&v, &c, "s1", "a2").await, 1);
    assert_eq!(list_len(&v, &c, "s2", "a1").await, 1);
}

#[tokio::test]
async fn health_answers_ok_to_a_known_identity() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let (status, body) = get(&v.client("admin"), v.url("/v1/health")).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_status_and_nothing_is_written() {
    let dir = temp_dir("vault-api");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    let good = card_body("s1", "a1", "tok_bad_input_1");
    let with = |key: &str, value: Value| {
        let mut b = good.clone();
        b[key] = value;
        b.to_string()
    };

    let (s, b) = post(&v, &c, r#"{"store":"s1","account":"#).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "malformed JSON"
    );
    let (s, b) = post(&v, &c, &with("cvv", json!("123"))).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("unknown_field")),
        "unknown field"
    );

    let cases = [
        (with("last4", json!("42x2")), "last4"),
        (with("last4", json!("42424")), "last4"),
        (with("expMonth", json!(13)), "expMonth"),
        (with("expYear", json!(99)), "expYear"),
        (with("brand", json!("monopoly-money")), "brand"),
        (with("store", json!("bad/store")), "store"),
        (with("account", json!("")), "account"),
        (with("type", json!("cheque")), "type"),
        (with("token", json!("")), "token"),
    ];
    for (body, field) in cases {
        let (s, b) = post(&v, &c, &body).await;
        assert_eq!(s, 422, "{body} -> {b}");
        assert_eq!(b["error"]["field"], field, "{body} -> {b}");
        assert_eq!(b["error"]["code"], "invalid_field");
    }

    let (s, b) = get(&c, v.url("/v1/payment-methods/not-an-id?store=s1")).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (422, Some("id")),
        "malformed id"
    );
    let (s, b) = get(
        &c,
        v.url("/v1/payment-methods?store=s1&account=bad%20account"),
    )
    .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("account")));
    let (s, b) = get(&c, v.url("/v1/payment-methods?account=a1")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // 17 KiB: over the 16 KiB limit, even with a valid prefix.
    let big = format!(
        r#"{{"store":"s1","account":"a1","token":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let (s, b) = post(&v, &c, &big).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );

    let (s, b) = get(&c, v.url("/v1/no-such-route")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));

    // Nothing from any refused request was stored.
    let (s, b) = get(&c, v.url("/v1/payment-methods?store=s1&account=a1")).await;
    assert_eq!((s, b), (200, json!({"paymentMethods": []})));
    // And a valid request still works afterwards.
    let (s, _) = post(&v, &c, &good.to_string()).await;
    assert_eq!(s, 201);
}
