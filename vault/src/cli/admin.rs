//! CLI commands that talk to the running vault over mTLS with an admin client certificate:
//! `vault key …` (the vault holds sled's lock, so key changes go through its API) and
//! `vault audit export --online`.
//!
//! Addressing: `--addr` takes `host:port` or `ip:port` (default: the config's `listen`, with an
//! unspecified address such as 0.0.0.0 dialled as loopback). `--server-name` is the name checked
//! against the vault's certificate (default: the host of `--addr` when it is a name, else the IP
//! itself), so a certificate with only DNS SANs works when dialling an IP.

use super::{AdminArgs, CliResult, KeyCommand};
use crate::config::{Config, Overrides};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;

/// A client for the running vault, the base URL to use with it (its host is the name checked in
/// the vault's certificate) and the address it dials.
pub(super) struct Target {
    client: reqwest::Client,
    base: String,
    dialled: SocketAddr,
}

impl Target {
    /// A connection failure with the reason an operator can act on (the rustls error kind),
    /// naming both the URL and the address dialled.
    fn connect_error(&self, e: &reqwest::Error) -> String {
        let mut reasons = Vec::new();
        let mut cur: Option<&dyn std::error::Error> = Some(e);
        while let Some(err) = cur {
            reasons.push(err.to_string());
            cur = err.source();
        }
        format!(
            "cannot reach the vault at {} (dialled {}): {}",
            self.base,
            self.dialled,
            reasons.join(": ")
        )
    }
}

pub(super) fn admin_client(args: &AdminArgs) -> CliResult<Target> {
    shared::tls::install_crypto_provider();
    let config = Config::load(&args.config, Overrides::from_env(), None)?;
    let ca = args.ca.clone().unwrap_or_else(|| config.tls.ca.clone());
    let ca_dir = config
        .tls
        .ca
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let files = shared::tls::TlsFiles {
        ca,
        cert: args
            .cert
            .clone()
            .unwrap_or_else(|| ca_dir.join("admin.pem")),
        key: args.key.clone().unwrap_or_else(|| ca_dir.join("admin.key")),
    };
    let tls = shared::tls::mtls_client_config(&files)?;
    let addr_text = args
        .addr
        .clone()
        .unwrap_or_else(|| config.listen.to_string());
    let (host, port) = addr_text
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--addr {addr_text:?}: expected host:port"))?;
    let mut sock: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("--addr {addr_text:?}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr_text:?}: resolves to nothing"))?;
    if sock.ip().is_unspecified() {
        sock.set_ip(match sock.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    let name = args
        .server_name
        .clone()
        .or_else(|| host.parse::<IpAddr>().is_err().then(|| host.to_owned()));
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(60));
    let base = match name {
        Some(n) => {
            builder = builder.resolve(&n, sock);
            format!("https://{n}:{}", sock.port())
        }
        None => format!("https://{sock}"),
    };
    Ok(Target {
        client: builder.build()?,
        base,
        dialled: sock,
    })
}

/// Runs an admin request against the running vault and prints the JSON answer; after a key
/// change it reminds the operator (stderr) which files to back up.
pub(super) fn key_command(command: KeyCommand) -> CliResult<ExitCode> {
    let (args, method, path, body) = match command {
        KeyCommand::Rotate(a) => (a, "POST", "/v1/admin/keys/rotate", None),
        KeyCommand::Status(a) => (a, "GET", "/v1/admin/keys", None),
        KeyCommand::RotateFingerprint(a) => (a, "POST", "/v1/admin/fingerprint-key/rotate", None),
        KeyCommand::Retire { admin, below } => (
            admin,
            "POST",
            "/v1/admin/keys/retire",
            Some(serde_json::json!({ "below": below })),
        ),
    };
    let target = admin_client(&args)?;
    let url = format!("{}{path}", target.base);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let req = match method {
            "GET" => target.client.get(&url),
            _ => target.client.post(&url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.map_err(|e| target.connect_error(&e))?;
        let status = resp.status();
        let text = resp.text().await?;
        println!("{text}");
        if !status.is_success() {
            eprintln!("vault: {method} {path} answered {status}");
            return Ok(ExitCode::from(1));
        }
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(files) = answer["backupKeyFiles"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                eprintln!("back up the key file now: {f}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `vault audit export --online`: streams the entries from the running vault (permission
/// `audit`), so a SIEM can follow the chain without stopping the vault.
pub(super) fn audit_export_online(args: &AdminArgs, since: &str) -> CliResult<ExitCode> {
    let target = admin_client(args)?;
    // `since` is a number or an RFC 3339 time: only `+` and `:` need escaping in a query.
    let since_q = since.replace('+', "%2B").replace(':', "%3A");
    let url = format!("{}/v1/audit/export?since={since_q}", target.base);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use std::io::Write;
        let mut resp = target
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| target.connect_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            eprintln!("vault: GET /v1/audit/export answered {status}: {text}");
            return Ok(ExitCode::from(1));
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            n += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            out.write_all(&chunk)?;
        }
        out.flush()?;
        eprintln!("exported {n} audit entries (online)");
        Ok(ExitCode::SUCCESS)
    })
}
