//! `vault-bench`: throughput and latency figures for issue 2 (a benchmark, not a test).
//!
//! Run: `cargo build --release --workspace && ./target/release/vault-bench`
//! (options: `--seconds N` per load phase, default 4; `--records N` for the RSS fill, default
//! 100000). It prints:
//! 1. seal/open per second in-process (envelope encryption of a 32-byte token);
//! 2. durable store and masked read against a real `vault serve` process over mTLS with
//!    HTTP/1.1 keep-alive, at concurrency 1 and 32: ops/s, p50, p99;
//! 3. the vault process's resident memory (VmRSS) after the given number of stored records.
//!
//! Each load phase also prints the vault process's CPU time per request (user + system, from
//! `/proc/<pid>/stat`): it moves less than ops/s when other work shares the machine (it still
//! rises with the load), so alternating runs of two builds compare by it. `--store-only` runs
//! just the durable-store phases, for such runs.
//!
//! `--database-url URL` adds, in the same run, the durable store at c=32 on PostgreSQL with 1
//! and with 2 vault instances (the load split over both), each next to its `/v1/health`
//! ceiling and to the sled figure above. The bench needs a role that may `CREATE DATABASE`: each
//! configuration runs on a new database it makes and drops, so nothing already in URL's
//! database is touched and every run starts empty (new keys need an empty vault database). The
//! URL reaches the vaults through their environment and is never printed.
//!
//! The load generator runs on the same 2 cores as the vault, so the figures are a floor.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vault::crypto::{Kek, Keyring, SecretKey};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut seconds = 4u64;
    let mut records = 100_000u64;
    let mut store_only = false;
    let mut database_url: Option<shared::SecretString> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seconds N")?
            }
            "--records" => {
                records = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--records N")?
            }
            "--store-only" => store_only = true,
            "--database-url" => {
                database_url = Some(shared::SecretString::new(
                    args.next().ok_or("--database-url URL")?,
                ))
            }
            "-h" | "--help" => {
                println!(
                    "usage: vault-bench [--seconds N (per load phase, 4)] [--records N (RSS fill, 100000)] [--store-only] [--database-url URL (also on PostgreSQL; a role that may CREATE DATABASE)]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    shared::tls::install_crypto_provider();
    if !store_only {
        seal_open_in_process()?;
        store_in_process()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_secs(seconds);
    rt.block_on(async {
        let sled_store = over_mtls(duration, records, store_only).await?;
        match &database_url {
            Some(url) => on_postgres(url, duration, sled_store).await,
            None => Ok(()),
        }
    })
}

fn seal_open_in_process() -> Result<(), BoxError> {
    let ring = Keyring::new(vec![Kek {
        version: 1,
        key: SecretKey::generate()?,
    }])
    .ok_or("keyring")?;
    let token = b"tok_0123456789abcdef0123456789ab"; // 32 bytes
    let n = 100_000u32;
    let start = Instant::now();
    let mut sealed = Vec::with_capacity(1000);
    for i in 0..n {
        let s = ring.seal_token("store-1", "pm_0123456789abcdef0123456789abcdef", token)?;
        if i < 1000 {
            sealed.push(s);
        }
    }
    let seal_rate = f64::from(n) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..n {
        let s = &sealed[(i % 1000) as usize];
        let t = ring.open_token("store-1", "pm_0123456789abcdef0123456789abcdef", s)?;
        if t.len() != token.len() {
            return Err("open returned the wrong length".into());
        }
    }
    let open_rate = f64::from(n) / start.elapsed().as_secs_f64();
    println!("in-process (32-byte token, fresh DEK + 2x AES-256-GCM per seal):");
    println!("  seal  {seal_rate:>10.0} ops/s");
    println!("  open  {open_rate:>10.0} ops/s");
    Ok(())
}

/// The storage path without HTTP: dedupe lookup, audit entry appended to its segment file,
/// sealed record + indexes in one sled transaction; and what one flush costs on this disk.
fn store_in_process() -> Result<(), BoxError> {
    use shared::domain::{AccountId, CardBrand, Expiry, Last4, PaymentType, StoreId};
    let dir = std::env::temp_dir().join(format!("vault-bench-inproc-{}", std::process::id()));
    let db = vault::store::open_db(&dir, 16 << 20, 500)?;
    let store = vault::store::SledStore::new(db, false)?;
    let ring = Keyring::new(vec![Kek {
        version: 1,
        key: SecretKey::generate()?,
    }])
    .ok_or("keyring")?;
    let fp = vault::crypto::Fingerprinter::new(&SecretKey::generate()?);
    let audit = std::sync::Arc::new(vault::audit::SegmentLog::ephemeral(&dir.join("audit"))?);
    let core = vault::core::VaultCore::with_store(ring, fp, store, audit)?;
    let new = vault::core::NewPaymentMethod {
        store: StoreId::parse("bench")?,
        account: AccountId::parse("acct")?,
        kind: PaymentType::Card,
        brand: Some(CardBrand::Visa),
        last4: Some(Last4::parse("4242")?),
        expiry: Some(Expiry::parse(12, 2030)?),
        masked_email: None,
        processor_customer: None,
    };
    let n = 20_000u32;
    let start = Instant::now();
    for i in 0..n {
        let token = shared::secret::PaymentToken::new(format!("tok_inproc_{i:08}"));
        let draft = vault::audit::AuditDraft {
            identity: "bench".into(),
            operation: "store".into(),
            ..Default::default()
        };
        core.store_payment_method(&new, &token, draft)?;
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    let mut flushes = Vec::new();
    for i in 0..50u32 {
        let token = shared::secret::PaymentToken::new(format!("tok_flush_{i:08}"));
        let draft = vault::audit::AuditDraft {
            identity: "bench".into(),
            operation: "store".into(),
            ..Default::default()
        };
        core.store_payment_method(&new, &token, draft)?;
        let t = Instant::now();
        core.store().db().flush()?;
        flushes.push(t.elapsed());
    }
    flushes.sort_unstable();
    println!(
        "  store txn {rate:>10.0} ops/s (seal + fingerprint + audit append + the sled writes of one record and its 2 index entries, no flush)"
    );
    println!(
        "  flush     p50 {:.2} ms, p99 {:.2} ms (one sled flush = fsync after one record)",
        pct(&flushes, 0.5),
        pct(&flushes, 0.99)
    );
    drop(core);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The real vault, started from the binary next to this one.
struct VaultChild {
    child: Child,
    addr: SocketAddr,
}

impl Drop for VaultChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vault(dir: &Path) -> Result<VaultChild, BoxError> {
    let bin = vault_bin()?;
    let status = Command::new(&bin)
        .arg("init")
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("vault init failed".into());
    }
    serve_vault(dir, &[])
}

/// The `vault` binary next to this one.
fn vault_bin() -> Result<PathBuf, BoxError> {
    let bin = std::env::current_exe()?.with_file_name("vault");
    if !bin.exists() {
        return Err(format!(
            "{} missing: cargo build --release --workspace",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// `vault serve` on an initialised folder, with extra environment (the database URL).
fn serve_vault(dir: &Path, env: &[(&str, &str)]) -> Result<VaultChild, BoxError> {
    let mut cmd = Command::new(vault_bin()?);
    cmd.args(["serve", "--config"])
        .arg(dir.join("vault.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .env("VAULT_LOG", "warn")
        .env_remove("VAULT_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .strip_prefix("VAULT_LISTENING ")
        .ok_or("no VAULT_LISTENING line")?
        .trim()
        .parse()?;
    Ok(VaultChild { child, addr })
}

/// User and system CPU seconds a process has used so far (`/proc/<pid>/stat` fields 14 and
/// 15, in clock ticks of 1/100 s, the Linux default).
fn cpu_secs(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are plain numbers.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime as f64 / 100.0, stime as f64 / 100.0))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Sender, BoxError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[derive(Clone, Copy)]
enum Op {
    Store,
    Read,
    /// `GET /v1/health`: the stack's ceiling (mTLS, HTTP, identity, audit entry; no storage).
    Health,
}

/// Sends one request on a keep-alive connection; returns the status. Store responses add their
/// id to `ids`; reads spread over those ids (so the 100k-record reads are not one hot record).
async fn request(
    sender: &mut Sender,
    op: Op,
    n: u64,
    ids: &std::sync::Mutex<Vec<String>>,
) -> Result<u16, BoxError> {
    let read_path = match op {
        Op::Read => {
            let ids = ids.lock().map_err(|_| "poisoned")?;
            // Multiplicative hash: consecutive n hit scattered records.
            let i = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as usize % ids.len().max(1);
            format!(
                "/v1/payment-methods/{}?store=bench",
                ids.get(i).map(String::as_str).unwrap_or("none")
            )
        }
        Op::Store | Op::Health => String::new(),
    };
    sender.ready().await?;
    let req = match op {
        Op::Store => {
            let body = format!(
                r#"{{"store":"bench","account":"acct{}","token":"tok_bench_{n:016x}_{:08x}","type":"card","brand":"visa","last4":"4242","expMonth":12,"expYear":2030}}"#,
                n % 1000,
                n.wrapping_mul(0x9e37_79b9) as u32
            );
            Request::post("/v1/payment-methods")
                .header(HOST, "localhost")
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?
        }
        Op::Read => Request::get(read_path.as_str())
            .header(HOST, "localhost")
            .body(Full::new(Bytes::new()))?,
        Op::Health => Request::get("/v1/health")
            .header(HOST, "localhost")
            .body(Full::new(Bytes::new()))?,
    };
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    if let (Op::Store, Some(id)) = (op, extract_id(&body)) {
        ids.lock().map_err(|_| "poisoned")?.push(id);
    }
    Ok(status)
}

/// The `id` of a masked view, without a full JSON parse on the load generator's hot path.
fn extract_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"id\":\"")? + 6;
    let len = text.get(start..)?.find('"')?;
    text.get(start..start + len).map(str::to_owned)
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    vault_user: f64,
    vault_sys: f64,
    generator: f64,
}

struct PhaseResult {
    ops: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds used in the phase: the vault process in user and system mode, and this
    /// load generator (both).
    cpu: Cpu,
}

/// Where the load goes.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    ids: Arc<std::sync::Mutex<Vec<String>>>,
    /// For the CPU time per request.
    vault_pid: String,
}

/// Runs `concurrency` keep-alive connections doing `op` until `duration` passes or `limit`
/// requests were sent in total.
async fn phase(
    target: &Target,
    op: Op,
    concurrency: usize,
    duration: Duration,
    limit: u64,
    counter: Arc<AtomicU64>,
) -> Result<PhaseResult, BoxError> {
    phase_on(
        std::slice::from_ref(target),
        op,
        concurrency,
        duration,
        limit,
        counter,
    )
    .await
}

/// [`phase`] with the connections spread round-robin over several vault instances (their CPU
/// time added up).
async fn phase_on(
    targets: &[Target],
    op: Op,
    concurrency: usize,
    duration: Duration,
    limit: u64,
    counter: Arc<AtomicU64>,
) -> Result<PhaseResult, BoxError> {
    let mut senders = Vec::new();
    for i in 0..concurrency {
        let t = &targets[i % targets.len()];
        senders.push((connect(t.addr, t.tls.clone()).await?, t.ids.clone()));
    }
    let pids: Vec<String> = targets.iter().map(|t| t.vault_pid.clone()).collect();
    let cpu = || {
        let (mut vault_user, mut vault_sys) = (0.0, 0.0);
        for pid in &pids {
            let (u, s) = cpu_secs(pid).unwrap_or_default();
            vault_user += u;
            vault_sys += s;
        }
        let (u, s) = cpu_secs("self").unwrap_or_default();
        Cpu {
            vault_user,
            vault_sys,
            generator: u + s,
        }
    };
    let cpu_start = cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (mut sender, ids) in senders {
        let counter = counter.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < limit {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let status = request(&mut sender, op, n, &ids).await?;
                lat.push(t.elapsed());
                let expected = match op {
                    Op::Store => 201,
                    Op::Read | Op::Health => 200,
                };
                if status != expected {
                    return Err::<Vec<Duration>, BoxError>(
                        format!("unexpected status {status}").into(),
                    );
                }
            }
            Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let cpu_end = cpu();
    latencies.sort_unstable();
    Ok(PhaseResult {
        ops: latencies.len() as u64,
        elapsed,
        latencies,
        cpu: Cpu {
            vault_user: cpu_end.vault_user - cpu_start.vault_user,
            vault_sys: cpu_end.vault_sys - cpu_start.vault_sys,
            generator: cpu_end.generator - cpu_start.generator,
        },
    })
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let idx = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[idx.min(lat.len() - 1)].as_secs_f64() * 1000.0
}

fn rate(r: &PhaseResult) -> f64 {
    r.ops as f64 / r.elapsed.as_secs_f64()
}

/// `report`, plus the figure as a share of `/v1/health` at the same concurrency, same run.
fn report_vs(name: &str, concurrency: usize, r: &PhaseResult, ceiling: f64) {
    report(name, concurrency, r);
    println!(
        "  {:<16} {:>13.0}% of /v1/health c={concurrency} ({ceiling:.0} ops/s, the stack's ceiling in this run)",
        "",
        100.0 * rate(r) / ceiling.max(1.0)
    );
}

fn report(name: &str, concurrency: usize, r: &PhaseResult) {
    let per_op_us = |secs: f64| secs * 1e6 / r.ops.max(1) as f64;
    println!(
        "  {name:<16} c={concurrency:<3} {:>8.0} ops/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} requests; CPU/request: vault {:.0} us = user {:.0} + sys {:.0}, load generator {:.0} us)",
        rate(r),
        pct(&r.latencies, 0.50),
        pct(&r.latencies, 0.99),
        r.ops,
        per_op_us(r.cpu.vault_user + r.cpu.vault_sys),
        per_op_us(r.cpu.vault_user),
        per_op_us(r.cpu.vault_sys),
        per_op_us(r.cpu.generator),
    );
}

/// The phases on sled; answers the durable store rate at c=32 (for the PostgreSQL comparison).
async fn over_mtls(duration: Duration, records: u64, store_only: bool) -> Result<f64, BoxError> {
    let tmp = std::env::temp_dir().join(format!("vault-bench-{}", std::process::id()));
    let result = over_mtls_in(&tmp, duration, records, store_only).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn over_mtls_in(
    dir: &Path,
    duration: Duration,
    records: u64,
    store_only: bool,
) -> Result<f64, BoxError> {
    let vault = start_vault(dir)?;
    let pki: PathBuf = dir.join("pki");
    let files = shared::tls::TlsFiles {
        ca: pki.join("ca.pem"),
        cert: pki.join("accounts.pem"),
        key: pki.join("accounts.key"),
    };
    let tls = Arc::new(shared::tls::mtls_client_config(&files)?);
    // Numbers new tokens; reads use their own counter so the fill knows how many were stored.
    let counter = Arc::new(AtomicU64::new(0));
    let read_counter = Arc::new(AtomicU64::new(0));
    println!("over mTLS, HTTP/1.1 keep-alive, load generator on the same machine:");

    // One record to read back.
    let mut s = connect(vault.addr, tls.clone()).await?;
    let req = Request::post("/v1/payment-methods")
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"store":"bench","account":"reader","token":"tok_bench_read_target","type":"card","brand":"visa","last4":"4242","expMonth":12,"expYear":2030}"#,
        )))?;
    let body = s
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let view: serde_json::Value = serde_json::from_slice(&body)?;
    let id = view["id"].as_str().ok_or("no id")?;
    let ids = Arc::new(std::sync::Mutex::new(vec![id.to_owned()]));
    let target = Target {
        addr: vault.addr,
        tls: tls.clone(),
        ids,
        vault_pid: vault.child.id().to_string(),
    };

    let health_counter = Arc::new(AtomicU64::new(0));
    let mut ceiling = [0.0f64; 2];
    for (i, c) in [1usize, 32].into_iter().enumerate() {
        let r = phase(
            &target,
            Op::Health,
            c,
            duration,
            u64::MAX,
            health_counter.clone(),
        )
        .await?;
        report("health (ceiling)", c, &r);
        ceiling[i] = rate(&r);
    }
    let mut store_rate = 0.0;
    for (i, c) in [1usize, 32].into_iter().enumerate() {
        let r = phase(&target, Op::Store, c, duration, u64::MAX, counter.clone()).await?;
        report_vs("durable store", c, &r, ceiling[i]);
        store_rate = rate(&r);
    }
    if store_only {
        return Ok(store_rate);
    }
    for (i, c) in [1usize, 32].into_iter().enumerate() {
        let r = phase(
            &target,
            Op::Read,
            c,
            duration,
            u64::MAX,
            read_counter.clone(),
        )
        .await?;
        report_vs("masked read", c, &r, ceiling[i]);
    }

    let stored = counter.load(Ordering::Relaxed) + 1;
    let rss_before = rss_kib(vault.child.id()).unwrap_or(0);
    if stored < records {
        let fill_start = Instant::now();
        let r = phase(
            &target,
            Op::Store,
            32,
            Duration::from_secs(3600),
            records - stored,
            counter.clone(),
        )
        .await?;
        println!(
            "  filled to {records} records ({} more in {:.1} s, {:.0} ops/s)",
            r.ops,
            fill_start.elapsed().as_secs_f64(),
            r.ops as f64 / r.elapsed.as_secs_f64()
        );
        // The ceiling again at this size (the audit log and caches have grown too).
        let h = phase(
            &target,
            Op::Health,
            32,
            duration,
            u64::MAX,
            health_counter.clone(),
        )
        .await?;
        report("health (ceiling)", 32, &h);
        let r = phase(
            &target,
            Op::Read,
            32,
            duration,
            u64::MAX,
            read_counter.clone(),
        )
        .await?;
        report_vs(&format!("read {records} rnd"), 32, &r, rate(&h));
    }
    // Let sled's background work settle before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(vault.child.id()).ok_or("cannot read VmRSS")?;
    println!("vault process resident memory:");
    println!("  before fill {:>6.1} MiB", rss_before as f64 / 1024.0);
    println!(
        "  at {records} records {:>6.1} MiB (VmRSS)",
        rss as f64 / 1024.0
    );
    drop(vault);
    let audit_dir = dir.join("data").join("audit");
    let audit_bytes = tests_du(&audit_dir);
    let records_bytes = tests_du(&dir.join("data")).saturating_sub(audit_bytes);
    let entries = audit_entries(&audit_dir);
    let stored = counter.load(Ordering::Relaxed) + 1;
    println!("disk (after the vault stopped):");
    println!(
        "  records (sled)    {:>8.1} MiB = {:>6.0} bytes per stored record ({stored} records)",
        records_bytes as f64 / (1024.0 * 1024.0),
        records_bytes as f64 / stored.max(1) as f64
    );
    println!(
        "  audit segments    {:>8.1} MiB = {:>6.0} bytes per audited request ({entries} entries)",
        audit_bytes as f64 / (1024.0 * 1024.0),
        audit_bytes as f64 / entries.max(1) as f64
    );
    Ok(store_rate)
}

/// Entry lines in the audit segment files.
fn audit_entries(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        if e.path().extension().is_some_and(|x| x == "log")
            && let Ok(bytes) = std::fs::read(e.path())
        {
            n += bytes
                .split(|b| *b == b'\n')
                .filter(|l| l.starts_with(b"{\"seq\":"))
                .count() as u64;
        }
    }
    n
}

fn tests_du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// `--database-url`: durable store at c=32 on PostgreSQL with 1 and 2 vault instances, each
/// configuration on a new database made (and dropped) through `url`.
async fn on_postgres(
    url: &shared::SecretString,
    duration: Duration,
    sled_store: f64,
) -> Result<(), BoxError> {
    let admin_settings = pg_settings(url.clone());
    let admin_pool = shared::pg::pool(&admin_settings)?;
    let admin = shared::pg::connection(&admin_pool).await?;
    let tmp = std::env::temp_dir().join(format!("vault-bench-pg-{}", std::process::id()));
    println!(
        "on PostgreSQL (xN = N vault instances sharing the load; each N on a new database; durable store c=32 on sled: {sled_store:.0} ops/s above):"
    );
    let mut rates = Vec::new();
    for instances in [1usize, 2] {
        let name = format!("strongroom_vault_bench_{}_{instances}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let result = pg_instances(
            &with_dbname(url, &name),
            &tmp.join(format!("x{instances}")),
            instances,
            duration,
        )
        .await;
        // The vaults are gone (killed on drop inside): the database can go too.
        let dropped = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        rates.push(result?);
        dropped?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "  durable store c=32: sled {sled_store:.0} ops/s, PostgreSQL 1 vault {:.0} ops/s, 2 vaults {:.0} ops/s",
        rates[0], rates[1]
    );
    Ok(())
}

fn pg_settings(url: shared::SecretString) -> shared::pg::PgSettings {
    shared::pg::PgSettings {
        url,
        pool_size: 1,
        ca: None,
        client_cert: None,
        connect_timeout: Duration::from_secs(10),
    }
}

/// `url` pointing at database `name` instead (a later `dbname` overrides the URL's path in
/// libpq's and tokio-postgres' syntax alike).
fn with_dbname(url: &shared::SecretString, name: &str) -> shared::SecretString {
    let u = url.expose_secret();
    let joined = if u.starts_with("postgres://") || u.starts_with("postgresql://") {
        let sep = if u.contains('?') { '&' } else { '?' };
        format!("{u}{sep}dbname={name}")
    } else {
        format!("{u} dbname={name}")
    };
    shared::SecretString::new(joined)
}

/// `instances` vaults on the (empty) database at `url`: the first made by `vault init --config`
/// (dev PKI, new keys), the others copies of its keys, PKI and config with their own data
/// folders. Prints the health ceiling and the durable store at c=32 across all of them (the
/// connections split evenly); answers the store rate.
async fn pg_instances(
    url: &shared::SecretString,
    root: &Path,
    instances: usize,
    duration: Duration,
) -> Result<f64, BoxError> {
    let first = root.join("v0");
    shared::pki::create_private_dir(&first)?;
    shared::pki::ensure_dev_pki(&first.join("pki"))?;
    let config = vault::config::FileConfig::defaults()
        .to_toml()?
        .replace("backend = \"sled\"", "backend = \"postgres\"");
    std::fs::write(first.join("vault.toml"), config)?;
    let env = [("VAULT_DATABASE_URL", url.expose_secret())];
    let status = Command::new(vault_bin()?)
        .args(["init", "--config"])
        .arg(first.join("vault.toml"))
        .envs(env)
        .env("VAULT_LOG", "warn")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("vault init --config on PostgreSQL failed".into());
    }
    let mut dirs = vec![first.clone()];
    for i in 1..instances {
        let dir = root.join(format!("v{i}"));
        shared::pki::create_private_dir(&dir.join("pki"))?;
        for e in std::fs::read_dir(first.join("pki"))?.flatten() {
            std::fs::copy(e.path(), dir.join("pki").join(e.file_name()))?;
        }
        for f in ["vault.toml", "master.key", "fingerprint.key"] {
            std::fs::copy(first.join(f), dir.join(f))?;
        }
        dirs.push(dir);
    }
    let mut vaults = Vec::new();
    for dir in &dirs {
        vaults.push(serve_vault(dir, &env)?);
    }
    let pki = first.join("pki");
    let files = shared::tls::TlsFiles {
        ca: pki.join("ca.pem"),
        cert: pki.join("accounts.pem"),
        key: pki.join("accounts.key"),
    };
    let tls = Arc::new(shared::tls::mtls_client_config(&files)?);
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let targets: Vec<Target> = vaults
        .iter()
        .map(|v| Target {
            addr: v.addr,
            tls: tls.clone(),
            ids: ids.clone(),
            vault_pid: v.child.id().to_string(),
        })
        .collect();
    let which = format!("x{instances}");
    let h = phase_on(
        &targets,
        Op::Health,
        32,
        duration,
        u64::MAX,
        Arc::new(AtomicU64::new(0)),
    )
    .await?;
    report(&format!("health pg {which}"), 32, &h);
    let counter = Arc::new(AtomicU64::new(0));
    let r = phase_on(&targets, Op::Store, 32, duration, u64::MAX, counter).await?;
    report_vs(&format!("store pg {which}"), 32, &r, rate(&h));
    drop(vaults);
    Ok(rate(&r))
}
