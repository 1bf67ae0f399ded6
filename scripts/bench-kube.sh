#!/usr/bin/env bash
# The benchmark's Kubernetes mode against meshlink: starts a real API server (the test
# harness), serves it with meshlink, and measures through the API server at meshlink's
# gRPC port. Pass --quick for the CI-sized run; other arguments go to the benchmark.
#   scripts/bench-kube.sh [--quick] [--json out.json]
# To measure another destination server instead, run the benchmark directly:
#   cargo bench --bench destination -- --kubeconfig KUBECONFIG --target HOST:PORT
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d)
grpc=127.0.0.1:28086
admin=127.0.0.1:29996
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  ./scripts/k8s-test-env.sh down "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

./scripts/k8s-test-env.sh up "$dir" local
# The bench profile shares its build with the benchmark itself (both land in target/release).
cargo build --locked --profile bench --quiet --bin meshlink
target/release/meshlink serve --kubeconfig "$dir/local/kubeconfig" --grpc-addr "$grpc" --admin-addr "$admin" \
  >"$dir/meshlink.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS "http://$admin/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$admin/ready" >/dev/null || { cat "$dir/meshlink.log"; exit 1; }
cargo bench --locked --bench destination -- --kubeconfig "$dir/local/kubeconfig" --target "$grpc" "$@"
