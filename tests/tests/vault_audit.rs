//! The audit chain: `vault audit verify` passes after a real run and reports a single flipped
//! byte in one stored entry, exiting non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tests::temp_dir;
use tests::vault::{audit_verify, card_body, start_vault};

#[tokio::test]
async fn audit_verify_passes_after_a_run_and_reports_one_flipped_byte() {
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

    // sled locks its folder: verify runs on a stopped vault, and says so if it is not.
    let (ok, out) = audit_verify(&v.config_path());
    assert!(!ok && out.contains("in use"), "{out}");
    v.stop();

    let (ok, out) = audit_verify(&v.config_path());
    assert!(ok, "{out}");
    assert!(out.contains("7 entries ok"), "{out}");

    {
        let db = sled::open(v.data_dir()).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let key = 3u64.to_be_bytes();
        let mut entry = audit.get(key).unwrap().unwrap().to_vec();
        let pos = entry.len() / 2;
        entry[pos] ^= 0x01;
        audit.insert(key, entry).unwrap();
        db.flush().unwrap();
    }
    let (ok, out) = audit_verify(&v.config_path());
    assert!(!ok, "tampering not detected: {out}");
    assert!(out.contains("BROKEN at entry 3"), "{out}");
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
