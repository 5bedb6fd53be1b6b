//! The systemd units shipped in `vault/deploy` and `accounts-api/deploy` are valid, keep the
//! vault confined, and use exactly the paths of the README's production install recipe
//! (`tests::recipe`; `tests/tests/deploy_recipe.rs` walks that recipe). `systemd-analyze verify`
//! runs where systemd is installed (CI installs it); the directives are checked everywhere.

use std::path::Path;
use std::process::Command;
use tests::recipe::{self, unit_values, workspace_file};

#[test]
fn vault_unit_confines_the_process_to_its_state_folder() {
    let unit = workspace_file("vault/deploy/strongroom-vault.service");
    for directive in [
        "User=strongroom-vault",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6\n",
        "CapabilityBoundingSet=\n",
        "ReadWritePaths=/var/lib/strongroom-vault\n",
        "LimitCORE=0",
    ] {
        assert!(unit.contains(directive), "vault unit lacks {directive:?}");
    }
    let writable: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ReadWritePaths="))
        .collect();
    assert_eq!(
        writable,
        ["ReadWritePaths=/var/lib/strongroom-vault"],
        "only the state folder (data and keys) is writable"
    );
    assert_eq!(
        unit_values(&unit, "ReadOnlyPaths"),
        ["/etc/strongroom/vault"],
        "configuration and PKI are read-only"
    );
    assert_eq!(unit_values(&unit, "StateDirectory"), ["strongroom-vault"]);
}

/// `ExecStart=`'s `--config` path, `EnvironmentFile=`, `ReadWritePaths=` and `ReadOnlyPaths=`
/// of each unit are the recipe's, and every path the recipe's config names is inside them.
#[test]
fn units_use_exactly_the_paths_of_the_readme_recipe() {
    let vault = workspace_file("vault/deploy/strongroom-vault.service");
    let accounts = workspace_file("accounts-api/deploy/strongroom-accounts-api.service");
    let files: Vec<String> = recipe::blocks()
        .into_iter()
        .filter_map(|b| match b.kind {
            recipe::BlockKind::File(p) => Some(p),
            recipe::BlockKind::Run(_) => None,
        })
        .collect();
    for (unit, bin, config, env, rw, ro) in [
        (
            &vault,
            "vault",
            "/etc/strongroom/vault/vault.toml",
            "/etc/strongroom/vault/vault.env",
            "/var/lib/strongroom-vault",
            "/etc/strongroom/vault",
        ),
        (
            &accounts,
            "accounts-api",
            "/etc/strongroom/accounts-api/accounts-api.toml",
            "/etc/strongroom/accounts-api/accounts-api.env",
            "/var/lib/strongroom-accounts",
            "/etc/strongroom/accounts-api",
        ),
    ] {
        assert_eq!(
            unit_values(unit, "ExecStart"),
            [format!("/usr/local/bin/{bin} serve --config {config}")]
        );
        assert_eq!(unit_values(unit, "EnvironmentFile"), [format!("-{env}")]);
        assert_eq!(unit_values(unit, "ReadWritePaths"), [rw]);
        assert_eq!(unit_values(unit, "ReadOnlyPaths"), [ro]);
        assert_eq!(
            unit_values(unit, "StateDirectory"),
            [rw.trim_start_matches("/var/lib/")]
        );
        for f in [config, env] {
            assert!(files.iter().any(|p| p == f), "the recipe writes {f}");
        }
    }
    let inside = |p: &str, dir: &str, what: &str| {
        assert!(
            p.starts_with(&format!("{dir}/")) || p == dir,
            "{what} = {p:?} must be inside {dir}"
        );
    };
    let toml = recipe::file_block("/etc/strongroom/vault/vault.toml");
    for key in ["data_dir", "master_key_file", "fingerprint_key_file"] {
        let v = recipe::toml_string(&toml, None, key)
            .unwrap_or_else(|| panic!("vault.toml in the recipe sets {key}"));
        inside(&v, "/var/lib/strongroom-vault", key);
    }
    for key in ["ca", "cert", "key"] {
        let v = recipe::toml_string(&toml, Some("tls"), key)
            .unwrap_or_else(|| panic!("vault.toml in the recipe sets tls.{key}"));
        inside(&v, "/etc/strongroom/vault/pki", key);
    }
    if let Some(v) = recipe::toml_string(&toml, Some("processor"), "secret_key_file") {
        inside(&v, "/etc/strongroom/vault", "processor.secret_key_file");
    }
    let toml = recipe::file_block("/etc/strongroom/accounts-api/accounts-api.toml");
    let data = recipe::toml_string(&toml, None, "data")
        .unwrap_or_else(|| panic!("accounts-api.toml in the recipe sets data"));
    inside(&data, "/var/lib/strongroom-accounts", "data");
    for (table, key) in [
        ("vault", "ca"),
        ("vault", "cert"),
        ("vault", "key"),
        ("renewals", "cert"),
        ("renewals", "key"),
    ] {
        let v = recipe::toml_string(&toml, Some(table), key)
            .unwrap_or_else(|| panic!("accounts-api.toml in the recipe sets {table}.{key}"));
        inside(&v, "/etc/strongroom/accounts-api/pki", key);
    }
}

#[test]
fn both_units_pass_systemd_analyze_verify() {
    if !tests::require_tool("systemd-analyze") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}"));
    assert!(out.status.success());
    let dir = tests::temp_dir("units");
    for (rel, bin) in [
        ("vault/deploy/strongroom-vault.service", "vault"),
        (
            "accounts-api/deploy/strongroom-accounts-api.service",
            "accounts-api",
        ),
    ] {
        // Point ExecStart at the binary this build produced so verify can check it exists.
        let unit = workspace_file(rel).replace(
            &format!("/usr/local/bin/{bin}"),
            &tests::bin_path(bin).display().to_string(),
        );
        let name = Path::new(rel).file_name().unwrap_or_default();
        std::fs::write(dir.path().join(name), unit).unwrap_or_else(|e| panic!("{e}"));
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("strongroom-vault.service"))
        .arg(dir.path().join("strongroom-accounts-api.service"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on some warnings; treat any line about our units as a failure.
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
