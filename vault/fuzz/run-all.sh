#!/usr/bin/env bash
# Runs every fuzz target for a fixed time each (default 60 s). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 enables the nightly flags
# libFuzzer's instrumentation needs. Exit code is non-zero if any target finds a crash.
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")/../.."
export RUSTC_BOOTSTRAP=1
for t in vault_request_bodies stored_record audit_entry accounts_request_bodies; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run --fuzz-dir vault/fuzz "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
