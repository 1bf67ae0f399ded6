#!/usr/bin/env bash
# Serves the demo world exactly as the README says and checks it the way a person
# would: grpcurl (reflection, health, a Get), `meshlink resolve`, the admin endpoints,
# and SIGTERM. Installs grpcurl with Go into the cache when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${MESHLINK_CACHE:-$HOME/.cache/meshlink}"
export PATH="$cache/bin:$PATH"
if ! command -v grpcurl >/dev/null; then
  echo "smoke: installing grpcurl into $cache/bin"
  GOBIN="$cache/bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
fi

cargo build --locked --quiet
bin=target/debug/meshlink
grpc=127.0.0.1:18086
admin=127.0.0.1:19996
log=$(mktemp)
"$bin" serve --manifests examples/world --grpc-addr "$grpc" --admin-addr "$admin" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

passed=0
failed=0
check() { # name, command...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

for _ in $(seq 100); do
  curl -fsS "http://$admin/ready" >/dev/null 2>&1 && break
  sleep 0.1
done

contains() { grep -q -- "$1" <<<"$2"; }
check "ready" curl -fsS "http://$admin/ready" -o /dev/null
services=$(grpcurl -plaintext "$grpc" list)
check "reflection lists Destination" contains io.linkerd.proxy.destination.Destination "$services"
check "reflection lists health" contains grpc.health.v1.Health "$services"
health=$(grpcurl -plaintext -d '{"service":"io.linkerd.proxy.destination.Destination"}' "$grpc" grpc.health.v1.Health/Check)
check "health is SERVING" contains SERVING "$health"
get=$(grpcurl -plaintext -max-time 2 -d '{"scheme":"k8s","path":"web.shop.svc.cluster.local:80"}' \
  "$grpc" io.linkerd.proxy.destination.Destination/Get 2>&1 || true)
check "grpcurl Get streams an add with identities" contains 'web.shop.serviceaccount.identity.linkerd.cluster.local' "$get"
check "reflection lists Identity and the policy APIs" bash -c \
  'grep -q io.linkerd.proxy.identity.Identity <<<"$1" && grep -q io.linkerd.proxy.outbound.OutboundPolicies <<<"$1" && grep -q io.linkerd.proxy.inbound.InboundServerPolicies <<<"$1"' _ "$services"
policy=$(grpcurl -plaintext -d '{"source_workload":"{\"ns\":\"shop\",\"pod\":\"web-1\"}","authority":"web.shop.svc.cluster.local:80"}' \
  "$grpc" io.linkerd.proxy.outbound.OutboundPolicies/Get 2>&1 || true)
check "grpcurl OutboundPolicies/Get balances over Destination/Get" contains '"path": "web.shop.svc.cluster.local:80"' "$policy"
resolve=$("$bin" resolve web-federated.shop.svc.cluster.local:80 --addr "$grpc" --count 1 -o json)
check "resolve shows the federated union (local, west, east)" \
  bash -c 'grep -q "cluster.local" <<<"$1" && grep -q "west.example" <<<"$1" && grep -q "east.example" <<<"$1"' _ "$resolve"
table=$("$bin" resolve web-west.shop.svc.cluster.local:80 --addr "$grpc" --count 1)
check "resolve table shows west's endpoints" contains "west" "$table"
metrics=$(curl -fsS "http://$admin/metrics")
check "metrics count the local index" contains 'meshlink_index_objects{cluster="local",kind="service"}' "$metrics"
check "the demo world has no manifest errors" bash -c '! grep -q "^meshlink_manifest_invalid{" <<<"$1"' _ "$metrics"

kill -TERM "$pid"
stopped=no
for _ in $(seq 100); do
  if ! kill -0 "$pid" 2>/dev/null; then stopped=yes; break; fi
  sleep 0.1
done
check "SIGTERM stops the server" test "$stopped" = yes
if ((failed)); then
  echo "--- server log"; cat "$log"
fi
echo "smoke: $passed passed, $failed failed"
((failed == 0))
