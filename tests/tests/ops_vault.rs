//! The vault's operations surface against the real binary: metrics only for the admin
//! identity, operations counted by kind and status, request ids, readiness; and the TLS posture
//! of its port as an outside scanner (Debian's `sslscan`) sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use tests::temp_dir;
use tests::vault::{card_body, start_vault};

fn series(page: &str, prefix: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn vault_metrics_are_refused_without_the_admin_identity_and_count_operations_by_kind() {
    let dir = temp_dir("vault-metrics");
    let v = start_vault(&dir.path().join("v"));
    for identity in ["accounts", "renewals"] {
        let resp = v
            .client(identity)
            .get(v.url("/v1/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{identity} must not read metrics");
        assert!(
            !resp
                .text()
                .await
                .unwrap()
                .contains("vault_http_requests_total")
        );
    }

    let accounts = v.client("accounts");
    let stored = accounts
        .post(v.url("/v1/payment-methods"))
        .json(&card_body("store-1", "acct-1", "tok_metrics_secret_4242"))
        .send()
        .await
        .unwrap();
    assert!(stored.status().is_success(), "{}", stored.status());
    let id = stored.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let ready = accounts.get(v.url("/v1/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let admin = v.client("admin");
    let resp = admin.get(v.url("/v1/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("vault_http_requests_total{method=\"POST\",route=\"/v1/payment-methods\""),
        "{page}"
    );
    assert!(
        series(
            &page,
            "vault_operations_total{operation=\"metrics\",status=\"403\"}"
        ) >= 2.0,
        "refusals are counted: {page}"
    );
    assert!(series(&page, "vault_audit_chain_length") >= 4.0, "{page}");
    assert_eq!(series(&page, "vault_key_versions"), 1.0);
    assert!(!page.contains("tok_metrics_secret_4242"));
    assert!(
        !page.contains("store-1") && !page.contains("acct-1"),
        "no ids in labels"
    );

    // Metrics move: one more read shows up.
    let key = "vault_http_requests_total{method=\"GET\",route=\"/v1/ready\",status=\"200\"}";
    let n = series(&page, key);
    accounts.get(v.url("/v1/ready")).send().await.unwrap();
    let page = admin
        .get(v.url("/v1/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(series(&page, key), n + 1.0);
    assert!(
        v.output().contains(&id),
        "the request id is in the vault's log"
    );
}

/// `sslscan` output without colour codes for the vault at `addr`, optionally presenting a
/// client certificate. `None` when sslscan is not installed and not required.
fn sslscan(addr: &str, client: Option<(&std::path::Path, &std::path::Path)>) -> Option<String> {
    if !tests::require_tool("sslscan") {
        return None;
    }
    let mut cmd = Command::new("sslscan");
    cmd.args([
        "--no-colour",
        "--show-client-cas",
        "--no-heartbleed",
        "--no-fallback",
        "--no-renegotiation",
        "--no-compression",
        "--no-groups",
        "--no-check-certificate",
    ]);
    if let Some((cert, key)) = client {
        cmd.arg(format!("--certs={}", cert.display()))
            .arg(format!("--pk={}", key.display()));
    }
    let out = cmd.arg(addr).output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cipher_lines(scan: &str) -> Vec<&str> {
    scan.lines()
        .filter(|l| l.starts_with("Accepted") || l.starts_with("Preferred"))
        .collect()
}

#[test]
fn the_vault_port_offers_only_tls_1_2_and_1_3_with_aead_suites_and_requires_a_client_certificate() {
    let dir = temp_dir("vault-tls-scan");
    let v = start_vault(&dir.path().join("v"));
    let addr = v.addr.to_string();
    let pki = v.pki_dir();
    let Some(with_cert) = sslscan(
        &addr,
        Some((&pki.join("accounts.pem"), &pki.join("accounts.key"))),
    ) else {
        return;
    };
    for old in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
        assert!(
            with_cert
                .lines()
                .any(|l| l.starts_with(old) && l.contains("disabled")),
            "{old} must be disabled:\n{with_cert}"
        );
    }
    let suites = cipher_lines(&with_cert);
    assert!(
        suites.iter().any(|l| l.contains("TLSv1.2"))
            && suites.iter().any(|l| l.contains("TLSv1.3")),
        "the scan saw suites of both versions:\n{with_cert}"
    );
    for s in &suites {
        assert!(
            s.contains("GCM") || s.contains("CHACHA20-POLY1305") || s.contains("CHACHA20_POLY1305"),
            "non-AEAD suite offered: {s}"
        );
        assert!(
            !s.contains("TLSv1.0") && !s.contains("TLSv1.1") && !s.contains("SSL"),
            "{s}"
        );
    }
    assert!(
        with_cert.contains("Acceptable client certificate CA names")
            && with_cert.contains("Strongroom dev CA"),
        "the server asks for a client certificate from its CA:\n{with_cert}"
    );

    // Without a client certificate no TLS 1.2 handshake completes, so no 1.2 suite is accepted.
    let Some(without) = sslscan(&addr, None) else {
        return;
    };
    assert!(
        !cipher_lines(&without).iter().any(|l| l.contains("TLSv1.2")),
        "a handshake completed without a client certificate:\n{without}"
    );
}

#[tokio::test]
async fn the_vault_documents_every_route_it_serves_for_the_admin_identity_only() {
    let dir = temp_dir("vault-openapi");
    let v = start_vault(&dir.path().join("v"));
    let refused = v
        .client("accounts")
        .get(v.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let admin = v.client("admin");
    let resp = admin.get(v.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut probed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let url = v.url(&path.replace('{', "").replace('}', "-probe"));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = admin
                .request(m, url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                // The admin identity may do none of the record operations, so a served route
                // answers 403 (or 200 for audit operations) before looking anything up; an
                // unrouted path answers 404, a wrong method 405.
                status != 404 && status != 405,
                "{method} {path} is documented but answered {status}: {body}"
            );
            probed += 1;
        }
    }
    assert!(probed >= 10, "{probed} operations");
}

#[tokio::test]
async fn a_sealed_vault_is_not_ready_until_unsealed() {
    let dir = temp_dir("vault-sealed-ready");
    let shares = tests::vault::init_sealed(dir.path(), 2, 2);
    let v = tests::vault::VaultProcess::serve(dir.path(), tests::vault::serve_command(dir.path()));
    let accounts = v.client("accounts");
    let ready = accounts.get(v.url("/v1/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "sealed: not ready");
    assert!(ready.headers().contains_key("x-request-id"));
    let admin = v.client("admin");
    for share in &shares {
        let r = admin
            .post(v.url("/v1/admin/unseal"))
            .json(&serde_json::json!({ "share": share }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let ready = accounts.get(v.url("/v1/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "unsealed: ready");
    for share in &shares {
        assert!(
            !v.output().contains(share.as_str()),
            "a share reached the log"
        );
    }
}
