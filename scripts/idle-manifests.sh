#!/usr/bin/env bash
# Idle CPU of `meshlink serve --manifests` over a folder of 100 services x 100 pods
# (10,000 endpoints): runs BINARY for SECONDS (default 60) with nothing changing and
# prints the CPU time it used (utime + stime from /proc/PID/stat).
#   scripts/idle-manifests.sh target/release/meshlink [SECONDS]
set -euo pipefail
bin=${1:?usage: $0 BINARY [SECONDS]}
seconds=${2:-60}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/local"
for s in $(seq 0 99); do
  {
    printf 'apiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: bench}\n' "$s"
    printf 'spec:\n  selector: {app: svc-%d}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n' "$s"
    for p in $(seq 0 99); do
      printf -- '---\napiVersion: v1\nkind: Pod\n'
      printf 'metadata: {name: svc-%d-%d, namespace: bench, labels: {app: svc-%d, linkerd.io/control-plane-ns: linkerd}}\n' "$s" "$p" "$s"
      printf 'spec: {serviceAccountName: svc-%d, nodeName: node-%d, containers: [{name: main, image: x}]}\n' "$s" "$((p % 12))"
      printf 'status: {phase: Running, podIP: "10.%d.%d.%d"}\n' "$((s / 250 + 1))" "$((s % 250))" "$((p + 1))"
    done
  } > "$dir/local/svc-$s.yaml"
done
"$bin" serve --manifests "$dir" --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
  --log-format json 2>"$dir/log" &
pid=$!
# The initial load is not idle: start counting once it is served, and a little after.
for _ in $(seq 600); do grep -q '"serving"' "$dir/log" && break; sleep 0.1; done
grep -q '"serving"' "$dir/log" || { echo "meshlink did not start" >&2; exit 1; }
sleep 2
read -r _ _ _ _ _ _ _ _ _ _ _ u0 s0 _ < <(cut -d')' -f2- "/proc/$pid/stat")
sleep "$seconds"
read -r _ _ _ _ _ _ _ _ _ _ _ u1 s1 _ < <(cut -d')' -f2- "/proc/$pid/stat")
hz=$(getconf CLK_TCK)
echo "idle for ${seconds}s: utime+stime $(( (u1 - u0) + (s1 - s0) )) ticks = $(awk -v t=$(( (u1 - u0) + (s1 - s0) )) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }') s CPU"
