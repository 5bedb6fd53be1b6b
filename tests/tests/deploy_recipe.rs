//! The README's "Production install (both services)" recipe, walked end to end in a temporary
//! root: the test takes every file and command block from README.md (see `tests::recipe`),
//! moves the recipe's absolute paths into the root, picks free loopback ports, and runs the
//! blocks in order with bash — PKI with `openssl` (root → Strongroom intermediate → leaves),
//! configs, `vault init --config`, both services started from the shipped units' `ExecStart=`
//! (not dev mode), a store. In between it acts as a merchant and a customer: a checkout that
//! saves the card, a rebill the sandbox processor sees once, the account page with the last
//! four; then the recipe's rotate + retire, backup, and restore into fresh folders, after which
//! the earlier account and card are still there and a change made after the backup is gone.
//! Finally it restores an older backup (taken before the retire) with the newest keys: the vault
//! refuses, naming the archive, and opens the data once the archived version is copied back, as
//! the README says. Ownership cannot be given away in a test, so the owners the recipe asks for
//! are recorded and checked against the modes: each service user reads exactly its own files.

use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use tests::accounts::{Credentials, call, http_client, order_body, unique_token};
use tests::recipe::{BlockKind, Root, blocks};
use tests::sandbox::{self, start_sandbox};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = tests::all_files(dir)
        .into_iter()
        .map(|(p, bytes)| {
            let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p.display().to_string(), bytes.len() as u64, mtime)
        })
        .collect();
    out.sort();
    out
}

/// A client that neither follows redirects nor keeps cookies (like the SSO tests).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Opens a sign-in link and the account page; returns the page's HTML.
async fn account_page(api: &str, creds: &Credentials, account: &str) -> String {
    let http = http_client();
    let a = call(
        &http,
        api,
        Some(creds),
        "GET",
        &format!("/accounts/{account}/authenticate"),
        None,
        None,
    )
    .await;
    assert_eq!(a.status, 200, "authenticate: {}", a.text);
    let url = a.json["accounts"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        url.starts_with(&format!("{api}/account/sso/")),
        "the link is built on the configured public URL: {url}"
    );
    let r = browser()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 303, "sign-in link");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with("sr_session="),
        "session cookie: {cookie}"
    );
    let page = browser()
        .get(format!("{api}/account"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.status().as_u16(), 200);
    page.text().await.unwrap_or_default()
}

#[tokio::test]
async fn the_readme_production_recipe_installs_runs_rotates_backs_up_and_restores() {
    if !tests::require_tool("openssl") {
        return;
    }
    let began = Instant::now();
    let mut root = Root::new();
    let sandbox = start_sandbox(&[]);
    let vault_port = free_port();
    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    root.set_replacements(vec![
        ("127.0.0.1:8443".into(), format!("127.0.0.1:{vault_port}")),
        ("127.0.0.1:8080".into(), format!("127.0.0.1:{api_port}")),
        ("https://api.stripe.com".into(), sandbox.url.clone()),
        (
            "sk_live_REPLACE_WITH_YOUR_PROCESSOR_SECRET_KEY".into(),
            sandbox::SECRET.into(),
        ),
        ("https://accounts.example.com".into(), api.clone()),
    ]);
    // Every test substitution must hit the README's text, or the test no longer tests it.
    let recipe: String = blocks().iter().map(|b| b.text.as_str()).collect();
    for (from, _) in &root.replacements {
        assert!(
            recipe.contains(from.as_str()),
            "recipe no longer has {from:?}"
        );
    }
    let files: Vec<String> = blocks()
        .into_iter()
        .filter_map(|b| match b.kind {
            BlockKind::File(p) => Some(p),
            BlockKind::Run(_) => None,
        })
        .collect();
    for f in [
        "/etc/strongroom/vault/vault.toml",
        "/etc/strongroom/vault/vault.env",
        "/etc/strongroom/accounts-api/accounts-api.toml",
        "/etc/strongroom/accounts-api/accounts-api.env",
    ] {
        assert!(files.iter().any(|p| p == f), "recipe writes {f}");
    }

    // Users, folders, PKI, configs.
    root.run("folders");
    for (p, m) in [
        ("/etc/strongroom/vault", 0o750),
        ("/etc/strongroom/vault/pki", 0o750),
        ("/etc/strongroom/vault/admin", 0o700),
        ("/etc/strongroom/accounts-api", 0o750),
        ("/var/lib/strongroom-vault", 0o700),
        ("/var/lib/strongroom-vault/keys", 0o700),
        ("/var/lib/strongroom-accounts", 0o700),
    ] {
        assert_eq!(mode(&root.at(p)), m, "{p}");
    }
    root.run("pki-make");
    root.run("pki-install");
    root.write_files();
    root.run("config-modes");
    for (p, m) in [
        ("/etc/strongroom/vault/pki/vault.key", 0o600),
        ("/etc/strongroom/vault/processor.key", 0o600),
        ("/etc/strongroom/vault/admin/admin.key", 0o600),
        ("/etc/strongroom/accounts-api/pki/accounts.key", 0o600),
        ("/etc/strongroom/accounts-api/pki/renewals.key", 0o600),
        ("/etc/strongroom/vault/vault.toml", 0o640),
    ] {
        assert_eq!(mode(&root.at(p)), m, "{p}");
    }
    // Who may read what, by the owners and modes the recipe set (the test cannot chown).
    check_access(&root);
    // From here on nothing may write under /etc/strongroom (read-only to both units).
    let etc_before = snapshot(&root.at("/etc/strongroom"));

    // Keys.
    let init = root.run("init");
    for p in [
        "/var/lib/strongroom-vault/keys/master.key",
        "/var/lib/strongroom-vault/keys/fingerprint.key",
        "/var/lib/strongroom-vault/keys/audit.key",
    ] {
        assert_eq!(mode(&root.at(p)), 0o600, "{p} (init output:\n{init})");
    }
    assert_eq!(
        mode(&root.at("/var/lib/strongroom-vault/data")),
        0o700,
        "data folder"
    );
    assert_eq!(
        mode(&root.at("/var/lib/strongroom-vault")),
        0o700,
        "init keeps the state folder's mode"
    );
    assert!(
        init.contains("back up the key files now"),
        "init says to back the keys up:\n{init}"
    );
    root.run("backup-keys");

    // Start both units and create a store.
    let started = root.run("start");
    let store_line = started
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("store create printed no JSON line:\n{started}"));
    let creds = Credentials::from_json(
        &serde_json::from_str(store_line).unwrap_or_else(|e| panic!("{store_line}: {e}")),
    );
    assert_eq!(
        root.ready_line("strongroom-vault").as_deref(),
        Some(format!("127.0.0.1:{vault_port}").as_str())
    );
    let http = http_client();
    let ready = call(&http, &api, None, "GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "readyz: {}", ready.text);

    // A checkout with a subscription whose customer ticked "save my card".
    let token = unique_token();
    let order = call(
        &http,
        &api,
        Some(&creds),
        "POST",
        "/orders",
        Some(&order_body("recipe@example.com", &token, true, true, true)),
        None,
    )
    .await;
    assert_eq!(order.status, 200, "checkout: {}", order.text);
    let account = order.json["account"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sub = order.json["items"][0]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!account.is_empty() && !sub.is_empty(), "{}", order.text);
    assert_eq!(order.json["live"], true, "the recipe runs in live mode");
    let pms = call(
        &http,
        &api,
        Some(&creds),
        "GET",
        &format!("/accounts/{account}/payment-methods"),
        None,
        None,
    )
    .await;
    assert!(pms.text.contains("4242"), "the card is saved: {}", pms.text);

    // A rebill through accounts-api → vault (renewals identity) → processor, exactly once.
    let before = call(
        &http,
        &api,
        Some(&creds),
        "GET",
        &format!("/subscriptions/{sub}"),
        None,
        None,
    )
    .await;
    let next = before.json["next"].as_i64().unwrap_or_default();
    let charge = call(
        &http,
        &api,
        Some(&creds),
        "POST",
        "/subscriptions/charge",
        Some(&json!({"subscriptions": [{"subscription": sub}]})),
        None,
    )
    .await;
    assert_eq!(
        charge.json["subscription"][0]["result"], "success",
        "rebill: {}",
        charge.text
    );
    let charged =
        sandbox::charges_with_key(&sandbox.url, &format!("{}:{sub}:{next}", creds.store)).await;
    assert_eq!(charged.len(), 1, "one processor charge");
    assert_eq!(charged[0]["paymentMethod"], token.as_str());

    // The customer's account page shows the card's last four.
    let html = account_page(&api, &creds, &account).await;
    assert!(html.contains("4242"), "last four on the account page");

    // A first backup while every record is wrapped under key version 1 (restored at the end).
    let early = root.run("backup");
    assert!(early.contains("audit chain:"), "{early}");
    let early_at = Instant::now();

    // Rotate + retire through the CLI, as the recipe does.
    let rotated = root.run("rotate");
    assert!(rotated.contains("retired"), "retire answered:\n{rotated}");
    let admin = tests::vault::mtls_client(
        &root.at("/etc/strongroom/vault/pki/ca.pem"),
        &root.at("/etc/strongroom/vault/admin/admin.pem"),
        &root.at("/etc/strongroom/vault/admin/admin.key"),
    );
    let status: Value = admin
        .get(format!("https://127.0.0.1:{vault_port}/v1/admin/keys"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("key status: {e}"))
        .json()
        .await
        .unwrap_or(Value::Null);
    assert_eq!(status["currentVersion"], 2, "{status}");
    assert_eq!(
        status["versions"],
        json!([{"version": 2, "records": 1}]),
        "{status}"
    );
    assert!(
        root.at("/var/lib/strongroom-vault/keys/master.key.retired")
            .exists(),
        "retired versions are archived beside the key file"
    );

    // Backup, then a change after it that the restore must undo. (Backup folders are named to
    // the second; the recipe refuses to reuse one.)
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(early_at.elapsed()));
    let backed_up = root.run("backup");
    assert!(
        backed_up.contains("audit chain:") && backed_up.contains("ok"),
        "backup verified the audit chain:\n{backed_up}"
    );
    // A fresh client: the pooled connections went to the processes the backup stopped.
    let http = http_client();
    let later = call(
        &http,
        &api,
        Some(&creds),
        "POST",
        "/orders",
        Some(&order_body(
            "after-backup@example.com",
            &unique_token(),
            true,
            true,
            true,
        )),
        None,
    )
    .await;
    assert_eq!(later.status, 200, "{}", later.text);
    let later_account = later.json["account"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Restore into fresh folders from the backup and the newest key backup.
    let restored = root.run("restore");
    assert!(
        restored.contains("audit chain:") && restored.contains("ok"),
        "restore verified the audit chain:\n{restored}"
    );
    let aside = std::fs::read_dir(root.path().join("var/lib"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("strongroom-vault.before-restore-")
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(aside, 1, "the old folders were set aside, not reused");
    let http = http_client();
    let got = call(
        &http,
        &api,
        Some(&creds),
        "GET",
        &format!("/accounts/{account}"),
        None,
        None,
    )
    .await;
    assert_eq!(got.status, 200, "the account survived: {}", got.text);
    let gone = call(
        &http,
        &api,
        Some(&creds),
        "GET",
        &format!("/accounts/{later_account}"),
        None,
        None,
    )
    .await;
    assert_eq!(gone.status, 404, "a change after the backup is undone");
    let pms = call(
        &http,
        &api,
        Some(&creds),
        "GET",
        &format!("/accounts/{account}/payment-methods"),
        None,
        None,
    )
    .await;
    assert!(
        pms.status == 200 && pms.text.contains("4242"),
        "the vault still opens the card after restore: {}",
        pms.text
    );
    let html = account_page(&api, &creds, &account).await;
    assert!(html.contains("4242"), "last four on the page after restore");

    // The older backup (before the retire) with the newest key backup, as the README's
    // "which key backup" paragraph says: the vault refuses, naming the archive that holds the
    // retired version; copying that version's line back into master.key opens the data.
    let refused = match root.try_run(
        "restore",
        &[("| tail -n 1)\"     # the newest", "| head -n 1)\"")],
    ) {
        Ok(out) => panic!("the vault started on pre-retire data without version 1:\n{out}"),
        Err(e) => e,
    };
    assert!(
        refused.contains("master.key.retired") && refused.contains("`1:` line"),
        "the refusal names the archive and the version:\n{refused}"
    );
    let keys = root.at("/var/lib/strongroom-vault/keys");
    let archive = std::fs::read_to_string(keys.join("master.key.retired"))
        .unwrap_or_else(|e| panic!("archive: {e}"));
    let line = archive
        .lines()
        .find(|l| l.starts_with("1:"))
        .unwrap_or_else(|| panic!("no version 1 in the archive"));
    let mut master =
        std::fs::read_to_string(keys.join("master.key")).unwrap_or_else(|e| panic!("{e}"));
    master.push_str(line);
    master.push('\n');
    std::fs::write(keys.join("master.key"), master).unwrap_or_else(|e| panic!("{e}"));
    root.systemctl("start strongroom-vault strongroom-accounts-api")
        .unwrap_or_else(|e| panic!("start with version 1 restored: {e}"));
    let http = http_client();
    let pms = call(
        &http,
        &api,
        Some(&creds),
        "GET",
        &format!("/accounts/{account}/payment-methods"),
        None,
        None,
    )
    .await;
    assert!(
        pms.status == 200 && pms.text.contains("4242"),
        "the pre-retire backup opens with the archived version: {}",
        pms.text
    );

    // Read-only configuration really was read-only.
    assert_eq!(
        snapshot(&root.at("/etc/strongroom")),
        etc_before,
        "nothing wrote under /etc/strongroom after configuration"
    );

    verify_units(&root);
    let took = began.elapsed();
    eprintln!("production recipe walked in {took:?}");
    assert!(took < Duration::from_secs(90), "recipe took {took:?}");
}

/// Each service user reads its own configuration, certificates and keys and writes its state
/// folder; neither reads the other's keys or the operator's admin key.
fn check_access(root: &Root) {
    const VAULT: &str = "strongroom-vault";
    const ACCOUNTS: &str = "strongroom-accounts";
    let e = "/etc/strongroom";
    let cases: Vec<(&str, char, String, bool)> = vec![
        (VAULT, 'r', format!("{e}/vault/vault.toml"), true),
        (VAULT, 'r', format!("{e}/vault/pki/ca.pem"), true),
        (VAULT, 'r', format!("{e}/vault/pki/vault.pem"), true),
        (VAULT, 'r', format!("{e}/vault/pki/vault.key"), true),
        (VAULT, 'r', format!("{e}/vault/processor.key"), true),
        (VAULT, 'w', format!("{e}/vault/vault.toml"), false),
        (VAULT, 'w', format!("{e}/vault/pki"), false),
        (VAULT, 'w', "/var/lib/strongroom-vault".into(), true),
        (VAULT, 'w', "/var/lib/strongroom-vault/keys".into(), true),
        (VAULT, 'r', format!("{e}/vault/admin/admin.key"), false),
        (
            VAULT,
            'r',
            format!("{e}/accounts-api/pki/accounts.key"),
            false,
        ),
        (
            VAULT,
            'r',
            format!("{e}/accounts-api/pki/renewals.key"),
            false,
        ),
        (
            ACCOUNTS,
            'r',
            format!("{e}/accounts-api/accounts-api.toml"),
            true,
        ),
        (ACCOUNTS, 'r', format!("{e}/accounts-api/pki/ca.pem"), true),
        (
            ACCOUNTS,
            'r',
            format!("{e}/accounts-api/pki/accounts.pem"),
            true,
        ),
        (
            ACCOUNTS,
            'r',
            format!("{e}/accounts-api/pki/accounts.key"),
            true,
        ),
        (
            ACCOUNTS,
            'r',
            format!("{e}/accounts-api/pki/renewals.pem"),
            true,
        ),
        (
            ACCOUNTS,
            'r',
            format!("{e}/accounts-api/pki/renewals.key"),
            true,
        ),
        (
            ACCOUNTS,
            'w',
            format!("{e}/accounts-api/accounts-api.toml"),
            false,
        ),
        (ACCOUNTS, 'w', "/var/lib/strongroom-accounts".into(), true),
        (ACCOUNTS, 'r', format!("{e}/vault/vault.toml"), false),
        (ACCOUNTS, 'r', format!("{e}/vault/pki/vault.key"), false),
        (ACCOUNTS, 'r', format!("{e}/vault/processor.key"), false),
        (ACCOUNTS, 'r', format!("{e}/vault/admin/admin.key"), false),
        (
            ACCOUNTS,
            'r',
            "/var/lib/strongroom-vault/keys".into(),
            false,
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(user, access, path, want)| root.may(user, *access, path) != *want)
        .map(|(user, access, path, want)| {
            format!(
                "{user} {} {access} {path} (owner {:?}, mode {:o})",
                if *want { "cannot" } else { "can" },
                root.owner_of(&root.at(path)),
                std::fs::metadata(root.at(path))
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "recipe permissions:\n{}",
        wrong.join("\n")
    );
}

/// `systemd-analyze verify` on the shipped units with the recipe's paths moved into the root.
fn verify_units(root: &Root) {
    if !tests::require_tool("systemd-analyze") {
        return;
    }
    let dir = root.path().join("units");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut paths = Vec::new();
    for (_, rel, _, _) in tests::recipe::UNITS {
        let name = Path::new(rel).file_name().unwrap_or_default();
        let p = dir.join(name);
        std::fs::write(&p, root.unit_text(rel)).unwrap_or_else(|e| panic!("{e}"));
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify:\n{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("strongroom-"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze complained:\n{}",
        ours.join("\n")
    );
}
