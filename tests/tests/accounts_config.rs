//! `accounts-api serve` as an operator configures it, next to a separately started vault: each
//! common misconfiguration is refused or reported with a message that names the mistake
//! (asserted by text), and the keys that say what the deployment is (`live`, `public_url`,
//! `[renewals]`) do what they say.

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::accounts::{Credentials, call, create_store, http_client, order_body, unique_token};
use tests::vault::{VaultProcess, start_vault};
use tests::{Service, bin_path, temp_dir};

/// A vault plus a folder for accounts-api's config and data.
struct Setup {
    root: tempfile::TempDir,
    vault: VaultProcess,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        shared::tls::install_crypto_provider();
        let root = temp_dir(prefix);
        let vault = start_vault(&root.path().join("vault"));
        Setup { root, vault }
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.vault.pki_dir().join(file)
    }

    /// `accounts.toml` with `data = "data"`, the given top-level lines, a `[vault]` table built
    /// from `vault` (keys → values, already quoted) and `tail` (more tables).
    fn write_config(&self, top: &str, vault: &[(&str, String)], tail: &str) -> PathBuf {
        let mut text = format!("data = \"data\"\nlisten = \"127.0.0.1:0\"\n{top}\n");
        // `serve` requires it; a test about it writes its own.
        if !top.contains("public_url") {
            text.push_str("public_url = \"https://accounts.example.com\"\n");
        }
        text.push_str("[vault]\n");
        for (k, v) in vault {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push_str(tail);
        let path = self.root.path().join("accounts.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// The `[vault]` table of a correct setup, with `overrides` replacing keys.
    fn vault_table(&self, overrides: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let mut t: Vec<(&'static str, String)> = vec![
            ("addr", format!("\"{}\"", self.vault.addr)),
            ("server_name", "\"localhost\"".to_owned()),
            ("ca", q(self.pki("ca.pem"))),
            ("cert", q(self.pki("accounts.pem"))),
            ("key", q(self.pki("accounts.key"))),
        ];
        for (k, v) in overrides {
            if let Some(slot) = t.iter_mut().find(|(name, _)| name == k) {
                slot.1 = v.clone();
            }
        }
        t
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
}

/// `accounts-api serve --config FILE` with no STRONGROOM_* overrides from the test's own env.
fn serve_command(config: &Path) -> Command {
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.arg("serve").arg("--config").arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("STRONGROOM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A running `serve` and its base URL.
fn serve(config: &Path) -> (Service, String) {
    let service = Service::spawn("accounts-api serve", serve_command(config));
    let url = service.wait_for_line("ACCOUNTS_API_LISTENING ", Duration::from_secs(30));
    (service, url)
}

/// Runs `cmd` expecting accounts-api to refuse to start: non-zero exit, no listening line.
/// Returns everything it printed.
fn expect_refusal(cmd: Command) -> String {
    let mut service = Service::spawn("accounts-api serve", cmd);
    let status = service.wait(Duration::from_secs(30));
    let out = service.output();
    match status {
        Some(s) => assert!(
            !s.success(),
            "exited successfully but should refuse:\n{out}"
        ),
        None => panic!("accounts-api did not refuse to start:\n{out}"),
    }
    assert!(
        !out.contains("ACCOUNTS_API_LISTENING"),
        "listened before refusing:\n{out}"
    );
    out
}

/// Waits for the startup summary line and returns it.
fn summary(service: &Service) -> String {
    service.wait_for_line("accounts-api started: ", Duration::from_secs(30))
}

async fn readyz(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let resp = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("readyz: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `service`'s output until it contains `needle` (log lines arrive asynchronously).
fn wait_for_text(service: &Service, needle: &str) -> String {
    for _ in 0..200 {
        let out = service.output();
        if out.contains(needle) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{needle:?} never appeared in:\n{}", service.output());
}

fn wait_for_vault_text(vault: &VaultProcess, needle: &str) -> String {
    for _ in 0..200 {
        let out = vault.output();
        if out.contains(needle) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{needle:?} never appeared in the vault's log:\n{}",
        vault.output()
    );
}

async fn vault_metrics(vault: &VaultProcess) -> String {
    vault
        .client("admin")
        .get(vault.url("/v1/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("metrics: {e}"))
        .text()
        .await
        .unwrap_or_default()
}

/// A second, unrelated dev PKI (another CA and its certificates).
fn other_pki(root: &Path) -> PathBuf {
    let dir = root.join("other-pki");
    shared::pki::ensure_dev_pki(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_vault_ca_is_reported_as_unknown_issuer_on_both_sides_and_readyz_names_it() {
    let s = Setup::new("cfg-wrong-ca");
    let other = other_pki(s.root.path());
    let config = s.write_config(
        "",
        &s.vault_table(&[("ca", quoted(&other.join("ca.pem")))]),
        "[renewals]\nenabled = false\n",
    );
    let (service, url) = serve(&config);
    let line = summary(&service);
    assert!(
        line.contains("vault unreachable (tls_unknown_issuer)"),
        "{line}"
    );
    let out = wait_for_text(&service, "unknown issuer");
    assert!(
        out.contains("the vault's certificate is not signed by the CA in vault.ca (wrong CA?)"),
        "{out}"
    );
    let (status, body) = readyz(&http_client(), &url).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["vault"], "unreachable");
    assert_eq!(body["reason"], "vault unreachable (tls_unknown_issuer)");
    // The vault hears the client's alert and says so, with a counted reason.
    let vout = wait_for_vault_text(&s.vault, "TLS handshake failed");
    assert!(
        vout.contains("the client refused the vault's certificate"),
        "{vout}"
    );
    let m = vault_metrics(&s.vault).await;
    assert!(
        m.contains("vault_tls_handshake_failures_total{reason=\"peer_rejected\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_rejected_by_the_vault_with_the_reason_logged() {
    let s = Setup::new("cfg-wrong-client-ca");
    let other = other_pki(s.root.path());
    let config = s.write_config(
        "",
        &s.vault_table(&[
            ("cert", quoted(&other.join("accounts.pem"))),
            ("key", quoted(&other.join("accounts.key"))),
        ]),
        "[renewals]\nenabled = false\n",
    );
    let (service, url) = serve(&config);
    let line = summary(&service);
    assert!(
        line.contains("vault unreachable (tls_client_certificate_rejected)"),
        "{line}"
    );
    let out = wait_for_text(&service, "client certificate rejected by the vault");
    assert!(
        out.contains("vault.cert is not issued by the vault's CA"),
        "{out}"
    );
    let (status, _) = readyz(&http_client(), &url).await;
    assert_eq!(status, 503);
    let vout = wait_for_vault_text(&s.vault, "client certificate rejected: unknown CA");
    assert!(
        vout.contains("reason=\"unknown_issuer\"") || vout.contains("reason=unknown_issuer"),
        "{vout}"
    );
    let m = vault_metrics(&s.vault).await;
    assert!(
        m.contains("vault_tls_handshake_failures_total{reason=\"unknown_issuer\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_name_is_reported_as_a_name_mismatch() {
    let s = Setup::new("cfg-wrong-name");
    let config = s.write_config(
        "",
        &s.vault_table(&[("server_name", "\"vault.example.com\"".to_owned())]),
        "[renewals]\nenabled = false\n",
    );
    let (service, url) = serve(&config);
    let line = summary(&service);
    assert!(
        line.contains("vault unreachable (tls_name_mismatch)"),
        "{line}"
    );
    assert!(line.contains("(server name vault.example.com)"), "{line}");
    let out = wait_for_text(&service, "name mismatch");
    assert!(
        out.contains("does not carry vault.server_name (wrong server name?)"),
        "{out}"
    );
    let (status, body) = readyz(&http_client(), &url).await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "vault unreachable (tls_name_mismatch)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_vault_certificate_is_reported_as_expired() {
    shared::tls::install_crypto_provider();
    let root = temp_dir("cfg-expired");
    let vault_dir = root.path().join("vault");
    tests::vault::init_vault(&vault_dir);
    let pki = vault_dir.join("pki");
    let ca = shared::pki::DevCa::from_pem(
        &std::fs::read_to_string(pki.join("ca.pem")).unwrap_or_default(),
        &std::fs::read_to_string(pki.join("ca.key")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let now = time::OffsetDateTime::now_utc();
    ca.issue_server_valid(
        "vault",
        &[],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .and_then(|c| c.write(&pki, "vault"))
    .unwrap_or_else(|e| panic!("{e}"));
    let vault = VaultProcess::serve(&vault_dir, tests::vault::serve_command(&vault_dir));
    let s = Setup { root, vault };
    let config = s.write_config("", &s.vault_table(&[]), "[renewals]\nenabled = false\n");
    let (service, url) = serve(&config);
    let line = summary(&service);
    assert!(
        line.contains("vault unreachable (tls_certificate_expired)"),
        "{line}"
    );
    let out = wait_for_text(
        &service,
        "the vault's certificate is expired or not yet valid",
    );
    assert!(out.contains("ERROR"), "{out}");
    let (status, body) = readyz(&http_client(), &url).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["reason"],
        "vault unreachable (tls_certificate_expired)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_renewals_certificate_as_the_accounts_one_answers_checkout_503_and_readyz_names_the_permissions()
 {
    let s = Setup::new("cfg-wrong-identity");
    let config = s.write_config(
        "",
        &s.vault_table(&[
            ("cert", quoted(&s.pki("renewals.pem"))),
            ("key", quoted(&s.pki("renewals.key"))),
        ]),
        "[renewals]\nenabled = false\n",
    );
    let (service, url) = serve(&config);
    let line = summary(&service);
    assert!(
        line.contains(
            "the vault sees vault.cert as identity \"renewals\" with permissions [read, charge]; \
             the accounts client needs permissions store, read, delete (missing: store, delete)"
        ),
        "{line}"
    );
    let http = http_client();
    let (status, body) = readyz(&http, &url).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["vault"], "wrong identity");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("permissions [read, charge]") && reason.contains("missing: store, delete"),
        "{reason}"
    );

    let store: Credentials = create_store(&s.data(), "Misconfigured");
    let checkout = call(
        &http,
        &url,
        Some(&store),
        "POST",
        "/orders",
        Some(&order_body(
            "jane@example.com",
            &unique_token(),
            true,
            true,
            true,
        )),
        None,
    )
    .await;
    assert_eq!(
        checkout.status, 503,
        "an operator's identity mistake is a 503, never the card's fault: {}",
        checkout.text
    );
    assert!(
        !checkout.text.contains("refused by the vault"),
        "{}",
        checkout.text
    );
    let out = wait_for_text(&service, "the vault refused our client identity");
    assert!(out.contains("ERROR"), "logged at ERROR:\n{out}");
    assert!(
        out.contains("is vault.cert the accounts certificate"),
        "{out}"
    );
}

#[test]
fn a_group_readable_client_key_is_refused_at_start_with_the_chmod_to_run() {
    let s = Setup::new("cfg-key-mode");
    let key = s.root.path().join("accounts.key");
    std::fs::copy(s.pki("accounts.key"), &key).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = s.write_config(
        "",
        &s.vault_table(&[("key", quoted(&key))]),
        "[renewals]\nenabled = false\n",
    );
    let out = expect_refusal(serve_command(&config));
    assert!(
        out.contains(&format!(
            "key file {} is readable by group or others (mode 644); run chmod 600 {}",
            key.display(),
            key.display()
        )),
        "{out}"
    );

    // The renewals key gets the same check.
    let rkey = s.root.path().join("renewals.key");
    std::fs::copy(s.pki("renewals.key"), &rkey).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&rkey, std::fs::Permissions::from_mode(0o640))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = s.write_config(
        "",
        &s.vault_table(&[]),
        &format!(
            "[renewals]\ncert = {}\nkey = {}\n",
            quoted(&s.pki("renewals.pem")),
            quoted(&rkey)
        ),
    );
    let out = expect_refusal(serve_command(&config));
    assert!(
        out.contains(&format!("run chmod 600 {}", rkey.display())),
        "{out}"
    );
}

#[test]
fn a_missing_required_key_an_unknown_key_and_a_public_url_without_scheme_are_each_named() {
    let s = Setup::new("cfg-keys");
    let mut table = s.vault_table(&[]);
    table.retain(|(k, _)| *k != "ca");
    let config = s.write_config("", &table, "");
    let out = expect_refusal(serve_command(&config));
    assert!(out.contains("accounts-api: vault.ca is required"), "{out}");

    let config = s.write_config("colour = \"blue\"", &s.vault_table(&[]), "");
    let out = expect_refusal(serve_command(&config));
    assert!(out.contains("unknown field `colour`"), "{out}");

    let config = s.write_config(
        "",
        &s.vault_table(&[]),
        "[renewals]\nenabled = false\nintrval_secs = 5\n",
    );
    let out = expect_refusal(serve_command(&config));
    assert!(out.contains("unknown field `intrval_secs`"), "{out}");

    let config = s.write_config(
        "public_url = \"accounts.example.com\"",
        &s.vault_table(&[]),
        "[renewals]\nenabled = false\n",
    );
    let out = expect_refusal(serve_command(&config));
    assert!(
        out.contains("public_url: \"accounts.example.com\" is not a usable public URL (it must start with https:// or http://)"),
        "{out}"
    );
    // Without a public URL sign-in links would follow the client's Host header: refused.
    let config = s.write_config("", &s.vault_table(&[]), "[renewals]\nenabled = false\n");
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    let without = text.replace("public_url = \"https://accounts.example.com\"\n", "");
    assert_ne!(text, without, "the default public_url line moved");
    std::fs::write(&config, without).unwrap_or_else(|e| panic!("{e}"));
    let out = expect_refusal(serve_command(&config));
    assert!(
        out.contains("public_url is not set") && out.contains("STRONGROOM_PUBLIC_URL"),
        "{out}"
    );
    // The environment override is held to the same rule.
    let config = s.write_config("", &s.vault_table(&[]), "[renewals]\nenabled = false\n");
    let mut cmd = serve_command(&config);
    cmd.env("STRONGROOM_PUBLIC_URL", "accounts.example.com/");
    let out = expect_refusal(cmd);
    assert!(out.contains("STRONGROOM_PUBLIC_URL: "), "{out}");
}

#[test]
fn renewals_are_on_by_default_and_missing_renewal_certificates_refuse_the_start() {
    let s = Setup::new("cfg-renewals");
    // The accounts certificate copied alone into a folder: no renewals.pem beside it.
    let lone = s.root.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap_or_else(|e| panic!("{e}"));
    for f in ["accounts.pem", "accounts.key"] {
        std::fs::copy(s.pki(f), lone.join(f)).unwrap_or_else(|e| panic!("{e}"));
    }
    let config = s.write_config(
        "",
        &s.vault_table(&[
            ("cert", quoted(&lone.join("accounts.pem"))),
            ("key", quoted(&lone.join("accounts.key"))),
        ]),
        "",
    );
    let out = expect_refusal(serve_command(&config));
    assert!(
        out.contains(&format!(
            "renewals are on (the default) but renewals.cert {} does not exist",
            lone.join("renewals.pem").display()
        )) && out.contains("`[renewals] enabled = false`"),
        "{out}"
    );

    // Next to the vault's PKI the defaults are found: renewals run, and the summary says so.
    let config = s.write_config("", &s.vault_table(&[]), "");
    let (service, _url) = serve(&config);
    let line = summary(&service);
    assert!(
        line.contains(
            "renewals on, every 60s, reachable as identity \"renewals\" with permissions [read, charge]"
        ),
        "{line}"
    );
}

#[test]
fn a_listen_port_already_taken_is_a_clear_refusal() {
    let s = Setup::new("cfg-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let config = s.write_config("", &s.vault_table(&[]), "[renewals]\nenabled = false\n");
    let mut cmd = serve_command(&config);
    cmd.env("STRONGROOM_LISTEN", addr.to_string());
    let out = expect_refusal(cmd);
    assert!(
        out.contains(&format!("cannot listen on {addr}: "))
            && out.contains("another process already listens on this port"),
        "{out}"
    );
}

#[test]
fn a_startup_error_is_one_json_line_when_json_logs_are_on() {
    let s = Setup::new("cfg-json");
    let config = s.write_config("colour = \"blue\"", &s.vault_table(&[]), "");
    let mut cmd = serve_command(&config);
    cmd.env("STRONGROOM_LOG_FORMAT", "json");
    let out = expect_refusal(cmd);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no output");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        if v["level"] == "ERROR" {
            assert!(
                v["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("unknown field `colour`"),
                "{v}"
            );
        }
    }
    assert!(out.contains("\"level\":\"ERROR\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_true_marks_orders_subscriptions_and_events_and_the_summary_states_the_setup() {
    let s = Setup::new("cfg-live");
    let config = s.write_config(
        "live = true\npublic_url = \"https://accounts.example.com/\"",
        &s.vault_table(&[("addr", format!("\"localhost:{}\"", s.vault.addr.port()))]),
        "[renewals]\ninterval_secs = 0\n",
    );
    let (service, url) = serve(&config);
    let line = summary(&service);
    for part in [
        "public URL https://accounts.example.com;",
        &format!("vault localhost:{} (", s.vault.addr.port()),
        "reachable as identity \"accounts\" with permissions [store, read, delete]",
        "renewals on, on demand only (interval_secs = 0)",
        "live mode on",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    let http = http_client();
    let (status, body) = readyz(&http, &url).await;
    assert_eq!(status, 200, "{body}");

    let store = create_store(&s.data(), "Live");
    let request_id = format!("cfg-live-{}", uuid::Uuid::new_v4().simple());
    let resp = http
        .post(format!("{url}/orders"))
        .basic_auth(&store.username, Some(&store.password))
        .header("x-request-id", &request_id)
        .json(&order_body(
            "live@example.com",
            &unique_token(),
            true,
            true,
            true,
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let order: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(order["live"], true, "{order}");
    // The vault's access line for the store call carries our request id.
    wait_for_vault_text(&s.vault, &request_id);

    let sub = order["subscriptions"][0].as_str().unwrap_or_default();
    let a = call(
        &http,
        &url,
        Some(&store),
        "GET",
        &format!("/subscriptions/{sub}"),
        None,
        None,
    )
    .await;
    assert_eq!(a.json["live"], true, "{}", a.text);
    let events = call(
        &http,
        &url,
        Some(&store),
        "GET",
        "/events/unprocessed?begin=0",
        None,
        None,
    )
    .await;
    let list = events.json["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(list.len() >= 3, "{}", events.text);
    assert!(list.iter().all(|e| e["live"] == true), "{}", events.text);
}
