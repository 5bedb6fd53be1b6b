//! The vault's charge route against the real `vault` and `sandbox-processor` binaries:
//! permissions, input checks, exactly-once per idempotency key, processor failures.

use serde_json::{Value, json};
use tests::sandbox::{self, Sandbox, start_sandbox};
use tests::vault::{VaultProcess, card_body, init_vault, serve_command};
use tests::{all_files, contains_bytes, temp_dir};

struct Setup {
    sandbox: Sandbox,
    vault: VaultProcess,
    _dir: tempfile::TempDir,
}

fn start(sandbox_args: &[&str], vault_env: &[(&str, &str)]) -> Setup {
    let sandbox = start_sandbox(sandbox_args);
    let dir = temp_dir("strongroom-charge-");
    init_vault(dir.path());
    let mut cmd = serve_command(dir.path());
    cmd.env("VAULT_PROCESSOR_URL", &sandbox.url)
        .env("VAULT_PROCESSOR_SECRET_KEY", sandbox::SECRET)
        .env_remove("VAULT_PROCESSOR_TIMEOUT_MS");
    for (k, v) in vault_env {
        cmd.env(k, v);
    }
    let vault = VaultProcess::serve(dir.path(), cmd);
    Setup {
        sandbox,
        vault,
        _dir: dir,
    }
}

impl Setup {
    /// Stores `token` for (store, account) as `accounts`; returns the payment-method id.
    async fn store(&self, store: &str, account: &str, token: &str) -> String {
        self.store_for(store, account, token, None).await
    }

    /// [`Self::store`] with the processor's customer of the token (`processorCustomer`).
    async fn store_for(
        &self,
        store: &str,
        account: &str,
        token: &str,
        customer: Option<&str>,
    ) -> String {
        let mut body = card_body(store, account, token);
        if let Some(c) = customer {
            body["processorCustomer"] = json!(c);
        }
        let resp = self
            .vault
            .client("accounts")
            .post(self.vault.url("/v1/payment-methods"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("store: {e}"));
        assert!(resp.status().is_success(), "store: {}", resp.status());
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            v["processorCustomer"].as_str(),
            customer,
            "the view shows the stored customer"
        );
        v["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Charges as `identity`; returns (status, body text, body json).
    async fn charge(&self, identity: &str, pm: &str, body: &Value) -> (u16, String, Value) {
        let resp = self
            .vault
            .client(identity)
            .post(self.vault.url(&format!("/v1/payment-methods/{pm}/charge")))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("charge: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, text, json)
    }
}

fn charge_body(store: &str, amount: Value, currency: &str, key: &str) -> Value {
    json!({"store": store, "amount": amount, "currency": currency, "idempotencyKey": key,
        "description": "Renewal"})
}

fn token(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_charge_reaches_the_processor_once_and_a_repeat_returns_the_recorded_outcome() {
    let s = start(&[], &[]);
    let tok = token("tok_visa");
    let pm = s.store("s1", "acct1", &tok).await;
    let body = charge_body("s1", json!(1495), "USD", "sub1:period1");

    let (status, text, first) = s.charge("renewals", &pm, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["amount"], 1495);
    assert!(
        first["processorReference"]
            .as_str()
            .is_some_and(|r| r.starts_with("pi_"))
    );
    assert!(!text.contains(&tok), "the token is never in a response");

    let (status, _, again) = s.charge("renewals", &pm, &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        again, first,
        "a repeat returns the recorded outcome, same reference"
    );

    let ledger = sandbox::charges(&s.sandbox.url).await;
    let charges = ledger["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(charges.len(), 1, "exactly one processor charge: {ledger}");
    assert_eq!(charges[0]["idempotencyKey"], "s1:sub1:period1");
    assert_eq!(charges[0]["amount"], 1495);
    assert_eq!(charges[0]["currency"], "usd");
    assert_eq!(
        ledger["replays"], 0,
        "the repeat was answered from the vault's ledger, not sent again"
    );

    // Every charge is in the audit chain; the token is in no log and in no file in clear.
    let out = s.vault.output();
    assert!(!out.contains(&tok), "token in the vault's log");
    let mut vault = s.vault;
    vault.stop();
    let (ok, verdict) = tests::vault::audit_verify(&vault.config_path());
    assert!(ok, "{verdict}");
    let entries = tests::vault::audit_entries(&vault.config_path());
    let ops: Vec<String> = entries.iter().map(|e| e.operation.clone()).collect();
    // Write-ahead: the attempt's entry comes before the outcome's, once per processor call.
    let attempt = ops.iter().position(|o| o == "charge attempt");
    let done = ops.iter().position(|o| o == "charge succeeded");
    assert!(attempt.is_some() && attempt < done, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|o| *o == "charge attempt").count(),
        1,
        "{ops:?}"
    );
    assert!(ops.contains(&"charge succeeded".to_owned()), "{ops:?}");
    assert!(
        ops.contains(&"charge succeeded (replayed)".to_owned()),
        "{ops:?}"
    );
    for (path, bytes) in all_files(&vault.dir) {
        assert!(
            !contains_bytes(&bytes, tok.as_bytes()),
            "token in clear in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn identities_without_the_charge_permission_are_refused_403_and_nothing_is_charged() {
    let s = start(&[], &[]);
    let pm = s.store("s1", "acct1", &token("tok_visa")).await;
    let body = charge_body("s1", json!(1000), "USD", "k-403");
    for identity in ["accounts", "admin"] {
        let (status, text, v) = s.charge(identity, &pm, &body).await;
        assert_eq!(status, 403, "{identity}: {text}");
        assert_eq!(v["error"]["code"], "forbidden");
    }
    let ledger = sandbox::charges(&s.sandbox.url).await;
    assert_eq!(ledger["charges"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn an_unknown_or_another_stores_payment_method_is_404() {
    let s = start(&[], &[]);
    let pm = s.store("s1", "acct1", &token("tok_visa")).await;
    let (status, text, _) = s
        .charge(
            "renewals",
            &pm,
            &charge_body("s2", json!(1000), "USD", "k1"),
        )
        .await;
    assert_eq!(status, 404, "another store's payment method: {text}");
    let unknown = format!("pm_{}", uuid::Uuid::new_v4().simple());
    let (status, _, _) = s
        .charge(
            "renewals",
            &unknown,
            &charge_body("s1", json!(1000), "USD", "k2"),
        )
        .await;
    assert_eq!(status, 404);
    let ledger = sandbox::charges(&s.sandbox.url).await;
    assert_eq!(ledger["charges"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn zero_negative_absurd_or_fractional_amounts_and_unknown_currencies_are_422_naming_the_field()
 {
    let s = start(&[], &[]);
    let pm = s.store("s1", "acct1", &token("tok_visa")).await;
    let cases = [
        (json!(0), "USD", "amount"),
        (json!(-100), "USD", "amount"),
        (json!(1_000_000_000_000i64), "USD", "amount"),
        (json!(14.95), "USD", "amount"),
        (json!(1000), "XYZ", "currency"),
        (json!(1000), "usd dollars", "currency"),
    ];
    for (i, (amount, currency, field)) in cases.into_iter().enumerate() {
        let body = charge_body("s1", amount.clone(), currency, &format!("k-{i}"));
        let (status, text, v) = s.charge("renewals", &pm, &body).await;
        assert_eq!(status, 422, "{amount} {currency}: {text}");
        assert_eq!(v["error"]["field"], field, "{text}");
    }
    let ledger = sandbox::charges(&s.sandbox.url).await;
    assert_eq!(ledger["charges"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn one_idempotency_key_with_a_different_amount_or_card_is_409_and_never_a_second_charge() {
    let s = start(&[], &[]);
    let pm = s.store("s1", "acct1", &token("tok_visa")).await;
    let other = s.store("s1", "acct1", &token("tok_mc")).await;
    let (status, _, _) = s
        .charge("renewals", &pm, &charge_body("s1", json!(1000), "USD", "k"))
        .await;
    assert_eq!(status, 200);
    let (status, text, v) = s
        .charge("renewals", &pm, &charge_body("s1", json!(2000), "USD", "k"))
        .await;
    assert_eq!(status, 409, "{text}");
    assert_eq!(v["error"]["code"], "idempotency_conflict");
    let (status, _, _) = s
        .charge(
            "renewals",
            &other,
            &charge_body("s1", json!(1000), "USD", "k"),
        )
        .await;
    assert_eq!(status, 409);
    let ledger = sandbox::charges(&s.sandbox.url).await;
    assert_eq!(ledger["charges"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_decline_is_reported_with_its_reason_and_replayed_without_a_second_call() {
    let s = start(&[], &[]);
    let pm = s
        .store("s1", "acct1", &token("tok_decline_expired_card"))
        .await;
    let body = charge_body("s1", json!(500), "EUR", "k-decline");
    let (status, text, v) = s.charge("renewals", &pm, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(v["status"], "declined");
    assert_eq!(v["reason"], "expired_card");
    let (_, _, again) = s.charge("renewals", &pm, &body).await;
    assert_eq!(again["status"], "declined");
    let ledger = sandbox::charges(&s.sandbox.url).await;
    assert_eq!(ledger["charges"].as_array().map(Vec::len), Some(1));
    assert_eq!(ledger["replays"], 0);
}

#[tokio::test]
async fn a_processor_timeout_is_a_retryable_failure_and_nothing_is_paid() {
    let s = start(
        &["--timeout-delay-ms", "3000"],
        &[("VAULT_PROCESSOR_TIMEOUT_MS", "300")],
    );
    let tok = token("tok_fail_timeout");
    let pm = s.store("s1", "acct1", &tok).await;
    let body = charge_body("s1", json!(1000), "USD", "k-timeout");
    let (status, text, v) = s.charge("renewals", &pm, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["reason"], "processor_timeout");
    assert!(v.get("processorReference").is_none());
    // Retryable: the same key goes to the processor again (a final outcome would be replayed).
    let (_, _, again) = s.charge("renewals", &pm, &body).await;
    assert_eq!(again["status"], "failed");
    let ledger = sandbox::charges(&s.sandbox.url).await;
    assert_eq!(
        ledger["charges"].as_array().map(Vec::len),
        Some(0),
        "nothing was paid: {ledger}"
    );
    assert!(ledger["transientFailures"].as_u64() >= Some(1), "{ledger}");
    assert!(!s.vault.output().contains(&tok));
}

#[tokio::test]
async fn a_malformed_processor_answer_is_failed_and_logged_without_the_token() {
    let s = start(&[], &[]);
    let tok = token("tok_fail_malformed");
    let pm = s.store("s1", "acct1", &tok).await;
    let (status, text, v) = s
        .charge(
            "renewals",
            &pm,
            &charge_body("s1", json!(1000), "USD", "k-malformed"),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["reason"], "malformed_processor_response");
    // The log line may reach the pipe just after the response.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.vault.output().contains("malformed processor response") {
        assert!(
            std::time::Instant::now() < deadline,
            "the failure is logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = s.vault.output();
    assert!(!out.contains(&tok), "without the token");
    assert!(!text.contains(&tok));
}

#[tokio::test]
async fn a_token_attached_to_a_processor_customer_is_charged_with_that_customer_and_never_with_our_account_id()
 {
    let s = start(&[], &[]);
    let url = s.sandbox.url.clone();
    let cus = sandbox::create_customer(&url).await;
    let attached = token("pm_card");
    assert_eq!(sandbox::attach(&url, &attached, &cus).await, 200);

    // Stored with its customer: charged with `customer=cus_…`.
    let pm = s.store_for("s1", "acct1", &attached, Some(&cus)).await;
    let (status, text, o) = s
        .charge(
            "renewals",
            &pm,
            &charge_body("s1", json!(1495), "USD", "k1"),
        )
        .await;
    assert_eq!(
        (status, o["status"].as_str()),
        (200, Some("succeeded")),
        "{text}"
    );
    let sent = sandbox::charges_with_key(&url, "s1:k1").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["customer"], cus.as_str());

    // The same attached token stored without its customer: Stripe refuses the request (400),
    // which is a final `invalid_request` decline, not a failure retried forever.
    let bare = s.store_for("s1", "acct2", &attached, None).await;
    let (status, text, o) = s
        .charge(
            "renewals",
            &bare,
            &charge_body("s1", json!(1495), "USD", "k2"),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        (o["status"].as_str(), o["reason"].as_str()),
        (Some("declined"), Some("invalid_request")),
        "{text}"
    );
    assert!(!text.contains(&attached));
    // A customer the processor does not know (as our account ids are): refused the same way.
    let stranger = s
        .store_for(
            "s1",
            "acct3",
            &token("tok_visa"),
            Some("cus_unknownToTheProcessor"),
        )
        .await;
    let (_, text, o) = s
        .charge(
            "renewals",
            &stranger,
            &charge_body("s1", json!(1495), "USD", "k3"),
        )
        .await;
    assert_eq!(o["reason"], "invalid_request", "{text}");

    // An unattached `pm_…` without customer: `customer` is left out (never the account id),
    // and, as at Stripe, it is single-use.
    let once = token("pm_card");
    let single = s.store_for("s1", "acct4", &once, None).await;
    let (_, text, o) = s
        .charge(
            "renewals",
            &single,
            &charge_body("s1", json!(1495), "USD", "k4"),
        )
        .await;
    assert_eq!(o["status"], "succeeded", "{text}");
    let sent = sandbox::charges_with_key(&url, "s1:k4").await;
    assert_eq!(sent[0]["customer"], Value::Null, "no customer was sent");
    let (_, text, o) = s
        .charge(
            "renewals",
            &single,
            &charge_body("s1", json!(1495), "USD", "k5"),
        )
        .await;
    assert_eq!(o["reason"], "invalid_request", "{text}");

    // Only the two accepted charges reached the processor's ledger.
    let ledger = sandbox::charges(&url).await;
    assert_eq!(
        ledger["charges"].as_array().map(Vec::len),
        Some(2),
        "{ledger}"
    );
    assert!(
        !s.vault.output().contains(&attached),
        "token in the vault's log"
    );
}

#[tokio::test]
async fn a_malformed_processor_customer_is_422_naming_it_and_nothing_is_stored() {
    let s = start(&[], &[]);
    for bad in [json!("cus bad"), json!(""), json!("c".repeat(65)), json!(7)] {
        let mut body = card_body("s1", "acct1", &token("tok_visa"));
        body["processorCustomer"] = bad.clone();
        let resp = s
            .vault
            .client("accounts")
            .post(s.vault.url("/v1/payment-methods"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("store: {e}"));
        assert_eq!(resp.status().as_u16(), 422, "{bad}");
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(v["error"]["field"], "processorCustomer", "{bad}: {v}");
    }
}
