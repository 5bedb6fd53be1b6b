//! Single sign-on and the account page, in process with the real vault binary (`tests::inproc`;
//! the test that scans the logs runs the real binaries): one-time links (replayed, expired,
//! tampered → refusal page, no session), the session cookie's attributes, the strict CSP, HTML
//! escaping, CSRF on every form (missing or wrong → 403 with nothing changed), changes that emit
//! their events (pause and resume on the dev clock), logout and session expiry.

use accounts_api::settings::Settings;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tests::accounts::{Merchant, SaveBox, System, start_system_with_env, subscription_order};
use tests::inproc::{App, spawn_app_with};
use tests::lifecycle::{TestClock, charges_of, some_job_runs, subscription_of, wait_for};
use tests::pages::{browser, csrf, event_types, open, page, post_form, sso_url};
use tests::temp_dir;

fn fresh(env: &[(&str, &str)]) -> System {
    start_system_with_env(Arc::new(temp_dir("strongroom-sso-")), env)
}

/// In process, with the real vault binary (the customers' checkouts save a card).
fn fresh_app(settings: Settings) -> App {
    spawn_app_with(true, settings)
}

/// A saving subscription checkout; returns (account id, order answer).
async fn customer(store: &Merchant, email: &str, first: &str) -> (String, Value) {
    let mut body = subscription_order(email, SaveBox::Ticked);
    body["customer"]["first"] = json!(first);
    let a = store.complete_order(&body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    (
        a.json["account"].as_str().unwrap_or_default().to_owned(),
        a.json,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_answers_404_for_an_unknown_or_another_stores_account() {
    let app = fresh_app(Settings::default());
    let (account, _) = customer(&app, "sso404@example.com", "Ann").await;
    let unknown = app.call("GET", "/accounts/nope/authenticate", None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(unknown.json["accounts"][0]["result"], "error");
    let other = app.create_store("Other").await;
    let foreign = app
        .as_store(&other)
        .call("GET", &format!("/accounts/{account}/authenticate"), None)
        .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text);
    assert!(!foreign.text.contains("/account/sso/"));
    let anon = tests::accounts::call(
        &app.http,
        &app.api,
        None,
        "GET",
        &format!("/accounts/{account}/authenticate"),
        None,
        None,
    )
    .await;
    assert_eq!(anon.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_opens_once_with_a_strict_cookie_and_a_replayed_or_tampered_link_is_refused()
{
    let sys = fresh(&[]);
    let demo = sys.merchant(&sys.demo);
    let (account, _) = customer(&demo, "once@example.com", "Jane").await;
    let url = sso_url(&demo, &account).await;
    let token = url.rsplit('/').next().unwrap_or_default().to_owned();
    assert_eq!(token.len(), 43, "256 bits in base64url");

    // Tampered (one character changed) → refused, no session; the real link still works after.
    let mut t: Vec<char> = token.chars().collect();
    t[10] = if t[10] == 'A' { 'B' } else { 'A' };
    let tampered: String = t.into_iter().collect();
    let (status, cookie, _, body) = open(&url.replace(&token, &tampered)).await;
    assert_eq!(status, 410);
    assert!(cookie.is_none());
    assert!(body.contains("not valid") && !body.contains("once@example.com"));

    let (status, cookie, set, _) = open(&url).await;
    assert_eq!(status, 303);
    let cookie = cookie.unwrap_or_else(|| panic!("no session cookie: {set}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/account", "Max-Age="] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain http here: no Secure flag");
    assert!(
        !cookie.contains(&token),
        "the session is not the link token"
    );

    let (status, headers, html) = page(&demo, &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("once@example.com"));
    assert!(html.contains("4242"), "the card's last four");
    assert!(
        !html.contains(&token),
        "the token never appears in the page"
    );
    assert!(!html.contains("<script"), "no script");
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for d in [
        "default-src 'none'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(d), "{d} missing in {csp}");
    }
    assert_eq!(
        headers.get("referrer-policy").and_then(|v| v.to_str().ok()),
        Some("no-referrer")
    );

    // Replay → refused, no new session.
    let (status, again, _, body) = open(&url).await;
    assert_eq!(status, 410);
    assert!(again.is_none());
    assert!(!body.contains("once@example.com") && !body.contains("4242"));

    // No cookie or a made-up one → not signed in.
    let (status, _, body) = page(&demo, "sr_session=made-up").await;
    assert_eq!(status, 401);
    assert!(!body.contains("once@example.com"));
    // Tokens never reach the logs.
    assert!(!sys.logs().contains(&token));
    assert!(
        !sys.logs()
            .contains(cookie.trim_start_matches("sr_session="))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_refused_and_sessions_expire() {
    let app = fresh_app(Settings {
        sso_ttl: Duration::from_secs(1),
        session_ttl: Duration::from_secs(2),
        ..Settings::default()
    });
    let (account, _) = customer(&app, "expiry@example.com", "Eve").await;
    let stale = sso_url(&app, &account).await;
    let fresh_url = sso_url(&app, &account).await;
    let (status, cookie, _, _) = open(&fresh_url).await;
    assert_eq!(status, 303);
    let cookie = cookie.unwrap_or_default();
    assert_eq!(page(&app, &cookie).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, none, _, body) = open(&stale).await;
    assert_eq!(status, 410, "expired link refused");
    assert!(none.is_none() && !body.contains("expiry@example.com"));
    let (status, _, body) = page(&app, &cookie).await;
    assert_eq!(status, 401, "the session expired");
    assert!(!body.contains("expiry@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_posts_without_a_valid_csrf_token_are_403_and_change_nothing() {
    let app = fresh_app(Settings::default());
    let (account, order) = customer(&app, "csrf@example.com", "Carl").await;
    let sub = order["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, cookie, _, _) = open(&sso_url(&app, &account).await).await;
    let cookie = cookie.unwrap_or_default();
    let (_, _, html) = page(&app, &cookie).await;
    let token = csrf(&html);
    let before_events = event_types(&app).await;
    let before = app.get_account(&account).await;
    let pm = app
        .call("GET", &format!("/accounts/{account}/payment-methods"), None)
        .await;
    let pm = pm.json["paymentMethods"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!pm.is_empty());

    // A second session's token is not this session's token.
    let (_, other_cookie, _, _) = open(&sso_url(&app, &account).await).await;
    let other_token = csrf(&page(&app, &other_cookie.unwrap_or_default()).await.2);
    assert_ne!(other_token, token);

    for bad in [None, Some(""), Some("forged"), Some(other_token.as_str())] {
        let mut profile = vec![("phone", "+1 555 0199"), ("first", "Mallory")];
        if let Some(b) = bad {
            profile.push(("csrf", b));
        }
        let targets = [
            ("/account/profile".to_owned(), profile.clone()),
            (
                format!("/account/subscriptions/{sub}/cancel"),
                profile[2..].to_vec(),
            ),
            (
                format!("/account/payment-methods/{pm}/remove"),
                profile[2..].to_vec(),
            ),
            ("/account/logout".to_owned(), profile[2..].to_vec()),
        ];
        for (path, form) in targets {
            let (status, _) = post_form(&app, &cookie, &path, &form).await;
            assert_eq!(status, 403, "{path} with csrf {bad:?}");
        }
    }
    let after = app.get_account(&account).await;
    assert_eq!(before.json, after.json, "nothing changed");
    assert_eq!(event_types(&app).await, before_events, "no event");
    assert_eq!(
        app.vault_payment_methods(&app.demo.store, &account)
            .await
            .len(),
        1,
        "card still in the vault"
    );
    assert_eq!(page(&app, &cookie).await.0, 200, "still signed in");

    // With the right token each form works and emits its event.
    let (status, _) = post_form(
        &app,
        &cookie,
        "/account/profile",
        &[("csrf", &token), ("phone", "+1 555 0123")],
    )
    .await;
    assert_eq!(status, 303);
    let (status, _) = post_form(
        &app,
        &cookie,
        &format!("/account/subscriptions/{sub}/cancel"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(status, 303);
    let s = app.get_subscription(&sub).await;
    assert_eq!(s.json["state"], "canceled");
    let (status, _) = post_form(
        &app,
        &cookie,
        &format!("/account/subscriptions/{sub}/resume"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(status, 303);
    let (status, _) = post_form(
        &app,
        &cookie,
        &format!("/account/payment-methods/{pm}/remove"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(status, 303);
    assert!(
        app.vault_payment_methods(&app.demo.store, &account)
            .await
            .is_empty(),
        "crypto-shredded in the vault"
    );
    let s = app.get_subscription(&sub).await;
    assert_eq!(s.json["state"], "active");
    assert_eq!(
        s.json["autoRenew"], false,
        "manual renewal without the card"
    );
    let a = app.get_account(&account).await;
    assert_eq!(a.json["accounts"][0]["contact"]["phone"], "+1 555 0123");
    let events = event_types(&app).await;
    assert_eq!(
        events[before_events.len()..].to_vec(),
        vec![
            "account.updated",
            "subscription.canceled",
            "subscription.uncanceled",
            "payment-method.removed"
        ]
    );

    // Logout ends the session.
    let (status, body) = post_form(&app, &cookie, "/account/logout", &[("csrf", &token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(page(&app, &cookie).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_followed_from_another_site_sets_the_session_and_moves_on_without_a_redirect() {
    let app = fresh_app(Settings::default());
    let (account, _) = customer(&app, "crosssite@example.com", "Cy").await;
    let url = sso_url(&app, &account).await;
    let token = url.rsplit('/').next().unwrap_or_default().to_owned();
    let r = browser()
        .get(&url)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A 303 would lose the SameSite=Strict cookie on a cross-site chain: a page of ours instead.
    assert_eq!(r.status().as_u16(), 200);
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        set.starts_with("sr_session=") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let body = r.text().await.unwrap_or_default();
    assert!(
        body.contains("http-equiv=\"refresh\" content=\"0;url=/account\""),
        "{body}"
    );
    assert!(!body.contains(&token) && !body.contains("crosssite@example.com"));
    let cookie = set.split(';').next().unwrap_or_default().to_owned();
    assert_eq!(page(&app, &cookie).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_html_special_characters_are_escaped_on_the_page() {
    let app = fresh_app(Settings::default());
    let evil = "<script>alert(1)</script>\"'&";
    let (account, _) = customer(&app, "xss@example.com", evil).await;
    let upd = app
        .call(
            "POST",
            &format!("/accounts/{account}"),
            Some(
                &json!({"contact": {"company": "<img src=x onerror=alert(2)>"},
                "address": {"city": "\"><b>bold</b>"}}),
            ),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    let (_, cookie, _, _) = open(&sso_url(&app, &account).await).await;
    let (status, _, html) = page(&app, &cookie.unwrap_or_default()).await;
    assert_eq!(status, 200);
    assert!(!html.contains("<script>alert(1)"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(!html.contains("<b>bold</b>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"),
        "{html}"
    );
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
}

/// The `subscription.canceled` (and `subscription.uncanceled`) events of one subscription, in
/// order, from the events API.
async fn subscription_events(store: &Merchant, kind: &str, sub: &str) -> Vec<Value> {
    let a = store.unprocessed_events(&[("begin", "0")]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["type"] == kind && e["data"]["subscription"] == sub)
        .map(|e| e["data"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_the_account_page_and_from_the_api_emit_the_same_subscription_object() {
    let app = fresh_app(Settings::default());
    let (account, order) = customer(&app, "samecancel@example.com", "Sam").await;
    let sub = order["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, cookie, _, _) = open(&sso_url(&app, &account).await).await;
    let cookie = cookie.unwrap_or_default();
    let (_, _, html) = page(&app, &cookie).await;
    let token = csrf(&html);
    // Customer cancels and resumes on the page, then the merchant cancels and resumes by API.
    for action in ["cancel", "resume"] {
        let (status, _) = post_form(
            &app,
            &cookie,
            &format!("/account/subscriptions/{sub}/{action}"),
            &[("csrf", &token)],
        )
        .await;
        assert_eq!(status, 303, "{action}");
    }
    let c = app.cancel_subscription(&sub).await;
    assert_eq!(c.status, 200, "{}", c.text);
    let body = json!({"subscriptions": [{"subscription": sub, "deactivation": null}]});
    let r = app
        .call("POST", &format!("/subscriptions/{sub}"), Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    for (kind, state) in [
        ("subscription.canceled", "canceled"),
        ("subscription.uncanceled", "active"),
    ] {
        let evs = subscription_events(&app, kind, &sub).await;
        assert_eq!(evs.len(), 2, "{kind}: page and API: {evs:?}");
        let keys = |v: &Value| {
            let mut k: Vec<String> = v
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        assert_eq!(
            keys(&evs[0]),
            keys(&evs[1]),
            "{kind}: one shape from both paths"
        );
        for data in &evs {
            // FastSpring's payload: the subscription object, with its account.
            assert_eq!(data["id"], sub.as_str(), "{kind}: {data}");
            assert_eq!(data["subscription"], sub.as_str());
            assert_eq!(data["account"], account.as_str());
            assert_eq!(data["state"], state);
            assert_eq!(data["product"], order["items"][0]["product"]);
            assert!(data.get("action").is_none() && data.get("result").is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_on_the_account_page_follow_the_api_rules_and_write_its_events() {
    let clock = TestClock::new();
    let sys = clock.start_system("strongroom-page-pause-");
    let store = sys.merchant(&sys.demo);
    let (account, order) = customer(&store, "pausepage@example.com", "Pia").await;
    let sub = order["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, cookie, _, _) = open(&sso_url(&store, &account).await).await;
    let cookie = cookie.unwrap_or_default();
    let form = |action: &str| format!("/account/subscriptions/{sub}/{action}");
    let offered = async |action: &str| {
        let (status, _, html) = page(&store, &cookie).await;
        assert_eq!(status, 200);
        html.contains(&format!("action=\"{}\"", form(action)))
    };
    let token = csrf(&page(&store, &cookie).await.2);
    assert!(offered("pause").await && !offered("unpause").await);
    let lifecycle = async || -> Vec<String> {
        let kinds = [
            "subscription.updated",
            "subscription.paused",
            "subscription.resumed",
        ];
        let all = event_types(&store).await;
        all.into_iter()
            .filter(|t| kinds.contains(&t.as_str()))
            .collect()
    };

    // Without the session's CSRF token: 403 and nothing changes.
    for action in ["pause", "unpause"] {
        for bad in [vec![], vec![("csrf", "forged")]] {
            let (status, _) = post_form(&store, &cookie, &form(action), &bad).await;
            assert_eq!(status, 403, "{action} with {bad:?}");
        }
    }
    let s = subscription_of(&store, &sub).await;
    assert_eq!(
        (&s["state"], &s["isPauseScheduled"]),
        (&json!("active"), &json!(false))
    );
    assert!(lifecycle().await.is_empty(), "no event");

    let post = async |action: &str| {
        let (status, body) = post_form(&store, &cookie, &form(action), &[("csrf", &token)]).await;
        assert_eq!(status, 303, "{action}: {body}");
    };
    // Pause 1 period: scheduled from the next charge date, as `POST …/pause` does; Resume
    // removes it again.
    post("pause").await;
    let s = subscription_of(&store, &sub).await;
    assert_eq!(
        (&s["state"], &s["isPauseScheduled"]),
        (&json!("active"), &json!(true))
    );
    assert!(offered("unpause").await && !offered("pause").await);
    post("unpause").await;
    assert_eq!(
        subscription_of(&store, &sub).await["isPauseScheduled"],
        false
    );
    assert!(offered("pause").await);

    // Paused at the charge date (the renewal job), then resumed from the page.
    post("pause").await;
    let next = subscription_of(&store, &sub).await["next"]
        .as_i64()
        .unwrap_or_default();
    clock.set(next + 3_600_000);
    wait_for(&store, &sub, "paused", |s| s["state"] == "paused").await;
    assert!(offered("unpause").await && offered("cancel").await && !offered("pause").await);
    post("unpause").await;
    let s = subscription_of(&store, &sub).await;
    assert_eq!(
        (&s["state"], &s["isPauseScheduled"]),
        (&json!("active"), &json!(false))
    );
    // A second click finds it running: back to the page, no second event.
    post("unpause").await;
    assert_eq!(
        lifecycle().await,
        [
            "subscription.updated",
            "subscription.updated",
            "subscription.updated",
            "subscription.paused",
            "subscription.resumed"
        ],
        "the API's events, one per change"
    );
    // The resumed period is charged, once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while charges_of(&sys.processor, &sys.demo.store, &sub)
        .await
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "never charged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    some_job_runs().await;
    assert_eq!(
        charges_of(&sys.processor, &sys.demo.store, &sub)
            .await
            .len(),
        1
    );
}
