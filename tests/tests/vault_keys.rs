//! Key lifecycle against the real binary (issue 6): rotation under load with re-wrap and
//! retirement, refusals with counts, sealed start with Shamir shares, damaged records, and the
//! audit export.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shared::domain::{PaymentMethodId, StoreId};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tests::vault::{VaultProcess, card_body, init_sealed, serve_command, start_vault};
use tests::{all_files, bin_path, contains_bytes, run, temp_dir};

async fn store(v: &VaultProcess, c: &reqwest::Client, account: &str, token: &str) -> Value {
    let resp = c
        .post(v.url("/v1/payment-methods"))
        .json(&card_body("s1", account, token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    resp.json().await.unwrap()
}

fn load_config(dir: &Path) -> vault::config::Config {
    vault::config::Config::load(
        &dir.join("vault.toml"),
        vault::config::Overrides::default(),
        None,
    )
    .unwrap()
}

fn reveal(core: &vault::core::VaultCore, id: &str) -> Result<Option<Vec<u8>>, String> {
    core.reveal_token(
        &StoreId::parse("s1").unwrap(),
        &PaymentMethodId::parse(id).unwrap(),
    )
    .map(|t| t.map(|t| t.to_vec()))
    .map_err(|e| e.to_string())
}

async fn key_status(v: &VaultProcess, admin: &reqwest::Client) -> Value {
    let resp = admin.get(v.url("/v1/admin/keys")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

fn records_under(status: &Value, version: u64) -> u64 {
    status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .map(|v| v["records"].as_u64().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_storing_and_reading_through_rotate_rewrap_and_retire_sees_zero_errors() {
    let dir = temp_dir("vault-keys");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    let admin = v.client("admin");
    let mut stored = Vec::new();
    for i in 0..400 {
        let tok = format!("tok_rot_pre_{i}");
        let view = store(&v, &c, &format!("a{}", i % 7), &tok).await;
        stored.push((tok, view["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(records_under(&key_status(&v, &admin).await, 1), 400);

    // Continuous load: four writers, each reading back what it just stored.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (c, stop, errors, ops) = (c.clone(), stop.clone(), errors.clone(), ops.clone());
        let base = v.url("");
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let tok = format!("tok_rot_load_{w}_{i}");
                i += 1;
                let resp = c
                    .post(format!("{base}/v1/payment-methods"))
                    .json(&card_body("s1", &format!("load{w}"), &tok))
                    .send()
                    .await;
                let Ok(resp) = resp else {
                    errors.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                if resp.status().as_u16() != 201 {
                    errors.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let view: Value = resp.json().await.unwrap();
                let id = view["id"].as_str().unwrap().to_owned();
                let read = c
                    .get(format!("{base}/v1/payment-methods/{id}?store=s1"))
                    .send()
                    .await;
                if !read.is_ok_and(|r| r.status().as_u16() == 200) {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                ops.fetch_add(2, Ordering::SeqCst);
                mine.push((tok, id));
            }
            mine
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let resp = admin
        .post(v.url("/v1/admin/keys/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["version"], 2);

    // Wait for the re-wrap to finish, with writes still going on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = key_status(&v, &admin).await;
        if s["rewrap"]["running"] == false && records_under(&s, 1) == 0 {
            assert_eq!(s["currentVersion"], 2);
            assert!(s["rewrap"]["done"].as_u64().unwrap() >= 400, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "re-wrap did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = admin
        .post(v.url("/v1/admin/keys/retire"))
        .json(&json!({"below": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["retired"], json!([1]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        stored.extend(w.await.unwrap());
    }
    assert_eq!(errors.load(Ordering::SeqCst), 0, "errors under load");
    assert!(ops.load(Ordering::SeqCst) > 20, "the load actually ran");

    let s = key_status(&v, &admin).await;
    let versions: Vec<u64> = s["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        versions,
        vec![2],
        "nothing left under the retired version: {s}"
    );
    // The retired key is gone from the key file.
    let key_file = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    assert!(
        !key_file.lines().any(|l| l.starts_with("1:")),
        "version 1 destroyed"
    );
    assert!(key_file.lines().any(|l| l.starts_with("2:")));
    v.stop();
    // After a restart with only version 2, every token opens to what was stored.
    let core = vault::core::VaultCore::open(&load_config(dir.path()), false).unwrap();
    for (tok, id) in &stored {
        assert_eq!(
            reveal(&core, id).unwrap(),
            Some(tok.as_bytes().to_vec()),
            "{id}"
        );
    }
}

#[test]
fn retiring_a_version_that_still_wraps_records_is_refused_with_counts() {
    let dir = temp_dir("vault-keys");
    let (ok, out, err) = {
        let mut cmd = Command::new(bin_path("vault"));
        cmd.arg("init").arg("--dir").arg(dir.path());
        run(cmd)
    };
    assert!(ok, "{out}{err}");
    let core = vault::core::VaultCore::open(&load_config(dir.path()), false).unwrap();
    let new = vault::core::NewPaymentMethod {
        store: StoreId::parse("s1").unwrap(),
        account: shared::domain::AccountId::parse("a1").unwrap(),
        kind: shared::domain::PaymentType::parse("card").unwrap(),
        brand: None,
        last4: None,
        expiry: None,
        masked_email: None,
        processor_customer: None,
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let token = shared::secret::PaymentToken::parse_token(format!("tok_retire_{i}")).unwrap();
        match core
            .store_payment_method(&new, &token, Default::default())
            .unwrap()
        {
            vault::store::Stored::Created(r) => ids.push(r.id),
            vault::store::Stored::Existing(_) => panic!("not a duplicate"),
        }
    }
    // The current version cannot be retired at all.
    let err = core.retire_below(2).unwrap_err().to_string();
    assert!(err.contains("current"), "{err}");
    assert_eq!(core.rotate().unwrap(), 2);
    // Rotated but not re-wrapped: retirement is refused and says how many records block it.
    let err = core.retire_below(2).unwrap_err().to_string();
    assert!(err.contains("3 record(s) under version 1"), "{err}");
    // Nothing was destroyed by the refusal.
    for id in &ids {
        assert!(reveal(&core, id).unwrap().is_some());
    }
    let status = core.rewrap_all().unwrap();
    assert_eq!((status.done, status.failed), (3, 0));
    assert_eq!(core.retire_below(2).unwrap(), vec![1]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            reveal(&core, id).unwrap(),
            Some(format!("tok_retire_{i}").into_bytes())
        );
    }
}

async fn unseal(v: &VaultProcess, admin: &reqwest::Client, share: &str) -> (u16, Value) {
    let resp = admin
        .post(v.url("/v1/admin/unseal"))
        .json(&json!({ "share": share }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn assert_sealed(v: &VaultProcess) {
    let c = v.client("accounts");
    let resp = c
        .post(v.url("/v1/payment-methods"))
        .json(&card_body("s1", "a1", "tok_while_sealed"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "sealed"
    );
    let resp = c.get(v.url("/v1/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "sealed");
    let admin = v.client("admin");
    let resp = admin
        .post(v.url("/v1/admin/keys/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503, "rotate while sealed");
}

#[tokio::test]
async fn a_sealed_vault_answers_503_until_threshold_shares_and_then_opens_every_old_record() {
    let dir = temp_dir("vault-sealed");
    let shares = init_sealed(dir.path(), 5, 3);
    // Plain `init` again on the folder keeps it sealed: no clear master key appears.
    tests::vault::init_vault(dir.path());
    assert!(!dir.path().join("master.key").exists());
    // Bad share parameters are refused.
    for (n, k) in [("3", "4"), ("1", "1"), ("5", "0")] {
        let other = temp_dir("vault-sealed-bad");
        let mut cmd = Command::new(bin_path("vault"));
        cmd.arg("init").arg("--dir").arg(other.path());
        cmd.args(["--shares", n, "--threshold", k]);
        let (ok, out, _) = run(cmd);
        assert!(!ok && !out.contains("SHARE "), "{n}/{k}: {out}");
    }
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let admin = v.client("admin");
    assert_sealed(&v).await;

    // Wrong and duplicate shares are refused and counted; K-1 shares are not enough.
    let mut wrong = shares[0].clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let (st, body) = unseal(&v, &admin, &wrong).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (422, Some("wrong_share"))
    );
    let (st, body) = unseal(&v, &admin, &shares[0]).await;
    assert_eq!((st, body["sealed"].as_bool()), (200, Some(true)));
    let (st, body) = unseal(&v, &admin, &shares[0]).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("duplicate_share"))
    );
    assert_eq!(body["unseal"]["rejected"], 2);
    let (st, body) = unseal(&v, &admin, &shares[3]).await;
    assert_eq!((st, body["received"].as_u64()), (200, Some(2)));
    assert_sealed(&v).await;
    let (st, body) = unseal(&v, &admin, &shares[4]).await;
    assert_eq!((st, body["sealed"].as_bool()), (200, Some(false)), "{body}");
    let (st, body) = unseal(&v, &admin, &shares[1]).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("not_sealed"))
    );

    let c = v.client("accounts");
    let mut stored = Vec::new();
    for i in 0..10 {
        let tok = format!("tok_sealed_{i}");
        stored.push((tok.clone(), store(&v, &c, "a1", &tok).await));
    }
    // Rotation in sealed mode re-seals the keyring under the same shares.
    let resp = admin
        .post(v.url("/v1/admin/keys/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    stored.push((
        "tok_sealed_after_rotate".into(),
        store(&v, &c, "a1", "tok_sealed_after_rotate").await,
    ));
    v.stop();

    // Shares are in no file on disk and not in the vault's output.
    for (path, bytes) in all_files(dir.path()) {
        for s in &shares {
            assert!(
                !contains_bytes(&bytes, s.as_bytes()),
                "share in {}",
                path.display()
            );
        }
    }
    for s in &shares {
        assert!(
            !v.output().contains(s.as_str()),
            "share in the vault's output"
        );
    }

    // Restart: sealed again; a different set of K shares opens it and every old record reads.
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    assert_sealed(&v).await;
    let admin = v.client("admin");
    for s in [&shares[1], &shares[2]] {
        assert_eq!(unseal(&v, &admin, s).await.1["sealed"], true);
    }
    assert_sealed(&v).await;
    assert_eq!(unseal(&v, &admin, &shares[0]).await.1["sealed"], false);
    let c = v.client("accounts");
    for (_, view) in &stored {
        let id = view["id"].as_str().unwrap();
        let resp = c
            .get(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    v.stop();
    // And the tokens themselves open (in-process, unsealed with K shares).
    let core = vault::core::VaultCore::open(&load_config(dir.path()), false).unwrap();
    assert!(core.is_sealed());
    for s in &shares[2..5] {
        core.submit_share(s)
            .map_err(|(why, _)| format!("{why:?}"))
            .unwrap();
    }
    assert!(!core.is_sealed());
    for (tok, view) in &stored {
        assert_eq!(
            reveal(&core, view["id"].as_str().unwrap()).unwrap(),
            Some(tok.as_bytes().to_vec())
        );
    }
}

#[tokio::test]
async fn a_truncated_or_bit_flipped_record_is_an_error_for_that_record_only() {
    let dir = temp_dir("vault-corrupt");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    let a = store(&v, &c, "a1", "tok_corrupt_truncated").await;
    let b = store(&v, &c, "a1", "tok_corrupt_flipped").await;
    let ok = store(&v, &c, "a2", "tok_corrupt_untouched").await;
    v.stop();
    let (id_a, id_b, id_ok) = (
        a["id"].as_str().unwrap(),
        b["id"].as_str().unwrap(),
        ok["id"].as_str().unwrap(),
    );
    {
        let db = sled::open(v.data_dir()).unwrap();
        let records = db.open_tree("records").unwrap();
        let bytes = records.get(id_a).unwrap().unwrap();
        records.insert(id_a, &bytes[..bytes.len() / 2]).unwrap();
        let mut rec_b =
            vault::store::StoredRecord::decode(&records.get(id_b).unwrap().unwrap()).unwrap();
        let mut ct = rec_b.sealed_token.clone();
        // Flip one bit of the ciphertext (hex digit 0<->1 etc.).
        let flipped = (u8::from_str_radix(&ct[30..31], 16).unwrap() ^ 1) as u32;
        ct.replace_range(
            30..31,
            &std::char::from_digit(flipped, 16).unwrap().to_string(),
        );
        rec_b.sealed_token = ct;
        records.insert(id_b, rec_b.encode().unwrap()).unwrap();
        db.flush().unwrap();
    }
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let c = v.client("accounts");
    let get = |id: &str| {
        c.get(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
            .send()
    };
    let resp = get(id_a).await.unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "internal_error"
    );
    assert_eq!(get(id_ok).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        get(id_b).await.unwrap().status().as_u16(),
        200,
        "masked view needs no decryption"
    );
    store(&v, &c, "a3", "tok_corrupt_after").await;
    // The damage is reported (in the log, by kind, without data) and the vault is still up.
    assert!(
        v.output().contains("stored data is corrupt"),
        "{}",
        v.output()
    );
    // GET /v1/admin/keys counts the undecodable record instead of failing.
    let s = key_status(&v, &v.client("admin")).await;
    assert_eq!(s["corruptRecords"], 1, "{s}");
    v.stop();
    let core = vault::core::VaultCore::open(&load_config(dir.path()), false).unwrap();
    let err = reveal(&core, id_b).unwrap_err();
    assert!(err.contains("does not authenticate"), "{err}");
    assert!(reveal(&core, id_a).unwrap_err().contains("corrupt"));
    assert_eq!(
        reveal(&core, id_ok).unwrap(),
        Some(b"tok_corrupt_untouched".to_vec())
    );
}

#[tokio::test]
async fn the_audit_export_writes_json_lines_an_outsider_can_reverify() {
    let dir = temp_dir("vault-export");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    for i in 0..5 {
        store(&v, &c, "a1", &format!("tok_export_{i}")).await;
    }
    v.stop();
    let export = |since: &str| {
        let mut cmd = Command::new(bin_path("vault"));
        cmd.args(["audit", "export", "--config"])
            .arg(dir.path().join("vault.toml"))
            .args(["--since", since]);
        let (ok, out, err) = run(cmd);
        assert!(ok, "{out}{err}");
        out.lines()
            .map(|l| serde_json::from_str::<vault::audit::AuditEntry>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let all = export("1");
    assert!(all.len() >= 5);
    // Re-verify as an outsider: every hash recomputes and every entry links to the one before.
    let mut prev = "0".repeat(64);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.prev_hash, prev);
        assert!(e.hash_is_valid(), "entry {}", e.seq);
        prev = e.hash.clone();
        assert!(!serde_json::to_string(e).unwrap().contains("tok_export"));
    }
    let from3 = export("3");
    assert_eq!(from3.first().map(|e| e.seq), Some(3));
    assert_eq!(from3.len(), all.len() - 2);
    assert_eq!(export(&all[1].time).first().map(|e| e.seq <= 2), Some(true));
    assert!(export("2999-01-01T00:00:00Z").is_empty());
    // Garbage in --since is refused.
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["audit", "export", "--config"])
        .arg(dir.path().join("vault.toml"))
        .args(["--since", "yesterday"]);
    assert!(!run(cmd).0);
}

fn new_pm(account: &str) -> vault::core::NewPaymentMethod {
    vault::core::NewPaymentMethod {
        store: StoreId::parse("s1").unwrap(),
        account: shared::domain::AccountId::parse(account).unwrap(),
        kind: shared::domain::PaymentType::parse("card").unwrap(),
        brand: None,
        last4: None,
        expiry: None,
        masked_email: None,
        processor_customer: None,
    }
}

/// Stores `token`; returns (created?, id).
fn put(core: &vault::core::VaultCore, token: &str) -> (bool, String) {
    let t = shared::secret::PaymentToken::parse_token(token.to_owned()).unwrap();
    match core
        .store_payment_method(&new_pm("a1"), &t, Default::default())
        .unwrap()
    {
        vault::store::Stored::Created(r) => (true, r.id),
        vault::store::Stored::Existing(r) => (false, r.id),
    }
}

#[test]
fn dedupe_keeps_working_before_during_and_after_a_fingerprint_key_rotation() {
    let dir = temp_dir("vault-fp");
    let mut cmd = Command::new(bin_path("vault"));
    cmd.arg("init").arg("--dir").arg(dir.path());
    assert!(run(cmd).0);
    let ids: Vec<String> = {
        let core = vault::core::VaultCore::open(&load_config(dir.path()), false).unwrap();
        let ids: Vec<String> = (0..3)
            .map(|i| put(&core, &format!("tok_fp_{i}")).1)
            .collect();
        assert_eq!(core.rotate_fingerprint_key().unwrap(), 2);
        // Rotated, not yet re-indexed: the old fingerprint still recognises the token.
        assert_eq!(put(&core, "tok_fp_0"), (false, ids[0].clone()));
        let (created, _) = put(&core, "tok_fp_new");
        assert!(created);
        assert!(
            !put(&core, "tok_fp_new").0,
            "new fingerprint recognised too"
        );
        let st = core.reindex_fingerprints().unwrap();
        assert_eq!((st.done, st.failed), (3, 0));
        let status = core.key_status().unwrap();
        let versions: Vec<u32> = status
            .fingerprint
            .versions
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, vec![2], "old fingerprint version destroyed");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(put(&core, &format!("tok_fp_{i}")), (false, id.clone()));
        }
        ids
    };
    let file = std::fs::read_to_string(dir.path().join("fingerprint.key")).unwrap();
    let key_lines: Vec<&str> = file
        .lines()
        .filter(|l| {
            !l.starts_with('#') && !l.starts_with("strongroom") && !l.starts_with("data-folder ")
        })
        .collect();
    assert_eq!(key_lines.len(), 1);
    assert!(key_lines[0].starts_with("2:"));
    // After a restart with only the new key, dedupe still finds every record.
    let core = vault::core::VaultCore::open(&load_config(dir.path()), false).unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(put(&core, &format!("tok_fp_{i}")), (false, id.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn re_storing_known_tokens_during_a_fingerprint_rotation_always_finds_the_same_record() {
    let dir = temp_dir("vault-fp");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    let mut known = Vec::new();
    for i in 0..300 {
        let tok = format!("tok_fp_http_{i}");
        known.push((tok.clone(), store(&v, &c, "a1", &tok).await["id"].clone()));
    }
    let known = Arc::new(known);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (c, stop, known, url) = (
            c.clone(),
            stop.clone(),
            known.clone(),
            v.url("/v1/payment-methods"),
        );
        workers.push(tokio::spawn(async move {
            let (mut checks, mut wrong) = (0u64, 0u64);
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                let (tok, id) = &known[i % known.len()];
                i += 7;
                let resp = c
                    .post(&url)
                    .json(&card_body("s1", "a1", tok))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap();
                if status != 200 || &body["id"] != id {
                    wrong += 1;
                }
                checks += 1;
            }
            (checks, wrong)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Through the CLI, as an operator would.
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(bin_path("vault"));
        cmd.args(["key"])
            .args(args)
            .arg("--config")
            .arg(dir.path().join("vault.toml"))
            .arg("--addr")
            .arg(v.addr.to_string());
        run(cmd)
    };
    let (ok, out, err) = cli(&["rotate-fingerprint"]);
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = key_status(&v, &v.client("admin")).await;
        let fp = &s["fingerprint"];
        if fp["reindex"]["running"] == false && fp["versions"].as_array().unwrap().len() == 1 {
            assert_eq!(fp["currentVersion"], 2, "{s}");
            assert_eq!(fp["versions"][0]["records"], 300, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "re-index did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut checks, mut wrong) = (0, 0);
    for w in workers {
        let (c, x) = w.await.unwrap();
        checks += c;
        wrong += x;
    }
    assert!(checks > 30, "the load actually ran ({checks})");
    assert_eq!(
        wrong, 0,
        "a known token was not recognised during the rotation"
    );
    let (ok, out, _) = cli(&["status"]);
    assert!(ok && out.contains("\"currentVersion\""), "{out}");
    let (ok, out, _) = cli(&["rotate"]);
    assert!(ok && out.contains("\"version\":2"), "{out}");
    v.stop();
}
