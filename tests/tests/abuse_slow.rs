//! Slow clients cannot take the service down (issue 12 part 1), against the real binaries of
//! `accounts-api dev` on loopback:
//!
//! - from one address (`127.0.0.2`), more connections than accounts-api's global connection cap,
//!   each trickling a declared 60 KB body one byte every 8 s (then, in a second phase, trickling
//!   its headers), reconnecting at once whenever the server closes one, for 40 s: an
//!   authenticated client on another address (`127.0.0.1`) making a request every 0.2 s on a new
//!   connection each time gets ≥ 99% of them answered within 1 s;
//! - 600 idle connections to the vault that never start a TLS handshake, held the same way:
//!   checkouts that store a card in the vault keep succeeding.
//!
//! Bounded: each phase runs for a fixed time with a fixed number of attacking connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tests::accounts::{SaveBox, start_system, subscription_order};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// More than accounts-api's default global connection cap (4,096).
const ATTACKERS: usize = 4_200;
const HOLD: Duration = Duration::from_secs(40);
/// A legitimate request every 0.2 s, each answered within 1 s.
const EVERY: Duration = Duration::from_millis(200);
const WITHIN: Duration = Duration::from_secs(1);

/// A slot whose connection was closed connects again after this: the attack is about holding
/// connections; a flood of new connections is a different attack (one for the network's SYN
/// defences), and on 2 cores it would measure the test's own CPU use.
const RECONNECT: Duration = Duration::from_secs(5);

/// The attacker's own loopback address (Linux routes all of 127/8 to lo).
const ATTACKER_IP: [u8; 4] = [127, 0, 0, 2];

fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What one attacking connection sends first, then one byte of `trickle` every 8 s.
#[derive(Clone, Copy)]
enum Slow {
    /// A complete head declaring a 60 KB body, then the body a byte at a time.
    Body,
    /// A request line, then header bytes a byte at a time (never the blank line).
    Headers,
    /// Nothing at all (the vault: no TLS hello ever comes).
    Idle,
}

impl Slow {
    fn head(self) -> &'static [u8] {
        match self {
            Slow::Body => {
                b"POST /accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
            }
            Slow::Headers => b"POST /accounts HTTP/1.1\r\nHost: x\r\n",
            Slow::Idle => b"",
        }
    }
    fn trickle(self) -> &'static [u8] {
        match self {
            Slow::Body => b" ",
            Slow::Headers => b"X",
            Slow::Idle => b"",
        }
    }
}

/// Counts of the attack, for the report.
#[derive(Default)]
struct Attack {
    connects: AtomicUsize,
    refused: AtomicUsize,
    open: AtomicUsize,
    peak_open: AtomicUsize,
}

/// One attacking connection slot: connect from [`ATTACKER_IP`], send the head, trickle, and
/// reconnect at once when the server closes the connection, until `stop`.
async fn attacker(target: SocketAddr, slow: Slow, stop: Arc<AtomicBool>, attack: Arc<Attack>) {
    let source = SocketAddr::from((ATTACKER_IP, 0));
    while !stop.load(Ordering::Relaxed) {
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if socket.bind(source).is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        attack.connects.fetch_add(1, Ordering::Relaxed);
        let Ok(mut stream) = socket.connect(target).await else {
            attack.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RECONNECT).await;
            continue;
        };
        let open = attack.open.fetch_add(1, Ordering::Relaxed) + 1;
        attack.peak_open.fetch_max(open, Ordering::Relaxed);
        let mut ok = stream.write_all(slow.head()).await.is_ok();
        let mut buf = [0u8; 512];
        while ok && !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = stream.read(&mut buf) => {
                    // An answer or a close: either way this connection is done for the attacker.
                    ok = false;
                }
                () = tokio::time::sleep(Duration::from_secs(8)) => {
                    ok = stream.write_all(slow.trickle()).await.is_ok();
                }
            }
        }
        attack.open.fetch_sub(1, Ordering::Relaxed);
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Starts [`ATTACKERS`]-many `slow` connection slots against `target`; returns the stop flag.
fn start_attack(
    rt: &tokio::runtime::Runtime,
    target: SocketAddr,
    slow: Slow,
    slots: usize,
) -> (Arc<AtomicBool>, Arc<Attack>) {
    let stop = Arc::new(AtomicBool::new(false));
    let attack = Arc::new(Attack::default());
    for _ in 0..slots {
        rt.spawn(attacker(
            target,
            slow,
            Arc::clone(&stop),
            Arc::clone(&attack),
        ));
    }
    (stop, attack)
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("address of {url}: {e}"))
}

/// A client that opens a new connection for every request (a pooled connection would ride out
/// any accept-level attack and prove nothing).
fn fresh_connection_client() -> reqwest::Client {
    shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(WITHIN)
        .build()
        .unwrap()
}

/// Authenticated `GET /accounts` every [`EVERY`] for [`HOLD`]: (answered 200 within
/// [`WITHIN`], sent, first failures).
async fn legitimate_reads(api: &str, user: &str, password: &str) -> (usize, usize, Vec<String>) {
    let http = fresh_connection_client();
    let (mut ok, mut sent, mut failures) = (0, 0, Vec::new());
    let end = Instant::now() + HOLD;
    let mut tick = tokio::time::interval(EVERY);
    while Instant::now() < end {
        tick.tick().await;
        sent += 1;
        let started = Instant::now();
        let answer = http
            .get(format!("{api}/accounts"))
            .basic_auth(user, Some(password))
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 200 && started.elapsed() <= WITHIN => ok += 1,
            Ok(r) => failures.push(format!(
                "status {} after {:?}",
                r.status(),
                started.elapsed()
            )),
            Err(e) => failures.push(format!("{e} after {:?}", started.elapsed())),
        }
    }
    failures.truncate(5);
    (ok, sent, failures)
}

fn report(phase: &str, attack: &Attack, ok: usize, sent: usize, failures: &[String]) {
    eprintln!(
        "{phase}: {ok}/{sent} legitimate requests answered in time; attacker connects {}, \
         refused {}, peak open {}; first failures: {failures:?}",
        attack.connects.load(Ordering::Relaxed),
        attack.refused.load(Ordering::Relaxed),
        attack.peak_open.load(Ordering::Relaxed),
    );
    assert!(
        ok * 100 >= sent * 99 && sent >= 150,
        "{phase}: only {ok} of {sent} legitimate requests were answered within {WITHIN:?} \
         (first failures: {failures:?})"
    );
}

/// The two tests each load the machine; they run one after the other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn slow_bodies_and_slow_headers_from_one_address_do_not_starve_other_clients() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let limit = open_files_limit();
    assert!(
        limit >= 2 * ATTACKERS as u64 + 1024,
        "this test needs an open-files limit of at least {} (ulimit -n is {limit})",
        2 * ATTACKERS + 1024
    );
    let system = start_system();
    let target = addr_of(&system.api);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for slow in [Slow::Body, Slow::Headers] {
        let phase = match slow {
            Slow::Body => "slow bodies",
            _ => "slow headers",
        };
        let (stop, attack) = start_attack(&rt, target, slow, ATTACKERS);
        // Let every slot make its first connection before measuring.
        std::thread::sleep(Duration::from_secs(3));
        let (ok, sent, failures) = rt.block_on(legitimate_reads(
            &system.api,
            &system.demo.username,
            &system.demo.password,
        ));
        stop.store(true, Ordering::Relaxed);
        report(phase, &attack, ok, sent, &failures);
        // The slots notice the stop within one trickle period; wait for the server to be clear.
        std::thread::sleep(Duration::from_secs(2));
    }
    rt.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn idle_connections_that_never_start_tls_do_not_lock_accounts_api_out_of_the_vault() {
    const IDLE: usize = 600;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let system = start_system();
    let vault: SocketAddr = system
        .vault_addr
        .parse()
        .unwrap_or_else(|e| panic!("vault address {}: {e}", system.vault_addr));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, attack) = start_attack(&rt, vault, Slow::Idle, IDLE);
    std::thread::sleep(Duration::from_secs(3));
    let merchant = system.merchant(&system.demo);
    let (mut ok, mut sent, mut failures) = (0usize, 0usize, Vec::new());
    rt.block_on(async {
        let end = Instant::now() + HOLD;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut n = 0;
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            sent += 1;
            let body = subscription_order(&format!("idle-{n}@example.com"), SaveBox::Ticked);
            let answer = merchant.complete_order(&body).await;
            if answer.status == 200 {
                ok += 1;
            } else if failures.len() < 5 {
                failures.push(format!("{} {}", answer.status, answer.text));
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "vault: {ok}/{sent} checkouts; idle connects {}, refused {}, peak open {}",
        attack.connects.load(Ordering::Relaxed),
        attack.refused.load(Ordering::Relaxed),
        attack.peak_open.load(Ordering::Relaxed),
    );
    assert!(
        attack.peak_open.load(Ordering::Relaxed) >= 1,
        "the idle connections never reached the vault: the test proves nothing"
    );
    assert_eq!(
        ok, sent,
        "checkouts failed while idle connections were held: {failures:?}"
    );
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// Sends `head` on a new connection, then `trickle` a byte at a time every `every`, until the
/// server answers; returns (the answer, how long after the head it came).
fn answer_to_trickle(api: &str, head: &str, trickle: &[u8], every: Duration) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr_of(api)).unwrap();
    s.set_read_timeout(Some(every)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(60) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if sent < trickle.len() && s.write_all(&trickle[sent..=sent]).is_ok() {
                    sent += 1;
                }
            }
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Credentials are checked before a body is read, and an authenticated body that trickles is
/// cut off with a 408 in the API's envelope soon after the grace period (5 s by default).
#[test]
fn credentials_come_before_the_body_and_a_trickling_body_gets_408() {
    use base64::Engine;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let system = start_system();
    let body = br#"{"contact":{"first":"Slow","last":"Body","email":"slow@example.com"}}"#;

    // No credentials: 401 at once, without waiting for the declared body.
    let head = format!(
        "POST /accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let (answer, took) = answer_to_trickle(&system.api, &head, body, Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        took < Duration::from_secs(2),
        "the 401 waited for the body: {took:?}"
    );

    // With credentials, a byte every 2 s: 408 in the envelope after the grace period.
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", system.demo.username, system.demo.password));
    let head = format!(
        "POST /accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (answer, took) = answer_to_trickle(&system.api, &head, body, Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""request":"body not received in time""#),
        "{answer}"
    );
    assert!(answer.contains(r#""action":"account.create""#), "{answer}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(12),
        "cut off after {took:?}"
    );
    // Nothing was created from the part that arrived.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let found = rt.block_on(system.call(
        &system.demo,
        "GET",
        "/accounts?email=slow@example.com",
        None,
    ));
    assert_eq!(found.status, 404, "{}", found.text);
}
