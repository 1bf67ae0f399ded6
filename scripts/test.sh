#!/usr/bin/env bash
# Every check, as CI runs it: formatting, lints, unit and integration tests (the Kubernetes
# ones against real kube-apiservers), the README smoke test, the benchmark's quick modes and
# the container image check. Needs only cargo and go on the PATH (and root with apt-get for
# the image check's buildah); everything else it fetches or builds (kube-apiserver and etcd
# are built once, about 5 minutes, and cached in ~/.cache/meshlink/k8s).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== kube-apiserver and etcd for the Kubernetes tests"
./scripts/k8s-test-env.sh build
echo "== cargo test"
cargo test --locked
echo "== smoke test of the README commands"
./scripts/smoke.sh
echo "== benchmark, quick mode (in-process world, then through a real API server)"
cargo bench --locked --bench destination -- --quick --json target/bench-quick.json
./scripts/bench-kube.sh --quick --json target/bench-kube-quick.json
./scripts/bench-mirror.sh --quick --json target/bench-mirror-quick.json
echo "== container image (Dockerfile) builds and runs"
./scripts/image-check.sh
