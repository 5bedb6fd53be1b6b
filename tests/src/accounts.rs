//! Helpers for the accounts-api end-to-end tests: start the whole system through
//! `accounts-api dev --data TMP --port 0` (which runs `vault init` and starts the real `vault`
//! binary), parse its `STRONGROOM_READY {json}` line, and talk to both services.

use crate::{Service, bin_path, run, temp_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Store credentials as `store create` and the READY line print them. No `Debug`: it holds the
/// store's API password.
#[derive(Clone)]
pub struct Credentials {
    pub store: String,
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn from_json(v: &Value) -> Credentials {
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{k} missing in {v}"))
                .to_owned()
        };
        Credentials {
            store: s("store"),
            username: s("username"),
            password: s("password"),
        }
    }
}

/// A running `accounts-api dev` system in its own temporary data folder.
pub struct System {
    pub service: Service,
    pub api: String,
    pub demo: Credentials,
    pub vault_addr: String,
    pub vault_pid: u32,
    /// The processor the vault charges (`http://…` of dev's sandbox, or the one given by env).
    pub processor: String,
    /// Shared so a test can start a second system on the same folder after stopping the first.
    pub data: std::sync::Arc<tempfile::TempDir>,
    /// With `--database-url`: every accounts-api instance's URL (`api` first) and every vault's
    /// address (`vault_addr` first); empty on sled.
    pub apis: Vec<String>,
    pub vaults: Vec<String>,
    /// Their process ids (`api_pids[0]` is the dev process itself).
    pub api_pids: Vec<u32>,
    pub http: reqwest::Client,
    stopped: bool,
}

/// Starts `accounts-api dev` on a fresh data folder with debug logging everywhere (so secret
/// scans of the logs see as much as possible).
pub fn start_system() -> System {
    start_system_in(std::sync::Arc::new(temp_dir("strongroom-accounts-")))
}

/// Starts `accounts-api dev` on an existing data folder (e.g. to restart on it).
pub fn start_system_in(data: std::sync::Arc<tempfile::TempDir>) -> System {
    start_system_with_env(data, &[])
}

/// Like [`start_system_in`], with extra environment (e.g. `STRONGROOM_SSO_TTL_SECS`).
pub fn start_system_with_env(
    data: std::sync::Arc<tempfile::TempDir>,
    env: &[(&str, &str)],
) -> System {
    start_system_with_args(data, env, &[])
}

/// `accounts-api dev --database-url URL --instances N` on a fresh folder: N vaults and N
/// accounts-api instances on one PostgreSQL database.
pub fn start_cluster(database_url: &str, instances: usize) -> System {
    start_cluster_with_env(database_url, instances, &[])
}

/// [`start_cluster`] with extra environment (every instance inherits it).
pub fn start_cluster_with_env(
    database_url: &str,
    instances: usize,
    env: &[(&str, &str)],
) -> System {
    let n = instances.to_string();
    start_system_with_args(
        std::sync::Arc::new(temp_dir("strongroom-cluster-")),
        env,
        &["--database-url", database_url, "--instances", &n],
    )
}

fn start_system_with_args(
    data: std::sync::Arc<tempfile::TempDir>,
    env: &[(&str, &str)],
    args: &[&str],
) -> System {
    shared::tls::install_crypto_provider();
    let mut cmd = Command::new(bin_path("accounts-api"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg("dev")
        .args(args)
        .arg("--data")
        .arg(data.path())
        .arg("--port")
        .arg("0")
        .env("RUST_LOG", "debug")
        .env("VAULT_LOG", "debug");
    let service = Service::spawn("accounts-api dev", cmd);
    let line = service.wait_for_line("STRONGROOM_READY ", Duration::from_secs(60));
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("READY json {line:?}: {e}"));
    System {
        api: ready["api"].as_str().unwrap_or_default().to_owned(),
        demo: Credentials::from_json(&ready),
        vault_addr: ready["vault"].as_str().unwrap_or_default().to_owned(),
        vault_pid: ready["vaultPid"].as_u64().unwrap_or_default() as u32,
        processor: ready["processor"].as_str().unwrap_or_default().to_owned(),
        apis: strings(&ready["apis"]),
        vaults: strings(&ready["vaults"]),
        api_pids: ready["apiPids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default(),
        service,
        data,
        http: http_client(),
        stopped: false,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub fn http_client() -> reqwest::Client {
    shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("reqwest: {e}"))
}

/// `accounts-api store create --name NAME --data DIR` → the printed credentials.
pub fn create_store(data: &Path, name: &str) -> Credentials {
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.arg("store")
        .arg("create")
        .arg("--name")
        .arg(name)
        .arg("--data")
        .arg(data);
    let (ok, out, err) = run(cmd);
    assert!(ok, "store create failed:\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "store create must print exactly one line: {out}"
    );
    Credentials::from_json(&serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{out}: {e}")))
}

/// One HTTP answer: status, headers, raw body and the body as JSON (Null if not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

/// Sends a request to accounts-api with Basic credentials (or none) and an optional key.
pub async fn call(
    http: &reqwest::Client,
    base: &str,
    creds: Option<&Credentials>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(c) = creds {
        req = req.basic_auth(&c.username, Some(&c.password));
    }
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

impl System {
    pub async fn call(
        &self,
        creds: &Credentials,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        call(&self.http, &self.api, Some(creds), method, path, body, None).await
    }

    /// A completed checkout (its token saved, consent given) of one monthly subscription for
    /// `email`: the order as answered.
    pub async fn subscribe(&self, creds: &Credentials, email: &str) -> Value {
        let body = order_body(email, &unique_token(), true, true, true);
        let order = self.call(creds, "POST", "/orders", Some(&body)).await;
        assert_eq!(order.status, 200, "{}", order.text);
        order.json
    }

    pub async fn call_with_key(
        &self,
        creds: &Credentials,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: &str,
    ) -> Answer {
        call(
            &self.http,
            &self.api,
            Some(creds),
            method,
            path,
            body,
            Some(key),
        )
        .await
    }

    pub fn vault_dir(&self) -> PathBuf {
        self.data.path().join("vault")
    }

    pub fn accounts_dir(&self) -> PathBuf {
        self.data.path().join("accounts")
    }

    /// The payment methods the vault holds for (store, account), asked over mTLS as `accounts`.
    pub async fn vault_payment_methods(&self, store: &str, account: &str) -> Vec<Value> {
        vault_payment_methods(&self.vault_dir(), &self.vault_addr, store, account).await
    }

    /// The typed calls of [`Merchant`] as the store `creds` on this system.
    pub fn merchant(&self, creds: &Credentials) -> Merchant {
        Merchant::new(&self.http, &self.api, creds)
    }

    /// Everything both services printed (the vault's log goes through the dev process).
    pub fn logs(&self) -> String {
        self.service.output()
    }

    /// Graceful stop (SIGTERM, as Ctrl-C would); returns whether the process exited in time.
    pub fn stop(&mut self) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.service.pid().to_string())
            .stderr(std::process::Stdio::null())
            .status();
        let exited = self.service.wait(Duration::from_secs(15)).is_some();
        if !exited {
            self.service.kill();
        }
        exited
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A checkout body (`POST /orders`) for one item.
pub fn order_body(
    email: &str,
    token: &str,
    subscription: bool,
    presented: bool,
    accepted: bool,
) -> Value {
    let mut item = json!({"product": "pro-plan", "quantity": 1, "price": 14.95, "currency": "USD"});
    if subscription {
        item["subscription"] = json!({"intervalUnit": "month", "intervalLength": 1});
    }
    json!({
        "customer": {"first": "Jane", "last": "Doe", "email": email},
        "country": "US",
        "language": "en",
        "items": [item],
        "payment": {"token": token, "type": "card", "brand": "visa", "last4": "4242",
            "expMonth": 12, "expYear": 2030},
        "consent": {"presented": presented, "accepted": accepted},
    })
}

/// The checkout's "save payment details for automated renewal" box, as [`order_body`]'s
/// `presented` and `accepted`: the token is saved for a subscription unless it is `Unticked`.
#[derive(Clone, Copy, Debug)]
pub enum SaveBox {
    /// Not shown (`presented: false, accepted: false`).
    NotShown,
    /// Shown and ticked.
    Ticked,
    /// Shown and left unticked.
    Unticked,
}

/// [`order_body`] for a one-off item with a fresh token (never saved: no vault needed).
pub fn one_off_order(email: &str) -> Value {
    order_body(email, &unique_token(), false, false, false)
}

/// [`order_body`] for a monthly subscription with a fresh token and the box as given.
pub fn subscription_order(email: &str, save: SaveBox) -> Value {
    let (presented, accepted) = match save {
        SaveBox::NotShown => (false, false),
        SaveBox::Ticked => (true, true),
        SaveBox::Unticked => (true, false),
    };
    order_body(email, &unique_token(), true, presented, accepted)
}

/// A token no test shares: processor-like prefix plus random hex.
pub fn unique_token() -> String {
    format!("tok_test_{}", uuid::Uuid::new_v4().simple())
}

/// The payment methods a vault (its folder, for the `accounts` client certificate, and its
/// address) holds for (store, account), asked over mTLS as `accounts`.
pub async fn vault_payment_methods(
    vault_dir: &Path,
    vault_addr: &str,
    store: &str,
    account: &str,
) -> Vec<Value> {
    let pki = vault_dir.join("pki");
    let client = crate::vault::mtls_client(
        &pki.join("ca.pem"),
        &pki.join("accounts.pem"),
        &pki.join("accounts.key"),
    );
    let url = format!("https://{vault_addr}/v1/payment-methods?store={store}&account={account}");
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("vault list: {e}"));
    assert!(resp.status().is_success(), "vault list: {}", resp.status());
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    v["paymentMethods"].as_array().cloned().unwrap_or_default()
}

impl Answer {
    /// The string at a JSON pointer of the body (`"/account"`, `"/items/0/subscription"`), or
    /// `""` when it is missing or not a string.
    pub fn str(&self, pointer: &str) -> String {
        self.json
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// One store's typed view of a running accounts-api, for either tier (the in-process
/// [`crate::inproc::App`] derefs to its demo store's; [`System::merchant`] for the binaries):
/// one method per route, so a test reads `complete_order(&body)` rather than a method and a path
/// in strings. Each sends exactly the request [`call`] would and returns the whole [`Answer`]:
/// the test still asserts the status and fields itself.
#[derive(Clone)]
pub struct Merchant {
    pub http: reqwest::Client,
    pub api: String,
    pub creds: Credentials,
    key: Option<String>,
}

impl Merchant {
    pub fn new(http: &reqwest::Client, api: &str, creds: &Credentials) -> Merchant {
        Merchant {
            http: http.clone(),
            api: api.to_owned(),
            creds: creds.clone(),
            key: None,
        }
    }

    /// The same store sending `Idempotency-Key: key` with every request.
    pub fn with_key(&self, key: &str) -> Merchant {
        Merchant {
            key: Some(key.to_owned()),
            ..self.clone()
        }
    }

    /// Any request as this store (for what no typed method covers: odd paths, wrong methods).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        call(
            &self.http,
            &self.api,
            Some(&self.creds),
            method,
            path,
            body,
            self.key.as_deref(),
        )
        .await
    }

    /// `POST /accounts`.
    pub async fn create_account(&self, body: &Value) -> Answer {
        self.call("POST", "/accounts", Some(body)).await
    }

    /// `POST /accounts/{id}` (a partial update).
    pub async fn update_account(&self, id: &str, body: &Value) -> Answer {
        self.call("POST", &format!("/accounts/{id}"), Some(body))
            .await
    }

    /// `GET /accounts/{id}`.
    pub async fn get_account(&self, id: &str) -> Answer {
        self.call("GET", &format!("/accounts/{id}"), None).await
    }

    /// `GET /accounts?filter=value` (`email`, `custom`, `global`, `orderId`, …).
    pub async fn lookup(&self, filter: &str, value: &str) -> Answer {
        self.list_accounts(&[(filter, value)]).await
    }

    /// `GET /accounts?k=v&…` as written (paging, several filters); `&[]`: no query.
    pub async fn list_accounts(&self, query: &[(&str, &str)]) -> Answer {
        self.call("GET", &with_query("/accounts", query), None)
            .await
    }

    /// `POST /orders` (checkout completion).
    pub async fn complete_order(&self, body: &Value) -> Answer {
        self.call("POST", "/orders", Some(body)).await
    }

    /// `GET /orders/{id}`.
    pub async fn get_order(&self, id: &str) -> Answer {
        self.call("GET", &format!("/orders/{id}"), None).await
    }

    /// `GET /orders?k=v&…` (`order.lookup`).
    pub async fn list_orders(&self, query: &[(&str, &str)]) -> Answer {
        self.call("GET", &with_query("/orders", query), None).await
    }

    /// `GET /subscriptions/{id}`.
    pub async fn get_subscription(&self, id: &str) -> Answer {
        self.call("GET", &format!("/subscriptions/{id}"), None)
            .await
    }

    /// `GET /subscriptions?k=v&…`.
    pub async fn list_subscriptions(&self, query: &[(&str, &str)]) -> Answer {
        self.call("GET", &with_query("/subscriptions", query), None)
            .await
    }

    /// `DELETE /subscriptions/{id}`.
    pub async fn cancel_subscription(&self, id: &str) -> Answer {
        self.call("DELETE", &format!("/subscriptions/{id}"), None)
            .await
    }

    /// `POST /subscriptions/{id}` with `{"subscriptions": [{"subscription": id,
    /// "deactivation": null}]}`: resumes a canceled subscription.
    pub async fn resume_subscription(&self, id: &str) -> Answer {
        let body = json!({"subscriptions": [{"subscription": id, "deactivation": null}]});
        self.call("POST", &format!("/subscriptions/{id}"), Some(&body))
            .await
    }

    /// `GET /accounts/{account}/payment-methods`.
    pub async fn payment_methods(&self, account: &str) -> Answer {
        self.call("GET", &format!("/accounts/{account}/payment-methods"), None)
            .await
    }

    /// `DELETE /accounts/{account}/payment-methods/{pm}`.
    pub async fn remove_payment_method(&self, account: &str, pm: &str) -> Answer {
        let path = format!("/accounts/{account}/payment-methods/{pm}");
        self.call("DELETE", &path, None).await
    }

    /// `GET /events/unprocessed?k=v&…`.
    pub async fn unprocessed_events(&self, query: &[(&str, &str)]) -> Answer {
        self.call("GET", &with_query("/events/unprocessed", query), None)
            .await
    }

    /// The ids of every unprocessed event of the store (`GET /events/unprocessed?begin=0`).
    pub async fn unprocessed_ids(&self) -> Vec<String> {
        let a = self.unprocessed_events(&[("begin", "0")]).await;
        a.json["events"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A completed one-off order for `email` (no token saved, so no vault needed): the order.
    pub async fn one_off_checkout(&self, email: &str) -> Value {
        let a = self.complete_order(&one_off_order(email)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.json
    }

    /// `GET /events/processed?k=v&…`.
    pub async fn processed_events(&self, query: &[(&str, &str)]) -> Answer {
        self.call("GET", &with_query("/events/processed", query), None)
            .await
    }

    /// `GET /events/{id}`.
    pub async fn get_event(&self, id: &str) -> Answer {
        self.call("GET", &format!("/events/{id}"), None).await
    }

    /// `POST /events/{id}` (e.g. `{"processed": true}`).
    pub async fn mark_event(&self, id: &str, body: &Value) -> Answer {
        self.call("POST", &format!("/events/{id}"), Some(body))
            .await
    }

    /// `POST /webhooks`.
    pub async fn add_webhook(&self, body: &Value) -> Answer {
        self.call("POST", "/webhooks", Some(body)).await
    }

    /// `GET /webhooks`.
    pub async fn list_webhooks(&self) -> Answer {
        self.call("GET", "/webhooks", None).await
    }

    /// `DELETE /webhooks/{id}`.
    pub async fn delete_webhook(&self, id: &str) -> Answer {
        self.call("DELETE", &format!("/webhooks/{id}"), None).await
    }

    /// `POST /webhooks/keys` (rotates a hook's secret).
    pub async fn rotate_webhook_key(&self, body: &Value) -> Answer {
        self.call("POST", "/webhooks/keys", Some(body)).await
    }
}

/// `path?k=v&…` exactly as written (the tests' values need no escaping); `path` alone for none.
fn with_query(path: &str, query: &[(&str, &str)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", q.join("&"))
}
