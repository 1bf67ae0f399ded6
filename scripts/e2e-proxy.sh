#!/usr/bin/env bash
#
# e2e-proxy.sh - stock linkerd2-proxy data planes meshed by meshlink alone, across two
# simulated clusters. Not part of CI (see the README, "End to end with a stock linkerd2-proxy").
#
# Usage:
#   LINKERD2_PROXY_BIN=/path/to/linkerd2-proxy scripts/e2e-proxy.sh [run]
#       Runs the whole scenario and tears it down (also on failure).
#   scripts/e2e-proxy.sh clean
#       Removes what an interrupted run left: its network namespaces and host veth.
#
# What it builds, all on this machine:
#   * two real API servers (scripts/k8s-test-env.sh): east and west;
#   * meshlink serve for each (destination, policy and identity on one gRPC port), meshlink
#     link + meshlink mirror so that east mirrors west's services;
#   * network namespaces joined by a bridge (its own namespace) on 10.251.0.0/16:
#       east: client   10.251.1.10  curl/wrk + linkerd2-proxy (outbound: nftables REDIRECT of
#                                   the service range 10.96.0.0/16 to the proxy's 4140)
#       west: web-1    10.251.2.11  nginx + linkerd2-proxy (inbound: REDIRECT of 8080 to 4143)
#             web-2    10.251.2.12  the same
#             gateway  10.251.2.100 linkerd2-proxy as a multicluster gateway (inbound 4143)
#     The host joins the bridge as 10.251.0.1, so that the mirror's gateway probe reaches the
#     gateway. No traffic leaves these namespaces and the host's loopback.
#   * each proxy dials its control plane on its namespace's 127.0.0.1:8086 (a loopback address,
#     so plaintext, as a proxy next to its control plane would), relayed by socat through a Unix
#     socket to meshlink on the host's loopback.
#
# Checks (each fails the run with what was seen):
#   1. pod-to-pod: the client's requests to web-west.shop.svc.cluster.local reach both west
#      pods; each server-side proxy saw the client's meshlink-issued identity over TLS.
#   2. gateway: requests to web-gw-west.shop.svc.cluster.local go through the gateway proxy
#      (authority_override); the gateway saw the client's identity, the pods the gateway's.
#   3. failover: while requests flow, web-1 leaves the EndpointSlice and its processes are
#      killed; no request fails and the later ones are all answered by web-2.
#   4. load: HTTP latency (p50/p99) and requests/s through the two proxies, and straight to
#      nginx for comparison, with wrk; written to $E2E_DIR/results.md.
#
# Needs: root (network namespaces), ip, nft (nftables), socat, nginx (nginx-light), wrk, curl,
# jq, openssl, kubectl, python3, and the API server binaries of scripts/k8s-test-env.sh. The
# Debian packages are installed with apt-get when missing.
#
# Environment:
#   LINKERD2_PROXY_BIN   a linkerd2-proxy binary built from its own source (required)
#   MESHLINK_BIN         meshlink binary (default: cargo build --bin meshlink, a debug build: the
#                        control plane is not on the measured request path)
#   E2E_DIR              work directory (default: a new /tmp/meshlink-e2e.XXXXXX); keeps logs
#   E2E_KEEP             1: leave everything running at the end (then run `clean` and
#                        `scripts/k8s-test-env.sh down $E2E_DIR/k8s`)
#   E2E_LOAD_SECONDS     length of each load run (default 15)
#   E2E_LOAD_CONNECTIONS connections of the throughput runs (default 16)

set -euo pipefail

readonly REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PROG="e2e-proxy.sh"
readonly NS_PREFIX="ml-e2e"
readonly FABRIC="${NS_PREFIX}-fab"
readonly HOST_IF="${NS_PREFIX}-host"
readonly HOST_ADDR="10.251.0.1"
readonly PREFIX_LEN=16
readonly SERVICE_CIDR="10.96.0.0/16"
readonly TRUST_DOMAIN="cluster.local"
readonly CP_NS="linkerd"
readonly GW_NS="linkerd-multicluster"
readonly GW_SA="linkerd-gateway"
readonly APP_PORT=8080
readonly DIRECT_PORT=8081
readonly INBOUND_PORT=4143
readonly OUTBOUND_PORT=4140
readonly ADMIN_PORT=4191
readonly CONTROL_PORT=8086
readonly LOAD_SECONDS="${E2E_LOAD_SECONDS:-15}"
readonly LOAD_CONNECTIONS="${E2E_LOAD_CONNECTIONS:-16}"

# pod name -> cluster, namespace, service account, address
declare -A POD_CLUSTER=([client]=east [web-1]=west [web-2]=west [gateway]=west)
declare -A POD_NS=([client]=shop [web-1]=shop [web-2]=shop [gateway]="$GW_NS")
declare -A POD_SA=([client]=client [web-1]=web [web-2]=web [gateway]="$GW_SA")
declare -A POD_IP=([client]=10.251.1.10 [web-1]=10.251.2.11 [web-2]=10.251.2.12 [gateway]=10.251.2.100)
readonly PODS=(client web-1 web-2 gateway)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: FAILED: %s\n' "$PROG" "$*" >&2
    exit 1
}
ok() { printf '%s: ok: %s\n' "$PROG" "$*" >&2; }

identity_of() { echo "${POD_SA[$1]}.${POD_NS[$1]}.serviceaccount.identity.${CP_NS}.${TRUST_DOMAIN}"; }
netns_of() { echo "${NS_PREFIX}-$1"; }
in_ns() {
    local pod=$1
    shift
    ip netns exec "$(netns_of "$pod")" "$@"
}

# ---------------------------------------------------------------------------
# cleanup
# ---------------------------------------------------------------------------

clean_network() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_PREFIX}-" || true); do
        # Processes left in a namespace keep it busy: end them by their namespace, nothing else.
        local pids
        pids="$(ip netns pids "$ns" 2>/dev/null || true)"
        [[ -n "$pids" ]] && kill $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$HOST_IF" 2>/dev/null || true
}

STARTED_PIDS=()
cleanup() {
    local rc=$?
    set +e
    if [[ "${E2E_KEEP:-0}" == 1 ]]; then
        log "E2E_KEEP=1: left running; logs in $E2E_DIR"
        return
    fi
    local pid
    for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${STARTED_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    clean_network
    [[ -d "$E2E_DIR/k8s" ]] && "$REPO/scripts/k8s-test-env.sh" down "$E2E_DIR/k8s" >/dev/null 2>&1
    if [[ $rc -ne 0 ]]; then
        log "logs are in $E2E_DIR"
    fi
}

# Runs a process in the background (optionally in a pod's namespace), logging to a file.
spawn() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    STARTED_PIDS+=("$!")
}

# ---------------------------------------------------------------------------
# prerequisites
# ---------------------------------------------------------------------------

need_tools() {
    [[ $EUID -eq 0 ]] || die "must run as root (network namespaces, nftables)"
    local -A pkg=([nft]=nftables [socat]=socat [nginx]=nginx-light [wrk]=wrk [curl]=curl [jq]=jq [openssl]=openssl)
    local missing=() cmd
    for cmd in "${!pkg[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg[$cmd]}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]}"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            die "could not install ${missing[*]}"
    fi
    for cmd in ip kubectl python3; do
        command -v "$cmd" >/dev/null 2>&1 || die "required command '$cmd' not found"
    done
    [[ -n "${LINKERD2_PROXY_BIN:-}" ]] ||
        die "LINKERD2_PROXY_BIN is not set: build linkerd2-proxy from its own source (github.com/linkerd/linkerd2-proxy) and point it at the binary"
    [[ -x "$LINKERD2_PROXY_BIN" ]] || die "LINKERD2_PROXY_BIN=$LINKERD2_PROXY_BIN is not an executable"
    if [[ -z "${MESHLINK_BIN:-}" ]]; then
        log "building meshlink (cargo build --bin meshlink)"
        (cd "$REPO" && cargo build --bin meshlink --quiet) || die "cargo build failed"
        MESHLINK_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/meshlink"
    fi
    [[ -x "$MESHLINK_BIN" ]] || die "MESHLINK_BIN=$MESHLINK_BIN is not an executable"
    if ip netns list | grep -q "^${NS_PREFIX}-"; then
        die "namespaces ${NS_PREFIX}-* exist: another run is active, or run '$0 clean'"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for WHAT SECONDS CMD...: retries CMD every 0.5 s until it succeeds or the deadline.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------
# clusters: API servers and objects
# ---------------------------------------------------------------------------

kc() {
    local cluster=$1
    shift
    kubectl --kubeconfig "$E2E_DIR/k8s/$cluster/kubeconfig" --request-timeout=20s "$@"
}

pod_yaml() {
    local pod=$1 node=$2
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: ${POD_NS[$pod]}
  labels:
    app: $( [[ $pod == web-* ]] && echo web || echo "$pod")
    linkerd.io/control-plane-ns: $CP_NS
spec:
  serviceAccountName: ${POD_SA[$pod]}
  nodeName: $node
  containers:
  - name: app
    image: nginx
    ports:
    - {name: http, containerPort: $APP_PORT}
  - name: linkerd-proxy
    image: linkerd2-proxy
    env:
    - {name: LINKERD2_PROXY_INBOUND_LISTEN_ADDR, value: "0.0.0.0:$INBOUND_PORT"}
EOF
}

set_pod_running() {
    local cluster=$1 pod=$2
    kc "$cluster" -n "${POD_NS[$pod]}" patch pod "$pod" --subresource=status --type=merge -p "$(
        jq -cn --arg ip "${POD_IP[$pod]}" '{status: {phase: "Running", podIP: $ip, podIPs: [{ip: $ip}],
            conditions: [{type: "Ready", status: "True"}]}}'
    )" >/dev/null
}

# The EndpointSlice of a west Service over the given pods (what the controller would write).
web_slice_yaml() {
    local svc=$1
    shift
    cat <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $svc-e2e
  namespace: shop
  labels: {kubernetes.io/service-name: $svc}
addressType: IPv4
ports:
- {name: http, port: $APP_PORT, protocol: TCP}
endpoints:
EOF
    local pod
    for pod in "$@"; do
        cat <<EOF
- addresses: ["${POD_IP[$pod]}"]
  conditions: {ready: true}
  nodeName: node-west
  targetRef: {kind: Pod, namespace: shop, name: $pod}
EOF
    done
    [[ $# -gt 0 ]] || echo "  []"
}

start_clusters() {
    log "starting API servers east and west"
    "$REPO/scripts/k8s-test-env.sh" up "$E2E_DIR/k8s" east west >"$E2E_DIR/k8s-up.log" 2>&1 ||
        die "API servers did not start (see $E2E_DIR/k8s-up.log)"
    local c
    for c in east west; do
        kc "$c" create namespace shop >/dev/null
        kc "$c" create namespace "$CP_NS" >/dev/null
    done
    kc west create namespace "$GW_NS" >/dev/null
    kc east -n shop create serviceaccount client >/dev/null
    kc west -n shop create serviceaccount web >/dev/null
    kc west -n "$GW_NS" create serviceaccount "$GW_SA" >/dev/null
    kc east apply -f "$REPO/deploy/crds/link.yaml" >/dev/null
    kc west apply -k "$REPO/deploy/remote-access/" >/dev/null

    kc east apply -f - >/dev/null <<<"$(pod_yaml client node-east)"
    local pod
    for pod in web-1 web-2 gateway; do
        kc west apply -f - >/dev/null <<<"$(pod_yaml "$pod" node-west)"
    done
    set_pod_running east client
    for pod in web-1 web-2 gateway; do set_pod_running west "$pod"; done

    # web: mirrored pod-to-pod (remote discovery); web-gw: the same pods through the gateway.
    kc west apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {mirror.linkerd.io/exported: remote-discovery}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: $APP_PORT}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-gw
  namespace: shop
  labels: {mirror.linkerd.io/exported: "true"}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: $APP_PORT}]
EOF
    kc west apply -f - >/dev/null <<<"$(web_slice_yaml web web-1 web-2)"
    kc west apply -f - >/dev/null <<<"$(web_slice_yaml web-gw web-1 web-2)"
}

# ---------------------------------------------------------------------------
# identity: one trust anchor, an issuer per cluster, a key and CSR per proxy
# ---------------------------------------------------------------------------

make_pki() {
    local d="$E2E_DIR/pki"
    mkdir -p "$d"
    (
        cd "$d"
        openssl ecparam -name prime256v1 -genkey -noout -out root.ec.key
        openssl pkcs8 -topk8 -nocrypt -in root.ec.key -out root.key
        openssl req -x509 -new -key root.key -sha256 -days 2 -subj "/CN=root.${CP_NS}.${TRUST_DOMAIN}" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out anchors.pem
        printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >issuer.ext
        local c
        for c in east west; do
            openssl ecparam -name prime256v1 -genkey -noout -out "issuer-$c.ec.key"
            openssl pkcs8 -topk8 -nocrypt -in "issuer-$c.ec.key" -out "issuer-$c.key"
            openssl req -new -key "issuer-$c.key" -subj "/CN=identity.${CP_NS}.${TRUST_DOMAIN}" -out "issuer-$c.csr"
            openssl x509 -req -in "issuer-$c.csr" -CA anchors.pem -CAkey root.key -CAcreateserial -days 2 \
                -sha256 -extfile issuer.ext -out "issuer-$c.pem"
        done
    ) >"$E2E_DIR/pki.log" 2>&1 || die "openssl failed (see $E2E_DIR/pki.log)"
}

# The proxy's identity directory: key.p8 (PKCS#8 DER, P-256), csr.der and a service account token.
make_proxy_identity() {
    local pod=$1 dir="$E2E_DIR/pods/$1/identity" id
    id="$(identity_of "$pod")"
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl ecparam -name prime256v1 -genkey -noout -out key.pem
        openssl pkcs8 -topk8 -nocrypt -in key.pem -outform DER -out key.p8
        openssl req -new -key key.pem -subj "/" -addext "subjectAltName=DNS:$id" -outform DER -out csr.der
    ) >>"$E2E_DIR/pki.log" 2>&1 || die "openssl failed for $pod (see $E2E_DIR/pki.log)"
    kc "${POD_CLUSTER[$pod]}" -n "${POD_NS[$pod]}" create token "${POD_SA[$pod]}" --duration=2h \
        --audience=identity.l5d.io >"$dir/token" || die "no token for $pod"
}

# ---------------------------------------------------------------------------
# meshlink
# ---------------------------------------------------------------------------

declare -A GRPC_PORT ADMIN_PORT_OF
start_meshlink() {
    local c
    for c in east west; do
        GRPC_PORT[$c]="$(free_port)"
        ADMIN_PORT_OF[$c]="$(free_port)"
        spawn "$E2E_DIR/meshlink-$c.log" "$MESHLINK_BIN" serve \
            --kubeconfig "$E2E_DIR/k8s/$c/kubeconfig" --cluster-name "$c" \
            --grpc-addr "127.0.0.1:${GRPC_PORT[$c]}" --admin-addr "127.0.0.1:${ADMIN_PORT_OF[$c]}" \
            --trust-domain "$TRUST_DOMAIN" --control-plane-namespace "$CP_NS" \
            --identity-trust-anchors "$E2E_DIR/pki/anchors.pem" \
            --identity-issuer-cert "$E2E_DIR/pki/issuer-$c.pem" \
            --identity-issuer-key "$E2E_DIR/pki/issuer-$c.key"
    done
    for c in east west; do
        wait_for "meshlink serve ($c) /ready" 60 curl -fsS "http://127.0.0.1:${ADMIN_PORT_OF[$c]}/ready"
    done
    ok "meshlink serve is ready for east and west"

    log "linking west into east (meshlink link | kubectl apply), starting meshlink mirror"
    "$MESHLINK_BIN" link --cluster-name west --kubeconfig "$E2E_DIR/k8s/west/kubeconfig" \
        --trust-domain "$TRUST_DOMAIN" --gateway-addresses "${POD_IP[gateway]}" \
        --gateway-port "$INBOUND_PORT" --gateway-identity "$(identity_of gateway)" \
        >"$E2E_DIR/link.yaml" 2>"$E2E_DIR/link.log" || die "meshlink link failed (see $E2E_DIR/link.log)"
    kc east apply -f "$E2E_DIR/link.yaml" >/dev/null
    spawn "$E2E_DIR/meshlink-mirror.log" "$MESHLINK_BIN" mirror \
        --kubeconfig "$E2E_DIR/k8s/east/kubeconfig" --namespace "$CP_NS" \
        --admin-addr "127.0.0.1:$(free_port)" --leader-election false
    wait_for "mirror Services web-west and web-gw-west in east" 60 \
        kc east -n shop get service web-west web-gw-west
    WEB_WEST_IP="$(kc east -n shop get service web-west -o jsonpath='{.spec.clusterIP}')"
    WEB_GW_WEST_IP="$(kc east -n shop get service web-gw-west -o jsonpath='{.spec.clusterIP}')"
    ok "east mirrors web-west ($WEB_WEST_IP) and web-gw-west ($WEB_GW_WEST_IP)"
}

# ---------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------

setup_network() {
    log "network namespaces on 10.251.0.0/$PREFIX_LEN"
    ip netns add "$FABRIC"
    ip -n "$FABRIC" link set lo up
    ip -n "$FABRIC" link add br0 type bridge
    ip -n "$FABRIC" link set br0 up

    ip link add "$HOST_IF" type veth peer name f-host netns "$FABRIC"
    ip -n "$FABRIC" link set f-host master br0 up
    ip addr add "$HOST_ADDR/$PREFIX_LEN" dev "$HOST_IF"
    ip link set "$HOST_IF" up

    local pod ns
    for pod in "${PODS[@]}"; do
        ns="$(netns_of "$pod")"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add eth0 netns "$ns" type veth peer name "f-$pod" netns "$FABRIC"
        ip -n "$FABRIC" link set "f-$pod" master br0 up
        ip -n "$ns" addr add "${POD_IP[$pod]}/$PREFIX_LEN" dev eth0
        ip -n "$ns" link set eth0 up
        # The service range needs a route so that the OUTPUT hook sees it; nothing is sent there.
        ip -n "$ns" route add default dev eth0
    done

    # The client's outbound traffic to Services goes to its proxy (SO_ORIGINAL_DST from conntrack).
    in_ns client nft -f - <<EOF
table ip meshlink_e2e {
    chain output {
        type nat hook output priority -100; policy accept;
        ip daddr $SERVICE_CIDR meta l4proto tcp redirect to :$OUTBOUND_PORT
    }
}
EOF
    # The gateway is dialled at its inbound port itself; redirecting that port to itself makes
    # conntrack record the connection, which the proxy's SO_ORIGINAL_DST needs (ENOENT without).
    in_ns gateway nft -f - <<EOF
table ip meshlink_e2e {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        tcp dport $INBOUND_PORT redirect to :$INBOUND_PORT
    }
}
EOF
    # Traffic arriving for a web pod's app port goes to its proxy's inbound port.
    for pod in web-1 web-2; do
        in_ns "$pod" nft -f - <<EOF
table ip meshlink_e2e {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        tcp dport $APP_PORT redirect to :$INBOUND_PORT
    }
}
EOF
    done
}

# Each pod's 127.0.0.1:8086 reaches its cluster's meshlink through a Unix socket.
start_relays() {
    mkdir -p "$E2E_DIR/sock"
    local c pod sock
    for c in east west; do
        sock="$E2E_DIR/sock/$c.sock"
        spawn "$E2E_DIR/relay-$c.log" socat "UNIX-LISTEN:$sock,fork,mode=600" "TCP:127.0.0.1:${GRPC_PORT[$c]}"
        wait_for "relay socket $sock" 10 test -S "$sock"
    done
    for pod in "${PODS[@]}"; do
        sock="$E2E_DIR/sock/${POD_CLUSTER[$pod]}.sock"
        spawn "$E2E_DIR/pods/$pod/relay.log" ip netns exec "$(netns_of "$pod")" \
            socat "TCP-LISTEN:$CONTROL_PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$sock"
    done
}

# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------

start_nginx() {
    local pod=$1 dir="$E2E_DIR/pods/$1/nginx"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    server {
        listen ${POD_IP[$pod]}:$APP_PORT;
        listen ${POD_IP[$pod]}:$DIRECT_PORT;
        location / { default_type text/plain; return 200 "$pod\n"; }
    }
}
EOF
    spawn "$E2E_DIR/pods/$pod/nginx.log" ip netns exec "$(netns_of "$pod")" nginx -p "$dir" -c "$dir/nginx.conf"
    NGINX_PID[$pod]="${STARTED_PIDS[-1]}"
}

declare -A NGINX_PID PROXY_PID
start_proxy() {
    local pod=$1 id anchors
    id="$(identity_of "$pod")"
    anchors="$(cat "$E2E_DIR/pki/anchors.pem")"
    local env=(
        "LINKERD2_PROXY_LOG=warn,linkerd=info"
        "LINKERD2_PROXY_LOG_FORMAT=plain"
        "LINKERD2_PROXY_DESTINATION_SVC_ADDR=127.0.0.1:$CONTROL_PORT"
        "LINKERD2_PROXY_POLICY_SVC_ADDR=127.0.0.1:$CONTROL_PORT"
        "LINKERD2_PROXY_IDENTITY_SVC_ADDR=127.0.0.1:$CONTROL_PORT"
        "LINKERD2_PROXY_POLICY_WORKLOAD={\"ns\":\"${POD_NS[$pod]}\",\"pod\":\"$pod\"}"
        "LINKERD2_PROXY_DESTINATION_CONTEXT={\"ns\":\"${POD_NS[$pod]}\",\"nodeName\":\"node-${POD_CLUSTER[$pod]}\",\"pod\":\"$pod\"}"
        "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES=svc.cluster.local."
        "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS=10.0.0.0/8"
        "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS=10.0.0.0/8"
        "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY=all-unauthenticated"
        "LINKERD2_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:$INBOUND_PORT"
        "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:$OUTBOUND_PORT"
        "LINKERD2_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:$ADMIN_PORT"
        "LINKERD2_PROXY_CONTROL_LISTEN_ADDR=0.0.0.0:4190"
        "LINKERD2_PROXY_INBOUND_IPS=${POD_IP[$pod]}"
        "LINKERD2_PROXY_IDENTITY_DIR=$E2E_DIR/pods/$pod/identity"
        "LINKERD2_PROXY_IDENTITY_TOKEN_FILE=$E2E_DIR/pods/$pod/identity/token"
        "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS=$anchors"
        "LINKERD2_PROXY_IDENTITY_LOCAL_NAME=$id"
        "HOSTNAME=$pod"
    )
    case $pod in
    web-*) env+=("LINKERD2_PROXY_INBOUND_PORTS=$APP_PORT") ;;
    gateway) env+=("LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES=svc.cluster.local.") ;;
    esac
    spawn "$E2E_DIR/pods/$pod/proxy.log" ip netns exec "$(netns_of "$pod")" env -i "${env[@]}" "$LINKERD2_PROXY_BIN"
    PROXY_PID[$pod]="${STARTED_PIDS[-1]}"
}

start_workloads() {
    local pod
    for pod in "${PODS[@]}"; do
        mkdir -p "$E2E_DIR/pods/$pod"
        make_proxy_identity "$pod"
    done
    for pod in web-1 web-2; do start_nginx "$pod"; done
    start_relays
    for pod in "${PODS[@]}"; do start_proxy "$pod"; done
    for pod in "${PODS[@]}"; do
        wait_for "$pod's proxy /ready (identity certified)" 60 \
            in_ns "$pod" curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready"
    done
    ok "every proxy is ready: each was certified by its cluster's meshlink"
}

# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

proxy_metrics() { in_ns "$1" curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"; }

# request FROM_POD HOST IP: one GET through the client's proxy; prints "<code> <body>".
request() {
    in_ns "$1" curl -sS --max-time 5 -H "Host: $2" -o - -w ' %{http_code}\n' "http://$3/" 2>&1 | tr -d '\n'
    echo
}

# Sends N requests; dies unless all succeed and every pod in the rest of the arguments answered.
expect_answers() {
    local what=$1 host=$2 ip=$3 n=$4
    shift 4
    local i out failures=0
    local -A seen=()
    for ((i = 0; i < n; i++)); do
        out="$(request client "$host" "$ip")"
        if [[ "$out" =~ ^([a-z0-9-]+)\ 200$ ]]; then
            seen[${BASH_REMATCH[1]}]=1
        else
            failures=$((failures + 1))
            log "$what: request $i: $out"
        fi
    done
    ((failures == 0)) || die "$what: $failures of $n requests failed"
    local pod
    for pod in "$@"; do
        [[ -n "${seen[$pod]:-}" ]] || die "$what: no answer from $pod in $n requests (seen: ${!seen[*]})"
    done
    ok "$what: $n of $n requests answered, by ${!seen[*]}"
}

# Whether POD's proxy metrics have a TLS inbound series from client identity ID.
saw_client_id() {
    local pod=$1 id=$2
    proxy_metrics "$pod" | grep -E '^inbound_http_authz_allow_total\{' | grep -F "client_id=\"$id\"" | grep -qF 'tls="true"'
}

check_pod_to_pod() {
    expect_answers "pod-to-pod (web-west.shop.svc.cluster.local)" \
        web-west.shop.svc.cluster.local "$WEB_WEST_IP" 40 web-1 web-2
    local pod
    for pod in web-1 web-2; do
        saw_client_id "$pod" "$(identity_of client)" ||
            die "$pod's proxy shows no TLS request from $(identity_of client): $(proxy_metrics "$pod" | grep -E '^inbound_http_authz_allow_total' | head -5)"
    done
    ok "web-1 and web-2 proxies saw the client's identity $(identity_of client) over TLS"
}

# Whether east's mirror EndpointSlice of web-gw-west says the gateway is ready (probe alive).
gateway_mirror_ready() {
    [[ "$(kc east -n shop get endpointslices -l kubernetes.io/service-name=web-gw-west \
        -o jsonpath='{.items[*].endpoints[*].conditions.ready}')" == true ]]
}

check_gateway() {
    wait_for "east's mirror of web-gw-west to mark the gateway ready" 30 gateway_mirror_ready
    expect_answers "gateway (web-gw-west.shop.svc.cluster.local)" \
        web-gw-west.shop.svc.cluster.local "$WEB_GW_WEST_IP" 40 web-1 web-2
    saw_client_id gateway "$(identity_of client)" ||
        die "the gateway's proxy shows no TLS request from $(identity_of client)"
    local pod
    for pod in web-1 web-2; do
        saw_client_id "$pod" "$(identity_of gateway)" ||
            die "$pod's proxy shows no TLS request from the gateway $(identity_of gateway)"
    done
    ok "the gateway saw the client's identity; web-1 and web-2 saw the gateway's $(identity_of gateway)"
}

# Whether the client's proxy balances over exactly N ready endpoints for SERVICE (its metrics).
balancer_ready_is() {
    local n
    n="$(proxy_metrics client | grep -E '^outbound_http_balancer_endpoints\{' | grep -F "name=\"$1\"" |
        grep -F 'endpoint_state="ready"' | awk '{s += $NF} END {print s + 0}')"
    [[ "$n" == "$2" ]]
}

check_failover() {
    log "failover: requests flow while web-1 leaves the EndpointSlice and is killed"
    local out="$E2E_DIR/failover.txt"
    : >"$out"
    # Requests in the background until told to stop (bounded: at most 60 s).
    (
        local deadline=$((SECONDS + 60))
        while [[ ! -e "$E2E_DIR/failover.stop" ]] && ((SECONDS < deadline)); do
            echo "$(date +%s.%N) $(request client web-west.shop.svc.cluster.local "$WEB_WEST_IP")" >>"$out"
            sleep 0.02
        done
    ) &
    local loop=$!
    sleep 2
    # What Kubernetes does when a pod is deleted: it leaves the EndpointSlice, then its
    # containers are stopped after the grace period.
    kc west apply -f - >/dev/null <<<"$(web_slice_yaml web web-2)"
    kc west -n shop delete pod web-1 --wait=false >/dev/null
    wait_for "the client's proxy to balance over web-2 alone" 30 balancer_ready_is web-west 1
    local killed_at
    killed_at="$(date +%s.%N)"
    kill -KILL "${PROXY_PID[web-1]}" "${NGINX_PID[web-1]}" 2>/dev/null || true
    sleep 3
    touch "$E2E_DIR/failover.stop"
    wait "$loop" || true
    local total failed after from_web1_after
    total="$(wc -l <"$out")"
    failed="$(grep -cv ' 200$' "$out" || true)"
    after="$(awk -v t="$killed_at" '$1 > t' "$out" | wc -l)"
    from_web1_after="$(awk -v t="$killed_at" '$1 > t && $2 == "web-1"' "$out" | wc -l)"
    ((failed == 0)) || die "failover: $failed of $total requests failed: $(grep -v ' 200$' "$out" | head -3)"
    ((after > 0)) || die "failover: no request was sent after web-1 was killed"
    ((from_web1_after == 0)) || die "failover: web-1 answered after it was killed?"
    grep -q ' web-1 200$' "$out" || die "failover: web-1 never answered before it left"
    ok "failover: $total of $total requests succeeded ($after after web-1 was killed, all by web-2)"
}

# wrk NAME CONNECTIONS HOST URL: one load run from the client's namespace; appends a table row.
run_load() {
    local name=$1 conns=$2 host=$3 url=$4 threads=1
    ((conns > 1)) && threads=2
    local out="$E2E_DIR/wrk-${name// /-}-c$conns.txt"
    in_ns client wrk -t"$threads" -c"$conns" -d"${LOAD_SECONDS}s" --latency -H "Host: $host" "$url" >"$out" 2>&1 ||
        die "wrk failed: $(cat "$out")"
    local p50 p99 rps errors non2xx
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    rps="$(awk '$1 == "Requests/sec:" {printf "%.0f", $2}' "$out")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$out")"
    errors="$(awk '/Socket errors/ {print $0}' "$out")"
    [[ -z "$non2xx" && -z "$errors" ]] || die "load $name: errors: $non2xx $errors"
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$conns" "$p50" "$p99" "$rps" >>"$E2E_DIR/results.md"
    ok "load $name, $conns connection(s): p50 $p50, p99 $p99, $rps requests/s"
}

check_load() {
    {
        echo "| path | connections | p50 | p99 | requests/s |"
        echo "|---|---|---|---|---|"
    } >"$E2E_DIR/results.md"
    local host=web-west.shop.svc.cluster.local
    run_load "client proxy -> web-2 proxy (mTLS)" 1 "$host" "http://$WEB_WEST_IP/"
    run_load "client proxy -> web-2 proxy (mTLS)" "$LOAD_CONNECTIONS" "$host" "http://$WEB_WEST_IP/"
    run_load "no proxy (nginx directly)" 1 "$host" "http://${POD_IP[web-2]}:$DIRECT_PORT/"
    run_load "no proxy (nginx directly)" "$LOAD_CONNECTIONS" "$host" "http://${POD_IP[web-2]}:$DIRECT_PORT/"
    {
        echo
        echo "wrk ${LOAD_SECONDS}s per row; CPU: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $(nproc) cores"
    } >>"$E2E_DIR/results.md"
}

# ---------------------------------------------------------------------------

main() {
    case "${1:-run}" in
    clean)
        clean_network
        exit 0
        ;;
    run) ;;
    *) die "unknown command '$1' (run or clean)" ;;
    esac
    need_tools
    E2E_DIR="${E2E_DIR:-$(mktemp -d /tmp/meshlink-e2e.XXXXXX)}"
    mkdir -p "$E2E_DIR"
    trap cleanup EXIT
    log "work directory $E2E_DIR"
    start_clusters
    make_pki
    setup_network
    start_meshlink
    start_workloads
    check_pod_to_pod
    check_gateway
    check_failover
    check_load
    echo
    cat "$E2E_DIR/results.md"
    echo
    ok "all checks passed"
}

main "$@"
