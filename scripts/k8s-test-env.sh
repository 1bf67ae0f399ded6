#!/usr/bin/env bash
#
# k8s-test-env.sh - run real Kubernetes API servers (kube-apiserver + etcd) on
# loopback for meshlink's integration tests. No cluster, kubelet, scheduler,
# controller-manager or container runtime is involved: only the API server and
# its storage, which is all a control plane that watches the API needs.
#
# Usage:
#   scripts/k8s-test-env.sh build
#       Build kube-apiserver and etcd from source with the local Go toolchain
#       (modules come from the Go module proxy) and cache them in
#         ${MESHLINK_K8S_CACHE:-$HOME/.cache/meshlink/k8s}/<k8s>-<etcd>/bin/
#       Does nothing when both binaries are already cached. Needs Go >= 1.24;
#       takes about 5 minutes on 2 cores and ~700 MB in Go's module cache.
#
#   scripts/k8s-test-env.sh bin-dir
#       Print the cache directory holding the binaries.
#
#   scripts/k8s-test-env.sh up DIR CLUSTER [CLUSTER ...]
#       Start one etcd and one kube-apiserver per CLUSTER, on 127.0.0.1 only,
#       with free ports, and wait until each API server's /readyz is ok.
#       Builds the binaries first if they are not cached yet. A stopped
#       cluster's directory is wiped and made anew. Writes:
#         DIR/clusters                 cluster names, one per line
#         DIR/<cluster>/kubeconfig     admin kubeconfig (CA + client cert embedded)
#         DIR/<cluster>/env            KEY=VALUE lines: APISERVER_URL, ports,
#                                      pids, log paths, cert paths, KUBECONFIG
#         DIR/<cluster>/pki/           ca.crt, admin.crt, admin.key (for curl)
#         DIR/<cluster>/*.log          etcd.log, kube-apiserver.log
#         DIR/<cluster>/*.pid          etcd.pid, kube-apiserver.pid
#
#   scripts/k8s-test-env.sh down DIR
#       Stop every process started under DIR (API servers first, then etcd;
#       SIGTERM, SIGKILL for an API server still up after 5s) and wait for
#       them to exit. Logs and data are left in place.
#
#   scripts/k8s-test-env.sh stop-apiserver DIR CLUSTER
#   scripts/k8s-test-env.sh kill-apiserver DIR CLUSTER
#   scripts/k8s-test-env.sh start-apiserver DIR CLUSTER
#   scripts/k8s-test-env.sh restart-apiserver DIR CLUSTER
#       Stop (SIGTERM) / kill (SIGKILL, a crash) / start / restart only the
#       API server of CLUSTER. It comes back with the same flags, port and
#       etcd, so all API state survives. start/restart wait for /readyz.
#       All of them rewrite DIR/<cluster>/env (APISERVER_PID).
#       On SIGTERM kube-apiserver stops listening at once but keeps open
#       watches until it exits, which with a watching client takes until
#       MESHLINK_K8S_STOP_TIMEOUT and SIGKILL; kill-apiserver drops every
#       connection immediately.
#
#   scripts/k8s-test-env.sh status DIR
#       Show whether each process under DIR is running.
#
# Example (what an integration test does):
#   scripts/k8s-test-env.sh up /tmp/k8senv east west
#   . /tmp/k8senv/east/env
#   curl --cacert "$CA_CERT" --cert "$CLIENT_CERT" --key "$CLIENT_KEY" \
#        "$APISERVER_URL/api/v1/namespaces"
#   scripts/k8s-test-env.sh down /tmp/k8senv
#
# Environment:
#   MESHLINK_K8S_CACHE          binary cache root (default ~/.cache/meshlink/k8s)
#   MESHLINK_K8S_VERSION        k8s.io/kubernetes version (default v1.34.4)
#   MESHLINK_ETCD_VERSION       go.etcd.io/etcd/server/v3 version (default v3.6.8)
#   MESHLINK_K8S_READY_TIMEOUT  seconds to wait for /readyz (default 180)
#   MESHLINK_K8S_STOP_TIMEOUT   seconds from SIGTERM to SIGKILL for stop-apiserver,
#                               restart-apiserver and etcd (default 15)
#   MESHLINK_K8S_APISERVER_EXTRA_ARGS
#                               extra kube-apiserver flags (whitespace separated),
#                               stored at `up` and reused by start-apiserver
#   MESHLINK_K8S_AUDIT          1: each API server writes an audit log of its list and
#                               watch requests (who, verb, resource; JSON lines) to
#                               DIR/<cluster>/audit.log, e.g. to count LISTs (set at `up`)
#
# Notes on the API servers it runs:
#   * authorization is RBAC; the admin client cert is in group system:masters.
#   * the ServiceAccount admission plugin is disabled: nothing creates the
#     "default" ServiceAccount here, and Pods could not be created without it.
#   * there is no controller-manager: Endpoints/EndpointSlices are only what
#     tests write themselves, and a deleted Namespace stays "Terminating".
#   * the Service cluster IP range is 10.96.0.0/16; it is only a config value,
#     nothing is ever sent there.

set -euo pipefail

readonly K8S_VERSION="${MESHLINK_K8S_VERSION:-v1.34.4}"
readonly ETCD_VERSION="${MESHLINK_ETCD_VERSION:-v3.6.8}"
readonly CACHE_ROOT="${MESHLINK_K8S_CACHE:-${HOME}/.cache/meshlink/k8s}"
readonly BIN_DIR="${CACHE_ROOT}/${K8S_VERSION}-${ETCD_VERSION}/bin"
readonly APISERVER_BIN="${BIN_DIR}/kube-apiserver"
readonly ETCD_BIN="${BIN_DIR}/etcd"
readonly READY_TIMEOUT="${MESHLINK_K8S_READY_TIMEOUT:-180}"
readonly STOP_TIMEOUT="${MESHLINK_K8S_STOP_TIMEOUT:-15}"
readonly DOWN_APISERVER_TIMEOUT=5
readonly SERVICE_CIDR="10.96.0.0/16"
readonly SERVICE_FIRST_IP="10.96.0.1"
readonly LOOPBACK="127.0.0.1"
# Ports are drawn from below Linux's default ephemeral range (32768-60999),
# so outgoing connections do not grab them between choosing and binding.
readonly PORT_MIN=20000
readonly PORT_SPAN=12000

PROG="$(basename "$0")"
readonly PROG

usage() {
    # Print the comment block at the top of this file.
    sed -n '3,/^$/{s/^# \{0,1\}//;p}' "$0"
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "required command '$1' not found in PATH${2:+ ($2)}"
}

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------

binaries_cached() {
    [[ -x "$APISERVER_BIN" && -x "$ETCD_BIN" ]]
}

# go_step LOGFILE DESCRIPTION CMD...: run a go command (niced), log its output,
# and on failure name the step and show the end of the log.
go_step() {
    local logfile=$1 what=$2
    shift 2
    printf '\n=== %s\n+ %s\n' "$what" "$*" >>"$logfile"
    if ! nice -n 19 "$@" >>"$logfile" 2>&1; then
        printf '%s: error: build step failed: %s\n' "$PROG" "$what" >&2
        printf '%s: command: %s\n' "$PROG" "$*" >&2
        printf '%s: last 40 lines of %s:\n' "$PROG" "$logfile" >&2
        tail -n 40 "$logfile" >&2
        exit 1
    fi
}

build_etcd() {
    local dir=$1 out=$2 logfile=$3
    mkdir -p "$dir"
    (
        cd "$dir"
        go_step "$logfile" "etcd: create build module" go mod init meshlink.invalid/etcd-build
        go_step "$logfile" "etcd: resolve go.etcd.io/etcd/server/v3@${ETCD_VERSION}" \
            go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
        go_step "$logfile" "etcd: compile" \
            env GOFLAGS=-trimpath go build -ldflags='-s -w' -o "$out" go.etcd.io/etcd/server/v3
    )
}

build_apiserver() {
    local dir=$1 out=$2 logfile=$3
    # The staging repos (k8s.io/api, k8s.io/client-go, ...) are published as
    # v0.X.Y for Kubernetes v1.X.Y.
    local staging_version="v0.${K8S_VERSION#v1.}"
    local minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    local pkg="k8s.io/kubernetes/cmd/kube-apiserver"
    local vpkg="k8s.io/component-base/version"
    local ldflags="-s -w"
    ldflags+=" -X ${vpkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${vpkg}.gitMajor=1 -X ${vpkg}.gitMinor=${minor}"
    ldflags+=" -X ${vpkg}.gitTreeState=clean"
    ldflags+=" -X ${vpkg}.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    mkdir -p "$dir"
    (
        cd "$dir"
        go_step "$logfile" "kube-apiserver: create build module" \
            go mod init meshlink.invalid/kube-apiserver-build
        go_step "$logfile" "kube-apiserver: download k8s.io/kubernetes@${K8S_VERSION} go.mod" \
            go mod download "k8s.io/kubernetes@${K8S_VERSION}"
        local k8s_gomod
        k8s_gomod="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" |
            sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
        [[ -f "$k8s_gomod" ]] || die "kube-apiserver: could not locate go.mod of k8s.io/kubernetes@${K8S_VERSION}"
        # k8s.io/kubernetes points its staging modules at ./staging/... with
        # replace directives, which do not apply to a module that imports it.
        # Point each of them at its published version instead.
        local staged=() mod
        mapfile -t staged < <(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$k8s_gomod")
        ((${#staged[@]} > 0)) || die "kube-apiserver: found no staging replace directives in $k8s_gomod"
        for mod in "${staged[@]}"; do
            go mod edit "-replace=${mod}=${mod}@${staging_version}"
        done
        printf '\n=== kube-apiserver: %d staging modules replaced with %s\n' \
            "${#staged[@]}" "$staging_version" >>"$logfile"
        go_step "$logfile" "kube-apiserver: resolve ${pkg}@${K8S_VERSION}" \
            go get "${pkg}@${K8S_VERSION}"
        go_step "$logfile" "kube-apiserver: compile" \
            env GOFLAGS=-trimpath go build -ldflags="$ldflags" -o "$out" "$pkg"
    )
}

cmd_build() {
    if binaries_cached; then
        log "using cached kube-apiserver ${K8S_VERSION} and etcd ${ETCD_VERSION} in ${BIN_DIR}"
        return 0
    fi
    need_cmd go "install Go to build kube-apiserver and etcd"
    need_cmd nice
    mkdir -p "$BIN_DIR"

    # Serialise concurrent builds of the same versions.
    if ! take_lock "${BIN_DIR}/../build.lock" 3600; then
        die "timed out after 3600s waiting for another build of the same versions (lock ${BIN_DIR}/../build.lock)"
    fi
    if binaries_cached; then
        release_lock
        log "binaries were built by a concurrent run: ${BIN_DIR}"
        return 0
    fi

    local logfile
    logfile="$(cd "${BIN_DIR}/.." && pwd)/build.log"
    : >"$logfile"
    local work
    work="$(mktemp -d "${TMPDIR:-/tmp}/meshlink-k8s-build.XXXXXX")"
    BUILD_WORK_DIR=$work

    # A predictable toolchain environment: no workspace, no toolchain
    # download, no cgo, no inherited GOFLAGS (e.g. -mod=vendor). The compile
    # cache (over 2 GB for kube-apiserver) lives in the temporary directory
    # and goes away with it: only the two binaries are worth keeping. Module
    # downloads stay in the usual shared module cache.
    export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS='' GOCACHE="$work/gocache"
    log "building with $(go version) under 'nice -n 19'; log: ${logfile}"

    local start=$SECONDS
    if [[ ! -x "$ETCD_BIN" ]]; then
        log "building etcd ${ETCD_VERSION} ..."
        build_etcd "$work/etcd" "$work/etcd.bin" "$logfile"
        mv -f "$work/etcd.bin" "$ETCD_BIN"
        log "etcd built ($((SECONDS - start))s)"
    fi
    if [[ ! -x "$APISERVER_BIN" ]]; then
        log "building kube-apiserver ${K8S_VERSION} (takes a while on a small machine) ..."
        build_apiserver "$work/kube-apiserver" "$work/kube-apiserver.bin" "$logfile"
        mv -f "$work/kube-apiserver.bin" "$APISERVER_BIN"
        log "kube-apiserver built ($((SECONDS - start))s)"
    fi
    "$ETCD_BIN" --version >/dev/null 2>&1 || die "built etcd does not run: $ETCD_BIN"
    "$APISERVER_BIN" --version >/dev/null 2>&1 || die "built kube-apiserver does not run: $APISERVER_BIN"
    rm -rf "$work"
    BUILD_WORK_DIR=""
    release_lock
    log "done in $((SECONDS - start))s: ${BIN_DIR}"
}

# ---------------------------------------------------------------------------
# helpers for up/down
# ---------------------------------------------------------------------------

# Absolute path of DIR (created if missing). Paths go unquoted into env files,
# so whitespace and shell metacharacters are refused.
abs_dir() {
    local dir=$1
    [[ -n "$dir" ]] || die "DIR must not be empty"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [[ "$dir" =~ ^[A-Za-z0-9._/+@:-]+$ ]] || die "DIR '$dir' must not contain whitespace or special characters"
    printf '%s\n' "$dir"
}

check_cluster_name() {
    local name=$1
    [[ "$name" =~ ^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$ ]] ||
        die "cluster name '$name' must be a short DNS label (lowercase letters, digits, '-')"
    [[ "$name" != clusters ]] || die "'clusters' is reserved (DIR/clusters is the list file)"
}

# env_get FILE KEY: value of KEY=... in FILE (empty if absent).
env_get() {
    sed -n "s/^$2=//p" "$1" | tail -n 1
}

# True if PORT is bound or connected on any local TCP socket.
port_in_use() {
    local hex files=() f
    hex="$(printf '%04X' "$1")"
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r "$f" ]] && files+=("$f")
    done
    ((${#files[@]} > 0)) || return 1
    awk -v p="$hex" 'FNR > 1 { split($2, a, ":"); if (a[2] == p) found = 1 } END { exit !found }' "${files[@]}"
}

# True if something is listening on 127.0.0.1:PORT (or any address).
port_listening() {
    local hex files=() f
    hex="$(printf '%04X' "$1")"
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r "$f" ]] && files+=("$f")
    done
    # State 0A is LISTEN.
    awk -v p="$hex" 'FNR > 1 { split($2, a, ":"); if (a[2] == p && $4 == "0A") found = 1 } END { exit !found }' "${files[@]}"
}

# free_port: set FREE_PORT to a TCP port nobody uses and that this run has
# not handed out yet.
RESERVED_PORTS=" "
FREE_PORT=""
free_port() {
    local port tries
    for ((tries = 0; tries < 500; tries++)); do
        port=$((PORT_MIN + (RANDOM * 32768 + RANDOM) % PORT_SPAN))
        [[ "$RESERVED_PORTS" == *" $port "* ]] && continue
        port_in_use "$port" && continue
        RESERVED_PORTS+="$port "
        FREE_PORT=$port
        return 0
    done
    die "could not find a free TCP port on ${LOOPBACK}"
}

# pid_running PID BINARY: PID is alive (not a zombie) and runs BINARY.
pid_running() {
    local pid=$1 bin=$2 state exe
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/stat" ]] || return 1
    state="$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$pid/stat")"
    [[ "$state" != Z && "$state" != X ]] || return 1
    IFS= read -r -d '' exe <"/proc/$pid/cmdline" 2>/dev/null || return 1
    [[ "$exe" == "$bin" ]]
}

pidfile_running() {
    local pidfile=$1 bin=$2
    [[ -f "$pidfile" ]] && pid_running "$(<"$pidfile")" "$bin"
}

# take_lock FILE TIMEOUT: hold an exclusive flock on FILE (one at a time)
# until release_lock. False on timeout. Without flock(1) it does nothing.
LOCK_FD=""
take_lock() {
    local file=$1 timeout=$2
    command -v flock >/dev/null 2>&1 || return 0
    exec {LOCK_FD}>"$file"
    flock -w "$timeout" "$LOCK_FD" && return 0
    release_lock
    return 1
}

release_lock() {
    if [[ -n "$LOCK_FD" ]]; then
        exec {LOCK_FD}>&-
        LOCK_FD=""
    fi
}

# start_bg LOGFILE PIDFILE CMD...: start CMD detached from this shell (own
# session, stdin from /dev/null, output appended to LOGFILE). The lock file
# descriptor is closed in the child: a server inheriting it would hold the
# lock for as long as it runs.
start_bg() {
    local logfile=$1 pidfile=$2
    shift 2
    printf '\n=== %s starting: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$logfile"
    (
        if [[ -n "$LOCK_FD" ]]; then
            exec {LOCK_FD}>&-
        fi
        if command -v setsid >/dev/null 2>&1; then
            exec setsid "$@" </dev/null >>"$logfile" 2>&1
        else
            exec nohup "$@" </dev/null >>"$logfile" 2>&1
        fi
    ) &
    local pid=$! i
    printf '%s\n' "$pid" >"$pidfile"
    # Until the exec above has happened, the pid still shows this shell.
    for ((i = 0; i < 100; i++)); do
        pid_running "$pid" "$1" && return 0
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.05
    done
}

# stop_procs SIGNAL TIMEOUT PIDFILE BINARY NAME [PIDFILE BINARY NAME ...]
# Send SIGNAL to every listed process that is running, wait for all of them
# together up to TIMEOUT seconds, then SIGKILL whatever is left.
# Removes the pid files.
stop_procs() {
    local sig=$1 timeout=$2
    shift 2
    local pidfiles=() bins=() names=() pids=() how=() pid i t
    while (($# >= 3)); do
        if [[ -f "$1" ]]; then
            pid="$(<"$1")"
            if pid_running "$pid" "$2"; then
                kill "-$sig" "$pid" 2>/dev/null || true
                pidfiles+=("$1")
                bins+=("$2")
                names+=("$3")
                pids+=("$pid")
                how+=("SIG${sig}")
            else
                rm -f "$1"
            fi
        fi
        shift 3
    done
    ((${#pids[@]} > 0)) || return 0

    local alive
    for ((t = 0; t < timeout * 10; t++)); do
        alive=0
        for i in "${!pids[@]}"; do
            pid_running "${pids[$i]}" "${bins[$i]}" && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if [[ "$sig" != KILL ]] && pid_running "${pids[$i]}" "${bins[$i]}"; then
            log "${names[$i]} (pid ${pids[$i]}) still running ${timeout}s after SIG${sig}; sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            how[i]="SIGKILL after SIG${sig}"
        fi
    done
    for i in "${!pids[@]}"; do
        for ((t = 0; t < 100; t++)); do
            pid_running "${pids[$i]}" "${bins[$i]}" || break
            sleep 0.1
        done
        pid_running "${pids[$i]}" "${bins[$i]}" && die "${names[$i]} (pid ${pids[$i]}) survived SIGKILL"
        rm -f "${pidfiles[$i]}"
        log "stopped ${names[$i]} (pid ${pids[$i]}, ${how[$i]})"
    done
}

show_log_tail() {
    local logfile=$1
    printf '%s: last 40 lines of %s:\n' "$PROG" "$logfile" >&2
    tail -n 40 "$logfile" >&2 || true
}

# curl with the cluster's admin client certificate.
admin_curl() {
    local cdir=$1
    shift
    curl --silent --show-error --max-time 5 \
        --cacert "$cdir/pki/ca.crt" --cert "$cdir/pki/admin.crt" --key "$cdir/pki/admin.key" "$@"
}

# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------

# new_cert PKI NAME SUBJECT EXTENSIONS: key + certificate signed by PKI/ca.
new_cert() {
    local pki=$1 name=$2 subject=$3 extensions=$4
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/$name.key" 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
    printf '%s\n' "$extensions" >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -CAserial "$pki/ca.srl" -days 3650 -sha256 \
        -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
    chmod 600 "$pki/$name.key"
}

make_pki() {
    local pki=$1 cluster=$2
    mkdir -p "$pki"
    chmod 700 "$pki"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/ca.key" 2>/dev/null
    chmod 600 "$pki/ca.key"
    openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 \
        -subj "/CN=meshlink-test-ca-${cluster}" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$pki/ca.crt"

    local common="subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
    new_cert "$pki" apiserver "/CN=kube-apiserver" "${common}
extendedKeyUsage=serverAuth
subjectAltName=IP:${LOOPBACK},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:${SERVICE_FIRST_IP}"
    new_cert "$pki" admin "/O=system:masters/CN=meshlink-admin" "${common}
extendedKeyUsage=clientAuth"

    # Service account token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
    chmod 600 "$pki/sa.key"
    openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
}

write_kubeconfig() {
    local cdir=$1 cluster=$2 url=$3 ca cert key
    ca="$(base64 -w0 <"$cdir/pki/ca.crt")"
    cert="$(base64 -w0 <"$cdir/pki/admin.crt")"
    key="$(base64 -w0 <"$cdir/pki/admin.key")"
    cat >"$cdir/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ${cluster}
  cluster:
    server: ${url}
    certificate-authority-data: ${ca}
users:
- name: ${cluster}-admin
  user:
    client-certificate-data: ${cert}
    client-key-data: ${key}
contexts:
- name: ${cluster}
  context:
    cluster: ${cluster}
    user: ${cluster}-admin
    namespace: default
current-context: ${cluster}
preferences: {}
EOF
    chmod 600 "$cdir/kubeconfig.tmp"
    mv -f "$cdir/kubeconfig.tmp" "$cdir/kubeconfig"
}

# write_env CLUSTER_DIR CLUSTER APISERVER_PORT ETCD_CLIENT_PORT ETCD_PEER_PORT
write_env() {
    local cdir=$1 cluster=$2 aport=$3 cport=$4 pport=$5
    local apid="" epid=""
    [[ -f "$cdir/kube-apiserver.pid" ]] && apid="$(<"$cdir/kube-apiserver.pid")"
    [[ -f "$cdir/etcd.pid" ]] && epid="$(<"$cdir/etcd.pid")"
    cat >"$cdir/env.tmp" <<EOF
CLUSTER=${cluster}
CLUSTER_DIR=${cdir}
APISERVER_URL=https://${LOOPBACK}:${aport}
APISERVER_PORT=${aport}
APISERVER_PID=${apid}
APISERVER_LOG=${cdir}/kube-apiserver.log
ETCD_URL=http://${LOOPBACK}:${cport}
ETCD_CLIENT_PORT=${cport}
ETCD_PEER_PORT=${pport}
ETCD_PID=${epid}
ETCD_LOG=${cdir}/etcd.log
ETCD_DATA_DIR=${cdir}/etcd-data
KUBECONFIG=${cdir}/kubeconfig
CA_CERT=${cdir}/pki/ca.crt
CLIENT_CERT=${cdir}/pki/admin.crt
CLIENT_KEY=${cdir}/pki/admin.key
K8S_VERSION=${K8S_VERSION}
ETCD_VERSION=${ETCD_VERSION}
EOF
    mv -f "$cdir/env.tmp" "$cdir/env"
}

rewrite_env() {
    local cdir=$1 envf="$1/env"
    [[ -f "$envf" ]] || die "$envf not found; was '$PROG up' run for this cluster?"
    write_env "$cdir" "$(env_get "$envf" CLUSTER)" "$(env_get "$envf" APISERVER_PORT)" \
        "$(env_get "$envf" ETCD_CLIENT_PORT)" "$(env_get "$envf" ETCD_PEER_PORT)"
}

# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

write_args() {
    local file=$1
    shift
    printf '%s\n' "$@" >"$file"
}

start_etcd() {
    local cdir=$1 args=()
    mapfile -t args <"$cdir/etcd.args"
    start_bg "$cdir/etcd.log" "$cdir/etcd.pid" "$ETCD_BIN" "${args[@]}"
}

start_apiserver_process() {
    local cdir=$1 args=()
    mapfile -t args <"$cdir/kube-apiserver.args"
    start_bg "$cdir/kube-apiserver.log" "$cdir/kube-apiserver.pid" "$APISERVER_BIN" "${args[@]}"
}

wait_etcd() {
    local cdir=$1 cluster=$2 port deadline out
    port="$(env_get "$cdir/env" ETCD_CLIENT_PORT)"
    deadline=$((SECONDS + 60))
    while :; do
        if ! pidfile_running "$cdir/etcd.pid" "$ETCD_BIN"; then
            show_log_tail "$cdir/etcd.log"
            die "etcd of cluster '$cluster' exited during startup (log: $cdir/etcd.log)"
        fi
        out="$(curl --silent --max-time 2 "http://${LOOPBACK}:${port}/health" 2>/dev/null || true)"
        [[ "$out" == *'"health":"true"'* ]] && return 0
        if ((SECONDS >= deadline)); then
            show_log_tail "$cdir/etcd.log"
            die "etcd of cluster '$cluster' not healthy on ${LOOPBACK}:${port} within 60s (last answer: ${out:-none})"
        fi
        sleep 0.2
    done
}

# Wait until the API server's port is bound (so the port is no longer free
# for a concurrent run) or the process died.
wait_apiserver_listening() {
    local cdir=$1 port deadline
    port="$(env_get "$cdir/env" APISERVER_PORT)"
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        port_listening "$port" && return 0
        pidfile_running "$cdir/kube-apiserver.pid" "$APISERVER_BIN" || return 0
        sleep 0.2
    done
}

wait_apiserver_ready() {
    local cdir=$1 cluster=$2 url deadline out code
    url="$(env_get "$cdir/env" APISERVER_URL)"
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if ! pidfile_running "$cdir/kube-apiserver.pid" "$APISERVER_BIN"; then
            show_log_tail "$cdir/kube-apiserver.log"
            die "kube-apiserver of cluster '$cluster' exited during startup (log: $cdir/kube-apiserver.log)"
        fi
        out="$(admin_curl "$cdir" "$url/readyz" 2>&1 || true)"
        if [[ "$out" == ok ]]; then
            # /readyz can be ok a moment before the bootstrap controller has
            # created the "default" namespace; tests expect it to exist.
            code="$(admin_curl "$cdir" -o /dev/null -w '%{http_code}' "$url/api/v1/namespaces/default" 2>/dev/null || true)"
            [[ "$code" == 200 ]] && return 0
            out="readyz ok, GET namespaces/default returned HTTP ${code:-none}"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$cdir/kube-apiserver.log"
            die "kube-apiserver of cluster '$cluster' not ready at $url within ${READY_TIMEOUT}s; last /readyz answer: ${out:-none}"
        fi
        sleep 0.5
    done
}

cluster_running() {
    local cdir=$1
    pidfile_running "$cdir/kube-apiserver.pid" "$APISERVER_BIN" ||
        pidfile_running "$cdir/etcd.pid" "$ETCD_BIN"
}

# Prepare DIR/<cluster>: certificates, ports, argument files, env, kubeconfig.
prepare_cluster() {
    local dir=$1 cluster=$2 cdir="$1/$2"
    local aport cport pport
    free_port
    aport=$FREE_PORT
    free_port
    cport=$FREE_PORT
    free_port
    pport=$FREE_PORT

    rm -rf "$cdir"
    mkdir -p "$cdir/etcd-data"
    chmod 700 "$cdir/etcd-data"
    make_pki "$cdir/pki" "$cluster"

    write_args "$cdir/etcd.args" \
        "--name=${cluster}" \
        "--data-dir=${cdir}/etcd-data" \
        "--listen-client-urls=http://${LOOPBACK}:${cport}" \
        "--advertise-client-urls=http://${LOOPBACK}:${cport}" \
        "--listen-peer-urls=http://${LOOPBACK}:${pport}" \
        "--initial-advertise-peer-urls=http://${LOOPBACK}:${pport}" \
        "--initial-cluster=${cluster}=http://${LOOPBACK}:${pport}" \
        "--initial-cluster-state=new" \
        "--initial-cluster-token=meshlink-${cluster}" \
        "--unsafe-no-fsync=true" \
        "--log-level=warn"

    local extra=()
    if [[ -n "${MESHLINK_K8S_APISERVER_EXTRA_ARGS:-}" ]]; then
        read -r -a extra <<<"$MESHLINK_K8S_APISERVER_EXTRA_ARGS"
    fi
    if [[ "${MESHLINK_K8S_AUDIT:-0}" == 1 ]]; then
        # Only list and watch requests, at Metadata level, once each (when complete).
        cat >"$cdir/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  verbs: [list, watch]
- level: None
EOF
        extra+=("--audit-policy-file=${cdir}/audit-policy.yaml"
            "--audit-log-path=${cdir}/audit.log" "--audit-log-format=json")
    fi
    write_args "$cdir/kube-apiserver.args" \
        "--bind-address=${LOOPBACK}" \
        "--advertise-address=${LOOPBACK}" \
        "--secure-port=${aport}" \
        "--cert-dir=${cdir}/pki" \
        "--tls-cert-file=${cdir}/pki/apiserver.crt" \
        "--tls-private-key-file=${cdir}/pki/apiserver.key" \
        "--client-ca-file=${cdir}/pki/ca.crt" \
        "--authorization-mode=RBAC" \
        "--etcd-servers=http://${LOOPBACK}:${cport}" \
        "--etcd-prefix=/meshlink/${cluster}/registry" \
        "--service-cluster-ip-range=${SERVICE_CIDR}" \
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local" \
        "--service-account-key-file=${cdir}/pki/sa.pub" \
        "--service-account-signing-key-file=${cdir}/pki/sa.key" \
        "--disable-admission-plugins=ServiceAccount" \
        "--profiling=false" \
        ${extra[@]+"${extra[@]}"}

    write_env "$cdir" "$cluster" "$aport" "$cport" "$pport"
    write_kubeconfig "$cdir" "$cluster" "https://${LOOPBACK}:${aport}"
}

add_to_cluster_list() {
    local dir=$1 cluster=$2
    touch "$dir/clusters"
    grep -qxF "$cluster" "$dir/clusters" || printf '%s\n' "$cluster" >>"$dir/clusters"
}

list_clusters() {
    local dir=$1 c
    if [[ -f "$dir/clusters" ]]; then
        cat "$dir/clusters"
    fi
    # Also any cluster directory that is missing from the list.
    for c in "$dir"/*/env; do
        [[ -f "$c" ]] || continue
        c="${c%/env}"
        c="${c##*/}"
        if [[ ! -f "$dir/clusters" ]] || ! grep -qxF "$c" "$dir/clusters"; then
            printf '%s\n' "$c"
        fi
    done
}

require_binaries() {
    binaries_cached || cmd_build
}

# ---------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------

UP_STARTED=()
UP_OK=0
BUILD_WORK_DIR=""

# EXIT trap: remove the temporary build directory; after a failed 'up', stop
# the processes that run started.
# shellcheck disable=SC2317 # only reached through the trap
on_exit() {
    local cdir
    if [[ -n "$BUILD_WORK_DIR" ]]; then
        rm -rf "$BUILD_WORK_DIR"
    fi
    if ((UP_OK == 0 && ${#UP_STARTED[@]} > 0)); then
        log "startup failed; stopping the processes this run started"
        local procs=()
        for cdir in "${UP_STARTED[@]}"; do
            procs+=("$cdir/kube-apiserver.pid" "$APISERVER_BIN" "kube-apiserver ($cdir)")
            procs+=("$cdir/etcd.pid" "$ETCD_BIN" "etcd ($cdir)")
        done
        stop_procs KILL 0 "${procs[@]}" || true
    fi
}

cmd_up() {
    (($# >= 2)) || die "usage: $PROG up DIR CLUSTER [CLUSTER ...]"
    local dir cluster cdir start=$SECONDS
    dir="$(abs_dir "$1")"
    shift
    local clusters=("$@") seen=" "
    for cluster in "${clusters[@]}"; do
        check_cluster_name "$cluster"
        [[ "$seen" != *" $cluster "* ]] || die "cluster '$cluster' given twice"
        seen+="$cluster "
        if cluster_running "$dir/$cluster"; then
            die "cluster '$cluster' is already running in $dir; run '$PROG down $dir' first"
        fi
    done
    need_cmd openssl "needed to generate the test certificates"
    need_cmd curl "needed to probe the API servers"
    need_cmd base64
    require_binaries


    # Hold a lock from choosing ports until every server has bound them, so
    # concurrent 'up' runs cannot pick the same free port.
    mkdir -p "$CACHE_ROOT"
    if ! take_lock "$CACHE_ROOT/up.lock" 120; then
        log "warning: waited 120s for $CACHE_ROOT/up.lock; going on without it"
    fi

    for cluster in "${clusters[@]}"; do
        prepare_cluster "$dir" "$cluster"
        add_to_cluster_list "$dir" "$cluster"
    done
    for cluster in "${clusters[@]}"; do
        cdir="$dir/$cluster"
        UP_STARTED+=("$cdir")
        start_etcd "$cdir"
    done
    for cluster in "${clusters[@]}"; do
        wait_etcd "$dir/$cluster" "$cluster"
    done
    for cluster in "${clusters[@]}"; do
        start_apiserver_process "$dir/$cluster"
        rewrite_env "$dir/$cluster"
    done
    for cluster in "${clusters[@]}"; do
        wait_apiserver_listening "$dir/$cluster"
    done
    release_lock

    for cluster in "${clusters[@]}"; do
        wait_apiserver_ready "$dir/$cluster" "$cluster"
        log "cluster '$cluster' ready at $(env_get "$dir/$cluster/env" APISERVER_URL) (kubeconfig: $dir/$cluster/kubeconfig)"
    done
    UP_OK=1
    log "${#clusters[@]} cluster(s) up in $((SECONDS - start))s; stop them with: $PROG down $dir"
}

cmd_down() {
    (($# == 1)) || die "usage: $PROG down DIR"
    [[ -d "$1" ]] || die "directory '$1' does not exist"
    local dir cluster clusters=()
    dir="$(abs_dir "$1")"
    mapfile -t clusters < <(list_clusters "$dir")
    # API servers first, so they do not log etcd connection errors while
    # shutting down.
    local apiservers=() etcds=()
    for cluster in ${clusters[@]+"${clusters[@]}"}; do
        apiservers+=("$dir/$cluster/kube-apiserver.pid" "$APISERVER_BIN" "kube-apiserver of '$cluster'")
        etcds+=("$dir/$cluster/etcd.pid" "$ETCD_BIN" "etcd of '$cluster'")
    done
    # An API server with open watches does not exit on SIGTERM until its
    # drain timeout; when tearing everything down there is nothing to drain.
    stop_procs TERM "$DOWN_APISERVER_TIMEOUT" ${apiservers[@]+"${apiservers[@]}"}
    stop_procs TERM "$STOP_TIMEOUT" ${etcds[@]+"${etcds[@]}"}
    for cluster in ${clusters[@]+"${clusters[@]}"}; do
        if [[ -f "$dir/$cluster/env" ]]; then
            rewrite_env "$dir/$cluster"
        fi
    done
    log "all processes under $dir stopped (logs kept)"
}

cluster_dir_arg() {
    (($# == 2)) || die "usage: $PROG ${CMD} DIR CLUSTER"
    local dir
    dir="$(abs_dir "$1")"
    check_cluster_name "$2"
    [[ -f "$dir/$2/kube-apiserver.args" ]] || die "no cluster '$2' in $dir (run '$PROG up $dir $2' first)"
    printf '%s\n' "$dir/$2"
}

cmd_stop_apiserver() {
    local cdir
    cdir="$(cluster_dir_arg "$@")"
    stop_procs TERM "$STOP_TIMEOUT" "$cdir/kube-apiserver.pid" "$APISERVER_BIN" "kube-apiserver of '$2'"
    rewrite_env "$cdir"
}

cmd_kill_apiserver() {
    local cdir
    cdir="$(cluster_dir_arg "$@")"
    stop_procs KILL 0 "$cdir/kube-apiserver.pid" "$APISERVER_BIN" "kube-apiserver of '$2'"
    rewrite_env "$cdir"
}

cmd_start_apiserver() {
    local cdir
    cdir="$(cluster_dir_arg "$@")"
    require_binaries
    if pidfile_running "$cdir/kube-apiserver.pid" "$APISERVER_BIN"; then
        log "kube-apiserver of '$2' is already running"
        return 0
    fi
    pidfile_running "$cdir/etcd.pid" "$ETCD_BIN" ||
        die "etcd of cluster '$2' is not running; use '$PROG up' to start the cluster"
    local start=$SECONDS
    start_apiserver_process "$cdir"
    rewrite_env "$cdir"
    wait_apiserver_ready "$cdir" "$2"
    log "kube-apiserver of '$2' ready again at $(env_get "$cdir/env" APISERVER_URL) after $((SECONDS - start))s"
}

cmd_restart_apiserver() {
    cmd_stop_apiserver "$@"
    cmd_start_apiserver "$@"
}

cmd_status() {
    (($# == 1)) || die "usage: $PROG status DIR"
    [[ -d "$1" ]] || die "directory '$1' does not exist"
    local dir cluster state proc bin
    dir="$(abs_dir "$1")"
    while IFS= read -r cluster; do
        for proc in etcd kube-apiserver; do
            bin="$ETCD_BIN"
            [[ "$proc" == kube-apiserver ]] && bin="$APISERVER_BIN"
            if pidfile_running "$dir/$cluster/$proc.pid" "$bin"; then
                state="running (pid $(<"$dir/$cluster/$proc.pid"))"
            else
                state="stopped"
            fi
            printf '%-20s %-15s %s\n' "$cluster" "$proc" "$state"
        done
    done < <(list_clusters "$dir")
}

main() {
    trap on_exit EXIT
    [[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || die "MESHLINK_K8S_READY_TIMEOUT must be a number of seconds"
    [[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "MESHLINK_K8S_STOP_TIMEOUT must be a number of seconds"
    CMD="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$CMD" in
    build) (($# == 0)) || die "usage: $PROG build"; cmd_build ;;
    bin-dir) printf '%s\n' "$BIN_DIR" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    stop-apiserver) cmd_stop_apiserver "$@" ;;
    kill-apiserver) cmd_kill_apiserver "$@" ;;
    start-apiserver) cmd_start_apiserver "$@" ;;
    restart-apiserver) cmd_restart_apiserver "$@" ;;
    status) cmd_status "$@" ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command '$CMD' (see '$PROG --help')" ;;
    esac
}

# One line, so that bash has read it whole before running: editing this file
# while an instance runs cannot make that instance run the edited text.
main "$@"; exit $?
