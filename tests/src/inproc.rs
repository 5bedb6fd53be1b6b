//! The in-process tier: accounts-api's real router and background jobs, built and served as
//! `serve` does (`accounts_api::build_with_settings`, then `accounts_api::app::run`) inside the
//! test process, on 127.0.0.1:0 with a sled database in a temporary folder. No binary to start,
//! so a test pays tens of milliseconds instead of the half second `accounts-api dev` takes to
//! start its three processes.
//!
//! For the tests that do not need process boundaries: the API's answers, validation, envelopes,
//! store scoping, idempotency, events and webhook configuration and delivery. The vault is either
//! an address where nothing listens ([`spawn_app`]: any call to it fails, so a test that reaches
//! it by mistake sees an error, never a silent pass) or the real `vault` binary
//! ([`spawn_app_with_vault`]). Crashes, restarts, logs, signals, configuration files and the
//! `dev` command stay in the process tier ([`crate::accounts::start_system`]).

use crate::accounts::{Credentials, Merchant, http_client};
use crate::vault::VaultProcess;
use accounts_api::settings::Settings;
use accounts_api::vault::VaultConfig;
use shared::tls::TlsFiles;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A running in-process accounts-api. Derefs to the demo store's [`Merchant`], so a test writes
/// `app.create_account(&body)`. Dropping it stops the server (requests drained, background tasks
/// awaited, the database closed) before the folder is removed and the vault (if any) killed.
pub struct App {
    /// `http://127.0.0.1:<port>`.
    pub api: String,
    /// The demo store, created through the admin socket as `store create` would.
    pub demo: Credentials,
    pub http: reqwest::Client,
    /// The data folder (`accounts/` inside, as `serve --data` lays it out).
    pub data: Arc<tempfile::TempDir>,
    /// The real vault binary, for apps started with [`spawn_app_with_vault`].
    pub vault: Option<VaultProcess>,
    merchant: Merchant,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An app without a vault: its client points at 127.0.0.1:1, where nothing listens.
pub fn spawn_app() -> App {
    spawn_app_with(false, Settings::default())
}

/// An app whose vault client talks to a real `vault` binary on a fresh `vault init` folder
/// (no processor: storing and listing tokens work, charges answer 503).
pub fn spawn_app_with_vault() -> App {
    spawn_app_with(true, Settings::default())
}

/// [`spawn_app`] or [`spawn_app_with_vault`] with explicit settings (e.g. fast webhook retries).
pub fn spawn_app_with(vault: bool, settings: Settings) -> App {
    shared::tls::install_crypto_provider();
    let data = Arc::new(crate::temp_dir("strongroom-inproc-"));
    let (vault, vault_cfg) = if vault {
        let v = VaultProcess::start(&data.path().join("vault"));
        let cfg = vault_config(&v.pki_dir(), v.addr);
        (Some(v), cfg)
    } else {
        let pki = data.path().join("pki");
        shared::pki::ensure_dev_pki(&pki).unwrap_or_else(|e| panic!("dev pki: {e}"));
        let nowhere = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        (None, vault_config(&pki, nowhere))
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let folder = data.path().to_owned();
    // Its own runtime on its own thread: the app outlives nothing of the test's runtime, works
    // under any test flavour, and `Drop` can wait for it synchronously.
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        rt.block_on(serve(folder, vault_cfg, settings, ready_tx, stopped));
    });
    let (addr, demo) = match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => panic!("in-process accounts-api did not start: {e}"),
        Err(e) => panic!("in-process accounts-api did not start: {e}"),
    };
    let api = format!("http://{addr}");
    let http = http_client();
    App {
        merchant: Merchant::new(&http, &api, &demo),
        api,
        demo,
        http,
        data,
        vault,
        stop: Some(stop),
        thread: Some(thread),
    }
}

type Ready = Result<(std::net::SocketAddr, Credentials), String>;

/// Builds the state as `serve` does, creates the demo store, reports the address and serves
/// until `stopped` resolves (or its sender is dropped).
async fn serve(
    data: PathBuf,
    vault: VaultConfig,
    settings: Settings,
    ready: std::sync::mpsc::Sender<Ready>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let started = async {
        let state = accounts_api::build_with_settings(&data, &vault, None, settings)?;
        let demo = accounts_api::admin::create_store_cli(&data, "Demo store").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        Ok::<_, String>((state, listener, addr, Credentials::from_json(&demo)))
    };
    match started.await {
        Err(e) => {
            let _ = ready.send(Err(e));
        }
        Ok((state, listener, addr, demo)) => {
            let _ = ready.send(Ok((addr, demo)));
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = accounts_api::app::run(listener, state, shutdown).await {
                panic!("in-process accounts-api: {e}");
            }
        }
    }
}

fn vault_config(pki: &Path, addr: std::net::SocketAddr) -> VaultConfig {
    VaultConfig {
        addr,
        server_name: "localhost".into(),
        tls: TlsFiles {
            ca: pki.join("ca.pem"),
            cert: pki.join("accounts.pem"),
            key: pki.join("accounts.key"),
        },
    }
}

impl App {
    /// The typed calls as another store (e.g. one from [`App::create_store`]).
    pub fn as_store(&self, creds: &Credentials) -> Merchant {
        Merchant::new(&self.http, &self.api, creds)
    }

    /// A new store, created through the running server's admin socket exactly as
    /// `accounts-api store create` does.
    pub async fn create_store(&self, name: &str) -> Credentials {
        let created = accounts_api::admin::create_store_cli(self.data.path(), name)
            .await
            .unwrap_or_else(|e| panic!("store create: {e}"));
        Credentials::from_json(&created)
    }

    /// The payment methods the vault holds for (store, account); panics without a vault.
    pub async fn vault_payment_methods(
        &self,
        store: &str,
        account: &str,
    ) -> Vec<serde_json::Value> {
        let v = self
            .vault
            .as_ref()
            .unwrap_or_else(|| panic!("this app has no vault: use spawn_app_with_vault"));
        crate::accounts::vault_payment_methods(&v.dir, &v.addr.to_string(), store, account).await
    }
}

impl std::ops::Deref for App {
    type Target = Merchant;

    fn deref(&self) -> &Merchant {
        &self.merchant
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic of the server thread is already on stderr; the test's own outcome stands.
            let _ = thread.join();
        }
    }
}
