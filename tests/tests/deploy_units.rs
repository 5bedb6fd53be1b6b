//! The systemd units shipped in `vault/deploy` and `accounts-api/deploy` are valid and keep the
//! vault confined. `systemd-analyze verify` runs where systemd is installed (CI installs it);
//! the confinement directives are checked everywhere.

use std::path::Path;
use std::process::Command;

fn workspace_file(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn vault_unit_confines_the_process_to_its_data_folder() {
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
        "only the data folder is writable"
    );
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
