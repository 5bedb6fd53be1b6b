//! The test doubles and benches as the suite and developers meet them.
//!
//! Also load-bearing: cargo builds a package's binaries during `cargo test` only when that
//! package has an integration test. The end-to-end tests in `tests/` and `accounts-api dev` run
//! `target/<profile>/sandbox-processor`, so this file makes `cargo test --workspace` build every
//! binary of this package on a clean checkout.

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

#[tokio::test]
async fn a_fresh_sandbox_processor_answers_its_ledger_route_with_no_charges() {
    // Started through the helper every end-to-end test uses, so this also proves
    // `tests::bin_path` finds the binary next to the product binaries.
    let sandbox = tests::sandbox::start_sandbox(&[]);
    let ledger = tests::sandbox::charges(&sandbox.url).await;
    assert_eq!(
        ledger["charges"].as_array().map(Vec::len),
        Some(0),
        "{ledger}"
    );
    assert_eq!(ledger["replays"], 0, "{ledger}");
}

#[test]
fn sandbox_processor_rejects_unknown_arguments() {
    let (ok, text) = run(env!("CARGO_BIN_EXE_sandbox-processor"), &["--no-such-flag"]);
    assert!(!ok, "{text}");
    assert!(text.contains("--no-such-flag"), "{text}");
}

#[test]
fn vault_bench_help_names_its_options_and_starts_nothing() {
    let (ok, text) = run(env!("CARGO_BIN_EXE_vault-bench"), &["--help"]);
    assert!(ok, "{text}");
    for option in ["--seconds", "--records"] {
        assert!(text.contains(option), "help lacks {option}: {text}");
    }
}

#[test]
fn every_tool_lands_beside_the_product_binaries() {
    // The benches start `vault` / `accounts-api dev` from their own folder, and the suite looks
    // them up with `tests::bin_path`: all of them must share `target/<profile>/`.
    for (name, built) in [
        ("sandbox-processor", env!("CARGO_BIN_EXE_sandbox-processor")),
        ("vault-bench", env!("CARGO_BIN_EXE_vault-bench")),
        ("accounts-bench", env!("CARGO_BIN_EXE_accounts-bench")),
        ("renewals-bench", env!("CARGO_BIN_EXE_renewals-bench")),
    ] {
        assert_eq!(tests::bin_path(name), std::path::PathBuf::from(built));
    }
}
