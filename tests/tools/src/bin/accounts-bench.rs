//! End-to-end benchmark: starts the whole system (`accounts-api dev` from the same build folder,
//! which starts the real vault), then measures at concurrency 32
//! 1. checkout completions per second — new customer, subscription item, consent given, so each
//!    completion stores the token in the vault (durable there) and writes the account, order,
//!    subscription and indexes in one transaction (durable here) before the 2xx;
//! 2. `GET /accounts/{id}` per second;
//!
//! each next to `GET /healthz` at the same concurrency measured in the same run (the stack's
//! ceiling: HTTP, no authentication, no storage), then the resident memory of accounts-api and
//! of its vault child and the disk used per completed checkout (accounts data, vault records,
//! vault audit segments).
//!
//! Run: `cargo build --release --workspace && ./target/release/accounts-bench`
//! (`BENCH_SECONDS`, default 10, sets each phase's length).
//!
//! With `--database-url URL` (a PostgreSQL database the bench may `CREATE DATABASE` from; issue
//! 11) it then also runs the system on that server, in a fresh database per run, once with 1
//! and once with 2 instances of each service
//! (`accounts-api dev --database-url URL --instances N`, the load split over the instances),
//! and prints checkout completions/s for each next to the sled figure and that run's
//! `GET /healthz` ceiling.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark binary: failing loudly is right

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 32;

struct Target {
    api: String,
    user: String,
    pass: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut lat: Vec<Duration>, errors: usize, elapsed: Duration) -> f64 {
    lat.sort();
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<28} {:>9.0} ops/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors, {:.1} s)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.len(),
        errors,
        elapsed.as_secs_f64()
    );
    rate
}

fn vs_ceiling(rate: f64, ceiling: f64) {
    println!(
        "{:<28} {:>8.0}% of GET /healthz c={CONCURRENCY} ({ceiling:.0} ops/s, the stack's ceiling in this run)",
        "",
        100.0 * rate / ceiling.max(1.0)
    );
}

fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Child processes of `pid` (the dev process starts the vault).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Bytes under `dir`, and of them those under folders named `audit`.
fn du(dir: &std::path::Path) -> (u64, u64) {
    let (mut total, mut audit) = (0, 0);
    let mut stack = vec![(dir.to_owned(), false)];
    while let Some((d, in_audit)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => {
                    let a = in_audit || e.file_name() == "audit";
                    stack.push((e.path(), a));
                }
                Ok(m) => {
                    total += m.len();
                    if in_audit {
                        audit += m.len();
                    }
                }
                Err(_) => {}
            }
        }
    }
    (total, audit)
}

/// Runs `make(worker, i)` requests from `CONCURRENCY` workers for `secs`; returns latencies of
/// 2xx answers, the error count and the elapsed time.
async fn phase<F, Fut>(secs: u64, make: F) -> (Vec<Duration>, usize, Duration, Vec<Value>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, String>> + Send,
{
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (make, stop) = (Arc::clone(&make), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errs, mut out) = (Vec::new(), 0usize, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match make(w, i).await {
                    Ok(v) => {
                        lat.push(t.elapsed());
                        if out.len() < 100 {
                            out.push(v);
                        }
                    }
                    Err(e) => {
                        if errs == 0 {
                            eprintln!("error: {e}");
                        }
                        errs += 1;
                    }
                }
                i += 1;
            }
            (lat, errs, out)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errs, mut out) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (l, e, o) = t.await.unwrap();
        lat.extend(l);
        errs += e;
        out.extend(o);
    }
    (lat, errs, start.elapsed(), out)
}

#[tokio::main]
async fn main() {
    shared::tls::install_crypto_provider();
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("accounts-api");
    assert!(
        exe.exists(),
        "{} missing: cargo build --release --workspace",
        exe.display()
    );
    let data =
        std::env::temp_dir().join(format!("accounts-bench-{}", uuid::Uuid::new_v4().simple()));
    let (mut child, ready) = start_dev(&exe, &data, &[]);
    let target = Arc::new(Target {
        api: ready["api"].as_str().unwrap().to_owned(),
        user: ready["username"].as_str().unwrap().to_owned(),
        pass: ready["password"].as_str().unwrap().to_owned(),
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    println!(
        "accounts-bench: concurrency {CONCURRENCY}, {secs} s per phase, system at {}",
        target.api
    );

    let (lat, errs, elapsed) = healthz_phase(&target.api, &http, secs).await;
    let ceiling = report("GET /healthz (ceiling)", lat, errs, elapsed);

    let apis = vec![target.api.clone()];
    let (lat, errs, elapsed, created) =
        checkout_phase(&apis, &target.user, &target.pass, &http, secs).await;
    let completions = lat.len() as u64;
    let rate = report("checkout completions", lat, errs, elapsed);
    let sled_rate = rate;
    vs_ceiling(rate, ceiling);

    let ids: Arc<Vec<String>> = Arc::new(
        created
            .iter()
            .filter_map(|v| v["account"].as_str().map(str::to_owned))
            .collect(),
    );
    assert!(!ids.is_empty(), "no account was created");
    let (t, h) = (Arc::clone(&target), http.clone());
    let (lat, errs, elapsed, _) = phase(secs, move |w, i| {
        let (t, h) = (Arc::clone(&t), h.clone());
        let id = ids[(w * 7919 + i) % ids.len()].clone();
        async move {
            drained(
                h.get(format!("{}/accounts/{id}", t.api))
                    .basic_auth(&t.user, Some(&t.pass)),
            )
            .await
        }
    })
    .await;
    let rate = report("GET /accounts/{id}", lat, errs, elapsed);
    vs_ceiling(rate, ceiling);
    println!("resident memory (VmRSS):");
    println!(
        "  accounts-api {:>7.1} MiB",
        rss_mib(child.id()).unwrap_or(0.0)
    );
    for pid in children(child.id()) {
        println!(
            "  vault        {:>7.1} MiB (pid {pid})",
            rss_mib(pid).unwrap_or(0.0)
        );
    }

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let (total, audit) = du(&data);
    println!(
        "disk: {:.1} MiB in the data folders = {:.0} bytes per completed checkout ({completions}), of which vault audit segments {:.0} bytes",
        total as f64 / (1024.0 * 1024.0),
        total as f64 / completions.max(1) as f64,
        audit as f64 / completions.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&data);

    let args: Vec<String> = std::env::args().collect();
    if let Some(url) = args
        .iter()
        .position(|a| a == "--database-url")
        .and_then(|i| args.get(i + 1))
    {
        println!("checkout completions on PostgreSQL (sled above: {sled_rate:.0} ops/s):");
        for instances in [1usize, 2] {
            postgres_run(&exe, url, instances, secs, &http).await;
        }
    }
}

/// `accounts-api dev --database-url url --instances n`: checkouts spread over the instances,
/// next to `GET /healthz` of the first instance in the same run.
async fn postgres_run(
    exe: &std::path::Path,
    server: &str,
    instances: usize,
    secs: u64,
    http: &reqwest::Client,
) {
    // Each run is a new system (new keys): it gets a database of its own on that server.
    let url = &fresh_database(server).await;
    let data = std::env::temp_dir().join(format!(
        "accounts-bench-pg-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let n = instances.to_string();
    let (mut child, ready) = start_dev(
        exe,
        &data,
        &["--database-url", url, "--instances", n.as_str()],
    );
    let apis: Vec<String> = ready["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let (user, pass) = (
        ready["username"].as_str().unwrap(),
        ready["password"].as_str().unwrap(),
    );
    let (lat, errs, elapsed) = healthz_phase(&apis[0], http, secs).await;
    let ceiling = report(
        &format!("  {instances} instance(s): GET /healthz"),
        lat,
        errs,
        elapsed,
    );
    let (lat, errs, elapsed, _) = checkout_phase(&apis, user, pass, http, secs).await;
    let rate = report(
        &format!("  {instances} instance(s): checkouts"),
        lat,
        errs,
        elapsed,
    );
    vs_ceiling(rate, ceiling);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
}

/// `accounts-api dev --data data --port 0 [extra…]` with quiet logs; the child and its READY
/// line.
fn start_dev(
    exe: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, Value) {
    let mut child = Command::new(exe)
        .arg("dev")
        .arg("--data")
        .arg(data)
        .arg("--port")
        .arg("0")
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("VAULT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("dev exited before READY").unwrap();
        if let Some(j) = line.strip_prefix("STRONGROOM_READY ") {
            break serde_json::from_str(j).unwrap();
        }
    };
    // Keep reading its stdout (the banner follows): a closed pipe would fail its next print.
    std::thread::spawn(move || lines.for_each(drop));
    (child, ready)
}

/// Sends `req`; a 2xx answer's body is read to its end (the connection can be reused).
async fn drained(req: reqwest::RequestBuilder) -> Result<Value, String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.bytes().await.map_err(|e| e.to_string())?;
    Ok(Value::Null)
}

/// `GET /healthz` on `api` at the bench's concurrency: the stack's ceiling.
async fn healthz_phase(
    api: &str,
    http: &reqwest::Client,
    secs: u64,
) -> (Vec<Duration>, usize, Duration) {
    let (url, h) = (Arc::new(format!("{api}/healthz")), http.clone());
    let (lat, errs, elapsed, _) = phase(secs, move |_, _| {
        let (url, h) = (Arc::clone(&url), h.clone());
        async move { drained(h.get(url.as_str())).await }
    })
    .await;
    (lat, errs, elapsed)
}

/// New customers' checkouts with a saved card, worker `w` on `apis[w % len]`; returns the
/// answers of the first ones (for the reads that follow).
async fn checkout_phase(
    apis: &[String],
    user: &str,
    pass: &str,
    http: &reqwest::Client,
    secs: u64,
) -> (Vec<Duration>, usize, Duration, Vec<Value>) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let apis = Arc::new(apis.to_vec());
    let (user, pass, h) = (user.to_owned(), pass.to_owned(), http.clone());
    phase(secs, move |w, i| {
        let (h, user, pass) = (h.clone(), user.clone(), pass.clone());
        let url = format!("{}/orders", apis[w % apis.len()]);
        let body = checkout_body(&run, w, i);
        async move {
            let resp = h
                .post(url)
                .basic_auth(&user, Some(&pass))
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            resp.json::<Value>().await.map_err(|e| e.to_string())
        }
    })
    .await
}

/// Creates `strongroom_bench_<random>` on the server of `url` (a database the bench may
/// `CREATE DATABASE` from) and returns `url` with that database.
async fn fresh_database(url: &str) -> String {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("--database-url: cannot connect (plain text to this machine)");
    tokio::spawn(conn);
    let name = format!("strongroom_bench_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base);
    format!("{server}/{name}{query}")
}

/// A new customer's checkout with a saved card (stored in the vault).
fn checkout_body(run: &str, w: usize, i: usize) -> Value {
    json!({
        "customer": {"first": "Bench", "last": "User", "email": format!("b{w}-{i}-{run}@example.com")},
        "country": "US",
        "items": [{"product": "pro", "quantity": 1, "price": 9.99, "currency": "USD",
            "subscription": {"intervalUnit": "month", "intervalLength": 1}}],
        "payment": {"token": format!("tok_bench_{run}_{w}_{i}"), "type": "card", "brand": "visa",
            "last4": "4242", "expMonth": 12, "expYear": 2031},
        "consent": {"presented": true, "accepted": true},
    })
}
