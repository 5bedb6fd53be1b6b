//! `localstripe` (PyPI: a stateful fake Stripe server nobody here wrote) for the connector's
//! end-to-end test: started on 127.0.0.1, port chosen by the OS, spoken to like Stripe.
//!
//! It is started through a few lines of Python rather than its `localstripe` command, which
//! binds `[::]` (fails where IPv6 is off; reachable from the network), first loads
//! `/tmp/localstripe.pickle` (state of another run) and rewrites that file on every request (two
//! test processes would share it). The wrapper binds 127.0.0.1:0 itself, prints the port, and
//! keeps the store in memory only.
//!
//! Where it is: `STRONGROOM_LOCALSTRIPE_PYTHON` (a Python with localstripe installed), else
//! `/opt/localstripe-venv/bin/python3` (where `.ci/run` installs it), else `python3` on `PATH` if
//! it can import localstripe. None of them → [`crate::tool::missing_tool`] (a failure under
//! `STRONGROOM_REQUIRE_TOOLS=1`, a visible skip otherwise).

use crate::Service;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The secret key the tests give the vault; localstripe accepts any `sk_…` key.
pub const SECRET: &str = "sk_test_strongroom_localstripe";

/// The venv `.ci/run` installs localstripe into.
pub const CI_VENV_PYTHON: &str = "/opt/localstripe-venv/bin/python3";

const WRAPPER: &str = r#"
import socket, sys
from aiohttp import web
import localstripe.resources as resources
from localstripe.server import app
# In memory only: no state from, or to, /tmp/localstripe.pickle.
resources.Store.dump_to_disk = lambda self: None
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
print("LOCALSTRIPE_LISTENING 127.0.0.1:%d" % sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"#;

/// A running localstripe; killed on drop.
pub struct LocalStripe {
    pub service: Service,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
}

fn can_import(python: &std::path::Path) -> bool {
    Command::new(python)
        .args(["-c", "import localstripe.server"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python that has localstripe, found as the module header says.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRONGROOM_LOCALSTRIPE_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(CI_VENV_PYTHON);
    if venv.is_file() && can_import(&venv) {
        return Some(venv);
    }
    crate::tool::find_program(&["python3"]).filter(|p| can_import(p))
}

impl LocalStripe {
    /// Starts localstripe, or applies the missing-tool policy and returns `None`.
    pub fn start() -> Option<LocalStripe> {
        let Some(python) = python() else {
            crate::tool::missing_tool(
                "localstripe (PyPI; .ci/run installs it into /opt/localstripe-venv)",
            );
            return None;
        };
        let mut cmd = Command::new(python);
        cmd.args(["-c", WRAPPER]);
        let service = Service::spawn("localstripe", cmd);
        let addr = service.wait_for_line("LOCALSTRIPE_LISTENING ", Duration::from_secs(60));
        Some(LocalStripe {
            service,
            url: format!("http://{addr}"),
            http: crate::accounts::http_client(),
        })
    }

    /// `POST /v1/{path}` form-encoded with the secret key; (status, body).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/{path}", self.url))
            .bearer_auth(SECRET)
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("localstripe {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/{path}` with the secret key; the body (panics unless 200).
    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/v1/{path}", self.url))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap_or_else(|e| panic!("localstripe {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.json().await.unwrap_or(Value::Null)
    }

    /// A new customer's `cus_…` id.
    pub async fn create_customer(&self, email: &str) -> String {
        let (status, v) = self.post("customers", &[("email", email)]).await;
        assert_eq!(status, 200, "customer: {v}");
        id_of(&v)
    }

    /// A card payment method (`pm_…`) for `number`, attached to `customer`, the way a Stripe.js
    /// checkout leaves it (`stripe.createPaymentMethod`, then the merchant's server attaches it).
    pub async fn attached_card(&self, number: &str, customer: &str) -> String {
        let (status, v) = self
            .post(
                "payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2030"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        assert_eq!(status, 200, "payment method: {v}");
        let pm = id_of(&v);
        let (status, v) = self
            .post(
                &format!("payment_methods/{pm}/attach"),
                &[("customer", customer)],
            )
            .await;
        assert_eq!(status, 200, "attach: {v}");
        pm
    }

    /// Every PaymentIntent localstripe holds.
    pub async fn payment_intents(&self) -> Vec<Value> {
        self.get("payment_intents?limit=100").await["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned()
}
