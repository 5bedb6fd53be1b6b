//! Helpers to run the real `vault` binary: `vault init --dir`, then `vault serve --config …
//! --listen 127.0.0.1:0`, wait for its `VAULT_LISTENING <addr>` line, and talk to it over mTLS
//! with one reqwest client per identity. Used by the vault tests and by the accounts-api tests.

use crate::{Service, bin_path, run};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a vault may take to print `VAULT_LISTENING`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `vault init --dir DIR`; panics if it fails. Returns its stdout (the paths it printed).
pub fn init_vault(dir: &Path) -> String {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.arg("init").arg("--dir").arg(dir);
    let (ok, out, err) = run(cmd);
    assert!(ok, "vault init failed:\n{out}\n{err}");
    out
}

/// `vault init --shares N --threshold K` on `dir`: a sealed master key; returns the N shares
/// it printed (once, on stdout).
pub fn init_sealed(dir: &Path, n: u8, k: u8) -> Vec<String> {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.arg("init").arg("--dir").arg(dir);
    cmd.args(["--shares", &n.to_string(), "--threshold", &k.to_string()]);
    let (ok, out, err) = run(cmd);
    assert!(ok, "{out}{err}");
    let shares: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("SHARE "))
        .map(str::to_owned)
        .collect();
    assert_eq!(shares.len(), usize::from(n), "{out}");
    shares
}

/// The `vault serve` command for an initialised folder, listening on an OS-chosen port.
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("vault.toml"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        // Deterministic, debug-level logs so secret scans see as much as possible.
        .env("VAULT_LOG", "debug")
        .env_remove("VAULT_LISTEN")
        .env_remove("VAULT_DATA_DIR")
        .env_remove("VAULT_MASTER_KEY")
        .env_remove("VAULT_FINGERPRINT_KEY")
        .env_remove("VAULT_MASTER_KEY_FILE")
        .env_remove("VAULT_FINGERPRINT_KEY_FILE");
    cmd
}

/// Builds an mTLS reqwest client from PEM files (CA to trust, own certificate and key).
pub fn mtls_client(ca: &Path, cert: &Path, key: &Path) -> reqwest::Client {
    shared::tls::install_crypto_provider();
    let files = shared::tls::TlsFiles {
        ca: ca.to_owned(),
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    let tls = shared::tls::mtls_client_config(&files)
        .unwrap_or_else(|e| panic!("client TLS config: {e}"));
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}

/// A running vault process on 127.0.0.1 with a port chosen by the OS.
pub struct VaultProcess {
    /// The vault folder (`vault.toml`, `pki/`, `data/`, keys).
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub service: Service,
}

impl VaultProcess {
    /// Runs `vault init --dir dir` (idempotent) and starts `vault serve` on it.
    pub fn start(dir: &Path) -> VaultProcess {
        init_vault(dir);
        Self::serve(dir, serve_command(dir))
    }

    /// Starts an already-initialised folder with a custom `serve` command (e.g. extra env).
    pub fn serve(dir: &Path, cmd: Command) -> VaultProcess {
        let service = Service::spawn("vault", cmd);
        let line = service.wait_for_line("VAULT_LISTENING ", START_TIMEOUT);
        let addr = line
            .parse()
            .unwrap_or_else(|e| panic!("VAULT_LISTENING {line:?}: {e}"));
        VaultProcess {
            dir: dir.to_owned(),
            addr,
            service,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("vault.toml")
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A client presenting `pki/<identity>.pem` (`accounts`, `renewals`, `admin`).
    pub fn client(&self, identity: &str) -> reqwest::Client {
        let pki = self.pki_dir();
        mtls_client(
            &pki.join("ca.pem"),
            &pki.join(format!("{identity}.pem")),
            &pki.join(format!("{identity}.key")),
        )
    }

    /// Everything the vault printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.service.output()
    }

    /// Stops the vault with SIGTERM (graceful), falling back to SIGKILL; afterwards its data
    /// folder can be opened by another process (sled holds a lock while it runs).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.service.pid().to_string())
            .status();
        if self.service.wait(Duration::from_secs(10)).is_none() {
            self.service.kill();
        }
    }

    /// Stops it abruptly (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        self.service.kill();
    }
}

/// Starts a vault on a fresh `vault init` of `dir`.
pub fn start_vault(dir: &Path) -> VaultProcess {
    VaultProcess::start(dir)
}

/// Runs `cmd` expecting the vault to refuse to start: returns its output once it has exited
/// non-zero. Panics if it starts listening or is still running after the timeout.
pub fn expect_refusal(cmd: Command) -> String {
    let mut service = Service::spawn("vault", cmd);
    let status = service.wait(START_TIMEOUT);
    let out = service.output();
    match status {
        Some(s) => assert!(
            !s.success(),
            "vault exited successfully but should have refused:\n{out}"
        ),
        None => panic!("vault did not refuse to start:\n{out}"),
    }
    assert!(
        !out.contains("VAULT_LISTENING"),
        "vault listened before refusing:\n{out}"
    );
    out
}

/// `vault audit verify --config FILE` → (exit success, stdout + stderr).
pub fn audit_verify(config: &Path) -> (bool, String) {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.arg("audit").arg("verify").arg("--config").arg(config);
    let (ok, out, err) = run(cmd);
    (ok, format!("{out}{err}"))
}

/// Every audit entry of a vault folder, read with `vault audit export --config FILE` (the
/// segment files need no lock: works while the vault runs).
pub fn audit_entries(config: &Path) -> Vec<vault::audit::AuditEntry> {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["audit", "export", "--since", "1", "--config"])
        .arg(config);
    let (ok, out, err) = run(cmd);
    assert!(ok, "vault audit export failed:\n{err}");
    out.lines()
        .map(|l| {
            vault::audit::AuditEntry::decode(l.as_bytes())
                .unwrap_or_else(|_| panic!("export line {l:?}"))
        })
        .collect()
}

/// Makes the audit segments of an initialised vault folder rotate every 4 KiB (about 15
/// entries), so a short test spans many segments.
pub fn tiny_audit_segments(dir: &Path) {
    let path = dir.join("vault.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let changed = text.replace("segment_max_bytes = 67108864", "segment_max_bytes = 4096");
    assert_ne!(
        changed, text,
        "vault.toml has no default segment_max_bytes line"
    );
    std::fs::write(&path, changed).unwrap_or_else(|e| panic!("{e}"));
}

/// `vault audit archive --config FILE --to DIR`; panics unless it succeeds. Returns how many
/// segments it copied.
pub fn audit_archive(config: &Path, to: &Path) -> u64 {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["audit", "archive", "--config"])
        .arg(config)
        .arg("--to")
        .arg(to);
    let (ok, out, err) = run(cmd);
    assert!(ok, "vault audit archive failed:\n{out}\n{err}");
    out.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected archive output: {out}"))
}

/// A card store request body as JSON.
pub fn card_body(store: &str, account: &str, token: &str) -> serde_json::Value {
    serde_json::json!({
        "store": store,
        "account": account,
        "token": token,
        "type": "card",
        "brand": "visa",
        "last4": "4242",
        "expMonth": 12,
        "expYear": 2030,
    })
}
