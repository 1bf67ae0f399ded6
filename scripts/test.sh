#!/usr/bin/env bash
# Every check, as CI runs it: formatting, lints, unit and integration tests, and the
# README smoke test. Needs only cargo and go on the PATH; everything else it fetches.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
echo "== smoke test of the README commands"
./scripts/smoke.sh
