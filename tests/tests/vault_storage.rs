//! Storage and keys against the real binary: records survive a crash and restart, a wrong master
//! key is refused at start, a ciphertext moved onto another record (raw sled access while the
//! vault is stopped) fails to open, and concurrent writers all land.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use shared::domain::{PaymentMethodId, StoreId};
use std::path::Path;
use tests::temp_dir;
use tests::vault::{VaultProcess, card_body, expect_refusal, serve_command, start_vault};

async fn store(
    v: &VaultProcess,
    c: &reqwest::Client,
    store: &str,
    account: &str,
    token: &str,
) -> Value {
    let resp = c
        .post(v.url("/v1/payment-methods"))
        .json(&card_body(store, account, token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    resp.json().await.unwrap()
}

/// Opens the stopped vault's data folder in-process with its real keys.
fn open_core(dir: &Path) -> vault::core::VaultCore {
    let config = vault::config::Config::load(
        &dir.join("vault.toml"),
        vault::config::Overrides::default(),
        None,
    )
    .unwrap();
    // sled releases its folder lock from a background thread shortly after the last handle is
    // dropped (here: the raw sled edit just above the call), so a reopen can briefly see
    // "locked"; retry for a bounded time instead of racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match vault::core::VaultCore::open(&config, false) {
            Ok(core) => return core,
            Err(e)
                if std::time::Instant::now() < deadline && format!("{e:?}").contains("Locked") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn reveal(core: &vault::core::VaultCore, store: &str, id: &str) -> Result<Option<Vec<u8>>, String> {
    core.reveal_token(
        &StoreId::parse(store).unwrap(),
        &PaymentMethodId::parse(id).unwrap(),
    )
    .map(|t| t.map(|t| t.to_vec()))
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn after_a_crash_and_restart_every_acknowledged_record_is_still_readable() {
    let dir = temp_dir("vault-storage");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    let mut stored = Vec::new();
    for i in 0..20 {
        stored.push((
            format!("tok_restart_{i}"),
            store(&v, &c, "s1", "a1", &format!("tok_restart_{i}")).await,
        ));
    }
    // SIGKILL: only what was acknowledged (flushed before the response) may be relied on.
    v.crash();
    let v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let c = v.client("accounts");
    for (_, view) in &stored {
        let id = view["id"].as_str().unwrap();
        let resp = c
            .get(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(&resp.json::<Value>().await.unwrap(), view);
    }
    // The same token is still recognised after the restart (fingerprint index survived).
    let resp = c
        .post(v.url("/v1/payment-methods"))
        .json(&card_body("s1", "a1", "tok_restart_3"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    drop(v);
    // And the sealed tokens open to exactly what was stored.
    let core = open_core(dir.path());
    for (token, view) in &stored {
        assert_eq!(
            reveal(&core, "s1", view["id"].as_str().unwrap()).unwrap(),
            Some(token.as_bytes().to_vec())
        );
    }
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_start_instead_of_reading_garbage() {
    let dir = temp_dir("vault-storage");
    let mut v = start_vault(dir.path());
    store(&v, &v.client("accounts"), "s1", "a1", "tok_wrong_key_1").await;
    v.stop();
    let mut cmd = serve_command(dir.path());
    cmd.env("VAULT_MASTER_KEY", format!("1:{}", "ab".repeat(32)));
    let out = expect_refusal(cmd);
    assert!(out.contains("master key version 1 does not match"), "{out}");
    assert!(
        !out.contains(&"ab".repeat(32)),
        "the key must not be echoed:\n{out}"
    );
    // A wrong fingerprint key is refused too (dedupe would silently break).
    let mut cmd = serve_command(dir.path());
    cmd.env("VAULT_FINGERPRINT_KEY", "cd".repeat(32));
    let out = expect_refusal(cmd);
    assert!(out.contains("fingerprint key does not match"), "{out}");
}

#[tokio::test]
async fn a_ciphertext_copied_onto_another_record_fails_to_open() {
    let dir = temp_dir("vault-storage");
    let mut v = start_vault(dir.path());
    let c = v.client("accounts");
    let a = store(&v, &c, "s1", "a1", "tok_swap_victim").await;
    let b = store(&v, &c, "s1", "a1", "tok_swap_target").await;
    v.stop();
    let (id_a, id_b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    {
        let db = sled::open(v.data_dir()).unwrap();
        let records = db.open_tree("records").unwrap();
        let decode = |id: &str| {
            vault::store::StoredRecord::decode(&records.get(id).unwrap().unwrap()).unwrap()
        };
        let (rec_a, mut rec_b) = (decode(id_a), decode(id_b));
        rec_b.wrapped_dek = rec_a.wrapped_dek.clone();
        rec_b.sealed_token = rec_a.sealed_token.clone();
        rec_b.key_version = rec_a.key_version;
        records.insert(id_b, rec_b.encode().unwrap()).unwrap();
        // And the whole record of A copied under a third id.
        records
            .insert(
                "pm_11111111111111111111111111111111",
                records.get(id_a).unwrap().unwrap(),
            )
            .unwrap();
        db.flush().unwrap();
    }
    let core = open_core(dir.path());
    assert_eq!(
        reveal(&core, "s1", id_a).unwrap(),
        Some(b"tok_swap_victim".to_vec()),
        "the original still opens"
    );
    let swapped = reveal(&core, "s1", id_b);
    assert!(swapped.is_err(), "moved ciphertext opened: {swapped:?}");
    assert!(reveal(&core, "s1", "pm_11111111111111111111111111111111").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_storing_in_parallel_all_land_and_are_readable() {
    let dir = temp_dir("vault-storage");
    let v = std::sync::Arc::new(start_vault(dir.path()));
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            let c = v.client("accounts");
            let account = format!("acct{client_no}");
            let mut ids = Vec::new();
            for i in 0..25 {
                let view = store(&v, &c, "s1", &account, &format!("tok_par_{client_no}_{i}")).await;
                ids.push(view["id"].as_str().unwrap().to_owned());
            }
            // Everyone also stores one shared token on the same account: exactly one record.
            let resp = c
                .post(v.url("/v1/payment-methods"))
                .json(&card_body("s1", "shared", "tok_par_shared"))
                .send()
                .await
                .unwrap();
            assert!(matches!(resp.status().as_u16(), 200 | 201));
            (account, ids)
        }));
    }
    let c = v.client("accounts");
    for t in tasks {
        let (account, ids) = t.await.unwrap();
        let resp = c
            .get(v.url(&format!("/v1/payment-methods?store=s1&account={account}")))
            .send()
            .await
            .unwrap();
        let list: Value = resp.json().await.unwrap();
        let mut listed: Vec<&str> = list["paymentMethods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        listed.sort_unstable();
        let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }
    let resp = c
        .get(v.url("/v1/payment-methods?store=s1&account=shared"))
        .send()
        .await
        .unwrap();
    let list: Value = resp.json().await.unwrap();
    assert_eq!(
        list["paymentMethods"].as_array().unwrap().len(),
        1,
        "dedupe must hold under concurrency"
    );
}
