//! Byte-scan: after many distinct tokens went through the real server (stored, stored again,
//! sent in refused requests), none of them appears in any file under the vault folder (the
//! audit segments and their archived copies included: tiny segments make it rotate and
//! `vault audit archive` copy them), in the captured log output (debug level), or in any
//! response body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tests::vault::{VaultProcess, card_body, init_vault, serve_command, tiny_audit_segments};
use tests::{all_files, contains_bytes, temp_dir};

#[tokio::test]
async fn no_token_appears_in_the_data_folder_the_logs_or_any_response() {
    let dir = temp_dir("vault-secrets");
    init_vault(dir.path());
    tiny_audit_segments(dir.path());
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let c = v.client("accounts");
    let renewals = v.client("renewals");
    let tokens: Vec<String> = (0..150)
        .map(|i| format!("tok_scan_{i}_{}", uuid::Uuid::new_v4().simple()))
        .collect();
    let mut responses: Vec<String> = Vec::new();
    let mut record = |text: String| responses.push(text);

    for (i, token) in tokens.iter().enumerate() {
        let account = format!("acct{}", i % 10);
        let resp = c
            .post(v.url("/v1/payment-methods"))
            .json(&card_body("s1", &account, token))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let text = resp.text().await.unwrap();
        let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        record(text);
        if i % 5 == 0 {
            // Stored again (200), read back, refused in several ways — each response scanned.
            let again = c
                .post(v.url("/v1/payment-methods"))
                .json(&card_body("s1", &account, token))
                .send()
                .await
                .unwrap();
            assert_eq!(again.status().as_u16(), 200);
            record(again.text().await.unwrap());
            let mut bad = card_body("s1", &account, token);
            bad["last4"] = json!("12");
            record(
                c.post(v.url("/v1/payment-methods"))
                    .json(&bad)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
            let mut unknown = card_body("s1", &account, token);
            unknown[token.as_str()] = json!(token);
            record(
                c.post(v.url("/v1/payment-methods"))
                    .json(&unknown)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
            let malformed = format!(r#"{{"token":"{token}","#);
            record(
                c.post(v.url("/v1/payment-methods"))
                    .body(malformed)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
            record(
                renewals
                    .post(v.url("/v1/payment-methods"))
                    .json(&card_body("s1", &account, token))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
            record(
                c.get(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
            record(
                c.get(v.url(&format!("/v1/payment-methods/{token}?store=s1")))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
        }
    }
    for a in 0..10 {
        let url = v.url(&format!("/v1/payment-methods?store=s1&account=acct{a}"));
        record(c.get(url).send().await.unwrap().text().await.unwrap());
    }
    assert!(responses.len() > 150);
    let archived = tests::vault::audit_archive(&v.config_path(), &dir.path().join("archive"));
    assert!(archived >= 5, "{archived} segments archived");
    // Stop so sled has written everything it ever will; then scan.
    v.stop();
    let files = all_files(&v.dir);
    assert!(
        files.iter().any(|(p, _)| p.starts_with(v.data_dir())),
        "data folder is empty"
    );
    let logs = v.output();
    assert!(
        logs.contains("payment method stored"),
        "debug logs were not captured"
    );
    for token in &tokens {
        let needle = token.as_bytes();
        for (path, bytes) in &files {
            assert!(
                !contains_bytes(bytes, needle),
                "token found in {}",
                path.display()
            );
        }
        assert!(!logs.contains(token.as_str()), "token found in the logs");
        for r in &responses {
            assert!(
                !r.contains(token.as_str()),
                "token found in a response: {r}"
            );
        }
    }
}
