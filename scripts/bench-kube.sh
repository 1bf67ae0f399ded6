#!/usr/bin/env bash
# The benchmark's Kubernetes mode: starts a real API server (the test harness), writes the
# world into it (or finds it again), starts the destination server on that world, and runs
# the scenarios through the API server at the server's gRPC port, reading the server's RSS
# and CPU time from /proc (--target-pid). The server is started right before the benchmark,
# so cold start (from its start to every service's whole set served) is measured too.
#
#   scripts/bench-kube.sh [--quick] [--size S,E,N,M] [--runs N] [--scenario a,b] [--json out.json] ...
#
# Arguments go to the benchmark (see `cargo bench --bench destination -- --help`).
# Environment:
#   MESHLINK_BENCH_SERVER=meshlink|linkerd   the server to measure (default meshlink); linkerd
#                                            needs `scripts/linkerd-destination.sh build` first
#   MESHLINK_BENCH_ENV=DIR                   keep the API server and its world in DIR: started
#                                            when not running, left running afterwards (stop it
#                                            with scripts/k8s-test-env.sh down DIR), so the next
#                                            run reuses the world (full size: minutes to write)
# Another server by hand: see BENCHMARKS.md ("Another destination server").
set -euo pipefail
cd "$(dirname "$0")/.."

server=${MESHLINK_BENCH_SERVER:-meshlink}
dir=${MESHLINK_BENCH_ENV:-}
keep=1
if [[ -z $dir ]]; then
  dir=$(mktemp -d)
  keep=
fi
grpc=127.0.0.1:28086
admin=127.0.0.1:29996
pid=
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; fi
  if [[ -z $keep ]]; then
    ./scripts/k8s-test-env.sh down "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
  fi
}
trap cleanup EXIT

# The world's size and writers go to the run that writes the world; everything else to the
# measuring run.
world_args=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
  --quick) world_args+=(--quick) ;;
  --size | --writers) world_args+=("${args[i]}" "${args[i + 1]:-}") ;;
  esac
done

if ! ./scripts/k8s-test-env.sh status "$dir" 2>/dev/null | grep -q 'kube-apiserver *running'; then
  ./scripts/k8s-test-env.sh up "$dir" local
fi
kubeconfig="$dir/local/kubeconfig"

# The bench profile shares its build with the benchmark itself (both land in target/release).
cargo build --locked --profile bench --quiet --bin meshlink
# The benchmark's own artifact: cargo also reports the meshlink binary it builds for it.
bench=$(cargo bench --locked --bench destination --no-run --message-format=json 2>/dev/null |
  grep '"kind":\["bench"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[[ -x $bench ]] || { echo "cannot find the benchmark binary" >&2; exit 1; }

"$bench" --kubeconfig "$kubeconfig" --target "$grpc" --world-only --reuse-world "${world_args[@]}" >/dev/null

case $server in
meshlink)
  target/release/meshlink serve --kubeconfig "$kubeconfig" --grpc-addr "$grpc" --admin-addr "$admin" \
    >"$dir/server.log" 2>&1 &
  pid=$!
  ;;
linkerd)
  ./scripts/linkerd-destination.sh prepare "$kubeconfig"
  ./scripts/linkerd-destination.sh run "$kubeconfig" "$grpc" "$admin" >"$dir/server.log" 2>&1 &
  pid=$!
  ;;
*) echo "MESHLINK_BENCH_SERVER is meshlink or linkerd" >&2; exit 2 ;;
esac

# Started at once, so cold start sees the server load; the benchmark waits for it to listen.
if ! "$bench" --kubeconfig "$kubeconfig" --target "$grpc" --target-pid "$pid" --reuse-world \
  --label "$server" "$@"; then
  tail -n 20 "$dir/server.log" >&2
  exit 1
fi
