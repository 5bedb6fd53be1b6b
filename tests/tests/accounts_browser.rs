//! The account page in a real browser: headless Chromium driven by chromedriver over the W3C
//! WebDriver HTTP protocol (plain JSON calls). Opens the one-time sign-in URL, sees the card's
//! last four and never the token, edits the phone number, removes the card, saves screenshots
//! under `target/test-artifacts/`, and is refused on a second visit of the same URL.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run` installs them when
//! absent). Without them it follows the suite's tool policy (`tests::require_tool`): a visible
//! `SKIPPED` locally, a failure under `STRONGROOM_REQUIRE_TOOLS=1` (CI); never a silent pass.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::accounts::{order_body, start_system_with_env, unique_token};
use tests::{Service, temp_dir};

/// W3C WebDriver's key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Driver {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self.http.request(m, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "webdriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page source once it contains `text` (a form post may still be navigating).
    async fn source_containing(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let html = self.source().await;
            if html.contains(text) || Instant::now() > deadline {
                return html;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn current_url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn screenshot(&self, file: &Path) {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot base64: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        std::fs::write(file, png).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// `target/test-artifacts/` of this workspace (next to the profile folder of the test binary).
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|t| t.join("test-artifacts"))
        .unwrap_or_else(|| PathBuf::from("target/test-artifacts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_signs_in_with_the_link_edits_the_phone_removes_the_card_and_cannot_reuse_the_link()
 {
    // Debian: `apt-get install -y chromium chromium-driver` (.ci/run does this).
    let Some(chromedriver) = tests::require_any_tool(&["chromedriver"]) else {
        return;
    };
    let Some(chromium) =
        tests::require_any_tool(&["chromium", "chromium-browser", "google-chrome"])
    else {
        return;
    };

    let sys = start_system_with_env(Arc::new(temp_dir("strongroom-browser-")), &[]);
    let mut body = order_body("browser@example.com", &unique_token(), true, true, true);
    body["payment"]["last4"] = json!("7391");
    let order = sys.call(&sys.demo, "POST", "/orders", Some(&body)).await;
    assert_eq!(order.status, 200, "{}", order.text);
    let account = order.json["account"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let auth = sys
        .call(
            &sys.demo,
            "GET",
            &format!("/accounts/{account}/authenticate"),
            None,
        )
        .await;
    let sso = auth.json["accounts"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let token = sso.rsplit('/').next().unwrap_or_default().to_owned();
    assert_eq!(token.len(), 43, "{}", auth.text);

    // chromedriver on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(&chromedriver);
    cmd.arg(format!("--port={port}"));
    let _driver_process = Service::spawn("chromedriver", cmd);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/status")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = temp_dir("strongroom-chromium-");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.to_string_lossy(),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1200,1600",
                format!("--user-data-dir={}", profile.path().display())]
        }
    }}});
    let created = http
        .post(format!("{base}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap_or_else(|e| panic!("new session: {e}"));
    let created: Value = created.json().await.unwrap_or(Value::Null);
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no webdriver session: {created}"))
        .to_owned();
    let d = Driver {
        http: http.clone(),
        base: base.clone(),
        session: session.clone(),
    };
    // The steps run in their own task so that, pass or fail, the browser session is closed
    // afterwards (chromedriver then stops Chromium; killing chromedriver alone would orphan it).
    let outcome = tokio::spawn(async move { browse(d, sys, sso, token, account).await }).await;
    let _ = http
        .delete(format!("{base}/session/{session}"))
        .send()
        .await;
    drop(profile);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn browse(
    d: Driver,
    sys: tests::accounts::System,
    sso: String,
    token: String,
    account: String,
) {
    // 1. The link, clicked on another site (as in a merchant's page or a webmail), signs in and
    //    lands on the account page.
    d.goto(&format!(
        "data:text/html,<a id=\"go\" href=\"{}\">Manage your account</a>",
        sso.replace(':', "%3A").replace('/', "%2F")
    ))
    .await;
    let go = d.element("#go").await;
    d.call("POST", &format!("/element/{go}/click"), Some(json!({})))
        .await;
    d.source_containing("Your account").await;
    assert!(
        d.current_url().await.ends_with("/account"),
        "{}",
        d.current_url().await
    );
    let html = d.source().await;
    assert!(html.contains("7391"), "the card's last four are shown");
    assert!(html.contains("12/30"), "and its expiry");
    assert!(!html.contains(&token), "the token is nowhere in the page");
    d.screenshot(&artifacts_dir().join("account-page.png"))
        .await;

    // 2. Edit the phone number.
    let phone = d.element("#phone").await;
    d.call("POST", &format!("/element/{phone}/clear"), Some(json!({})))
        .await;
    d.call(
        "POST",
        &format!("/element/{phone}/value"),
        Some(json!({"text": "+1 555 0142"})),
    )
    .await;
    let save = d.element("#save-profile").await;
    d.call("POST", &format!("/element/{save}/click"), Some(json!({})))
        .await;
    assert!(d.current_url().await.ends_with("/account"));
    assert!(
        d.source_containing("value=\"+1 555 0142\"")
            .await
            .contains("+1 555 0142")
    );
    let a = sys
        .call(&sys.demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    assert_eq!(a.json["accounts"][0]["contact"]["phone"], "+1 555 0142");

    // 3. Remove the card: gone from the page and crypto-shredded in the vault.
    let remove = d.element("tr.payment-method button").await;
    d.call("POST", &format!("/element/{remove}/click"), Some(json!({})))
        .await;
    let html = d.source_containing("No saved payment methods").await;
    assert!(
        html.contains("No saved payment methods"),
        "{html}\n{}",
        sys.logs()
    );
    assert!(!html.contains("7391"));
    assert!(
        sys.vault_payment_methods(&sys.demo.store, &account)
            .await
            .is_empty()
    );
    d.screenshot(&artifacts_dir().join("account-page-card-removed.png"))
        .await;

    // 4. The same link a second time is refused.
    d.call("DELETE", "/cookie", None).await;
    d.goto(&sso).await;
    let html = d.source_containing("not valid").await;
    assert!(html.contains("This sign-in link is not valid"), "{html}");
    assert!(!html.contains("browser@example.com"));
    d.screenshot(&artifacts_dir().join("sign-in-link-refused.png"))
        .await;
}
