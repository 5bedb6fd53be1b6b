//! `accounts-api dev`: the whole system on embedded defaults, for a fresh machine.
//!
//! Runs `vault init` on first use (dev PKI, keys, config under `DATA/vault`), starts the `vault`
//! binary from the same build as a child process (killed when we stop, `kill_on_drop`), starts
//! accounts-api on `DATA/accounts`, creates a demo store on first use — dev mode only, its
//! credentials kept in `DATA/accounts/dev-store.json` (0600) so later runs print the same ones —
//! and prints one line `STRONGROOM_READY {json}`.

use crate::vault::VaultConfig;
use serde_json::{Value, json};
use shared::tls::TlsFiles;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `vault` binary next to our own executable. `cargo run -p accounts-api` builds only this
/// package, so on a fresh checkout the vault may not be built yet: then, if we can find the
/// workspace we were built from, build it with the same cargo and profile (cargo has already
/// released its build lock when it runs us) before giving up with a clear message.
fn vault_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let vault = exe.with_file_name("vault");
    if vault.exists() {
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
        eprintln!("accounts-api dev: building the vault binary ({profile}) first");
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(&ws)
            .arg("build")
            .arg("-p")
            .arg("vault")
            .arg("--bin")
            .arg("vault");
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
        if ok && vault.exists() {
            return Ok(vault);
        }
    }
    Err(format!(
        "{} is missing: build it with `cargo build -p vault` (same profile)",
        vault.display()
    ))
}

async fn demo_store(state: &crate::app::SharedState, dir: &Path) -> Result<Value, String> {
    let file = dir.join("dev-store.json");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        let id = v.get("store").and_then(Value::as_str).unwrap_or_default();
        if state
            .storage
            .store(id)
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(v);
        }
    }
    let created = crate::auth::create_store(state.storage.as_ref(), "Demo store")
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

pub async fn run(data: PathBuf, port: u16) -> Result<(), String> {
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let vault_bin = vault_binary()?;
    let vault_dir = data.join("vault");
    let vault_toml = vault_dir.join("vault.toml");
    if !vault_toml.exists() {
        let status = tokio::process::Command::new(&vault_bin)
            .arg("init")
            .arg("--dir")
            .arg(&vault_dir)
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("vault init: {e}"))?;
        if !status.success() {
            return Err(format!("vault init failed: {status}"));
        }
    }
    let mut child = tokio::process::Command::new(&vault_bin)
        .arg("serve")
        .arg("--config")
        .arg(&vault_toml)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("vault serve: {e}"))?;
    let vault_pid = child.id();
    let stdout = child.stdout.take().ok_or("vault stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("VAULT_LISTENING ") {
                return Some(a.trim().to_owned());
            }
            eprintln!("{line}");
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("the vault did not start (no VAULT_LISTENING line)")?;
    // Keep draining the vault's stdout so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
        }
    });
    let pki = vault_dir.join("pki");
    let vault_cfg = VaultConfig {
        addr: addr
            .parse()
            .map_err(|_| format!("bad vault address {addr}"))?,
        server_name: "localhost".into(),
        tls: TlsFiles {
            ca: pki.join("ca.pem"),
            cert: pki.join("accounts.pem"),
            key: pki.join("accounts.key"),
        },
    };
    let state = crate::build(&data, &vault_cfg)?;
    let demo = demo_store(&state, &crate::config::accounts_dir(&data)).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let ready = json!({
        "api": format!("http://{local}"),
        "store": demo.get("store"),
        "username": demo.get("username"),
        "password": demo.get("password"),
        "vault": addr,
        "vaultPid": vault_pid,
    });
    println!("STRONGROOM_READY {ready}");
    tracing::info!(api = %local, vault = %addr, "strongroom dev system ready");
    let server = crate::app::run(listener, state, crate::shutdown_signal());
    tokio::pin!(server);
    let served = tokio::select! {
        r = &mut server => r,
        status = child.wait() => {
            // Say so loudly, but keep serving: vault calls answer 503 until it is restarted.
            tracing::error!(?status, "the vault process exited; calls that need it answer 503");
            server.await
        }
    };
    let _ = child.kill().await;
    served.map_err(|e| e.to_string())
}
