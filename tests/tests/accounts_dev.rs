//! A newcomer's first minute with `accounts-api dev` (issue 15, point 10): the human banner
//! after the READY line names the API and the demo store, its two `curl` lines work exactly as
//! printed (run by `sh` with the real curl when it is installed, otherwise their exact URL,
//! credentials, headers and body sent with reqwest), and `/docs` is the OpenAPI document as
//! browsable Swagger UI served from the binary itself.

use serde_json::Value;
use std::time::Duration;
use tests::accounts::{System, start_system};

const BANNER_START: &str = "==> Strongroom dev system is running";
const BANNER_END: &str = "==> Ctrl-C stops";

/// The banner's lines, once it is complete.
fn banner(sys: &System) -> Vec<String> {
    sys.service
        .wait_for_line(BANNER_END, Duration::from_secs(30));
    let out = sys.service.output();
    let lines: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with(BANNER_START))
        .take_while(|l| !l.starts_with(BANNER_END))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "no banner in:\n{out}");
    lines
}

/// Splits a shell line the way `sh` does for what the banner prints: words separated by
/// spaces, single quotes taken literally.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line}");
    if in_word {
        words.push(word);
    }
    words
}

/// Runs one printed `curl` line and returns the JSON it answered.
async fn run_as_printed(line: &str) -> Value {
    if tests::tool::find_program(&["curl"]).is_some() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        assert!(
            out.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    }
    let words = shell_words(line);
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{line}");
    let url = words.last().unwrap_or_else(|| panic!("no URL in {line}"));
    let mut req = tests::accounts::http_client().post(url.as_str());
    let mut args = words[1..words.len() - 1].iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} has no value in {line}"))
        };
        req = match flag.as_str() {
            "-sS" => req,
            "-u" => {
                let (user, password) = value()
                    .split_once(':')
                    .unwrap_or_else(|| panic!("-u USER:PASSWORD in {line}"));
                req.basic_auth(user, Some(password))
            }
            "-H" => {
                let (name, v) = value()
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("-H 'Name: value' in {line}"));
                req.header(name, v)
            }
            "-d" => req.body(value().clone()),
            other => panic!("the banner's curl uses {other}, which this test does not speak"),
        };
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{line}: {e}"));
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("{line}: not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_banner_names_the_api_and_demo_store_and_its_curl_lines_work_as_printed() {
    let sys = start_system();
    let lines = banner(&sys);
    let text = lines.join("\n");
    for expected in [
        format!("API:      {}", sys.api),
        format!("{}/docs", sys.api),
        format!("Store:    {}", sys.demo.store),
        format!("Username: {}", sys.demo.username),
        format!("Password: {}", sys.demo.password),
    ] {
        assert!(
            text.contains(&expected),
            "banner lacks {expected:?}:\n{text}"
        );
    }
    let curls: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("    curl "))
        .collect();
    assert_eq!(curls.len(), 2, "two curl lines:\n{text}");

    // 1. Create an account.
    let created = run_as_printed(curls[0].trim()).await;
    assert_eq!(created["action"], "account.create", "{created}");
    assert_eq!(created["result"], "success", "{created}");
    let account = created["account"].as_str().unwrap_or_default().to_owned();
    let got = sys
        .call(&sys.demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    assert_eq!(got.status, 200, "{}", got.text);

    // 2. Complete a checkout: the subscription renews automatically because the vault now holds
    // the card.
    let order = run_as_printed(curls[1].trim()).await;
    assert_eq!(order["result"], "success", "{order}");
    assert_eq!(order["completed"], true, "{order}");
    assert_eq!(order["autoRenew"], true, "{order}");
    let buyer = order["account"].as_str().unwrap_or_default().to_owned();
    let methods = sys
        .call(
            &sys.demo,
            "GET",
            &format!("/accounts/{buyer}/payment-methods"),
            None,
        )
        .await;
    assert_eq!(methods.status, 200, "{}", methods.text);
    assert!(
        methods.text.contains("4242"),
        "the card is saved: {}",
        methods.text
    );

    // Pasted twice, the checkout line answers the first checkout again (its Idempotency-Key).
    let again = run_as_printed(curls[1].trim()).await;
    assert_eq!(again["order"], order["order"], "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_answers_swagger_ui_html_that_loads_the_served_openapi_document_from_this_server() {
    let sys = start_system();
    let http = tests::accounts::http_client();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(&path)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let status = resp.status().as_u16();
            let kind = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, kind, resp.text().await.unwrap_or_default())
        }
    };
    // `/docs` redirects to `/docs/`; reqwest follows, as a browser does.
    let (status, kind, page) = get(format!("{}/docs", sys.api)).await;
    assert_eq!(status, 200, "{page}");
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(page.contains("swagger-ui"), "{page}");
    // Everything the page loads comes from this server: no absolute URL, each file served.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        assert!(page.contains(asset), "the page loads {asset}: {page}");
        let (status, _, body) = get(format!("{}/docs/{asset}", sys.api)).await;
        assert_eq!(status, 200, "{asset}");
        assert!(!body.is_empty(), "{asset}");
    }
    let (_, _, init) = get(format!("{}/docs/swagger-initializer.js", sys.api)).await;
    assert!(
        init.contains("\"url\": \"/openapi.json\""),
        "the docs page loads this server's document:\n{init}"
    );
    let (status, kind, doc) = get(format!("{}/openapi.json", sys.api)).await;
    assert_eq!(status, 200, "{doc}");
    assert!(kind.starts_with("application/json"), "{kind}");
}
