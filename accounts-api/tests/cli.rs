//! The `accounts-api` command line as an operator meets it.
//!
//! Also load-bearing for the test suite: cargo builds a package's binaries during `cargo test`
//! only when that package has an integration test, and the end-to-end tests in `tests/` run
//! `target/<profile>/accounts-api`. These tests make `cargo test --workspace` (the README's test
//! command) build it on a clean checkout.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accounts-api"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("accounts-api: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn help_lists_the_dev_serve_store_and_webhook_commands() {
    let (ok, text) = run(&["--help"]);
    assert!(ok, "{text}");
    for sub in ["dev", "serve", "store", "webhook"] {
        assert!(text.contains(sub), "help lacks {sub}: {text}");
    }
}

#[test]
fn serve_with_a_missing_config_fails_with_a_message_naming_the_file() {
    let (ok, text) = run(&["serve", "--config", "/nonexistent/accounts-api.toml"]);
    assert!(!ok, "started without a config: {text}");
    assert!(text.contains("/nonexistent/accounts-api.toml"), "{text}");
    assert!(!text.contains("STRONGROOM_READY"), "{text}");
}
