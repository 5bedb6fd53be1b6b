//! Renewals benchmark (a benchmark, not a test): starts `accounts-api dev` from the same build
//! folder (which starts the real vault and the sandbox processor), then measures
//! 1. charges per second through the vault to the sandbox processor at concurrency 32, as the
//!    `renewals` identity over mTLS (each charge: durable intent, token opened, processor call,
//!    durable outcome, audit entry), with p50/p99;
//! 2. the renewal job ([`accounts_api::service::renewals::run_due`]) on N due automatic subscriptions
//!    (default 10000; `BENCH_RENEWALS`) in its own accounts-api database, against the same
//!    vault: wall time and renewals per second.
//!
//! Run: `cargo build --release --workspace && ./target/release/renewals-bench`
//! (`BENCH_SECONDS`, default 10, sets phase 1's length).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark binary: failing loudly is right

use accounts_api::model::{
    AccountId, AccountRecord, Contact, IntervalUnit, OrderId, OrderPayment, OrderRecord, StoreId,
    SubState, SubscriptionId, SubscriptionRecord, new_id, now_ms,
};
use accounts_api::storage::{Checkout, Extras, SledStorage, Storage};
use accounts_api::vault::{VaultClient, VaultConfig};
use serde_json::Value;
use shared::tls::TlsFiles;
use shared::vault_api::{ChargeRequest, ChargeStatus, StorePaymentMethodRequest};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 32;
const STORE: &str = "bench-store";

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn vault_config(vault_dir: &std::path::Path, addr: &str, identity: &str) -> VaultConfig {
    let pki = vault_dir.join("pki");
    VaultConfig {
        addr: addr.parse().unwrap(),
        server_name: "localhost".into(),
        tls: TlsFiles {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{identity}.pem")),
            key: pki.join(format!("{identity}.key")),
        },
    }
}

async fn store_cards(accounts: &VaultClient, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let req = StorePaymentMethodRequest {
            store: STORE.into(),
            account: format!("acct{i}"),
            token: shared::SecretString::new(format!(
                "tok_bench_{}",
                uuid::Uuid::new_v4().simple()
            )),
            kind: "card".into(),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
            exp_month: Some(12),
            exp_year: Some(2040),
            email: None,
            processor_customer: None,
        };
        ids.push(accounts.store(&req).await.unwrap().id);
    }
    ids
}

async fn charges_phase(renewals: VaultClient, pms: Vec<String>, secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let pms = Arc::new(pms);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (renewals, stop, seq, pms) = (
            renewals.clone(),
            Arc::clone(&stop),
            Arc::clone(&seq),
            Arc::clone(&pms),
        );
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errs) = (Vec::new(), 0usize);
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let req = ChargeRequest {
                    store: STORE.into(),
                    amount: 1495,
                    currency: "USD".into(),
                    idempotency_key: format!("bench:{n}"),
                    description: None,
                };
                let t = Instant::now();
                match renewals.charge(&pms[w % pms.len()], &req).await {
                    Ok(o) if o.status == ChargeStatus::Succeeded => lat.push(t.elapsed()),
                    _ => errs += 1,
                }
            }
            (lat, errs)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errs) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errs += e;
    }
    let elapsed = start.elapsed();
    lat.sort();
    println!(
        "vault charge -> sandbox  c={CONCURRENCY}  {:>7.0} charges/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} ok, {errs} errors, {:.1} s)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.len(),
        elapsed.as_secs_f64()
    );
}

fn contact() -> Contact {
    Contact {
        first: "Bench".into(),
        last: "Customer".into(),
        email: String::new(),
        company: None,
        phone: None,
    }
}

/// Writes `n` due automatic subscriptions, one account each, spread over `pms`.
fn seed(storage: &SledStorage, n: usize, pms: &[String]) -> i64 {
    let now = now_ms();
    let store = StoreId::parse(STORE).unwrap();
    for i in 0..n {
        let account_id = AccountId::generate();
        let mut c = contact();
        c.email = format!("bench{i}@example.com");
        let account = AccountRecord {
            id: account_id.clone(),
            store: store.clone(),
            global: new_id(),
            contact: c.clone(),
            address: None,
            country: None,
            language: None,
            custom: None,
            orders: vec![],
            subscriptions: vec![],
            payment_methods: vec![],
            created: now,
            charges: vec![],
        };
        let order = OrderRecord {
            id: OrderId::generate(),
            reference: new_id(),
            store: store.clone(),
            account: account_id.clone(),
            customer: c,
            address: None,
            country: None,
            language: None,
            currency: "USD".into(),
            items: vec![],
            total: 1495,
            payment: OrderPayment {
                kind: "card".into(),
                brand: Some("visa".into()),
                last4: Some("4242".into()),
            },
            payment_method: None,
            completed: now,
            live: false,
        };
        let sub = SubscriptionRecord {
            id: SubscriptionId::generate(),
            store: store.clone(),
            account: account_id.clone(),
            order: order.id.clone(),
            product: "pro-plan".into(),
            quantity: 1,
            price: 1495,
            currency: "USD".into(),
            interval_unit: IntervalUnit::Month,
            interval_length: 1,
            state: SubState::Active,
            auto_renew: true,
            payment_method: Some(pms[i % pms.len()].clone()),
            payment_kind: "card".into(),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
            expiry: Some("12/40".into()),
            begin: now - 31 * 86_400_000,
            next: now - 1000,
            canceled: None,
            renewal: Default::default(),
            live: false,
            lifecycle: Default::default(),
            rebills: Vec::new(),
        };
        storage
            .complete_checkout(
                &Checkout {
                    store: store.clone(),
                    account_id,
                    email_key: None,
                    create: Some(account),
                    order,
                    subscriptions: vec![sub],
                    payment_method: None,
                },
                &Extras::default(),
            )
            .unwrap();
    }
    now
}

#[tokio::main]
async fn main() {
    shared::tls::install_crypto_provider();
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let renewals_n: usize = std::env::var("BENCH_RENEWALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("accounts-api");
    assert!(
        exe.exists(),
        "{} missing: cargo build --release --workspace",
        exe.display()
    );
    let data =
        std::env::temp_dir().join(format!("renewals-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(&exe)
        .arg("dev")
        .arg("--data")
        .arg(&data)
        .arg("--port")
        .arg("0")
        .env("RUST_LOG", "warn")
        .env("VAULT_LOG", "warn")
        .env("STRONGROOM_RENEWALS_INTERVAL_SECS", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = loop {
        let line = lines.next().expect("dev exited").unwrap();
        if let Some(j) = line.strip_prefix("STRONGROOM_READY ") {
            break serde_json::from_str(j).unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let vault_addr = ready["vault"].as_str().unwrap().to_owned();
    let vault_dir = data.join("vault");
    println!(
        "system up: vault {vault_addr}, processor {}",
        ready["processor"]
    );

    let accounts = VaultClient::new(&vault_config(&vault_dir, &vault_addr, "accounts")).unwrap();
    let renewals = VaultClient::with_timeout(
        &vault_config(&vault_dir, &vault_addr, "renewals"),
        Duration::from_secs(30),
    )
    .unwrap();
    let pms = store_cards(&accounts, CONCURRENCY).await;
    charges_phase(renewals.clone(), pms.clone(), secs).await;

    // Phase 2: the job, in-process, on its own database against the same vault.
    let db_dir = data.join("bench-accounts");
    let storage = Arc::new(SledStorage::open(&db_dir).unwrap());
    let t = Instant::now();
    let now = seed(&storage, renewals_n, &pms);
    storage.durable().await.unwrap();
    println!(
        "seeded {renewals_n} due subscriptions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let state = accounts_api::app::AppState::build(
        storage,
        accounts_api::settings::Settings::from_env().unwrap(),
        accounts,
        Some(renewals),
    );
    let t = Instant::now();
    let summary = accounts_api::service::renewals::run_due(&state, now)
        .await
        .unwrap();
    let elapsed = t.elapsed();
    println!(
        "renewal job: {} due -> {} charged, {} failed, {} errors in {:.2} s = {:.0} renewals/s",
        summary.examined,
        summary.charged,
        summary.failed,
        summary.errors,
        elapsed.as_secs_f64(),
        summary.charged as f64 / elapsed.as_secs_f64()
    );
    let again = accounts_api::service::renewals::run_due(&state, now)
        .await
        .unwrap();
    println!(
        "second pass at the same time: {} due, {} charged (exactly once per period)",
        again.examined, again.charged
    );

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
}
