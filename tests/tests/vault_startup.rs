//! `vault init` and the start-up refusals of `vault serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use tests::temp_dir;
use tests::vault::{VaultProcess, expect_refusal, init_vault, serve_command};

#[test]
fn init_is_idempotent_prints_paths_and_never_prints_keys() {
    let dir = temp_dir("vault-init");
    let vdir = dir.path().join("vault");
    let first = init_vault(&vdir);
    let master = std::fs::read(vdir.join("master.key")).unwrap();
    let ca = std::fs::read(vdir.join("pki/ca.pem")).unwrap();
    let second = init_vault(&vdir);
    assert!(first.contains("master.key (created)"), "{first}");
    assert!(second.contains("master.key (kept)"), "{second}");
    assert_eq!(
        std::fs::read(vdir.join("master.key")).unwrap(),
        master,
        "init must not replace a key"
    );
    assert_eq!(
        std::fs::read(vdir.join("pki/ca.pem")).unwrap(),
        ca,
        "init must not replace the PKI"
    );
    for f in [
        "master.key",
        "fingerprint.key",
        "pki/vault.key",
        "pki/accounts.key",
        "pki/ca.key",
    ] {
        let mode = std::fs::metadata(vdir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    for name in ["master.key", "fingerprint.key"] {
        let text = std::fs::read_to_string(vdir.join(name)).unwrap();
        let key_line = text.lines().last().unwrap();
        let hex = key_line.rsplit(':').next().unwrap();
        assert_eq!(hex.len(), 64);
        assert!(
            !first.contains(hex) && !second.contains(hex),
            "init printed a key"
        );
    }
    for p in [
        "vault.toml",
        "pki/ca.pem",
        "pki/accounts.pem",
        "pki/accounts.key",
        "pki/renewals.pem",
        "pki/admin.pem",
    ] {
        assert!(vdir.join(p).exists(), "{p}");
    }
}

#[test]
fn a_moved_vault_folder_still_starts_because_config_paths_are_relative() {
    let dir = temp_dir("vault-init");
    init_vault(&dir.path().join("before"));
    std::fs::rename(dir.path().join("before"), dir.path().join("after")).unwrap();
    let moved = dir.path().join("after");
    let v = VaultProcess::serve(&moved, serve_command(&moved));
    assert!(v.addr.ip().is_loopback());
}

#[test]
fn serve_refuses_a_key_file_readable_by_group_or_others() {
    let dir = temp_dir("vault-init");
    for key in ["master.key", "fingerprint.key", "pki/vault.key"] {
        let vdir = dir.path().join(key.replace(['/', '.'], "_"));
        init_vault(&vdir);
        std::fs::set_permissions(vdir.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = expect_refusal(serve_command(&vdir));
        assert!(out.contains("readable by group or others"), "{key}: {out}");
    }
}

#[test]
fn serve_refuses_to_start_without_tls_material() {
    let dir = temp_dir("vault-init");
    for file in ["ca.pem", "vault.pem", "vault.key"] {
        let vdir = dir.path().join(file.replace('.', "_"));
        init_vault(&vdir);
        std::fs::remove_file(vdir.join("pki").join(file)).unwrap();
        let out = expect_refusal(serve_command(&vdir));
        assert!(
            out.contains("missing") && out.contains(file),
            "{file}: {out}"
        );
    }
}

#[test]
fn serve_turns_core_dumps_off() {
    let dir = temp_dir("vault-init");
    let vdir = dir.path().join("v");
    init_vault(&vdir);
    let v = VaultProcess::serve(&vdir, serve_command(&vdir));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", v.service.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
}
