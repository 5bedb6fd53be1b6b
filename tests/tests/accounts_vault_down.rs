//! The production entry point (`accounts-api serve --config`) next to a separately started
//! vault: stores created by the CLI with and without a running server, and the vault going away
//! mid-flight — 503 with Retry-After and nothing written, then the retry succeeding once.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::accounts::{Credentials, call, create_store, http_client, order_body, unique_token};
use tests::vault::{VaultProcess, serve_command};
use tests::{Service, bin_path, contains_bytes, run, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_is_503_with_nothing_written_and_the_retry_succeeds_once_it_is_back() {
    let tmp = temp_dir("strongroom-vault-down-");
    let vault_dir = tmp.path().join("vault");
    let mut vault = VaultProcess::start(&vault_dir);
    let addr = vault.addr;

    // A store created before any server runs: the CLI opens the database itself.
    let shop = create_store(tmp.path(), "Shop");
    let config = tmp.path().join("accounts.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = \".\"\npublic_url = \"https://accounts.example.com\"\n[vault]\naddr = \"{addr}\"\nserver_name = \"localhost\"\n\
             ca = \"vault/pki/ca.pem\"\ncert = \"vault/pki/accounts.pem\"\nkey = \"vault/pki/accounts.key\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin_path("accounts-api"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "debug");
    let mut api_proc = Service::spawn("accounts-api serve", cmd);
    let api = api_proc.wait_for_line("ACCOUNTS_API_LISTENING ", Duration::from_secs(30));

    // A store created while the server holds the database: the CLI asks it over the socket.
    let mut cli = Command::new(bin_path("accounts-api"));
    cli.arg("store")
        .arg("create")
        .arg("--name")
        .arg("Live")
        .arg("--config")
        .arg(&config);
    let (ok, out, err) = run(cli);
    assert!(ok, "{out}{err}");
    let live =
        Credentials::from_json(&serde_json::from_str::<Value>(out.trim()).unwrap_or(Value::Null));
    assert_ne!(live.store, shop.store);

    let http = http_client();
    let warm = call(
        &http,
        &api,
        Some(&live),
        "POST",
        "/orders",
        Some(&order_body(
            "warm@example.com",
            &unique_token(),
            true,
            false,
            false,
        )),
        None,
    )
    .await;
    assert_eq!(warm.status, 200, "{}", warm.text);

    vault.crash();
    let token = unique_token();
    let body = order_body("late@example.com", &token, true, true, true);
    let down = call(
        &http,
        &api,
        Some(&shop),
        "POST",
        "/orders",
        Some(&body),
        Some("checkout-77"),
    )
    .await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert!(down.headers.get("retry-after").is_some(), "no Retry-After");
    assert_eq!(down.json["result"], "error");
    let nothing = call(&http, &api, Some(&shop), "GET", "/accounts", None, None).await;
    assert_eq!(
        nothing.json["total"], 0,
        "nothing written: {}",
        nothing.text
    );
    let subs = call(
        &http,
        &api,
        Some(&shop),
        "GET",
        "/subscriptions",
        None,
        None,
    )
    .await;
    assert_eq!(subs.json["total"], 0);

    // The vault comes back on the same address; the client retries with the same key.
    let mut again = serve_command(&vault_dir);
    let args: Vec<String> = again
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(args.last().map(String::as_str), Some("127.0.0.1:0"));
    let mut restart = Command::new(bin_path("vault"));
    restart.args(&args[..args.len() - 1]).arg(addr.to_string());
    for (k, v) in again.get_envs() {
        match v {
            Some(v) => restart.env(k, v),
            None => restart.env_remove(k),
        };
    }
    again = restart;
    let vault2 = VaultProcess::serve(&vault_dir, again);
    assert_eq!(vault2.addr, addr);

    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let a = call(
            &http,
            &api,
            Some(&shop),
            "POST",
            "/orders",
            Some(&body),
            Some("checkout-77"),
        )
        .await;
        if a.status != 503 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first.status, 200, "{}", first.text);
    let replay = call(
        &http,
        &api,
        Some(&shop),
        "POST",
        "/orders",
        Some(&body),
        Some("checkout-77"),
    )
    .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json, first.json);
    let account = first.json["account"].as_str().unwrap_or_default();
    let acc = call(
        &http,
        &api,
        Some(&shop),
        "GET",
        &format!("/accounts/{account}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        acc.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(1),
        "{}",
        acc.text
    );
    let all = call(&http, &api, Some(&shop), "GET", "/accounts", None, None).await;
    assert_eq!(all.json["total"], 1);
    let pms = vault2
        .client("accounts")
        .get(vault2.url(&format!(
            "/v1/payment-methods?store={}&account={account}",
            shop.store
        )))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pms: Value = pms.json().await.unwrap_or(Value::Null);
    assert_eq!(
        pms["paymentMethods"].as_array().map(Vec::len),
        Some(1),
        "{pms}"
    );

    // Nothing of the token in accounts-api's logs, data folder or answers.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(api_proc.pid().to_string())
        .status();
    assert!(
        api_proc.wait(Duration::from_secs(10)).is_some(),
        "serve did not stop on SIGTERM"
    );
    let t = token.as_bytes();
    assert!(!contains_bytes(api_proc.output().as_bytes(), t));
    assert!(!contains_bytes(
        format!("{}{}{}", down.text, first.text, replay.text).as_bytes(),
        t
    ));
    for (path, bytes) in tests::all_files(&tmp.path().join("accounts")) {
        assert!(!contains_bytes(&bytes, t), "token in {}", path.display());
    }
}
