//! The account pages as a browser uses them, for the end-to-end tests: one-time sign-in links,
//! the session cookie, the page, and its CSRF-protected form posts.

use crate::accounts::Merchant;
use std::time::Duration;

/// A client that does not follow redirects and keeps no cookies (the tests handle both).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The one-time sign-in URL of `account` (`GET /accounts/{id}/authenticate`).
pub async fn sso_url(store: &Merchant, account: &str) -> String {
    let a = store
        .call("GET", &format!("/accounts/{account}/authenticate"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let item = &a.json["accounts"][0];
    assert_eq!(item["action"], "account.authenticate.get");
    assert_eq!(item["result"], "success");
    assert_eq!(item["account"], account);
    assert!(item["expires"].as_i64().is_some());
    item["url"].as_str().unwrap_or_default().to_owned()
}

/// Opens the link; returns (status, the `name=value` of the session cookie if one was set,
/// Set-Cookie header, body).
pub async fn open(url: &str) -> (u16, Option<String>, String, String) {
    let r = browser()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = r.status().as_u16();
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let cookie = set
        .split(';')
        .next()
        .filter(|c| c.starts_with("sr_session=") && c.len() > 11)
        .map(str::to_owned);
    (status, cookie, set, r.text().await.unwrap_or_default())
}

/// `GET /account` with the session `cookie`: (status, headers, body).
pub async fn page(store: &Merchant, cookie: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = browser()
        .get(format!("{}/account", store.api))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap_or_default())
}

/// Posts `form` (urlencoded) to `path` with the session `cookie`: (status, body).
pub async fn post_form(
    store: &Merchant,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let r = browser()
        .post(format!("{}{path}", store.api))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The CSRF token in the page's forms.
pub fn csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html
        .find(marker)
        .map(|i| i + marker.len())
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The types of the store's unprocessed events, oldest first.
pub async fn event_types(store: &Merchant) -> Vec<String> {
    let a = store.unprocessed_events(&[("begin", "0")]).await;
    a.json["events"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|e| e["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
