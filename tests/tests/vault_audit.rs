//! The audit log in segment files: `vault audit verify` passes after a real run (also while the
//! vault runs and writes), reports a single flipped byte in one stored entry, exiting non-zero;
//! a data folder written by the previous format (entries in sled) opens, moves its entries into
//! the first segment and still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};
use tests::temp_dir;
use tests::vault::{VaultProcess, audit_verify, card_body, init_vault, serve_command, start_vault};

/// Polls `vault audit verify` until it prints `want` (the last request's entry is appended
/// after its answer), for at most 10 s.
fn verify_until(config: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = audit_verify(config);
        if ok && out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "wanted {want:?}, verify says: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn audit_verify_passes_while_running_and_after_and_reports_one_flipped_byte() {
    let dir = temp_dir("vault-audit");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    for i in 0..5 {
        let resp = c
            .post(v.url("/v1/payment-methods"))
            .json(&card_body("s1", "a1", &format!("tok_audit_{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    let resp = c
        .get(v.url("/v1/payment-methods?store=s1&account=a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = v
        .client("admin")
        .get(v.url("/v1/payment-methods?store=s1&account=a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // The segment files need no lock: verify works on the running vault.
    verify_until(&v.config_path(), "7 entries ok");
    v.stop();
    let (ok, out) = audit_verify(&v.config_path());
    assert!(ok, "{out}");
    assert!(out.contains("7 entries ok"), "{out}");

    // Flip one byte in the middle of entry 3 (line 0 is the segment header).
    let seg = v.data_dir().join("audit").join("000000000001.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let (from, to) = (starts[3], starts[4]);
    bytes[(from + to) / 2] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
    let (ok, out) = audit_verify(&v.config_path());
    assert!(!ok, "tampering not detected: {out}");
    assert!(out.contains("BROKEN at entry 3"), "{out}");
}

#[tokio::test]
async fn verify_while_a_write_load_runs_stays_ok() {
    let dir = temp_dir("vault-audit-load");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    let url = v.url("/v1/payment-methods");
    let load = tokio::spawn(async move {
        let mut n = 0u32;
        for i in 0..400u32 {
            let resp = c
                .post(&url)
                .json(&card_body("s1", "a1", &format!("tok_load_{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
            n += 1;
        }
        n
    });
    let config = v.config_path();
    let mut checks = 0;
    while !load.is_finished() && checks < 20 {
        let config = config.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || audit_verify(&config))
            .await
            .unwrap();
        assert!(
            ok && out.contains("entries ok"),
            "verify during writes: {out}"
        );
        checks += 1;
    }
    assert!(checks > 0);
    assert_eq!(load.await.unwrap(), 400);
    let config = v.config_path();
    tokio::task::spawn_blocking(move || verify_until(&config, "400 entries ok"))
        .await
        .unwrap();
}

/// A folder the previous release wrote (sled `audit` tree, 5 entries: 3 stores, a list, a
/// refused store), committed as `tests/fixtures/vault-folder-v1.tar.gz` (data folder and its two
/// throwaway key files; certificates come from a fresh `vault init`).
#[tokio::test]
async fn a_folder_of_the_previous_format_opens_migrates_and_verifies() {
    let dir = temp_dir("vault-upgrade");
    init_vault(dir.path());
    for p in ["data", "master.key", "fingerprint.key", "audit.key"] {
        let path = dir.path().join(p);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault-folder-v1.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let config = dir.path().join("vault.toml");
    let (ok, out) = audit_verify(&config);
    assert!(
        ok && out.contains("5 entries ok"),
        "the old chain verifies in place: {out}"
    );

    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let c = v.client("accounts");
    let resp = c
        .get(v.url("/v1/payment-methods?store=s1&account=a1"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let ids: Vec<&str> = body["paymentMethods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "pm_01a23409f67973b7945e12f03aafe5f9",
            "pm_01a23409f68d70aa8b846166c9665fcb",
            "pm_01a23409f6a2733e9a895402b855c981"
        ]
    );
    // The old fingerprint index still dedupes: the same token is the same record.
    let resp = c
        .post(v.url("/v1/payment-methods"))
        .json(&card_body("s1", "a1", "tok_fixture_2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let again: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(again["id"], ids[1]);
    verify_until(&config, "7 entries ok");
    v.stop();
    let entries = tests::vault::audit_entries(&config);
    assert_eq!(entries.len(), 7);
    assert!(
        entries[..5].iter().all(|e| e.instance.is_none()),
        "the old entries, as they were"
    );
    assert!(entries[5..].iter().all(|e| e.instance.is_some()));
    let db = sled::open(dir.path().join("data")).unwrap();
    assert!(
        !db.tree_names().iter().any(|n| n.as_ref() == b"audit"),
        "the sled audit tree is gone once moved"
    );
}

#[tokio::test]
async fn the_admin_identity_verifies_the_chain_of_a_running_vault_and_others_may_not() {
    let dir = temp_dir("vault-audit");
    let v = start_vault(dir.path());
    let c = v.client("accounts");
    for i in 0..3 {
        let body = card_body("s1", "a1", &format!("tok_live_audit_{i}"));
        let resp = c
            .post(v.url("/v1/payment-methods"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    let resp = c.get(v.url("/v1/audit/verify")).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "accounts lacks the audit permission"
    );
    let resp = v
        .client("admin")
        .get(v.url("/v1/audit/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    // 3 stores + the refused verify; the admin's own request is audited after it answers.
    assert_eq!(body, serde_json::json!({"entries": 4, "ok": true}));
}

#[tokio::test]
async fn archive_and_prune_on_a_running_vault_leave_a_chain_that_verifies_with_and_without_the_archive()
 {
    let dir = temp_dir("vault-audit-archive");
    init_vault(dir.path());
    tests::vault::tiny_audit_segments(dir.path());
    // Prune every archived segment at once (the data folder is always over 1 byte).
    let config = dir.path().join("vault.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("max_bytes = 0", "max_bytes = 1")).unwrap();
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let c = v.client("accounts");
    for i in 0..120 {
        let resp = c
            .post(v.url("/v1/payment-methods"))
            .json(&card_body("s1", "a1", &format!("tok_archive_{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    let archive = dir.path().join("archive");
    let copied = tests::vault::audit_archive(&config, &archive);
    assert!(copied >= 5, "{copied} segments archived");
    let audit_dir = v.data_dir().join("audit");
    assert!(
        !audit_dir.join("000000000001.log").exists(),
        "archived segments are pruned from the data folder"
    );
    assert!(archive.join("000000000001.log").exists());
    // Without the archive: verified from the signed checkpoint the first local segment starts from.
    let (ok, out) = audit_verify(&config);
    assert!(
        ok && out.contains("120 entries ok") && out.contains("archived segments"),
        "{out}"
    );
    // With it: every entry from 1.
    let mut cmd = std::process::Command::new(tests::bin_path("vault"));
    cmd.args(["audit", "verify", "--config"])
        .arg(&config)
        .arg("--archive")
        .arg(&archive);
    let (ok, out, err) = tests::run(cmd);
    assert!(
        ok && out.contains("120 entries ok") && out.contains("from the archive"),
        "{out}{err}"
    );
    // An export from 1 says where the pruned entries went and starts at the first one held.
    let mut cmd = std::process::Command::new(tests::bin_path("vault"));
    cmd.args(["audit", "export", "--since", "1", "--config"])
        .arg(&config);
    let (ok, out, err) = tests::run(cmd);
    assert!(ok && err.contains("in archived segments"), "{err}");
    let first: u64 = out
        .lines()
        .next()
        .map(|l| vault::audit::AuditEntry::decode(l.as_bytes()).unwrap().seq)
        .unwrap();
    assert!(
        first > 1 && err.contains(&format!("from seq {first}")),
        "{first}: {err}"
    );
    // The chain goes on; a second archive run copies only the new closed segments.
    for i in 0..40 {
        let resp = c
            .post(v.url("/v1/payment-methods"))
            .json(&card_body("s1", "a1", &format!("tok_archive_more_{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    let again = tests::vault::audit_archive(&config, &archive);
    assert!(
        again >= 1 && again < copied,
        "only the new closed segments: {again}"
    );
    v.stop();
    verify_until(&config, "160 entries ok");
    // An archived segment deleted from the archive is reported when the archive is read.
    std::fs::remove_file(archive.join("000000000002.log")).unwrap();
    let mut cmd = std::process::Command::new(tests::bin_path("vault"));
    cmd.args(["audit", "verify", "--config"])
        .arg(&config)
        .arg("--archive")
        .arg(&archive);
    let (ok, out, _) = tests::run(cmd);
    assert!(
        !ok && out.contains("segment 2") && out.contains("missing"),
        "{out}"
    );
}
