//! mTLS and authorisation against the real vault on 127.0.0.1 with an OS-chosen port: clients
//! without a certificate, with a foreign CA's or an expired certificate are refused in the
//! handshake; a valid certificate with an unknown identity or a missing permission gets 403 and
//! leaves an audit entry. Each handshake refusal is logged by the vault at WARN with its rustls
//! reason and counted in `vault_tls_handshake_failures_total{reason}`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::pki::DevCa;
use std::path::Path;
use std::sync::Arc;
use tests::temp_dir;
use tests::vault::{VaultProcess, card_body, mtls_client, start_vault};
use time::{Duration, OffsetDateTime};

fn dev_ca(v: &VaultProcess) -> DevCa {
    let pki = v.pki_dir();
    let cert = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let key = std::fs::read_to_string(pki.join("ca.key")).unwrap();
    DevCa::from_pem(&cert, &key).unwrap()
}

/// A client trusting the vault's CA and presenting `issued` (written into `dir`).
fn client_with(
    v: &VaultProcess,
    issued: &shared::pki::IssuedCert,
    dir: &Path,
    stem: &str,
) -> reqwest::Client {
    issued.write(dir, stem).unwrap();
    mtls_client(
        &v.pki_dir().join("ca.pem"),
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
    )
}

/// The vault logs the refusal at WARN with its rustls reason and counts it by that reason.
async fn vault_names_the_refusal(v: &VaultProcess, text: &str, reason: &str) {
    let mut out = String::new();
    for _ in 0..100 {
        out = v.output();
        if out.contains(text) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        out.contains(&format!("TLS handshake failed: {text}")) && out.contains("WARN"),
        "{text:?} not in the vault's log:\n{out}"
    );
    let metrics = v
        .client("admin")
        .get(v.url("/v1/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "vault_tls_handshake_failures_total{{reason=\"{reason}\"}}"
        )),
        "{metrics}"
    );
}

async fn health_fails(client: &reqwest::Client, v: &VaultProcess) -> bool {
    // TLS 1.3 client-auth rejection arrives after connect(): assert on the request failing.
    client.get(v.url("/v1/health")).send().await.is_err()
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let dir = temp_dir("vault-mtls");
    let v = start_vault(dir.path());
    shared::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in shared::tls::load_certs(&v.pki_dir().join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap();
    assert!(health_fails(&client, &v).await);
    vault_names_the_refusal(
        &v,
        "client certificate rejected: no certificate presented",
        "no_certificate",
    )
    .await;
    // The server itself is fine: a proper client still gets through.
    assert!(!health_fails(&v.client("accounts"), &v).await);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let dir = temp_dir("vault-mtls");
    let v = start_vault(dir.path());
    let foreign = DevCa::generate("Some other CA").unwrap();
    let cert = foreign.issue_client("accounts").unwrap();
    let client = client_with(&v, &cert, dir.path(), "foreign-accounts");
    assert!(health_fails(&client, &v).await);
    vault_names_the_refusal(
        &v,
        "client certificate rejected: unknown CA",
        "unknown_issuer",
    )
    .await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_in_the_handshake() {
    let dir = temp_dir("vault-mtls");
    let v = start_vault(dir.path());
    let now = OffsetDateTime::now_utc();
    let cert = dev_ca(&v)
        .issue_client_valid(
            "accounts",
            now - Duration::days(30),
            now - Duration::days(1),
        )
        .unwrap();
    let client = client_with(&v, &cert, dir.path(), "expired-accounts");
    assert!(health_fails(&client, &v).await);
    vault_names_the_refusal(
        &v,
        "client certificate rejected: expired or not yet valid",
        "expired",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_identity_or_a_missing_permission_gets_403_and_an_audit_entry() {
    let dir = temp_dir("vault-mtls");
    let mut v = start_vault(dir.path());
    let intruder = client_with(
        &v,
        &dev_ca(&v).issue_client("intruder").unwrap(),
        dir.path(),
        "intruder",
    );

    let body = card_body("s1", "a1", "tok_forbidden_1");
    let resp = intruder
        .post(v.url("/v1/payment-methods"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    let resp = intruder.get(v.url("/v1/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // renewals may not store, admin may not read payment methods.
    let resp = v
        .client("renewals")
        .post(v.url("/v1/payment-methods"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = v
        .client("admin")
        .get(v.url("/v1/payment-methods?store=s1&account=a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = v
        .client("renewals")
        .delete(v.url("/v1/accounts/a1/payment-methods?store=s1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // Nothing was stored by the refused requests.
    let resp = v
        .client("accounts")
        .get(v.url("/v1/payment-methods?store=s1&account=a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"paymentMethods": []})
    );

    v.stop();
    let entries = tests::vault::audit_entries(&v.config_path());
    let has = |identity: &str, operation: &str| {
        entries
            .iter()
            .any(|e| e.identity == identity && e.operation == operation && e.outcome == 403)
    };
    assert!(has("intruder", "store"), "{entries:?}");
    assert!(has("intruder", "health"), "{entries:?}");
    assert!(has("renewals", "store"), "{entries:?}");
    assert!(has("admin", "list"), "{entries:?}");
    assert!(has("renewals", "erase_account"), "{entries:?}");
}
