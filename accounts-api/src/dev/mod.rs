//! `accounts-api dev`: the whole system on embedded defaults, for a fresh machine.
//!
//! Runs `vault init` on first use (dev PKI, keys, config under `DATA/vault`), starts the `vault`
//! binary from the same build as a child process (killed when we stop, `kill_on_drop`), starts
//! accounts-api on `DATA/accounts`, creates a demo store on first use — dev mode only, its
//! credentials kept in `DATA/accounts/dev-store.json` (0600) so later runs print the same ones —
//! and prints one line `STRONGROOM_READY {json}` (for tools), then a short human banner (API URL,
//! demo credentials, two `curl` lines that work as printed).
//!
//! Payments: unless `VAULT_PROCESSOR_URL` is set (then the vault inherits it and
//! `VAULT_PROCESSOR_SECRET_KEY[_FILE]` and charges that endpoint), dev also starts the
//! `sandbox-processor` binary from the same build, with a fresh random secret key handed to both
//! children through their environment, and points the vault at it. The renewal job runs with the
//! `renewals` certificate of the dev PKI every `STRONGROOM_RENEWALS_INTERVAL_SECS` (default 60).
//!
//! Webhooks: dev is a loopback demo, so its egress policy allows loopback receivers
//! (`127.0.0.0/8`, `::1`) unless `STRONGROOM_WEBHOOK_ALLOW` is set (`none`: as strict as
//! `serve`, which allows nothing beyond the built-in rules by default).
//!
//! With `--database-url URL [--instances N]` the same system runs on PostgreSQL, N of each
//! service (see `cluster`): N vaults (each its own folder, keys copied from the first, its own
//! audit chain) and N accounts-api instances (this process and N−1 `accounts-api serve`
//! children), instance i on vault i, all on that database. The READY line then also carries
//! `apis`, `apiPids`, `vaults` and `vaultPids` (`api` stays the first instance).

mod cluster;

use crate::vault::VaultConfig;
use serde_json::{Value, json};
use shared::tls::TlsFiles;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `vault` binary next to our own executable, and `sandbox-processor` beside it when
/// `sandbox` is set. `cargo run -p accounts-api` builds only this package, and the sandbox lives
/// in the `tools` package (out of the product binaries' graph), so on a fresh checkout either may
/// not be built yet: then, if we can find the workspace we were built from, build both with the
/// same cargo and profile (cargo has already released its build lock when it runs us) before
/// giving up with a clear message.
fn dev_binaries(sandbox: bool) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let vault = exe.with_file_name("vault");
    let sandbox_bin = exe.with_file_name("sandbox-processor");
    let present = || vault.exists() && (!sandbox || sandbox_bin.exists());
    if present() {
        return Ok(vault);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    let profile = exe
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .unwrap_or("debug")
        .to_owned();
    if let Some(ws) = workspace.filter(|w| w.join("vault").join("Cargo.toml").exists()) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "accounts-api dev: building the vault and sandbox-processor binaries ({profile}) first"
        );
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(&ws)
            .args(["build", "-p", "vault", "-p", "tools"])
            .args(["--bin", "vault", "--bin", "sandbox-processor"]);
        if profile != "debug" {
            cmd.arg("--profile").arg(if profile == "release" {
                "release"
            } else {
                profile.as_str()
            });
        }
        // Its output would interleave with ours on stdout: send it to stderr.
        cmd.stdout(std::process::Stdio::null());
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        if ok && present() {
            return Ok(vault);
        }
    }
    Err(format!(
        "{} or {} is missing: build them with `cargo build --workspace` (same profile)",
        vault.display(),
        sandbox_bin.display()
    ))
}

/// Starts `sandbox-processor` (next to the vault binary) with `secret` as its key; returns the
/// child and its address.
async fn start_sandbox(
    vault_bin: &Path,
    secret: &str,
) -> Result<(tokio::process::Child, String), String> {
    let bin = vault_bin.with_file_name("sandbox-processor");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build -p tools` (same profile)",
            bin.display()
        ));
    }
    let mut child = tokio::process::Command::new(&bin)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("SANDBOX_SECRET_KEY", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("sandbox-processor: {e}"))?;
    let stdout = child.stdout.take().ok_or("sandbox stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("SANDBOX_LISTENING ") {
                return Some(a.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("the sandbox processor did not start (no SANDBOX_LISTENING line)")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

fn random_secret() -> Result<zeroize::Zeroizing<String>, String> {
    let mut b = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| "no system randomness")?;
    Ok(zeroize::Zeroizing::new(format!(
        "sk_test_{}",
        hex::encode(b)
    )))
}

async fn demo_store(state: &crate::app::SharedState, dir: &Path) -> Result<Value, String> {
    let file = dir.join("dev-store.json");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        let id = v.get("store").and_then(Value::as_str).unwrap_or_default();
        if let Ok(id) = crate::model::StoreId::parse(id)
            && state
                .storage
                .store(&id)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
        {
            return Ok(v);
        }
    }
    let created = crate::auth::create_store(state.storage.as_ref(), "Demo store")
        .await
        .map_err(|e| e.to_string())?;
    state.storage.durable().await.map_err(|e| e.to_string())?;
    let v = created.to_json();
    // Owner-only from the start: create with 0600 rather than chmod after writing.
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    f.write_all(v.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(v)
}

/// First line of the human banner; the banner ends with [`BANNER_END`]. Both on stdout, after
/// the READY line (stdout is what tests and tools read; logs go to stderr).
pub const BANNER_START: &str = "==> Strongroom dev system is running";
/// Last line of the human banner.
pub const BANNER_END: &str = "==> Ctrl-C stops accounts-api, the vault and the sandbox.";

/// The newcomer's first minute (issue 15, point 10), as `vault server -dev` does it: where the
/// API is, the demo store's credentials, and two `curl` lines that work as printed. The emails
/// and the idempotency key are fresh per start, so on a reused data folder the account line
/// still creates an account and the checkout line answers the first checkout again if repeated.
/// The credentials are the ones the READY line and `dev-store.json` already hold: dev mode only.
fn print_banner(api: &str, demo: &Value) -> Result<(), String> {
    let field = |k: &str| demo.get(k).and_then(Value::as_str).unwrap_or_default();
    let (store, user, password) = (field("store"), field("username"), field("password"));
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| "no system randomness")?;
    let run = hex::encode(b);
    let account = json!({"contact": {"first": "Ada", "last": "Lovelace",
        "email": format!("ada+{run}@example.com")}});
    let checkout = json!({
        "customer": {"first": "Grace", "last": "Hopper", "email": format!("grace+{run}@example.com")},
        "items": [{"product": "pro-plan", "quantity": 1, "price": 14.95, "currency": "USD",
            "subscription": {"intervalUnit": "month", "intervalLength": 1}}],
        "payment": {"token": format!("tok_dev_{run}"), "type": "card", "brand": "visa",
            "last4": "4242", "expMonth": 12, "expYear": 2030},
        "consent": {"presented": true, "accepted": true},
    });
    let curl = format!("curl -sS -u '{user}:{password}' -H 'Content-Type: application/json'");
    println!(
        "\n{BANNER_START}\n\n\
         \x20   API:      {api}   (browsable docs: {api}/docs)\n\
         \x20   Store:    {store}\n\
         \x20   Username: {user}\n\
         \x20   Password: {password}\n\n\
         Create an account:\n\n\
         \x20   {curl} -d '{account}' {api}/accounts\n\n\
         Complete a checkout (a monthly subscription, save-card box ticked: the vault stores the \
         token and the subscription renews automatically):\n\n\
         \x20   {curl} -H 'Idempotency-Key: checkout-{run}' -d '{checkout}' {api}/orders\n\n\
         Dev mode only: the demo credentials are kept in the data folder (dev-store.json).\n\
         {BANNER_END}\n"
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    Ok(())
}

/// A started vault child and the address it listens on.
struct VaultChild {
    child: tokio::process::Child,
    addr: String,
    pid: Option<u32>,
}

/// Starts `vault serve --config toml --listen 127.0.0.1:0` with the processor environment;
/// waits for its `VAULT_LISTENING` line and keeps draining its stdout.
async fn start_vault(
    vault_bin: &Path,
    toml: &Path,
    processor_env: &[(&str, &str)],
) -> Result<VaultChild, String> {
    let mut cmd = tokio::process::Command::new(vault_bin);
    for (k, v) in processor_env {
        cmd.env(k, v);
    }
    // The vault child logs in the same format as we do unless told otherwise.
    if std::env::var_os("VAULT_LOG_FORMAT").is_none()
        && let Some(f) = std::env::var_os("STRONGROOM_LOG_FORMAT")
    {
        cmd.env("VAULT_LOG_FORMAT", f);
    }
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(toml)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("vault serve: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("vault stdout")?;
    let addr = first_line_with(stdout, "VAULT_LISTENING ")
        .await
        .ok_or("the vault did not start (no VAULT_LISTENING line)")?;
    Ok(VaultChild { child, addr, pid })
}

/// Waits (30 s at most) for the line starting with `prefix` on a child's stdout, echoing other
/// lines to stderr; then keeps draining the stream so the child never blocks on a full pipe.
async fn first_line_with(
    stdout: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    prefix: &str,
) -> Option<String> {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix(prefix) {
                return Some(a.trim().to_owned());
            }
            eprintln!("{line}");
        }
        None
    })
    .await
    .ok()
    .flatten();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
        }
    });
    found
}

/// The vault client settings for the dev PKI in `pki` and a vault at `addr`.
fn vault_config(pki: &Path, addr: &str) -> Result<VaultConfig, String> {
    Ok(VaultConfig {
        addr: addr
            .parse()
            .map_err(|_| format!("bad vault address {addr}"))?,
        server_name: "localhost".into(),
        tls: TlsFiles {
            ca: pki.join("ca.pem"),
            cert: pki.join("accounts.pem"),
            key: pki.join("accounts.key"),
        },
    })
}

/// `accounts-api dev [--database-url URL --instances N]`: without a database, one vault and one
/// accounts-api on sled under `data` (the default); with one, `instances` vaults and
/// accounts-api instances on that PostgreSQL database (see `cluster`).
pub async fn run(
    data: PathBuf,
    port: u16,
    database: Option<shared::SecretString>,
    instances: usize,
) -> Result<(), String> {
    if instances == 0 {
        return Err("--instances must be at least 1".into());
    }
    if instances > 1 && database.is_none() {
        return Err(
            "--instances above 1 needs --database-url: the embedded sled database is one \
             process's"
                .into(),
        );
    }
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    // A real processor from the environment, or the local sandbox.
    let external = std::env::var("VAULT_PROCESSOR_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let vault_bin = dev_binaries(external.is_none())?;
    let db = match &database {
        Some(url) => Some(cluster::Database::prepare(&data, url)?),
        None => None,
    };
    // Vault folders: `data/vault` on sled; `data/vaults/<i>` on PostgreSQL (copies of the first
    // one's keys and PKI, each with its own data folder and audit chain).
    let vault_dirs = match &db {
        None => {
            let dir = data.join("vault");
            if !dir.join("vault.toml").exists() {
                cluster::vault_init(&vault_bin, &dir).await?;
            }
            vec![dir]
        }
        Some(db) => cluster::vault_folders(&vault_bin, &data, db, instances).await?,
    };
    let mut sandbox = None;
    let mut secret = None;
    let processor = match external {
        Some(url) => url,
        None => {
            let key = random_secret()?;
            let (child, addr) = start_sandbox(&vault_bin, &key).await?;
            sandbox = Some(child);
            secret = Some(key);
            format!("http://{addr}")
        }
    };
    let sandbox_pid = sandbox.as_ref().and_then(tokio::process::Child::id);
    let processor_env: Vec<(&str, &str)> = match &secret {
        Some(key) => vec![
            ("VAULT_PROCESSOR_URL", processor.as_str()),
            ("VAULT_PROCESSOR_SECRET_KEY", key.as_str()),
        ],
        None => Vec::new(),
    };
    let mut vaults = Vec::with_capacity(vault_dirs.len());
    for dir in &vault_dirs {
        vaults.push(start_vault(&vault_bin, &dir.join("vault.toml"), &processor_env).await?);
    }
    let pki = vault_dirs[0].join("pki");
    let vault_cfg = vault_config(&pki, &vaults[0].addr)?;
    let renewals = crate::config::RenewalsConfig {
        cert: pki.join("renewals.pem"),
        key: pki.join("renewals.key"),
        interval: crate::config::RenewalsConfig::interval_from_env(60)?,
    };
    // A loopback demo: webhooks may go to loopback receivers unless STRONGROOM_WEBHOOK_ALLOW
    // says otherwise (`none`: as strict as `serve`).
    let settings = crate::settings::Settings {
        clock: crate::settings::Clock::dev_from_env(),
        webhook_egress: std::sync::Arc::new(
            crate::settings::egress_from_env()?.unwrap_or_else(crate::egress::Policy::loopback),
        ),
        ..crate::settings::Settings::from_env()?
    };
    let storage = crate::open_storage(
        &data,
        db.as_ref().map(cluster::Database::settings).as_ref(),
        settings.live,
    )
    .await?;
    let state = crate::build_with_storage(storage, &data, &vault_cfg, Some(&renewals), settings)?;
    let demo = demo_store(&state, &crate::config::accounts_dir(&data)).await?;
    // The other accounts-api instances: `accounts-api dev-instance` children (`serve` on this
    // dev clock), instance i on vault i.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let api = format!("http://{local}");
    let mut apis = Vec::new();
    if let Some(db) = &db {
        for (i, vault) in vaults.iter().enumerate().skip(1) {
            // Their sign-in links lead to this instance (all share the database).
            apis.push(cluster::start_api(&data, db, i + 1, &pki, &vault.addr, &api).await?);
        }
    }
    let mut ready = json!({
        "api": api,
        "store": demo.get("store"),
        "username": demo.get("username"),
        "password": demo.get("password"),
        "vault": vaults[0].addr,
        "vaultPid": vaults[0].pid,
        "processor": processor,
        "processorPid": sandbox_pid,
    });
    if db.is_some() {
        let mut all_apis = vec![json!(api)];
        all_apis.extend(apis.iter().map(|a| json!(a.url)));
        let mut api_pids = vec![json!(std::process::id())];
        api_pids.extend(apis.iter().map(|a| json!(a.child.id())));
        ready["apis"] = json!(all_apis);
        ready["apiPids"] = json!(api_pids);
        ready["vaults"] = json!(vaults.iter().map(|v| v.addr.clone()).collect::<Vec<_>>());
        ready["vaultPids"] = json!(vaults.iter().map(|v| v.pid).collect::<Vec<_>>());
    }
    println!("STRONGROOM_READY {ready}");
    print_banner(&api, &demo)?;
    tracing::info!(api = %local, vault = %vaults[0].addr, instances, "strongroom dev system ready");
    let server = crate::app::run(listener, state, crate::shutdown_signal());
    tokio::pin!(server);
    let first = &mut vaults[0].child;
    let served = tokio::select! {
        r = &mut server => r,
        status = first.wait() => {
            // Say so loudly, but keep serving: vault calls answer 503 until it is restarted.
            tracing::error!(?status, "the vault process exited; calls that need it answer 503");
            server.await
        }
    };
    for mut a in apis {
        cluster::stop(&mut a.child).await;
    }
    for v in &mut vaults {
        let _ = v.child.kill().await;
    }
    if let Some(mut s) = sandbox {
        let _ = s.kill().await;
    }
    served.map_err(|e| e.to_string())
}
