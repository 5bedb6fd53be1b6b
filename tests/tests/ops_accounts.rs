//! accounts-api's operations surface against the real `accounts-api dev` system: request ids
//! in responses and JSON logs (never the Authorization header), metrics that move, liveness vs
//! readiness as the vault goes away, the failed-auth limits, and header floods / huge bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::Command;
use std::time::Duration;
use tests::accounts::{Credentials, System, call, http_client, start_system};
use tests::{Service, bin_path, temp_dir};

fn client_from(addr: &str) -> reqwest::Client {
    shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .local_address(Some(addr.parse::<IpAddr>().unwrap()))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The value of one series in a Prometheus text page (0 if absent).
fn series(page: &str, prefix: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_page(sys: &System) -> String {
    let resp = sys
        .http
        .get(format!("{}/metrics", sys.api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text().await.unwrap()
}

#[tokio::test]
async fn json_logs_carry_the_request_id_every_response_returns_and_never_the_credentials() {
    let data = temp_dir("strongroom-jsonlogs-");
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.arg("dev")
        .arg("--data")
        .arg(data.path())
        .arg("--port")
        .arg("0")
        .env("RUST_LOG", "debug")
        .env("VAULT_LOG", "debug")
        .env("STRONGROOM_LOG_FORMAT", "json");
    let service = Service::spawn("accounts-api dev (json logs)", cmd);
    let ready: Value =
        serde_json::from_str(&service.wait_for_line("STRONGROOM_READY ", Duration::from_secs(60)))
            .unwrap();
    let api = ready["api"].as_str().unwrap().to_owned();
    let creds = Credentials::from_json(&ready);
    let http = http_client();

    let ok = call(&http, &api, Some(&creds), "GET", "/accounts", None, None).await;
    assert_eq!(ok.status, 200);
    let id = ok.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "made ids are UUIDs: {id}"
    );
    let denied = call(&http, &api, None, "GET", "/accounts", None, None).await;
    assert_eq!(denied.status, 401);
    assert!(denied.headers.contains_key("x-request-id"), "errors too");
    let missing = call(&http, &api, Some(&creds), "GET", "/nowhere", None, None).await;
    assert!(missing.headers.contains_key("x-request-id"), "and 404s");

    // A proxy's clean id flows through; anything else is replaced, never echoed.
    let resp = http
        .get(format!("{api}/healthz"))
        .header("x-request-id", "edge-7f3a.1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "edge-7f3a.1");
    let resp = http
        .get(format!("{api}/healthz"))
        .header("x-request-id", "x\"}, \"injected\": 1")
        .send()
        .await
        .unwrap();
    assert!(uuid::Uuid::parse_str(resp.headers()["x-request-id"].to_str().unwrap()).is_ok());

    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everything but the READY line and the banner's credential and curl lines (dev mode prints
    // the demo credentials there, on stdout).
    let logs: String = service
        .output()
        .lines()
        .filter(|l| {
            !l.starts_with("STRONGROOM_READY ")
                && !l.starts_with("    Password: ")
                && !l.starts_with("    curl ")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let line = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["span"]["request_id"] == id.as_str() && v["message"] == "request")
        .unwrap_or_else(|| panic!("no JSON access line with request id {id}:\n{logs}"));
    assert_eq!(line["route"], "/accounts");
    assert_eq!(line["status"], 200);
    assert!(
        !logs.contains(&creds.password),
        "the password never reaches a log"
    );
    let basic = {
        use std::fmt::Write as _;
        let raw = format!("{}:{}", creds.username, creds.password);
        // reqwest's header value: base64 of user:password.
        let mut s = String::new();
        let _ = write!(s, "{}", base64_standard(raw.as_bytes()));
        s
    };
    assert!(!logs.contains(&basic), "nor the Authorization header");
    assert!(!logs.to_ascii_lowercase().contains("authorization: basic"));
}

fn base64_standard(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn metrics_move_with_requests_and_readiness_follows_the_vault_while_liveness_stays() {
    let sys = start_system();
    let before = metrics_page(&sys).await;
    let key = "accounts_api_http_requests_total{method=\"GET\",route=\"/accounts\",status=\"200\"}";
    let n = series(&before, key);
    for _ in 0..3 {
        assert_eq!(
            sys.call(&sys.demo, "GET", "/accounts", None).await.status,
            200
        );
    }
    let after = metrics_page(&sys).await;
    assert_eq!(series(&after, key), n + 3.0, "{after}");
    assert!(after.contains(
        "accounts_api_http_request_duration_seconds_bucket{method=\"GET\",route=\"/accounts\",status=\"200\",le=\"+Inf\"}"
    ));
    assert!(after.contains("# TYPE accounts_api_charges_total counter"));
    // Domain counters move too: a rebill of an unknown subscription is a refused renewal step.
    let rebill = serde_json::json!({"subscriptions": [{"subscription": "no-such-subscription"}]});
    let a = sys
        .call(&sys.demo, "POST", "/subscriptions/charge", Some(&rebill))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let key = "accounts_api_charges_total{outcome=\"refused\"}";
    assert_eq!(
        series(&metrics_page(&sys).await, key),
        series(&after, key) + 1.0
    );
    assert!(
        after.contains("accounts_api_webhook_outbox_depth 0"),
        "{after}"
    );
    assert!(
        !after.contains(&sys.demo.username),
        "no store credentials or ids in labels"
    );

    let get = |p: &'static str| {
        let http = sys.http.clone();
        let url = format!("{}{p}", sys.api);
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 200);
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(sys.vault_pid.to_string())
        .status();
    let mut ready = 200;
    for _ in 0..50 {
        ready = get("/readyz").await;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 503, "not ready while the vault is unreachable");
    assert_eq!(get("/healthz").await, 200, "but still live");
}

#[tokio::test]
async fn ten_thousand_bad_passwords_get_429_fast_while_another_username_from_that_address_and_the_right_password_from_another_address_work()
 {
    let sys = start_system();
    let attacker = client_from("127.0.0.2");
    let bad = Credentials {
        password: "not-the-password".into(),
        ..sys.demo.clone()
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, api, bad) = (attacker.clone(), sys.api.clone(), bad.clone());
        workers.spawn(async move {
            let (mut unauthorized, mut limited, mut retry_after_ok) = (0, 0, true);
            for _ in 0..1250 {
                let a = call(&c, &api, Some(&bad), "GET", "/accounts", None, None).await;
                match a.status.as_u16() {
                    401 => unauthorized += 1,
                    429 => {
                        limited += 1;
                        retry_after_ok &= a
                            .headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .is_some_and(|s| (1..=60).contains(&s));
                        assert_eq!(a.json["result"], "error", "429 in the envelope");
                    }
                    s => panic!("unexpected {s}"),
                }
            }
            (unauthorized, limited, retry_after_ok)
        });
    }
    let (mut unauthorized, mut limited) = (0, 0);
    while let Some(r) = workers.join_next().await {
        let (u, l, ok) = r.unwrap();
        assert!(ok, "every 429 says when to retry");
        unauthorized += u;
        limited += l;
    }
    assert_eq!(unauthorized + limited, 10_000);
    assert!(
        unauthorized <= 20 + 8,
        "{unauthorized} guesses were checked"
    );

    // The right password from the attacking address is refused too (the address is blocked
    // for this username) …
    let a = call(
        &attacker,
        &sys.api,
        Some(&sys.demo),
        "GET",
        "/accounts",
        None,
        None,
    )
    .await;
    assert_eq!(a.status, 429);
    // … but another username from the same address is still checked, not locked out (many
    // stores may share an address: an office, a proxy) …
    let other = Credentials {
        username: format!("{}-other", sys.demo.username),
        ..bad.clone()
    };
    let a = call(
        &attacker,
        &sys.api,
        Some(&other),
        "GET",
        "/accounts",
        None,
        None,
    )
    .await;
    assert_eq!(a.status, 401, "checked, not refused: {}", a.text);
    // … and works from another address.
    let a = call(
        &client_from("127.0.0.1"),
        &sys.api,
        Some(&sys.demo),
        "GET",
        "/accounts",
        None,
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let page = metrics_page(&sys).await;
    assert!(
        series(
            &page,
            "accounts_api_rate_limited_total{reason=\"auth_ip_user\"}"
        ) >= 9_000.0
    );
}

fn pid_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sends `head`, then up to `body_bytes` of body (in HTTP chunks if `chunked`) until the server
/// stops reading, and returns the response head.
fn raw_exchange(addr: &str, head: &str, body_bytes: usize, chunked: bool) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let chunk = if chunked {
        let mut c = b"10000\r\n".to_vec();
        c.extend(std::iter::repeat_n(b'a', 0x10000));
        c.extend_from_slice(b"\r\n");
        c
    } else {
        vec![b'a'; 64 * 1024]
    };
    let mut sent = 0;
    while sent < body_bytes {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_header_flood_and_a_one_gigabyte_body_are_refused_without_memory_growth() {
    let sys = start_system();
    let addr = sys.api.trim_start_matches("http://").to_owned();
    let pid = sys.service.pid();
    let rss_before = pid_rss_kib(pid);
    let auth = format!(
        "Basic {}",
        base64_standard(format!("{}:{}", sys.demo.username, sys.demo.password).as_bytes())
    );
    let addr2 = addr.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut flood = format!("GET /accounts HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n");
        for i in 0..500 {
            flood.push_str(&format!("X-Flood-{i}: {}\r\n", "v".repeat(20)));
        }
        flood.push_str("\r\n");
        let huge_header = format!(
            "GET /accounts HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(1 << 20)
        );
        let declared = format!(
            "POST /accounts HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        );
        let chunked = format!(
            "POST /accounts HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        [
            raw_exchange(&addr2, &flood, 0, false),
            raw_exchange(&addr2, &huge_header, 0, false),
            raw_exchange(&addr2, &declared, 256 << 20, false),
            raw_exchange(&addr2, &chunked, 256 << 20, true),
        ]
    })
    .await
    .unwrap();
    assert!(answers[0].starts_with("HTTP/1.1 431"), "{}", answers[0]);
    assert!(answers[1].starts_with("HTTP/1.1 431"), "{}", answers[1]);
    assert!(answers[2].starts_with("HTTP/1.1 413"), "{}", answers[2]);
    // A chunked body has no length up front: it is cut at the 64 KiB limit (413), or the
    // connection is closed under it; either way not read to the end.
    assert!(
        answers[3].is_empty() || answers[3].starts_with("HTTP/1.1 413"),
        "{}",
        answers[3]
    );
    let rss_after = pid_rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Still serving.
    assert_eq!(
        sys.call(&sys.demo, "GET", "/accounts", None).await.status,
        200
    );
}

#[tokio::test]
async fn the_openapi_document_is_served_without_credentials_and_is_valid_openapi_3() {
    let sys = start_system();
    let resp = sys
        .http
        .get(format!("{}/openapi.json", sys.api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/accounts",
        "/orders",
        "/subscriptions/{id}",
        "/webhooks",
        "/events/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert_eq!(
        doc["paths"]["/webhooks"]["get"]["x-strongroom-extension"],
        true
    );

    // Structural validation by an independent implementation (CI installs it).
    let dir = temp_dir("openapi");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import json,sys\nfrom openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))",
        )
        .arg(&file)
        .output();
    match check {
        Ok(out) if out.status.success() => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            tests::tool::missing_tool("the Python module openapi-spec-validator");
        }
        Ok(out) => panic!(
            "the document does not validate:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => tests::tool::missing_tool(&format!("python3 ({e})")),
    }
}

/// `accounts-api serve` with a `[limits]` table: the connection cap and the header-read timeout.
#[test]
fn slow_clients_are_cut_off_connections_beyond_the_cap_are_closed_and_a_store_over_its_rate_gets_429()
 {
    shared::tls::install_crypto_provider();
    let dir = temp_dir("accounts-limits");
    shared::pki::ensure_dev_pki(&dir.path().join("pki")).unwrap();
    let config = dir.path().join("accounts.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndata = \"data\"\npublic_url = \"https://accounts.example.com\"\n[vault]\naddr = \"127.0.0.1:1\"\n\
         ca = \"pki/ca.pem\"\ncert = \"pki/accounts.pem\"\nkey = \"pki/accounts.key\"\n\
         [limits]\nmax_connections = 2\nheader_read_timeout_secs = 1\n\
         store_requests_per_sec = 1\nstore_burst = 3\n",
    )
    .unwrap();
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.arg("serve").arg("--config").arg(&config);
    let service = Service::spawn("accounts-api serve", cmd);
    let url = service.wait_for_line("ACCOUNTS_API_LISTENING ", Duration::from_secs(30));
    let addr = url.trim_start_matches("http://").to_owned();

    // Two idle connections hold both slots; a third is closed at once.
    let a = TcpStream::connect(&addr).unwrap();
    let b = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut buf = [0u8; 64];
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection over the cap was not closed: {other:?}"),
    }

    // A client that starts a request and stalls is cut off by the header-read timeout.
    let mut slow = a;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the stalled connection was not closed: {e}"),
        }
    }
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(b);

    // Once the slots are free again, a normal request is served.
    std::thread::sleep(Duration::from_millis(1500));
    let mut ok = TcpStream::connect(&addr).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = ok.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Per-store rate (1/s, burst 3): a quick run of requests is cut off with 429 + Retry-After.
    let store = tests::accounts::create_store(&dir.path().join("data"), "Rate limited");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses: Vec<(u16, Option<String>)> = rt.block_on(async {
        let http = http_client();
        let mut out = Vec::new();
        for _ in 0..8 {
            let a = call(&http, &url, Some(&store), "GET", "/accounts", None, None).await;
            let retry = a
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            out.push((a.status.as_u16(), retry));
        }
        out
    });
    assert!(
        statuses[..3].iter().all(|(s, _)| *s == 200),
        "the burst is served: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|(s, r)| *s == 429 && r.as_deref() == Some("1")),
        "then 429 with Retry-After: {statuses:?}"
    );
}

/// accounts-api holds raw tokens at checkout: like the vault, `dev` and `serve` run without core
/// dumps (RLIMIT_CORE 0, soft and hard).
#[test]
fn accounts_api_turns_core_dumps_off() {
    let system = tests::accounts::start_system();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", system.service.pid()))
        .unwrap_or_default();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit line in {limits}"));
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
}
