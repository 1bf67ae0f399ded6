#!/usr/bin/env bash
# The service mirror's benchmark: starts two real API servers (west holds the exported
# services, east the mirrors; east writes an audit log of every request, so the mirror's
# requests can be counted), builds the release meshlink, and runs benches/mirror/, which
# creates the world, starts `meshlink mirror` and measures. Needs root (the gateway's
# address lives in a network namespace the benchmark makes).
#   scripts/bench-mirror.sh [--quick] [--services N] [--changes N] [--quiet-secs N] [--json out.json]
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d)
cleanup() {
  ./scripts/k8s-test-env.sh down "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Every request at Metadata level, once when complete (a watch also when it opens).
cat >"$dir/audit-policy.yaml" <<POLICY
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
POLICY

./scripts/k8s-test-env.sh up "$dir" west
MESHLINK_K8S_APISERVER_EXTRA_ARGS="--audit-policy-file=$dir/audit-policy.yaml --audit-log-path=$dir/east-audit.log --audit-log-format=json" \
  ./scripts/k8s-test-env.sh up "$dir" east
# The bench profile shares its build with the benchmark itself (both land in target/release).
cargo build --locked --profile bench --quiet --bin meshlink
cargo bench --locked --bench mirror -- --east "$dir/east/kubeconfig" --west "$dir/west/kubeconfig" \
  --audit-log "$dir/east-audit.log" --meshlink target/release/meshlink --dir "$dir" "$@"
