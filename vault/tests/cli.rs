//! The `vault` command line as an operator meets it.
//!
//! Also load-bearing for the test suite: cargo builds a package's binaries during `cargo test`
//! only when that package has an integration test, and the end-to-end tests in `tests/` run
//! `target/<profile>/vault`. These tests make `cargo test --workspace`
//! (the README's test command) build them on a clean checkout.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn help_lists_init_serve_and_audit() {
    let (ok, text) = run(env!("CARGO_BIN_EXE_vault"), &["--help"]);
    assert!(ok, "{text}");
    for sub in ["init", "serve", "audit"] {
        assert!(text.contains(sub), "help lacks {sub}: {text}");
    }
}

#[test]
fn serve_with_a_missing_config_fails_with_a_message_naming_the_file() {
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_vault"),
        &["serve", "--config", "/nonexistent/vault.toml"],
    );
    assert!(!ok, "started without a config: {text}");
    assert!(text.contains("/nonexistent/vault.toml"), "{text}");
    assert!(!text.contains("VAULT_LISTENING"), "{text}");
}
