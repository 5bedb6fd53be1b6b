//! Two `accounts-api serve` instances on one PostgreSQL database (issue 11), in front of one
//! vault, with requests alternating between them: what one instance wrote, the other reads;
//! an Idempotency-Key answered on one replays on the other; races between the instances end as
//! they do inside one (one account per email, one execution per key, one session per sign-in
//! link). PostgreSQL is a throwaway server on a free loopback port (`pgtest`); without it the
//! tests print SKIPPED (and fail under STRONGROOM_REQUIRE_TOOLS=1).

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::accounts::{
    Credentials, Merchant, SaveBox, http_client, one_off_order, subscription_order,
};
use tests::vault::{VaultProcess, start_vault};
use tests::{Service, bin_path, run, temp_dir};

/// A vault, a database and two accounts-api instances (A and B) on them.
struct Cluster {
    root: tempfile::TempDir,
    vault: VaultProcess,
    apis: Vec<(Service, String)>,
    http: reqwest::Client,
}

impl Cluster {
    /// `None` when PostgreSQL is not installed (the test then checks nothing, visibly).
    fn start() -> Option<Cluster> {
        Some(Cluster::start_on(&pgtest::fresh_database()?, 2))
    }

    /// `instances` accounts-api instances on the database at `url`.
    fn start_on(url: &str, instances: usize) -> Cluster {
        Cluster::start_on_with(url, instances, &[])
    }

    /// [`Cluster::start_on`] with these environment variables for every instance.
    fn start_on_with(url: &str, instances: usize, env: &[(&str, &str)]) -> Cluster {
        shared::tls::install_crypto_provider();
        let root = temp_dir("strongroom-pg-cluster-");
        let vault = start_vault(&root.path().join("vault"));
        let url_file = root.path().join("database.url");
        std::fs::write(&url_file, format!("{url}\n")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cluster = Cluster {
            root,
            vault,
            apis: Vec::new(),
            http: http_client(),
        };
        // Started all at once, then waited for: on an empty database they race to migrate.
        let mut started = Vec::new();
        for name in ["a", "b", "c", "d"].into_iter().take(instances) {
            let config = cluster.write_config(name);
            let mut cmd = serve(&config);
            cmd.envs(env.iter().copied());
            started.push(Service::spawn(&format!("accounts-api {name}"), cmd));
        }
        for service in started {
            let api = service.wait_for_line("ACCOUNTS_API_LISTENING ", Duration::from_secs(30));
            cluster.apis.push((service, api));
        }
        cluster
    }

    /// `name.toml`: its own data folder (admin socket), the shared vault and database; the
    /// webhook receivers listen on 127.0.0.1, which the egress allow-list opens.
    fn write_config(&self, name: &str) -> PathBuf {
        let pki = self.vault.pki_dir();
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let text = format!(
            "data = \"data-{name}\"\nlisten = \"127.0.0.1:0\"\n\
             public_url = \"https://accounts.example.com\"\n\
             [vault]\naddr = \"{}\"\nserver_name = \"localhost\"\nca = {}\ncert = {}\nkey = {}\n\
             [renewals]\nenabled = false\n\
             [database]\nurl_file = \"database.url\"\npool_size = 8\n\
             [webhooks]\nallow = [\"127.0.0.0/8\"]\n",
            self.vault.addr,
            q(&pki.join("ca.pem")),
            q(&pki.join("accounts.pem")),
            q(&pki.join("accounts.key")),
        );
        let path = self.root.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// `accounts-api store create --config a.toml`: written to the database, no server asked.
    fn create_store(&self, name: &str) -> Credentials {
        let mut cmd = Command::new(bin_path("accounts-api"));
        cmd.args(["store", "create", "--name", name, "--config"])
            .arg(self.root.path().join("a.toml"));
        clean_env(&mut cmd);
        let (ok, out, err) = run(cmd);
        assert!(ok, "store create failed:\n{out}\n{err}");
        Credentials::from_json(
            &serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}")),
        )
    }

    /// The store's typed client on instance `i` (0 = A, 1 = B).
    fn on(&self, i: usize, creds: &Credentials) -> Merchant {
        Merchant::new(&self.http, &self.apis[i].1, creds)
    }

    /// Records in the vault's folder, counted offline once it is gone (sled locks the folder;
    /// every acknowledged store was flushed before its answer).
    fn vault_records_after_stop(mut self) -> u64 {
        for (s, _) in &mut self.apis {
            s.kill();
        }
        self.vault.service.kill();
        let db = vault::store::open_db(&self.vault.data_dir(), 1 << 20, 500)
            .unwrap_or_else(|e| panic!("{e}"));
        let store = vault::store::SledStore::new(db, false).unwrap_or_else(|e| panic!("{e}"));
        vault::store::Store::record_count(&store).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// No STRONGROOM_* from the test's own environment reaches the child.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("STRONGROOM_") {
            cmd.env_remove(k);
        }
    }
}

fn serve(config: &Path) -> Command {
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.arg("serve").arg("--config").arg(config);
    clean_env(&mut cmd);
    cmd.env("RUST_LOG", "info");
    cmd
}

fn account_body(email: &str) -> Value {
    json!({"contact": {"first": "Ada", "last": "Lovelace", "email": email}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_one_instance_writes_the_other_reads_and_an_idempotency_key_replays_across_them() {
    let Some(c) = Cluster::start() else { return };
    let creds = c.create_store("Shared Store");
    let (a, b) = (c.on(0, &creds), c.on(1, &creds));

    // A store created by the CLI authenticates on both.
    for m in [&a, &b] {
        assert_eq!(m.list_accounts(&[]).await.status, StatusCode::OK);
    }
    // An account written on A reads on B, by id and by email.
    let created = a.create_account(&account_body("ada@example.com")).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let id = created.str("/account");
    let read = b.get_account(&id).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(
        read.json["accounts"][0]["contact"]["email"],
        "ada@example.com"
    );
    let found = b.lookup("email", "ada@example.com").await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text);
    assert!(found.text.contains(&id), "{}", found.text);
    // The email is taken for A's and B's writes alike (409 naming the holder).
    let dup = b.create_account(&account_body("ADA@example.com")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text);
    assert!(dup.text.contains(&id), "{}", dup.text);

    // An order with an Idempotency-Key on B replays on A: same answer, one order.
    let body = one_off_order("grace@example.com");
    let first = b.with_key("order-key-1").complete_order(&body).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = a.with_key("order-key-1").complete_order(&body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json, first.json, "the replay is the first answer");
    let account = first.str("/account");
    let acc = a.get_account(&account).await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1),
        "one execution: {}",
        acc.text
    );
    // The same key with another request is refused on either instance.
    let other = a
        .with_key("order-key-1")
        .complete_order(&one_off_order("other@example.com"))
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_orders_for_one_email_over_both_instances_make_one_account_and_no_orphan()
{
    let Some(c) = Cluster::start() else { return };
    let creds = c.create_store("Race Store");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let m = c.on(i % 2, &creds);
        set.spawn(async move {
            // A saved card each: a losing checkout must delete its vault record again.
            let a = m
                .complete_order(&subscription_order("race@example.com", SaveBox::Ticked))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            a.str("/account")
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.push(r.unwrap_or_else(|e| panic!("{e}")));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "every order went to one account: {ids:?}");
    let b = c.on(1, &creds);
    let list = b.list_accounts(&[]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let acc = c.on(0, &creds).get_account(&ids[0]).await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(16),
        "{}",
        acc.text
    );
    assert_eq!(
        acc.json["accounts"][0]["subscriptions"]
            .as_array()
            .map(Vec::len),
        Some(16),
        "{}",
        acc.text
    );
    let created = b.unprocessed_events(&[("begin", "0")]).await;
    let count = |kind: &str| {
        created.json["events"]
            .as_array()
            .map(|v| v.iter().filter(|e| e["type"] == kind).count())
            .unwrap_or(0)
    };
    assert_eq!(count("account.created"), 1, "{}", created.text);
    assert_eq!(count("order.completed"), 16, "{}", created.text);
    // 16 tokens saved, every one on the winning account: no vault record left behind by a
    // checkout that lost the race.
    assert_eq!(c.vault_records_after_stop(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_sent_to_both_instances_at_once_executes_once() {
    let Some(c) = Cluster::start() else { return };
    let creds = c.create_store("Key Store");
    let body = one_off_order("once@example.com");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let m = c.on(i % 2, &creds).with_key("same-key");
        let body = body.clone();
        set.spawn(async move { m.complete_order(&body).await });
    }
    let mut answers = Vec::new();
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap_or_else(|e| panic!("{e}")));
    }
    // Each answer is the execution's own (200) or "in progress" (409); every 200 is the same.
    let ok: Vec<&Value> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .map(|a| &a.json)
        .collect();
    assert!(!ok.is_empty());
    assert!(ok.iter().all(|j| *j == ok[0]), "{ok:?}");
    for a in &answers {
        assert!(
            a.status == StatusCode::OK || a.status == StatusCode::CONFLICT,
            "{} {}",
            a.status,
            a.text
        );
    }
    // After the dust settles the key replays on both, and there is exactly one order.
    for i in 0..2 {
        let again = c
            .on(i, &creds)
            .with_key("same-key")
            .complete_order(&body)
            .await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert_eq!(&again.json, ok[0]);
    }
    let account = ok[0]["account"].as_str().unwrap_or_default();
    let acc = c.on(0, &creds).get_account(account).await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1),
        "{}",
        acc.text
    );
}

/// A client that does not follow redirects and keeps no cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The session cookie (`sr_session=…`) a sign-in link set, if any.
async fn open_link(url: String) -> Option<String> {
    let r = browser().get(url).send().await.ok()?;
    let set = r.headers().get("set-cookie")?.to_str().ok()?.to_owned();
    set.split(';')
        .next()
        .filter(|c| c.starts_with("sr_session=") && c.len() > 11)
        .map(str::to_owned)
}

async fn account_page(api: &str, cookie: &str) -> StatusCode {
    browser()
        .get(format!("{api}/account"))
        .header("cookie", cookie)
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sign_in_link_opened_on_both_instances_at_once_makes_one_session_valid_on_both() {
    let Some(c) = Cluster::start() else { return };
    let creds = c.create_store("Sso Store");
    let (a, b) = (c.on(0, &creds), c.on(1, &creds));
    let order = a.complete_order(&one_off_order("sso@example.com")).await;
    assert_eq!(order.status, StatusCode::OK, "{}", order.text);
    let account = order.str("/account");
    let link = a
        .call("GET", &format!("/accounts/{account}/authenticate"), None)
        .await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.text);
    let url = link.json["accounts"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The link is built on the configured public URL (the proxy in front of both instances);
    // here each instance is reached directly with the link's path.
    let path = url
        .strip_prefix("https://accounts.example.com")
        .unwrap_or_else(|| panic!("not on the public URL: {url}"))
        .to_owned();
    assert!(path.starts_with("/account/sso/"), "{url}");
    let on_a = format!("{}{path}", c.apis[0].1);
    let on_b = format!("{}{path}", c.apis[1].1);
    let (x, y) = tokio::join!(open_link(on_a), open_link(on_b));
    let sessions: Vec<String> = [x, y].into_iter().flatten().collect();
    assert_eq!(sessions.len(), 1, "the link opens once across instances");
    let cookie = &sessions[0];
    // The session works on both instances.
    assert_eq!(account_page(&c.apis[0].1, cookie).await, StatusCode::OK);
    assert_eq!(account_page(&c.apis[1].1, cookie).await, StatusCode::OK);
    // Logout on B ends it on A.
    let page = browser()
        .get(format!("{}/account", c.apis[1].1))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).map(|i| i + marker.len()).unwrap_or(0);
    let csrf = page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(!csrf.is_empty(), "no csrf field: {page}");
    let out = browser()
        .post(format!("{}/account/logout", c.apis[1].1))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status().is_success() || out.status().is_redirection(),
        "{}",
        out.status()
    );
    assert_ne!(account_page(&c.apis[0].1, cookie).await, StatusCode::OK);
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_from_both_instances_reach_a_webhook_once_each_one_post_at_a_time() {
    let Some(c) = Cluster::start() else { return };
    let creds = c.create_store("Hook Store");
    let rx = tests::receiver::Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        None,
        tests::receiver::Reply::Ok,
    )
    .await;
    // A slow receiver: two dispatchers posting to it at once would overlap.
    rx.set_delay(Duration::from_millis(150));
    let hook = c.on(0, &creds).add_webhook(&json!({"url": rx.url()})).await;
    assert_eq!(hook.status, StatusCode::OK, "{}", hook.text);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let m = c.on(i % 2, &creds);
        set.spawn(async move {
            let a = m
                .complete_order(&one_off_order(&format!("h{i}@example.com")))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    // 20 new accounts and 20 orders: 40 events, written on both instances.
    let expected = 40;
    rx.wait_until(Duration::from_secs(60), "every event", |posts| {
        let mut ids: Vec<String> = posts.iter().flat_map(|p| p.event_ids()).collect();
        ids.sort();
        ids.dedup();
        ids.len() >= expected
    })
    .await;
    // Both dispatchers keep scanning for a while: nothing acknowledged comes again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = rx.event_ids();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), expected);
    assert_eq!(
        ids.len(),
        expected,
        "an event was posted again after its 200"
    );
    assert_eq!(rx.max_in_flight(), 1, "two posts to one webhook overlapped");
    let left = c.on(1, &creds).unprocessed_events(&[("begin", "0")]).await;
    assert_eq!(
        left.json["events"],
        json!([]),
        "every delivered event is processed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_202_listing_some_events_marks_those_processed_and_both_instances_re_send_only_the_rest()
{
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    // Fast retries (production: 5 s base), so the re-sends come within seconds.
    let c = Cluster::start_on_with(
        &url,
        2,
        &[
            ("STRONGROOM_WEBHOOK_RETRY_BASE_MS", "200"),
            ("STRONGROOM_WEBHOOK_MAX_ATTEMPTS", "50"),
        ],
    );
    let creds = c.create_store("Partial Hook Store");
    let rx = tests::receiver::Receiver::start(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        None,
        tests::receiver::Reply::Fail,
    )
    .await;
    let hook = c.on(0, &creds).add_webhook(&json!({"url": rx.url()})).await;
    assert_eq!(hook.status, StatusCode::OK, "{}", hook.text);
    let order = c
        .on(1, &creds)
        .complete_order(&one_off_order("partial@example.com"))
        .await;
    assert_eq!(order.status, StatusCode::OK, "{}", order.text);
    rx.wait_until(Duration::from_secs(30), "a first attempt", |p| {
        !p.is_empty()
    })
    .await;
    let first = rx.posts()[0].json["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of = |kind: &str| {
        first
            .iter()
            .find(|e| e["type"] == kind)
            .and_then(|e| e["id"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (account_created, order_completed) = (of("account.created"), of("order.completed"));
    assert!(
        !account_created.is_empty() && !order_completed.is_empty(),
        "{first:?}"
    );
    rx.set_reply(tests::receiver::Reply::Partial(vec![
        order_completed.clone(),
    ]));
    let n = rx.posts().len();
    // The 202, then two re-sends (whichever instance holds the webhook's lease posts them).
    rx.wait_until(Duration::from_secs(30), "two re-sends after the 202", |p| {
        p.len() >= n + 3
    })
    .await;
    let posts = rx.posts();
    let later = &posts[n + 1..];
    assert!(
        later
            .iter()
            .all(|p| p.event_ids() == vec![account_created.clone()]),
        "after the 202 only the unlisted event is posted: {later:#?}"
    );
    assert_eq!(rx.max_in_flight(), 1, "two posts to one webhook overlapped");
    for i in 0..2 {
        let mut left = Vec::new();
        for _ in 0..50 {
            let a = c.on(i, &creds).unprocessed_events(&[("begin", "0")]).await;
            left = a.json["events"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|e| e["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if left == vec![account_created.clone()] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, vec![account_created.clone()], "instance {i}");
    }
    // A 200 for the rest: processed, and nothing more arrives from either instance.
    rx.set_reply(tests::receiver::Reply::Ok);
    let mut done = false;
    for _ in 0..100 {
        let e = c.on(0, &creds).get_event(&account_created).await;
        if e.json["processed"] == true {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "the 200 acknowledged the rest");
    let n = rx.posts().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.posts().len(),
        n,
        "a post after every event was acknowledged"
    );
}

/// One checkout of the outage test: its key, email and the first answer's status.
struct Attempt {
    key: String,
    email: String,
    status: StatusCode,
    order: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_killed_during_checkouts_answers_503_loses_no_acknowledged_order_and_resumes() {
    let Some(pg) = pgtest::private() else { return };
    let pg = std::sync::Arc::new(pg);
    let c = Cluster::start_on(&pg.url("postgres"), 1);
    let creds = c.create_store("Outage Store");
    let m = c.on(0, &creds);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients checking out without pause, each order with its own Idempotency-Key.
    let mut load = tokio::task::JoinSet::new();
    for client in 0..4 {
        let (m, stop) = (m.clone(), std::sync::Arc::clone(&stop));
        load.spawn(async move {
            let mut done = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 2000 {
                i += 1;
                let key = format!("outage-{client}-{i}");
                let email = format!("c{client}n{i}@example.com");
                let a = m
                    .with_key(&key)
                    .complete_order(&one_off_order(&email))
                    .await;
                if a.status == StatusCode::SERVICE_UNAVAILABLE {
                    assert_eq!(
                        a.json["error"]["database"], "temporarily unavailable, retry later",
                        "{}",
                        a.text
                    );
                    assert!(a.headers.contains_key("retry-after"), "{:?}", a.headers);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                done.push(Attempt {
                    key,
                    email,
                    status: a.status,
                    order: a.str("/id"),
                });
            }
            done
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let again = std::sync::Arc::clone(&pg);
    tokio::task::spawn_blocking(move || again.restart())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut attempts = Vec::new();
    while let Some(r) = load.join_next().await {
        attempts.extend(r.unwrap_or_else(|e| panic!("{e}")));
    }
    let count = |s: StatusCode| attempts.iter().filter(|a| a.status == s).count();
    let (ok, down) = (
        count(StatusCode::OK),
        count(StatusCode::SERVICE_UNAVAILABLE),
    );
    assert_eq!(
        ok + down,
        attempts.len(),
        "every answer is a success or a 503: {:?}",
        attempts.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    println!("checkouts: {ok} acknowledged, {down} answered 503 while the database was down");
    assert!(down > 0, "the outage was seen");
    assert!(ok > 0);
    assert!(
        attempts
            .iter()
            .rev()
            .take(4)
            .any(|a| a.status == StatusCode::OK),
        "checkouts succeed again after the restart"
    );
    // Every acknowledged order is there; every refused one was not half-written: retried
    // with its key it executes once; and each email has exactly one order.
    for a in &attempts {
        if a.status == StatusCode::OK {
            let o = m.get_order(&a.order).await;
            assert_eq!(
                o.status,
                StatusCode::OK,
                "acknowledged order {} lost",
                a.order
            );
            continue;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = m
                .with_key(&a.key)
                .complete_order(&one_off_order(&a.email))
                .await;
            if r.status == StatusCode::OK {
                break;
            }
            // The refused attempt's claim is released once the database is back.
            assert!(
                r.status == StatusCode::CONFLICT || r.status == StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                r.text
            );
            assert!(std::time::Instant::now() < deadline, "{}", r.text);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for a in &attempts {
        let found = m.lookup("email", &a.email).await;
        assert_eq!(found.status, StatusCode::OK, "{}", found.text);
        let id = found.json["accounts"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let acc = m.get_account(&id).await;
        assert_eq!(
            acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
            Some(1),
            "{}: {}",
            a.email,
            acc.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_started_at_once_on_an_empty_database_migrate_it_once_and_all_serve() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let c = Cluster::start_on(&url, 4);
    let creds = c.create_store("Four Store");
    for i in 0..4 {
        let a = c
            .on(i, &creds)
            .create_account(&account_body(&format!("four{i}@example.com")))
            .await;
        assert_eq!(a.status, StatusCode::OK, "instance {i}: {}", a.text);
    }
    let server = pgtest::require().unwrap_or_else(|| panic!("the server runs"));
    let db = url.rsplit('/').next().unwrap_or_default();
    let versions = server
        .psql_in(
            db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM strongroom_migrations \
             WHERE component = 'accounts-api'",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let all: Vec<String> = (1..=accounts_api::storage::postgres::schema::MIGRATIONS.len())
        .map(|v| v.to_string())
        .collect();
    assert_eq!(versions, all.join(","), "each migration applied once");
}
