//! Webhook receivers and URLs that try to hurt accounts-api (issue 12, parts 2 and 3): a `202`
//! with a 200 MB body, a store whose hundred receivers never answer, URLs into our own network
//! (refused with 422 at configuration, and again at delivery after a restart under a stricter
//! policy). Loopback only: the "hostile" receivers are raw TCP servers on 127.0.0.1.

use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tests::accounts::{System, create_store, start_system_with_env};
use tests::inproc::{App, spawn_app_with};
use tests::receiver::{Receiver, Reply};
use tests::{bin_path, run, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FAST: &[(&str, &str)] = &[
    ("STRONGROOM_WEBHOOK_RETRY_BASE_MS", "200"),
    ("STRONGROOM_WEBHOOK_MAX_ATTEMPTS", "50"),
];

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())
}

/// The peak resident set (VmHWM, KiB) of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// Reads one HTTP/1.1 request (headers, then `Content-Length` bytes of body).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
    }
}

/// A receiver that answers every post with `status` and a chunked body of `total` bytes,
/// streamed 64 KiB at a time (nothing allocated up front), and records each post's event ids.
struct FloodReceiver {
    url: String,
    status: Arc<AtomicUsize>,
    posts: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    /// Body bytes the client took before it hung up, per answer (summed).
    sent: Arc<AtomicUsize>,
}

impl FloodReceiver {
    async fn start(status: u16, total: usize) -> FloodReceiver {
        let listener = tokio::net::TcpListener::bind(local())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}/flood",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let status = Arc::new(AtomicUsize::new(usize::from(status)));
        let posts: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
        let sent = Arc::new(AtomicUsize::new(0));
        let (st, ps, se) = (Arc::clone(&status), Arc::clone(&posts), Arc::clone(&sent));
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (st, ps, se) = (Arc::clone(&st), Arc::clone(&ps), Arc::clone(&se));
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut sock).await else {
                        return;
                    };
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let ids = v["events"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    if let Ok(mut p) = ps.lock() {
                        p.push(ids);
                    }
                    let head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
                        st.load(Ordering::SeqCst)
                    );
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let block = vec![b'x'; 64 * 1024];
                    let frame =
                        [format!("{:x}\r\n", block.len()).as_bytes(), &block, b"\r\n"].concat();
                    let mut written = 0;
                    while written < total {
                        if sock.write_all(&frame).await.is_err() {
                            break;
                        }
                        written += block.len();
                        se.fetch_add(block.len(), Ordering::SeqCst);
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        FloodReceiver {
            url,
            status,
            posts,
            sent,
        }
    }

    fn posts(&self) -> Vec<Vec<String>> {
        self.posts.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_with_a_200_mb_body_is_not_read_whole_and_its_events_are_sent_again() {
    let sys = fresh(FAST);
    let demo = sys.merchant(&sys.demo);
    let flood = FloodReceiver::start(202, 200 * 1024 * 1024).await;
    let a = demo.add_webhook(&json!({"url": flood.url})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    demo.one_off_checkout("flood@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Re-sent: the 202's body acknowledged nothing, so the same events come again.
    while flood.posts().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no re-sends: {:?}",
            flood.posts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = flood.posts();
    assert!(!posts[0].is_empty());
    assert_eq!(posts[1], posts[0], "the same events again");
    let pending = demo.unprocessed_ids().await;
    assert!(
        posts[0].iter().all(|id| pending.contains(id)),
        "still unprocessed: {pending:?}"
    );
    // The receiver offered 600 MB in all; accounts-api took little of it and stayed small.
    let taken = flood.sent.load(Ordering::SeqCst);
    assert!(
        taken < 3 * 200 * 1024 * 1024,
        "the client hung up early ({taken} bytes)"
    );

    // A 200 with such a body: processed, the body never read.
    flood.status.store(200, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !demo.unprocessed_ids().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "a 200 marks the events processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = peak_rss_kib(sys.service.pid());
    assert!(peak < 256 * 1024, "accounts-api peaked at {peak} KiB");
}

/// A TCP server that accepts and never answers; counts the connections open now.
async fn hanging_receiver() -> (String, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind(local())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let open = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (o, s) = (Arc::clone(&open), Arc::clone(&stop));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (o, s) = (Arc::clone(&o), Arc::clone(&s));
            o.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Read (so the request is sent) but never answer, until the client gives up.
                while !s.load(Ordering::SeqCst) {
                    let read =
                        tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf));
                    if let Ok(Ok(0) | Err(_)) = read.await {
                        break;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (base, open, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_100_hanging_webhooks_does_not_delay_another_stores_delivery() {
    let sys = fresh(&[
        ("STRONGROOM_WEBHOOKS_PER_STORE", "100"),
        ("STRONGROOM_WEBHOOK_TIMEOUT_MS", "60000"),
    ]);
    let hog = sys.merchant(&sys.demo);
    let (base, open, stop) = hanging_receiver().await;
    for i in 0..100 {
        let a = hog
            .add_webhook(&json!({"url": format!("{base}/h{i}")}))
            .await;
        assert_eq!(a.status, 200, "webhook {i}: {}", a.text);
    }
    let one_more = hog
        .add_webhook(&json!({"url": format!("{base}/h100")}))
        .await;
    assert_eq!(one_more.status, 422, "{}", one_more.text);
    assert!(
        one_more.json["error"]["webhooks"]
            .as_str()
            .is_some_and(|m| m.contains("(100)"))
    );

    let other_creds = create_store(sys.data.path(), "Other store");
    let other = sys.merchant(&other_creds);
    let rx = Receiver::start(local(), None, Reply::Ok).await;
    let a = other.add_webhook(&json!({"url": rx.url()})).await;
    assert_eq!(a.status, 200, "{}", a.text);

    hog.one_off_checkout("hog@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) < 8 {
        assert!(Instant::now() < deadline, "the hog's posts never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its posts hang; a second checkout gives it more due rows while they do.
    hog.one_off_checkout("hog2@example.com").await;
    let started = Instant::now();
    other.one_off_checkout("other@example.com").await;
    rx.wait_until(Duration::from_secs(15), "the other store's events", |p| {
        p.iter().flat_map(|p| p.event_ids()).count() >= 2
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the other store waited {took:?}"
    );
    assert_eq!(
        open.load(Ordering::SeqCst),
        8,
        "the hanging store holds exactly its in-flight share"
    );
    stop.store(true, Ordering::SeqCst);
}

fn fresh(env: &[(&str, &str)]) -> System {
    start_system_with_env(Arc::new(temp_dir("strongroom-hostile-")), env)
}

/// An in-process app under `serve`'s default (strict) policy, or with `allow`.
fn app_with(allow: Option<&str>, per_store: usize) -> App {
    let egress = match allow {
        Some(list) => {
            accounts_api::egress::Policy::from_list(list, "test").unwrap_or_else(|e| panic!("{e}"))
        }
        None => accounts_api::egress::Policy::strict(),
    };
    let settings = accounts_api::settings::Settings {
        webhook_egress: Arc::new(egress),
        webhooks_per_store: per_store,
        webhook_retry_base: Duration::from_millis(200),
        webhook_max_attempts: 50,
        ..accounts_api::settings::Settings::default()
    };
    spawn_app_with(false, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_url_class_gets_a_422_naming_the_reason_and_nothing_is_added() {
    let app = app_with(None, 100);
    for (url, reason) in [
        ("http://127.0.0.1:9/hook", "a loopback address (127.0.0.1)"),
        ("http://0x7f000001/", "a loopback address (127.0.0.1)"),
        ("http://2130706433/", "a loopback address (127.0.0.1)"),
        ("http://127.1/", "a loopback address (127.0.0.1)"),
        ("http://[::1]/", "a loopback address (::1)"),
        (
            "http://[::ffff:127.0.0.1]/",
            "a loopback address (127.0.0.1)",
        ),
        ("http://localhost:9/hook", "a loopback address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "a link-local address (169.254.169.254)",
        ),
        ("http://[fe80::1]/", "a link-local address (fe80::1)"),
        ("http://10.0.0.1/", "a private address (10.0.0.1)"),
        ("http://172.16.0.1/", "a private address (172.16.0.1)"),
        ("http://192.168.0.1/", "a private address (192.168.0.1)"),
        (
            "http://[fd00:ec2::254]/",
            "a unique-local address (fd00:ec2::254)",
        ),
        (
            "http://100.64.0.1/",
            "a shared (CGNAT) address (100.64.0.1)",
        ),
        ("http://224.0.0.1/", "a multicast address (224.0.0.1)"),
        ("http://0/", "an unspecified address (0.0.0.0)"),
        ("http://[::]/", "an unspecified address (::)"),
        (
            "http://255.255.255.255/",
            "the broadcast address (255.255.255.255)",
        ),
        ("http://240.0.0.1/", "a reserved address (240.0.0.1)"),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "a cloud metadata service (metadata.google.internal)",
        ),
        ("http://metadata/", "a cloud metadata service (metadata)"),
    ] {
        let a = app.add_webhook(&json!({"url": url})).await;
        assert_eq!(a.status, 422, "{url}: {}", a.text);
        assert_eq!(a.json["result"], "error", "{}", a.text);
        let msg = a.json["error"]["url"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with("webhook url ") && msg.contains(reason),
            "{url}: {msg:?} should name {reason:?}"
        );
    }
    let list = app.list_webhooks().await;
    assert_eq!(list.json["webhooks"], json!([]), "nothing was added");

    // The admin CLI (over the running server's socket) refuses too.
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.args(["webhook", "add", "--url", "http://10.0.0.1/h", "--store"])
        .arg(&app.demo.store)
        .arg("--data")
        .arg(app.data.path());
    let (ok, out, err) = run(cmd);
    assert!(!ok && out.is_empty(), "{out}{err}");
    assert!(err.contains("a private address (10.0.0.1)"), "{err}");
    assert_eq!(app.list_webhooks().await.json["webhooks"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listed_loopback_delivers_and_the_per_store_limit_answers_422() {
    let app = app_with(Some("localhost, 127.0.0.0/8"), 2);
    let rx = Receiver::start(local(), None, Reply::Ok).await;
    let by_name = rx.url().replace("127.0.0.1", "localhost");
    for url in [rx.url(), by_name] {
        let a = app.add_webhook(&json!({"url": url})).await;
        assert_eq!(a.status, 200, "{url}: {}", a.text);
    }
    let third = app
        .add_webhook(&json!({"url": "https://hooks.example.com/x"}))
        .await;
    assert_eq!(third.status, 422, "{}", third.text);
    assert!(
        third.json["error"]["webhooks"]
            .as_str()
            .is_some_and(|m| m.contains("most webhooks allowed (2)")),
        "{}",
        third.text
    );
    assert_eq!(
        app.list_webhooks().await.json["webhooks"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    app.one_off_checkout("allowed@example.com").await;
    // Both webhooks (by address and by allowed name) deliver both events.
    rx.wait_until(Duration::from_secs(15), "two posts of two events", |p| {
        p.iter().flat_map(|p| p.event_ids()).count() >= 4
    })
    .await;
    // Still refused: what the list does not name.
    let a = app_with(Some("127.0.0.0/8"), 10);
    let r = a.add_webhook(&json!({"url": "http://10.0.0.1/"})).await;
    assert_eq!(r.status, 422, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_stored_under_a_wider_policy_is_not_posted_to_after_a_restart_without_it() {
    let data = Arc::new(temp_dir("strongroom-egress-"));
    let rx = Receiver::start(local(), None, Reply::Ok).await;
    let by_name = rx.url().replace("127.0.0.1", "localhost");
    // `dev` allows loopback by default: both are accepted and deliver.
    let mut sys = start_system_with_env(Arc::clone(&data), FAST);
    let demo = sys.merchant(&sys.demo);
    let mut hooks = Vec::new();
    for url in [rx.url(), by_name] {
        let a = demo.add_webhook(&json!({"url": url})).await;
        assert_eq!(a.status, 200, "{}", a.text);
        hooks.push(a.str("/webhook/id"));
    }
    demo.one_off_checkout("before@example.com").await;
    rx.wait_until(Duration::from_secs(15), "both webhooks delivered", |p| {
        p.iter().flat_map(|p| p.event_ids()).count() >= 4
    })
    .await;
    assert!(sys.stop(), "dev stops on SIGTERM");
    let delivered = rx.posts().len();

    // The same folder, strict: neither webhook is posted to again.
    let sys = start_system_with_env(
        Arc::clone(&data),
        &[FAST[0], FAST[1], ("STRONGROOM_WEBHOOK_ALLOW", "none")],
    );
    let demo = sys.merchant(&sys.demo);
    let order = demo.one_off_checkout("after@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each webhook's refusal is logged (the address literal by the pre-check, the name by the
    // client's resolver): the dispatcher did try, and refused.
    let refused = |logs: &str, hook: &str| {
        logs.lines().any(|l| {
            l.contains("refused by the egress policy")
                && l.contains(hook)
                && l.contains("a loopback address")
        })
    };
    loop {
        let logs = sys.logs();
        if hooks.iter().all(|h| refused(&logs, h)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged for {hooks:?}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rx.posts().len(),
        delivered,
        "nothing posted after the restart"
    );
    let pending = demo.unprocessed_ids().await;
    assert!(
        pending.len() >= 2,
        "the new events stay unprocessed: {pending:?} {order}"
    );
}
