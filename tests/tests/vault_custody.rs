//! Key custody that fails closed (issue 14): each data-loss path found in the production drill,
//! reproduced against the real `vault` binary. A stale key file, a key file retired too early
//! for an old data backup, and another data folder's key file are refused at start with a
//! message that names what is wrong; a rotate never makes a correct key file unusable; a key
//! change names the files to back up; an unwritable key file is a specific error that changes
//! nothing; the online audit export equals the offline one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::vault::{VaultProcess, card_body, expect_refusal, init_vault, serve_command};
use tests::{bin_path, run, temp_dir};

fn load_config(dir: &Path) -> vault::config::Config {
    vault::config::Config::load(
        &dir.join("vault.toml"),
        vault::config::Overrides::default(),
        None,
    )
    .unwrap()
}

/// An in-process core on an initialised folder (the vault binary is not running).
fn open_core(dir: &Path) -> vault::core::VaultCore {
    vault::core::VaultCore::open(&load_config(dir), false).unwrap()
}

fn put(core: &vault::core::VaultCore, token: &str) -> String {
    let new = vault::core::NewPaymentMethod {
        store: shared::domain::StoreId::parse("s1").unwrap(),
        account: shared::domain::AccountId::parse("a1").unwrap(),
        kind: shared::domain::PaymentType::parse("card").unwrap(),
        brand: None,
        last4: None,
        expiry: None,
        masked_email: None,
        processor_customer: None,
    };
    let t = shared::secret::PaymentToken::parse_token(token.to_owned()).unwrap();
    match core
        .store_payment_method(&new, &t, Default::default())
        .unwrap()
    {
        vault::store::Stored::Created(r) | vault::store::Stored::Existing(r) => r.id,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// `vault key ARGS --config … --addr …` → (success, stdout, stderr).
fn key_cli(v: &VaultProcess, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin_path("vault"));
    cmd.arg("key")
        .args(args)
        .arg("--config")
        .arg(v.config_path())
        .arg("--addr")
        .arg(v.addr.to_string());
    run(cmd)
}

async fn masked_read(v: &VaultProcess, id: &str) -> u16 {
    v.client("accounts")
        .get(v.url(&format!("/v1/payment-methods/{id}?store=s1")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn a_key_file_restored_from_before_a_rotation_is_refused_and_the_right_one_still_opens() {
    let dir = temp_dir("vault-custody");
    init_vault(dir.path());
    let master = dir.path().join("master.key");
    let before_rotation = std::fs::read(&master).unwrap();
    {
        let core = open_core(dir.path());
        put(&core, "tok_custody_stale_1");
        assert_eq!(core.rotate().unwrap(), 2);
        let st = core.rewrap_all().unwrap();
        assert_eq!((st.done, st.failed), (1, 0));
    }
    let after_rotation = std::fs::read(&master).unwrap();
    // The stale file (version 1 only) with data wrapped under version 2: refused, by name.
    std::fs::write(&master, &before_rotation).unwrap();
    let out = expect_refusal(serve_command(dir.path()));
    assert!(
        out.contains("1 record(s)") && out.contains("wrapped under master key version 2"),
        "{out}"
    );
    assert!(out.contains("refusing to start"), "{out}");
    // The correct file was never touched by the refused start, and opens everything.
    std::fs::write(&master, &after_rotation).unwrap();
    let core = open_core(dir.path());
    assert_eq!(core.key_versions(), vec![1, 2]);
    // Rotating again uses a fresh version; the file it writes keeps working after a restart.
    assert_eq!(core.rotate().unwrap(), 3);
    drop(core);
    assert_eq!(open_core(dir.path()).key_versions(), vec![1, 2, 3]);
}

#[test]
fn a_stale_key_file_with_no_record_under_the_new_version_is_refused_and_never_overwrites_it() {
    let dir = temp_dir("vault-custody");
    init_vault(dir.path());
    let master = dir.path().join("master.key");
    let before_rotation = std::fs::read(&master).unwrap();
    assert_eq!(open_core(dir.path()).rotate().unwrap(), 2);
    let correct = std::fs::read(&master).unwrap();
    std::fs::write(&master, &before_rotation).unwrap();
    // Before: the vault started "ready" and a rotate created another "v2" over the stored check
    // value, after which the correct file was refused. Now the stale file is refused at start.
    let out = expect_refusal(serve_command(dir.path()));
    assert!(out.contains("lacks master key version 2"), "{out}");
    assert!(out.contains("older than the data"), "{out}");
    std::fs::write(&master, &correct).unwrap();
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let (ok, out, err) = key_cli(&v, &["rotate"]);
    assert!(ok && out.contains("\"version\":3"), "{out}{err}");
    v.stop();
    let core = open_core(dir.path());
    assert_eq!(core.key_versions(), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_key_file_retired_too_early_for_an_old_backup_is_refused_and_the_archive_restores_it() {
    let dir = temp_dir("vault-custody");
    init_vault(dir.path());
    let ids: Vec<String> = {
        let core = open_core(dir.path());
        (0..2)
            .map(|i| put(&core, &format!("tok_custody_old_{i}")))
            .collect()
    };
    // A data backup taken before the rotation (the vault is stopped).
    let backup = dir.path().join("data-backup");
    copy_dir(&dir.path().join("data"), &backup);
    {
        let core = open_core(dir.path());
        assert_eq!(core.rotate().unwrap(), 2);
        core.rewrap_all().unwrap();
        assert_eq!(core.retire_below(2).unwrap(), vec![1]);
    }
    let archive = dir.path().join("master.key.retired");
    let archived = std::fs::read_to_string(&archive).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the archive is owner-only");
    }
    let v1_line = archived
        .lines()
        .find(|l| l.starts_with("1:"))
        .expect("version 1 is archived")
        .to_owned();
    let master = dir.path().join("master.key");
    assert!(!std::fs::read_to_string(&master).unwrap().contains(&v1_line));
    // Restore the old data backup with the post-retire key file: refused, and the message says
    // where the retired version is.
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    copy_dir(&backup, &dir.path().join("data"));
    let out = expect_refusal(serve_command(dir.path()));
    assert!(
        out.contains("2 record(s)") && out.contains("wrapped under master key version 1"),
        "{out}"
    );
    assert!(out.contains("master.key.retired"), "{out}");
    // The operator copies the archived line back, as the message says: the backup opens.
    let mut text = std::fs::read_to_string(&master).unwrap();
    text.push_str(&v1_line);
    text.push('\n');
    std::fs::write(&master, text).unwrap();
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    for id in &ids {
        assert_eq!(masked_read(&v, id).await, 200);
    }
    v.stop();
}

#[test]
fn another_data_folders_key_file_or_a_new_empty_folder_is_refused_and_the_live_keys_stay_intact() {
    let a = temp_dir("vault-custody");
    let b = temp_dir("vault-custody");
    init_vault(a.path());
    init_vault(b.path());
    let live_files = ["master.key", "fingerprint.key"].map(|f| a.path().join(f));
    let snapshot = |files: &[PathBuf]| -> Vec<Vec<u8>> {
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    };
    let before = snapshot(&live_files);
    // B's fingerprint key file with A's data folder.
    let mut cmd = serve_command(a.path());
    cmd.env(
        "VAULT_FINGERPRINT_KEY_FILE",
        b.path().join("fingerprint.key"),
    );
    let out = expect_refusal(cmd);
    assert!(out.contains("belongs to data folder"), "{out}");
    assert!(out.contains("fingerprint.key"), "{out}");
    // The restore-drill mistake: A's config with another, empty data folder.
    let drill = a.path().join("drill-data");
    let mut cmd = serve_command(a.path());
    cmd.env("VAULT_DATA_DIR", &drill);
    let out = expect_refusal(cmd);
    assert!(out.contains("new, empty data folder"), "{out}");
    assert_eq!(
        snapshot(&live_files),
        before,
        "the live key files are untouched"
    );
    // `vault init` refuses to bind A's existing keys to a second data folder too.
    let drill_cfg = a.path().join("drill.toml");
    std::fs::write(
        &drill_cfg,
        std::fs::read_to_string(a.path().join("vault.toml"))
            .unwrap()
            .replace("data_dir = \"data\"", "data_dir = \"drill-data-2\""),
    )
    .unwrap();
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["init", "--config"]).arg(&drill_cfg);
    let (ok, out, err) = run(cmd);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("refusing to bind existing keys"), "{err}");
    assert!(!a.path().join("drill-data-2").exists());
    // A copy of A's own data while A runs: the key folder is locked by the running vault.
    std::fs::remove_dir_all(&drill).unwrap();
    copy_dir(&a.path().join("data"), &drill);
    let mut live = VaultProcess::serve(a.path(), serve_command(a.path()));
    let mut cmd = serve_command(a.path());
    cmd.env("VAULT_DATA_DIR", &drill);
    let out = expect_refusal(cmd);
    assert!(out.contains("in use by another vault process"), "{out}");
    live.stop();
    assert_eq!(snapshot(&live_files), before);
}

#[tokio::test]
async fn a_key_change_names_the_files_to_back_up_and_an_unwritable_key_file_changes_nothing() {
    let dir = temp_dir("vault-custody");
    let mut v = VaultProcess::start(dir.path());
    let id = {
        let resp = v
            .client("accounts")
            .post(v.url("/v1/payment-methods"))
            .json(&card_body("s1", "a1", "tok_custody_unwritable"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The rewrite goes through a temp file beside the key file; make it impossible to create
    // (tests run as root, so a mode change would not stop the write).
    let blocker = dir.path().join("master.tmp-rotate");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    let (ok, out, err) = key_cli(&v, &["rotate"]);
    assert!(!ok, "{out}{err}");
    assert!(out.contains("\"key_file_unwritable\""), "{out}{err}");
    assert!(!out.contains("internal_error"), "{out}");
    let (ok, status, _) = key_cli(&v, &["status"]);
    assert!(ok);
    let status: Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(status["currentVersion"], 1, "nothing changed: {status}");
    std::fs::remove_dir_all(&blocker).unwrap();
    // Now it works, and says which files to back up.
    let (ok, out, err) = key_cli(&v, &["rotate"]);
    assert!(ok && out.contains("\"version\":2"), "{out}{err}");
    let master = dir.path().join("master.key");
    assert!(
        err.contains(&format!("back up the key file now: {}", master.display())),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, s, _) = key_cli(&v, &["status"]);
        let s: Value = serde_json::from_str(s.trim()).unwrap();
        if s["rewrap"]["running"] == false && s["versions"][0]["records"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "re-wrap did not finish: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, err) = key_cli(&v, &["retire", "--below", "2"]);
    assert!(ok, "{out}{err}");
    let archive = dir.path().join("master.key.retired");
    assert!(
        err.contains(&format!("back up the key file now: {}", archive.display())),
        "{err}"
    );
    assert!(
        v.output().contains("back up the key file now"),
        "the vault logs the reminder too"
    );
    v.stop();
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    assert_eq!(masked_read(&v, &id).await, 200);
    v.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_audit_export_while_writes_run_equals_the_offline_export_of_that_range() {
    let dir = temp_dir("vault-custody");
    let mut v = VaultProcess::start(dir.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (c, url, stop) = (
            v.client("accounts"),
            v.url("/v1/payment-methods"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 2_000 {
                let resp = c
                    .post(&url)
                    .json(&card_body("s1", "a1", &format!("tok_custody_export_{n}")))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success());
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let online = |since: &'static str| {
        let mut cmd = Command::new(bin_path("vault"));
        cmd.args(["audit", "export", "--online", "--since", since, "--config"])
            .arg(v.config_path())
            .arg("--addr")
            .arg(v.addr.to_string());
        tokio::task::spawn_blocking(move || run(cmd))
    };
    let (ok, first, err) = online("1").await.unwrap();
    assert!(ok, "{err}");
    let (ok, middle, err) = online("5").await.unwrap();
    assert!(ok, "{err}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(written > 10, "writes ran during the export ({written})");
    // Identity `accounts` may not export.
    let resp = v
        .client("accounts")
        .get(v.url("/v1/audit/export?since=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    v.stop();
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["audit", "export", "--since", "1", "--config"])
        .arg(v.config_path());
    let (ok, offline, err) = run(cmd);
    assert!(ok, "{err}");
    let first: Vec<&str> = first.lines().collect();
    let offline: Vec<&str> = offline.lines().collect();
    assert!(
        first.len() > 5,
        "the online export saw entries ({})",
        first.len()
    );
    assert!(offline.len() >= first.len());
    assert_eq!(
        first[..],
        offline[..first.len()],
        "same bytes for the same range"
    );
    let middle: Vec<&str> = middle.lines().collect();
    assert_eq!(middle[..], offline[4..4 + middle.len()]);
    let e: Value = serde_json::from_str(first[0]).unwrap();
    assert_eq!(e["seq"], 1);
}

#[test]
fn misconfigured_vault_configs_are_refused_with_a_message_that_names_the_problem() {
    let dir = temp_dir("vault-custody");
    init_vault(dir.path());
    let cfg = dir.path().join("vault.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    // Unknown key: named, with the file.
    std::fs::write(&cfg, good.replace("listen =", "listn =")).unwrap();
    let out = expect_refusal(serve_command(dir.path()));
    assert!(out.contains("unknown field `listn`"), "{out}");
    assert!(out.contains("vault.toml"), "{out}");
    std::fs::write(&cfg, &good).unwrap();
    // The key file is missing.
    let master = dir.path().join("master.key");
    let moved = dir.path().join("master.key.moved");
    std::fs::rename(&master, &moved).unwrap();
    let out = expect_refusal(serve_command(dir.path()));
    assert!(
        out.contains("cannot read key file") && out.contains("master.key"),
        "{out}"
    );
    std::fs::rename(&moved, &master).unwrap();
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(bin_path("vault"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string());
    let out = expect_refusal(cmd);
    assert!(
        out.contains(&format!("cannot listen on {}", taken.local_addr().unwrap())),
        "{out}"
    );
    // A key file written by hand in the documented format works; a bare hex line is refused
    // with the format named, never echoed.
    let hex = "5a".repeat(32);
    std::fs::write(&master, format!("{hex}\n")).unwrap();
    let out = expect_refusal(serve_command(dir.path()));
    assert!(out.contains("strongroom-master-key v1"), "{out}");
    assert!(!out.contains(&hex), "{out}");
    // Startup errors come out as JSON when JSON logs are on.
    let mut cmd = serve_command(dir.path());
    cmd.env("VAULT_LOG_FORMAT", "json");
    let out = expect_refusal(cmd);
    let line = out
        .lines()
        .find(|l| l.contains("strongroom-master-key v1"))
        .unwrap();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "ERROR", "{line}");
}

#[test]
fn a_fingerprint_key_file_that_does_not_cover_the_index_is_refused() {
    let dir = temp_dir("vault-custody");
    init_vault(dir.path());
    let fp = dir.path().join("fingerprint.key");
    let before = std::fs::read(&fp).unwrap();
    {
        let core = open_core(dir.path());
        put(&core, "tok_custody_fp_1");
        assert_eq!(core.rotate_fingerprint_key().unwrap(), 2);
        let st = core.reindex_fingerprints().unwrap();
        assert_eq!((st.done, st.failed), (1, 0));
    }
    // Version 1 was retired into the archive, not destroyed.
    let archived = std::fs::read_to_string(dir.path().join("fingerprint.key.retired")).unwrap();
    assert!(
        archived.lines().any(|l| l.starts_with("1:")),
        "{}",
        archived.len()
    );
    let after = std::fs::read(&fp).unwrap();
    std::fs::write(&fp, &before).unwrap();
    let out = expect_refusal(serve_command(dir.path()));
    assert!(
        out.contains("1 record(s)") && out.contains("indexed under fingerprint key version 2"),
        "{out}"
    );
    std::fs::write(&fp, &after).unwrap();
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    v.stop();
}

#[test]
fn a_broad_client_trust_anchor_and_an_empty_permissions_table_are_warned_about_at_start() {
    let dir = temp_dir("vault-custody");
    init_vault(dir.path());
    let pki = dir.path().join("pki");
    // The self-signed dev root plus another certificate: every one of them becomes a trust anchor.
    let mut both = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    both.push_str(&std::fs::read_to_string(pki.join("vault.pem")).unwrap());
    std::fs::write(pki.join("ca-and-more.pem"), both).unwrap();
    let cfg = dir.path().join("vault.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("[permissions]").unwrap();
    let end = text.find("[limits]").unwrap();
    let text = format!(
        "{}[permissions]\n\n{}",
        &text[..start].replace("ca = \"pki/ca.pem\"", "ca = \"pki/ca-and-more.pem\""),
        &text[end..]
    );
    std::fs::write(&cfg, text).unwrap();
    let mut v = VaultProcess::serve(dir.path(), serve_command(dir.path()));
    let out = v.output();
    assert!(
        out.contains("self-signed root besides other certificates"),
        "{out}"
    );
    assert!(out.contains("[permissions] grants nothing"), "{out}");
    v.stop();
}

/// A crash between "mark retired" and "rewrite the key file" (here: the sealed key file put
/// back as it was before the retire) leaves a version the data folder retired in the key file.
/// The next unseal finishes the retirement: the version stays in the archive only, the sealed
/// file is re-sealed without it under the same shares, and every record still opens.
#[test]
fn a_retirement_cut_short_before_the_sealed_key_file_was_rewritten_is_finished_at_unseal() {
    let dir = temp_dir("vault-custody");
    let shares = tests::vault::init_sealed(dir.path(), 3, 2);
    let unsealed = || {
        let core = open_core(dir.path());
        assert!(core.is_sealed());
        for s in &shares[..2] {
            core.submit_share(s)
                .map_err(|(why, _)| format!("{why:?}"))
                .unwrap();
        }
        assert!(!core.is_sealed());
        core
    };
    let sealed_file = dir.path().join("master.sealed");
    let before_retire = dir.path().join("master.sealed.before-retire");
    let (old, new) = {
        let core = unsealed();
        let old = put(&core, "tok_custody_cut_old");
        assert_eq!(core.rotate().unwrap(), 2);
        core.rewrap_all().unwrap();
        std::fs::copy(&sealed_file, &before_retire).unwrap();
        assert_eq!(core.retire_below(2).unwrap(), vec![1]);
        (old, put(&core, "tok_custody_cut_new"))
    };
    let archive = dir.path().join("master.sealed.retired");
    assert!(archive.exists());
    let archived = std::fs::read(&archive).unwrap();
    std::fs::copy(&before_retire, &sealed_file).unwrap();
    let core = unsealed();
    assert_eq!(core.key_versions(), vec![2], "version 1 is not held again");
    assert_ne!(
        std::fs::read(&sealed_file).unwrap(),
        std::fs::read(&before_retire).unwrap(),
        "the sealed key file is rewritten without it"
    );
    assert!(archive.exists());
    assert_eq!(
        std::fs::read(&archive).unwrap().len(),
        archived.len(),
        "the archive still holds version 1, once"
    );
    for (id, token) in [(&old, "tok_custody_cut_old"), (&new, "tok_custody_cut_new")] {
        let got = core
            .reveal_token(
                &shared::domain::StoreId::parse("s1").unwrap(),
                &shared::domain::PaymentMethodId::parse(id).unwrap(),
            )
            .unwrap()
            .expect("the record");
        assert_eq!(got.as_slice(), token.as_bytes());
    }
    drop(core);
    // The same shares open the rewritten file; nothing is left to finish.
    assert_eq!(unsealed().key_versions(), vec![2]);
}
