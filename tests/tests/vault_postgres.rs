//! Vault instances on one PostgreSQL database (issue 11), end to end with the real `vault` and
//! `sandbox-processor` binaries on loopback: each instance has its own data folder (audit chain)
//! and a copy of the key files, and shares records, key-check values and the charge ledger
//! through the database. A token stored through one reads masked through the other; one charge
//! key sent to both reaches the processor once; four instances started at once on an empty
//! database migrate it once and all serve. PostgreSQL is a throwaway server (`pgtest`); without
//! it the tests print SKIPPED (and fail under STRONGROOM_REQUIRE_TOOLS=1).

use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::sandbox::{self, Sandbox, start_sandbox};
use tests::vault::{VaultProcess, card_body, init_vault, serve_command};
use tests::{Service, bin_path, run, temp_dir};

/// Bound on each test's async part: a hang fails instead of holding the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// `vault.toml` as `vault init` writes it, on PostgreSQL: the URL from the owner-only file
/// `database.url` next to it (`url_file`), else from `VAULT_DATABASE_URL`.
fn postgres_config(dir: &Path, url_file: bool) {
    let defaults = vault::config::FileConfig::defaults()
        .to_toml()
        .unwrap_or_else(|e| panic!("{e}"));
    let storage = if url_file {
        "backend = \"postgres\"\ndatabase_url_file = \"database.url\"\npool_size = 8"
    } else {
        "backend = \"postgres\"\npool_size = 8"
    };
    let text = defaults.replace("backend = \"sled\"", storage);
    assert_ne!(text, defaults, "the default config has no backend line");
    write_private(&dir.join("vault.toml"), &text);
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Copies the files `names` (and the folder `pki/`) from one instance folder to another;
/// `std::fs::copy` keeps the owner-only modes.
fn copy_files(from: &Path, to: &Path, names: &[&str]) {
    shared::pki::create_private_dir(&to.join("pki")).unwrap_or_else(|e| panic!("{e}"));
    let pki = std::fs::read_dir(from.join("pki")).unwrap_or_else(|e| panic!("{e}"));
    for entry in pki.flatten() {
        std::fs::copy(entry.path(), to.join("pki").join(entry.file_name()))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for name in names {
        std::fs::copy(from.join(name), to.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// `vault serve` for `dir`, charging through `sandbox`, with the database URL in its
/// environment when given (else the config's url file).
fn serve(dir: &Path, sandbox: &Sandbox, env_url: Option<&str>) -> Command {
    let mut cmd = serve_command(dir);
    cmd.env("VAULT_PROCESSOR_URL", &sandbox.url)
        .env("VAULT_PROCESSOR_SECRET_KEY", sandbox::SECRET)
        .env_remove("VAULT_PROCESSOR_TIMEOUT_MS")
        .env_remove("VAULT_AUDIT_KEY")
        .env_remove("VAULT_DATABASE_URL");
    if let Some(url) = env_url {
        cmd.env("VAULT_DATABASE_URL", url);
    }
    cmd
}

/// `vault audit verify --config` of an instance whose URL comes from the environment.
fn audit_verify(dir: &Path, env_url: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["audit", "verify", "--config"])
        .arg(dir.join("vault.toml"))
        .env_remove("VAULT_DATABASE_URL");
    if let Some(url) = env_url {
        cmd.env("VAULT_DATABASE_URL", url);
    }
    let (ok, out, err) = run(cmd);
    (ok, format!("{out}{err}"))
}

/// The operations in an instance's audit chain (`vault audit export`).
fn audit_operations(dir: &Path, env_url: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["audit", "export", "--since", "1", "--config"])
        .arg(dir.join("vault.toml"))
        .env_remove("VAULT_DATABASE_URL");
    if let Some(url) = env_url {
        cmd.env("VAULT_DATABASE_URL", url);
    }
    let (ok, out, err) = run(cmd);
    assert!(ok, "vault audit export failed:\n{err}");
    out.lines()
        .map(|l| {
            vault::audit::AuditEntry::decode(l.as_bytes())
                .unwrap_or_else(|_| panic!("export line {l:?}"))
                .operation
        })
        .collect()
}

/// (status, body) of a request.
async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap_or_else(|e| panic!("request: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Charges `pm` on `v` with idempotency key `key`; a 409 "in progress" (the other instance
/// holds the claim) is retried as a client would, until the outcome is known.
async fn charge_until_answered(v: &VaultProcess, pm: &str, key: &str) -> Value {
    let body = json!({"store": "s1", "amount": 1495, "currency": "USD", "idempotencyKey": key,
        "description": "Renewal"});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = v
            .client("renewals")
            .post(v.url(&format!("/v1/payment-methods/{pm}/charge")))
            .json(&body);
        match send(req).await {
            (200, answer) => return answer,
            (409, refusal) if Instant::now() < deadline => {
                assert!(
                    refusal.to_string().contains("in progress"),
                    "only 'in progress' is retried: {refusal}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (status, other) => panic!("charge answered {status}: {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_vaults_on_one_database_share_records_and_one_charge_key_sent_to_both_calls_the_processor_once()
 {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    shared::tls::install_crypto_provider();
    let root = temp_dir("strongroom-vault-pg-");
    // Each charge takes a while at the processor, so the two requests below overlap.
    let sandbox = start_sandbox(&["--delay-ms", "400"]);

    // A: `vault init --dir` on a config that names the database (URL in an owner-only file):
    // keys, PKI, its data folder, and the folder id recorded in the database.
    let a_dir = root.path().join("a");
    shared::pki::create_private_dir(&a_dir).unwrap_or_else(|e| panic!("{e}"));
    write_private(&a_dir.join("database.url"), &format!("{url}\n"));
    postgres_config(&a_dir, true);
    let printed = init_vault(&a_dir);
    assert!(printed.contains("data folder id"), "{printed}");
    // B: a copy of A's key files, PKI and config with its own data folder (and its own audit
    // key, created at its first start); its URL comes from the environment.
    let b_dir = root.path().join("b");
    shared::pki::create_private_dir(&b_dir).unwrap_or_else(|e| panic!("{e}"));
    copy_files(&a_dir, &b_dir, &["master.key", "fingerprint.key"]);
    postgres_config(&b_dir, false);

    let a = VaultProcess::serve(&a_dir, serve(&a_dir, &sandbox, None));
    let b = VaultProcess::serve(&b_dir, serve(&b_dir, &sandbox, Some(&url)));
    let outcome = tokio::time::timeout(TEST_TIMEOUT, async {
        // A token stored through A reads masked through B.
        let token = format!("tok_visa_{}", uuid::Uuid::new_v4().simple());
        let (status, stored) = send(
            a.client("accounts")
                .post(a.url("/v1/payment-methods"))
                .json(&card_body("s1", "acct1", &token)),
        )
        .await;
        assert_eq!(status, 201, "{stored}");
        let pm = stored["id"].as_str().unwrap_or_default().to_owned();
        let (status, read) = send(
            b.client("accounts")
                .get(b.url(&format!("/v1/payment-methods/{pm}?store=s1"))),
        )
        .await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(
            (read["id"].as_str(), read["last4"].as_str()),
            (Some(pm.as_str()), Some("4242"))
        );
        assert!(
            !read.to_string().contains(&token),
            "a read is masked: {read}"
        );
        // The same token stored through B is the same record (one dedupe index).
        let (status, again) = send(
            b.client("accounts")
                .post(b.url("/v1/payment-methods"))
                .json(&card_body("s1", "acct1", &token)),
        )
        .await;
        assert!(status == 200 || status == 201, "{status} {again}");
        assert_eq!(again["id"].as_str(), Some(pm.as_str()), "{again}");

        // One charge key, sent to both vaults at the same moment.
        let key = "sub1:period1";
        let (on_a, on_b) = tokio::join!(
            charge_until_answered(&a, &pm, key),
            charge_until_answered(&b, &pm, key)
        );
        assert_eq!(on_a["status"], "succeeded", "{on_a}");
        assert_eq!(on_a, on_b, "both vaults answer the one outcome");
        let calls = sandbox::charges_with_key(&sandbox.url, &format!("s1:{key}")).await;
        assert_eq!(calls.len(), 1, "one key, one processor charge: {calls:?}");
        assert_eq!(
            sandbox::charges(&sandbox.url).await["replays"],
            0,
            "the processor was not asked twice (its own dedupe was not needed)"
        );
        // Repeats on either vault are answered from the shared ledger.
        for v in [&a, &b] {
            assert_eq!(charge_until_answered(v, &pm, key).await, on_a);
        }
        assert_eq!(
            sandbox::charges(&sandbox.url).await["charges"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        token
    })
    .await;
    let token = outcome.unwrap_or_else(|_| panic!("timed out:\n{}\n{}", a.output(), b.output()));

    // Each vault kept its own audit chain, and each verifies.
    let logs = format!("{}{}", a.output(), b.output());
    assert!(!logs.contains(&token), "a token reached a vault log");
    assert!(!logs.contains(&url), "the database URL reached a vault log");
    let (mut a, mut b) = (a, b);
    a.stop();
    b.stop();
    let a_ops = audit_operations(&a_dir, None);
    let b_ops = audit_operations(&b_dir, Some(&url));
    // Each chain holds what reached that instance: the read was B's only.
    assert_eq!(
        a_ops.first().map(String::as_str),
        Some("store"),
        "{a_ops:?}"
    );
    assert!(!a_ops.iter().any(|o| o == "read"), "{a_ops:?}");
    assert_eq!(b_ops.first().map(String::as_str), Some("read"), "{b_ops:?}");
    let attempts = a_ops
        .iter()
        .chain(&b_ops)
        .filter(|o| *o == "charge attempt")
        .count();
    assert_eq!(
        attempts, 1,
        "one attempt in the two chains: {a_ops:?} {b_ops:?}"
    );
    for (dir, env) in [(&a_dir, None), (&b_dir, Some(url.as_str()))] {
        let (ok, verdict) = audit_verify(dir, env);
        assert!(
            ok && verdict.contains("entries ok"),
            "{}: {verdict}",
            dir.display()
        );
    }
    assert_ne!(
        std::fs::read(a_dir.join("audit.key")).ok(),
        std::fs::read(b_dir.join("audit.key")).ok(),
        "each instance signs its chain with its own audit key"
    );
}

/// Hex of `n` random bytes.
fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .unwrap_or_else(|_| panic!("no randomness"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_vaults_started_at_once_on_an_empty_database_migrate_it_once_and_all_serve() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    shared::tls::install_crypto_provider();
    let root = temp_dir("strongroom-vault-pg4-");
    let sandbox = start_sandbox(&[]);
    // One PKI and one set of keys (from the environment) for four instance folders; nothing
    // has touched the database yet.
    let pki_home = root.path().join("template");
    shared::pki::ensure_dev_pki(&pki_home.join("pki")).unwrap_or_else(|e| panic!("{e}"));
    let master = format!("1:{}", random_hex(32));
    let fingerprint = random_hex(32);
    let dirs: Vec<PathBuf> = (0..4)
        .map(|i| {
            let dir = root.path().join(format!("v{i}"));
            shared::pki::create_private_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
            copy_files(&pki_home, &dir, &[]);
            postgres_config(&dir, false);
            dir
        })
        .collect();
    let services: Vec<Service> = dirs
        .iter()
        .map(|dir| {
            let mut cmd = serve(dir, &sandbox, Some(&url));
            cmd.env("VAULT_MASTER_KEY", &master)
                .env("VAULT_FINGERPRINT_KEY", &fingerprint);
            Service::spawn("vault", cmd)
        })
        .collect();
    let vaults: Vec<VaultProcess> = services
        .into_iter()
        .zip(&dirs)
        .map(|(service, dir)| {
            let line = service.wait_for_line("VAULT_LISTENING ", Duration::from_secs(60));
            VaultProcess {
                dir: dir.clone(),
                addr: line.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
                service,
            }
        })
        .collect();
    let served = tokio::time::timeout(TEST_TIMEOUT, async {
        for v in &vaults {
            let (status, body) = send(v.client("accounts").get(v.url("/v1/health"))).await;
            assert_eq!(status, 200, "{}: {body}", v.dir.display());
        }
        // They share one database: a token stored on one is read on every other.
        let (status, stored) = send(
            vaults[3]
                .client("accounts")
                .post(vaults[3].url("/v1/payment-methods"))
                .json(&card_body("s1", "acct1", "tok_visa_four")),
        )
        .await;
        assert_eq!(status, 201, "{stored}");
        let pm = stored["id"].as_str().unwrap_or_default().to_owned();
        for v in &vaults {
            let (status, read) = send(
                v.client("accounts")
                    .get(v.url(&format!("/v1/payment-methods/{pm}?store=s1"))),
            )
            .await;
            assert_eq!(status, 200, "{}: {read}", v.dir.display());
        }
        // One row per migration of the vault: the schema was applied once, by one instance.
        let settings = shared::pg::PgSettings {
            url: shared::SecretString::new(url.clone()),
            pool_size: 1,
            ca: None,
            client_cert: None,
            connect_timeout: Duration::from_secs(5),
        };
        let pool = shared::pg::pool(&settings).unwrap_or_else(|e| panic!("{e}"));
        let db = shared::pg::connection(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let rows = db
            .query(
                "SELECT version FROM strongroom_migrations WHERE component = 'vault' \
                 ORDER BY version",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        let expected: Vec<i32> = (1..=vault::store::MIGRATIONS.len())
            .map(|v| i32::try_from(v).unwrap_or(i32::MAX))
            .collect();
        assert_eq!(versions, expected);
    })
    .await;
    let outputs: Vec<String> = vaults.iter().map(VaultProcess::output).collect();
    assert!(served.is_ok(), "timed out:\n{}", outputs.join("\n"));
    let migrated = outputs
        .iter()
        .filter(|o| o.contains("vault database schema migrated"))
        .count();
    assert_eq!(
        migrated,
        1,
        "one instance migrates:\n{}",
        outputs.join("\n")
    );
    for out in &outputs {
        assert!(
            !out.contains(&master[2..]) && !out.contains(&fingerprint),
            "a key in a log"
        );
    }
    // Each instance has its own audit chain and key in its own folder.
    for mut v in vaults {
        v.stop();
    }
    for dir in &dirs {
        assert!(dir.join("audit.key").is_file(), "{}", dir.display());
        let (ok, verdict) = audit_verify(dir, Some(&url));
        assert!(ok, "{}: {verdict}", dir.display());
    }
}
