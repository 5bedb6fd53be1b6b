//! Webhooks with a real HTTP receiver in the test: signed delivery, 200 and 202 semantics (a
//! 202's unlisted events are re-sent, its listed ones never again),
//! retries while the receiver is down, no event lost across an accounts-api restart, URL
//! validation, and configuration by API and by CLI while the server runs. The secret never
//! comes back in an answer and never reaches a log. Tests that read the logs or restart the
//! server run the real binaries (`fresh`); the others run in process (`fresh_app`).

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tests::accounts::{Merchant, System, start_system_with_env};
use tests::inproc::{App, spawn_app_with};
use tests::receiver::{Receiver, Reply};
use tests::{bin_path, run, temp_dir};

/// Fast retries for the tests (production default: 5 s base, 10 attempts).
const FAST: &[(&str, &str)] = &[
    ("STRONGROOM_WEBHOOK_RETRY_BASE_MS", "200"),
    ("STRONGROOM_WEBHOOK_MAX_ATTEMPTS", "50"),
];

fn fresh(env: &[(&str, &str)]) -> System {
    start_system_with_env(Arc::new(temp_dir("strongroom-hooks-")), env)
}

/// [`FAST`] (or the defaults) for the in-process tier; the receivers listen on 127.0.0.1, so the
/// egress allow-list admits loopback (as `accounts-api dev` does by default).
fn fresh_app(fast: bool) -> App {
    let mut settings = accounts_api::settings::Settings {
        webhook_egress: Arc::new(accounts_api::egress::Policy::loopback()),
        ..accounts_api::settings::Settings::default()
    };
    if fast {
        settings.webhook_retry_base = Duration::from_millis(200);
        settings.webhook_max_attempts = 50;
    }
    spawn_app_with(false, settings)
}

async fn add_hook(store: &Merchant, url: &str, secret: Option<&str>) -> Value {
    let mut body = json!({ "url": url });
    if let Some(s) = secret {
        body["hmacSecret"] = json!(s);
    }
    let a = store.add_webhook(&body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_that_is_not_http_or_https_is_refused_with_422() {
    let app = fresh_app(false);
    for bad in [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "not a url",
        "https://user:pw@example.com/",
    ] {
        let a = app.add_webhook(&json!({"url": bad})).await;
        assert_eq!(a.status, 422, "{bad}: {}", a.text);
        assert!(a.json["error"]["url"].is_string(), "{}", a.text);
    }
    let long = "x".repeat(101);
    let a = app
        .add_webhook(&json!({"url": "https://example.com/h", "hmacSecret": long}))
        .await;
    assert_eq!(a.status, 422, "{}", a.text);
    let list = app.list_webhooks().await;
    assert_eq!(list.json["webhooks"], json!([]), "nothing was added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_delivery_verifies_and_a_200_marks_every_event_processed() {
    let sys = fresh(FAST);
    let demo = sys.merchant(&sys.demo);
    let secret = "whsec-test-3f9c1d0b7a";
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        Some(secret),
        Reply::Ok,
    )
    .await;
    let hook = add_hook(&demo, &rx.url(), Some(secret)).await;
    assert_eq!(hook["webhook"]["signed"], true);
    assert!(
        !hook.to_string().contains(secret),
        "the secret is never returned"
    );
    let list = demo.list_webhooks().await;
    assert!(!list.text.contains(secret), "{}", list.text);
    assert_eq!(list.json["webhooks"][0]["url"], rx.url());

    let order = demo.one_off_checkout("hooked@example.com").await;
    rx.wait_until(Duration::from_secs(15), "two events", |p| {
        p.iter().flat_map(|p| p.event_ids()).count() >= 2
    })
    .await;
    let posts = rx.posts();
    for p in &posts {
        assert_eq!(
            p.signature_valid,
            Some(true),
            "X-FS-Signature verifies: {}",
            p.body
        );
        assert_eq!(
            p.timestamp_signature_valid,
            Some(true),
            "timestamped signature verifies"
        );
    }
    let events: Vec<Value> = posts
        .iter()
        .flat_map(|p| p.json["events"].as_array().cloned().unwrap_or_default())
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["account.created", "order.completed"]);
    assert_eq!(events[1]["data"]["order"], order["id"]);
    // 200: all processed (the settling write follows the answer; give it a moment).
    let mut left = demo.unprocessed_ids().await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = demo.unprocessed_ids().await;
    }
    assert!(left.is_empty(), "still unprocessed: {left:?}");
    // Nothing is re-sent after a 200.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.event_ids().len(), 2);
    assert!(!sys.logs().contains(secret), "the secret reached a log");

    // Rotating the secret (FastSpring's POST /webhooks/keys) signs later posts with the new one.
    let rot = demo
        .rotate_webhook_key(&json!({"url": rx.url(), "hmacSecret": "rotated-secret-value"}))
        .await;
    assert_eq!(rot.status, 200, "{}", rot.text);
    assert_eq!(rot.json["action"], "webhooks.update");
    demo.one_off_checkout("hooked@example.com").await;
    rx.wait_until(Duration::from_secs(15), "the next post", |p| {
        p.len() >= 2 && p.iter().flat_map(|p| p.event_ids()).count() >= 3
    })
    .await;
    let last = rx.posts().pop().unwrap_or_else(|| unreachable!());
    assert_eq!(
        last.signature_valid,
        Some(false),
        "old secret no longer verifies"
    );
}

/// The receiver failing, a checkout: the ids of its two events from the first post, as
/// (`account.created`, `order.completed`).
async fn first_post_ids(app: &App, rx: &Receiver, email: &str) -> (String, String) {
    add_hook(app, &rx.url(), None).await;
    app.one_off_checkout(email).await;
    rx.wait_until(Duration::from_secs(15), "a first attempt", |p| {
        !p.is_empty()
    })
    .await;
    let first = rx.posts()[0].json["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(first.len(), 2);
    let of = |kind: &str| {
        first
            .iter()
            .find(|e| e["type"] == kind)
            .and_then(|e| e["id"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    (of("account.created"), of("order.completed"))
}

/// Polls `GET /events/unprocessed` until it lists exactly `want` (the settling write follows
/// the receiver's answer), or gives its last answer after 5 s.
async fn unprocessed_become(store: &Merchant, want: &[String]) -> Vec<String> {
    let mut left = store.unprocessed_ids().await;
    for _ in 0..50 {
        if left == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = store.unprocessed_ids().await;
    }
    left
}

/// Posts from the `n`th on: which carried `id`, and how many there are.
fn posts_with(rx: &Receiver, from: usize, id: &str) -> (usize, usize) {
    let posts = rx.posts();
    let later = posts.get(from..).unwrap_or_default();
    let with = later
        .iter()
        .filter(|p| p.event_ids().iter().any(|e| e == id))
        .count();
    (with, later.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_listing_some_events_marks_those_processed_and_the_rest_arrive_again() {
    let app = fresh_app(true);
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        None,
        Reply::Fail,
    )
    .await;
    let (account_created, order_completed) = first_post_ids(&app, &rx, "partial@example.com").await;
    // Acknowledge only the order.completed (and an id that was never in a post).
    rx.set_reply(Reply::Partial(vec![
        order_completed.clone(),
        "not-an-event-of-this-post".into(),
    ]));
    let n = rx.posts().len();
    rx.wait_until(Duration::from_secs(15), "a post answered 202", |p| {
        p.len() > n
    })
    .await;
    assert_eq!(rx.posts()[n].event_ids().len(), 2, "the same events again");
    // The rest arrives again, on the backoff, twice more; the acknowledged one never.
    rx.wait_until(Duration::from_secs(15), "two re-sends after the 202", |p| {
        p.len() >= n + 3
    })
    .await;
    let (with_ack, later) = posts_with(&rx, n + 1, &order_completed);
    assert_eq!(with_ack, 0, "an acknowledged event was posted again");
    let (with_rest, _) = posts_with(&rx, n + 1, &account_created);
    assert_eq!(with_rest, later, "every re-send carries the unlisted event");
    assert_eq!(
        unprocessed_become(&app, std::slice::from_ref(&account_created)).await,
        vec![account_created.clone()],
        "GET /events/unprocessed lists exactly the unacknowledged event"
    );
    let one = app.get_event(&account_created).await;
    assert_eq!(one.json["processed"], false, "{}", one.text);
    let one = app.get_event(&order_completed).await;
    assert_eq!(one.json["processed"], true, "{}", one.text);

    // A 200 acknowledges the rest: then nothing more arrives.
    rx.set_reply(Reply::Ok);
    assert!(unprocessed_become(&app, &[]).await.is_empty());
    let n = rx.posts().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.posts().len(),
        n,
        "a post after every event was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_a_202_left_out_is_not_re_sent_once_marked_processed_by_the_events_api() {
    let app = fresh_app(true);
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        None,
        Reply::Fail,
    )
    .await;
    let (account_created, order_completed) = first_post_ids(&app, &rx, "pulled@example.com").await;
    rx.set_reply(Reply::Partial(vec![order_completed]));
    let n = rx.posts().len();
    rx.wait_until(Duration::from_secs(15), "a re-send after the 202", |p| {
        p.len() > n + 1
    })
    .await;
    // The merchant processes it from the pull API (FastSpring: "they will not return").
    let marked = app
        .mark_event(&account_created, &json!({"processed": true}))
        .await;
    assert_eq!(marked.status, 200, "{}", marked.text);
    // A post that had already started may still land; after that, none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = rx.posts().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.posts().len(), n, "re-sent after it was marked processed");
    assert!(app.unprocessed_ids().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_whose_body_is_not_a_list_of_ids_or_is_too_long_acknowledges_nothing() {
    let app = fresh_app(true);
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        None,
        Reply::Fail,
    )
    .await;
    let (account_created, order_completed) = first_post_ids(&app, &rx, "junk@example.com").await;
    let both = format!("{account_created}\n{order_completed}\n");
    // Not a list (each id is on a line of its own, but so is other text), then a valid list
    // made longer than the dispatcher reads (64 KiB) by blank lines.
    for body in [
        format!("<html><body>ok</body></html>\n{both}"),
        format!("{both}{}", " \n".repeat(40 * 1024)),
    ] {
        rx.set_reply(Reply::Raw(202, body));
        let n = rx.posts().len();
        rx.wait_until(Duration::from_secs(15), "two posts answered so", |p| {
            p.len() >= n + 2
        })
        .await;
        let (with, later) = posts_with(&rx, n, &account_created);
        assert_eq!(with, later, "re-sent: nothing was acknowledged");
        let (with, _) = posts_with(&rx, n, &order_completed);
        assert_eq!(with, later);
        assert_eq!(app.unprocessed_ids().await.len(), 2);
    }
    // The same list, short: both acknowledged.
    rx.set_reply(Reply::Raw(202, both));
    assert!(unprocessed_become(&app, &[]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_retried_until_the_receiver_is_back_and_none_is_lost_across_a_restart() {
    let data = Arc::new(temp_dir("strongroom-hooks-restart-"));
    let mut sys = start_system_with_env(Arc::clone(&data), FAST);
    let demo = sys.merchant(&sys.demo);
    // A port with nobody listening yet: bound (so no other process is handed it, e.g. the
    // restarted server) but not listening, so connections to it are refused.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    reserved
        .bind("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = reserved.local_addr().unwrap_or_else(|e| panic!("{e}"));
    add_hook(
        &demo,
        &format!("http://{addr}/hook"),
        Some("restart-secret"),
    )
    .await;
    demo.one_off_checkout("down1@example.com").await;
    demo.one_off_checkout("down2@example.com").await;
    let expected = demo.unprocessed_ids().await;
    assert_eq!(expected.len(), 4);
    // Let some attempts fail, then crash the server (SIGKILL, no goodbye).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        sys.logs().contains("will retry"),
        "attempts were made and failed"
    );
    // Its vault child would outlive a SIGKILL of the dev process: kill it too, and wait.
    let vault_pid = sys.vault_pid;
    sys.service.kill();
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(vault_pid.to_string())
        .status();
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{vault_pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sys);

    let sys = start_system_with_env(Arc::clone(&data), FAST);
    let demo = sys.merchant(&sys.demo);
    // Start listening on the reserved socket itself: dropping it and binding again would leave
    // a window in which the port can be handed out as some connection's ephemeral port.
    let listener = reserved.listen(128).unwrap_or_else(|e| panic!("{e}"));
    let rx = Receiver::from_listener(listener, Some("restart-secret"), Reply::Ok);
    rx.wait_until(
        Duration::from_secs(20),
        "every event after the restart",
        |p| {
            let got: std::collections::HashSet<String> =
                p.iter().flat_map(|p| p.event_ids()).collect();
            expected.iter().all(|id| got.contains(id))
        },
    )
    .await;
    assert!(rx.posts().iter().all(|p| p.signature_valid == Some(true)));
    let mut left = demo.unprocessed_ids().await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = demo.unprocessed_ids().await;
    }
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_retry_events_stay_unprocessed_for_the_pull_api() {
    let sys = fresh(&[
        ("STRONGROOM_WEBHOOK_RETRY_BASE_MS", "100"),
        ("STRONGROOM_WEBHOOK_MAX_ATTEMPTS", "3"),
    ]);
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        None,
        Reply::Fail,
    )
    .await;
    let demo = sys.merchant(&sys.demo);
    add_hook(&demo, &rx.url(), None).await;
    demo.one_off_checkout("giveup@example.com").await;
    rx.wait_until(Duration::from_secs(15), "three attempts", |p| p.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.posts().len(), 3, "no attempt after the last");
    assert_eq!(demo.unprocessed_ids().await.len(), 2);
    assert!(sys.logs().contains("gave up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_removes_webhooks_while_the_server_runs() {
    let app = fresh_app(true);
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        Some("cli-secret-1234"),
        Reply::Ok,
    )
    .await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(bin_path("accounts-api"));
        cmd.arg("webhook")
            .args(args)
            .arg("--store")
            .arg(&app.demo.store)
            .arg("--data")
            .arg(app.data.path());
        match stdin {
            None => run(cmd),
            Some(input) => {
                use std::io::Write;
                cmd.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{e}"));
                if let Some(mut s) = child.stdin.take() {
                    let _ = s.write_all(input.as_bytes());
                }
                let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        }
    };
    let (ok, out, err) = cli(
        &["add", "--url", &rx.url(), "--secret-stdin"],
        Some("cli-secret-1234\n"),
    );
    assert!(ok, "{out}{err}");
    assert!(!out.contains("cli-secret-1234"), "{out}");
    let added: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    assert_eq!(added["signed"], true, "{out}");
    let (ok, out, err) = cli(&["add", "--url", "gopher://example.com/"], None);
    assert!(!ok && out.is_empty(), "{out}{err}");
    let (ok, out, _) = cli(&["list"], None);
    assert!(
        ok && out.contains(&rx.url()) && !out.contains("cli-secret-1234"),
        "{out}"
    );

    app.one_off_checkout("cli@example.com").await;
    rx.wait_until(Duration::from_secs(15), "a signed post", |p| !p.is_empty())
        .await;
    assert_eq!(rx.posts()[0].signature_valid, Some(true));

    let id = added["id"].as_str().unwrap_or_default();
    let (ok, out, err) = cli(&["remove", "--id", id], None);
    assert!(ok, "{out}{err}");
    let list = app.list_webhooks().await;
    assert_eq!(list.json["webhooks"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_retried_with_an_idempotency_key_answer_the_same_and_change_nothing_twice() {
    let app = fresh_app(false);
    let body = json!({"url": "https://hooks.example.com/fs", "hmacSecret": "idem-secret"});
    let first = app.with_key("hook-create-1").add_webhook(&body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = app.with_key("hook-create-1").add_webhook(&body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json, first.json, "the first answer, replayed");
    assert!(!again.text.contains("idem-secret"));
    let list = app.list_webhooks().await;
    assert_eq!(list.json["webhooks"].as_array().map(Vec::len), Some(1));
    // The same key with another body is refused.
    let other = json!({"url": "https://hooks.example.com/other"});
    let clash = app.with_key("hook-create-1").add_webhook(&other).await;
    assert_eq!(clash.status, 409, "{}", clash.text);
    // Without a key a second identical create is a conflict (one URL per store).
    let dup = app.add_webhook(&body).await;
    assert_eq!(dup.status, 409, "{}", dup.text);

    let id = first.str("/webhook/id");
    let del = app.with_key("hook-del-1").delete_webhook(&id).await;
    assert_eq!(del.status, 200, "{}", del.text);
    let del2 = app.with_key("hook-del-1").delete_webhook(&id).await;
    assert_eq!(
        (del2.status, del2.json.clone()),
        (del.status, del.json.clone())
    );
    let gone = app.delete_webhook(&id).await;
    assert_eq!(gone.status, 404);
}
