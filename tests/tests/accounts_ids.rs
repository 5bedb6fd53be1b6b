//! Ids from the client (path, query, body) are typed inside the service: one that is not an id
//! (1 to 64 characters of `A-Za-z0-9_-`) must get exactly the answer an unknown id gets — the
//! same status and the same body, apart from the id itself where the answer echoes it.

use serde_json::{Value, json};
use tests::accounts::{System, order_body, start_system, unique_token};

/// A well-formed id that names nothing (22 characters, like the ids accounts-api makes).
const UNKNOWN: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// Ids that do not parse, as they go into a URL (`raw`) and as the service sees them.
fn malformed() -> Vec<(String, String)> {
    vec![
        ("a.b".into(), "a.b".into()),
        ("a%20b".into(), "a b".into()),
        ("%C3%A4".into(), "ä".into()),
        ("x".repeat(65), "x".repeat(65)),
    ]
}

/// One request with `{id}` in its path and body replaced by the id: (status, body text with
/// the id put back as `{id}`).
async fn answer(
    sys: &System,
    method: &str,
    path: &str,
    body: Option<&Value>,
    raw: &str,
    id: &str,
) -> (u16, String) {
    let path = path.replace("{id}", raw);
    let body = body.map(|b| {
        serde_json::from_str::<Value>(&b.to_string().replace("{id}", id))
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let a = sys.call(&sys.demo, method, &path, body.as_ref()).await;
    (a.status.as_u16(), a.text.replace(id, "{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_ids_that_do_not_parse_answer_what_unknown_ids_answer() {
    let sys = start_system();
    let sub = json!({"subscriptions": [{"subscription": "{id}", "deactivation": null}]});
    let mut checkout = order_body("ids@example.com", &unique_token(), false, false, false);
    checkout["account"] = json!("{id}");
    // (method, path, body, whether a 65-character id reaches the lookup: a body field longer
    // than 64 characters is refused by its parser first, known id or not).
    let cases: Vec<(&str, &str, Option<Value>, bool)> = vec![
        ("GET", "/accounts/{id}", None, true),
        (
            "POST",
            "/accounts/{id}",
            Some(json!({"contact": {"phone": "+1 555"}})),
            true,
        ),
        // An invalid body is judged before the id, for unknown ids as before.
        (
            "POST",
            "/accounts/{id}",
            Some(json!({"contact": {"email": "nope"}})),
            true,
        ),
        ("GET", "/accounts/{id}/payment-methods", None, true),
        ("DELETE", "/accounts/{id}/payment-methods/pm_x", None, true),
        ("GET", "/accounts/{id}/authenticate", None, true),
        ("GET", "/accounts?orderId={id}", None, true),
        ("GET", "/accounts?subscriptionId={id}", None, true),
        ("GET", "/orders/{id}", None, true),
        ("POST", "/orders", Some(checkout), false),
        ("GET", "/subscriptions/{id}", None, true),
        ("GET", "/subscriptions?accountId={id}", None, true),
        ("DELETE", "/subscriptions/{id}", None, true),
        ("POST", "/subscriptions/{id}", Some(sub), true),
        (
            "POST",
            "/subscriptions/charge",
            Some(json!({"subscriptions": [{"subscription": "{id}"}]})),
            false,
        ),
        ("GET", "/events/{id}", None, true),
        (
            "POST",
            "/events/{id}",
            Some(json!({"processed": true})),
            true,
        ),
        ("DELETE", "/webhooks/{id}", None, true),
    ];
    for (method, path, body, long_reaches_lookup) in &cases {
        let want = answer(&sys, method, path, body.as_ref(), UNKNOWN, UNKNOWN).await;
        // An error (the rebill answers 200 with an error item per subscription).
        assert!(
            want.0 >= 400 || want.1.contains(r#""result":"error""#),
            "{method} {path}: {want:?}"
        );
        for (raw, id) in malformed() {
            if id.len() > 64 && !long_reaches_lookup {
                continue;
            }
            let got = answer(&sys, method, path, body.as_ref(), &raw, &id).await;
            assert_eq!(got, want, "{method} {path} with {id:?}");
        }
    }
    // The uncancel of several ids is all or none: an unparseable id after a canceled one answers
    // what an unknown id there answers (404, the uncancel of an active one being a success
    // now), and the canceled one stays canceled.
    let order = sys.subscribe(&sys.demo, "ids2@example.com").await;
    let canceled = order["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let m = sys.merchant(&sys.demo);
    let c = m.cancel_subscription(&canceled).await;
    assert_eq!(c.status, 200, "{}", c.text);
    let two = json!({"subscriptions": [
        {"subscription": canceled, "deactivation": null},
        {"subscription": "{id}", "deactivation": null}]});
    let path = format!("/subscriptions/{canceled}");
    let want = answer(&sys, "POST", &path, Some(&two), UNKNOWN, UNKNOWN).await;
    assert_eq!(want.0, 404, "{want:?}");
    for (raw, id) in malformed() {
        let got = answer(&sys, "POST", &path, Some(&two), &raw, &id).await;
        assert_eq!(got, want, "resume with {id:?}");
    }
    let after = m.get_subscription(&canceled).await;
    assert_eq!(
        after.json["state"], "canceled",
        "nothing was written: {}",
        after.text
    );
}
