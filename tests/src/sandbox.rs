//! Helpers for the `sandbox-processor` binary: start it on 127.0.0.1:0 with a secret key (through
//! its environment, never the command line) and read its charge ledger.

use crate::{Service, bin_path};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The secret key tests give their own sandboxes.
pub const SECRET: &str = "sk_test_strongroom_tests";

/// A running sandbox processor.
pub struct Sandbox {
    pub service: Service,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// Starts `sandbox-processor` with extra arguments (`--delay-ms`, `--timeout-delay-ms`).
pub fn start_sandbox(args: &[&str]) -> Sandbox {
    let mut cmd = Command::new(bin_path("sandbox-processor"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .args(args)
        .env("SANDBOX_SECRET_KEY", SECRET)
        .env_remove("SANDBOX_CHARGE_DELAY_MS");
    let service = Service::spawn("sandbox-processor", cmd);
    let addr = service.wait_for_line("SANDBOX_LISTENING ", Duration::from_secs(30));
    Sandbox {
        service,
        url: format!("http://{addr}"),
    }
}

/// `GET {url}/_sandbox/charges`: `{charges: [...], replays, transientFailures}`.
pub async fn charges(url: &str) -> Value {
    let http = crate::accounts::http_client();
    let resp = http
        .get(format!("{url}/_sandbox/charges"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("sandbox ledger: {e}"));
    resp.json().await.unwrap_or(Value::Null)
}

/// The charges the sandbox recorded under one idempotency key.
pub async fn charges_with_key(url: &str, key: &str) -> Vec<Value> {
    charges(url).await["charges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["idempotencyKey"].as_str() == Some(key))
        .collect()
}

/// `POST {url}/v1/customers` with the tests' key: a new processor customer's `cus_…` id.
pub async fn create_customer(url: &str) -> String {
    let http = crate::accounts::http_client();
    let v: Value = http
        .post(format!("{url}/v1/customers"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap_or_else(|e| panic!("sandbox customer: {e}"))
        .json()
        .await
        .unwrap_or(Value::Null);
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no customer id: {v}"))
        .to_owned()
}

/// `POST {url}/v1/payment_methods/{pm}/attach` (`customer`), as a Stripe.js checkout does;
/// returns the HTTP status.
pub async fn attach(url: &str, pm: &str, customer: &str) -> u16 {
    let http = crate::accounts::http_client();
    http.post(format!("{url}/v1/payment_methods/{pm}/attach"))
        .bearer_auth(SECRET)
        .form(&[("customer", customer)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("sandbox attach: {e}"))
        .status()
        .as_u16()
}
