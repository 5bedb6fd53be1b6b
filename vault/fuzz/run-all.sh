#!/usr/bin/env bash
# Runs every fuzz target of both crates (vault/fuzz, accounts-api/fuzz) for a fixed time each
# (default 60 s). Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain
# RUSTC_BOOTSTRAP=1 enables the nightly flags libFuzzer's instrumentation needs. Exit code is
# non-zero if any target finds a crash.
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")/../.."
export RUSTC_BOOTSTRAP=1
for spec in vault/fuzz:vault_request_bodies vault/fuzz:stored_record vault/fuzz:audit_entry \
  accounts-api/fuzz:accounts_request_bodies; do
  dir="${spec%%:*}" t="${spec#*:}"
  echo "== fuzz $t ($dir) for ${secs}s"
  cargo fuzz run --fuzz-dir "$dir" "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
