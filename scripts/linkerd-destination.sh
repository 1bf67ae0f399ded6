#!/usr/bin/env bash
#
# linkerd-destination.sh - build and run Linkerd's Go destination controller against a
# benchmark world, so the benchmark's Kubernetes mode can measure it beside meshlink.
# Nothing of Linkerd is committed here: the source comes from a clone of
# github.com/linkerd/linkerd2 at the tag, and only the built binary is kept, in
#   ${MESHLINK_LINKERD_CACHE:-$HOME/.cache/meshlink/linkerd}/<tag>/
#
# Usage:
#   scripts/linkerd-destination.sh build [REPO]
#       Build `controller/cmd` of linkerd2 at $MESHLINK_LINKERD_TAG (default edge-26.8.3)
#       once (Go modules from the Go module proxy; about 10 minutes on 2 cores, niced).
#       REPO is a git clone of linkerd2 holding the tag (default: clone it from GitHub).
#       The module itself is not on the Go module proxy, hence the clone.
#   scripts/linkerd-destination.sh crds FILE
#       Write the CustomResourceDefinitions the controller lists (ServiceProfile, Server,
#       ExternalWorkload), as the tag's chart has them, to FILE (from the same cache).
#   scripts/linkerd-destination.sh prepare KUBECONFIG
#       Install the CRDs and the control-plane namespace `linkerd` in the API server.
#   scripts/linkerd-destination.sh run KUBECONFIG GRPC_ADDR ADMIN_ADDR
#       Exec the controller with the flags the benchmark's world assumes (the process
#       keeps this script's pid, for --target-pid).
#   scripts/linkerd-destination.sh bin
#       Print the binary's path (exit 1 when it is not built).
set -euo pipefail

readonly TAG="${MESHLINK_LINKERD_TAG:-edge-26.8.3}"
readonly CACHE="${MESHLINK_LINKERD_CACHE:-${HOME}/.cache/meshlink/linkerd}/${TAG}"
readonly BIN="${CACHE}/linkerd-controller"
readonly CRDS="${CACHE}/crds.yaml"
PROG="$(basename "$0")"
readonly PROG

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# The chart's CRD templates carry Helm directives only in metadata (labels, annotations,
# conditionals around them); the schemas are plain YAML. Drop the directive lines.
render_crds() {
    local src=$1 out=$2 f
    : >"$out"
    for f in serviceprofile.yaml policy/server.yaml workload/external-workload.yaml; do
        [[ -f "$src/charts/linkerd-crds/templates/$f" ]] || die "no CRD template $f in $TAG"
        printf -- '---\n' >>"$out"
        grep -v '{{' "$src/charts/linkerd-crds/templates/$f" | grep -v '^---' >>"$out"
    done
}

cmd_build() {
    if [[ -x "$BIN" && -s "$CRDS" ]]; then
        log "already built: $BIN"
        return 0
    fi
    command -v go >/dev/null || die "Go is needed to build Linkerd's controller"
    local repo=${1:-}
    # Global, so the EXIT trap still sees it after this function returns.
    work="$(mktemp -d "${TMPDIR:-/tmp}/meshlink-linkerd-build.XXXXXX")"
    trap 'rm -rf "${work:-}"' EXIT
    if [[ -z $repo ]]; then
        git clone --quiet --depth 1 --branch "$TAG" https://github.com/linkerd/linkerd2 "$work/clone" ||
            die "cannot clone linkerd2; pass a local clone as REPO"
        repo="$work/clone"
    fi
    mkdir -p "$work/src" "$CACHE"
    git -C "$repo" archive "$TAG" | tar -x -C "$work/src" || die "$repo has no tag $TAG"
    export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS='' GOCACHE="$work/gocache"
    log "building linkerd2 $TAG controller with $(go version) under 'nice -n 19'"
    local start=$SECONDS
    (cd "$work/src" && nice -n 19 go build -trimpath -ldflags='-s -w' -o "$work/linkerd-controller" ./controller/cmd) ||
        die "go build failed"
    render_crds "$work/src" "$work/crds.yaml"
    mv -f "$work/crds.yaml" "$CRDS"
    mv -f "$work/linkerd-controller" "$BIN"
    log "built in $((SECONDS - start))s: $BIN"
}

cmd_prepare() {
    local kubeconfig=$1
    [[ -s "$CRDS" ]] || die "not built yet: run '$PROG build' first"
    command -v kubectl >/dev/null || die "kubectl is needed to install the CRDs"
    local kc=(kubectl --kubeconfig "$kubeconfig")
    "${kc[@]}" apply -f "$CRDS" >/dev/null
    "${kc[@]}" create namespace linkerd --dry-run=client -o yaml | "${kc[@]}" apply -f - >/dev/null
    "${kc[@]}" wait --for condition=established --timeout=60s -f "$CRDS" >/dev/null
}

cmd_run() {
    local kubeconfig=$1 grpc=$2 admin=$3
    [[ -x "$BIN" ]] || die "not built yet: run '$PROG build' first"
    # HOSTNAME names the external-workload controller's lease holder.
    HOSTNAME="${HOSTNAME:-bench}" exec "$BIN" destination \
        -addr "$grpc" -metrics-addr "$admin" -kubeconfig "$kubeconfig" \
        -controller-namespace linkerd -identity-trust-domain cluster.local -cluster-domain cluster.local \
        -enable-endpoint-slices=true -enable-ipv6=false \
        -default-opaque-ports 25,587,3306,4444,5432,6379,9300,11211
}

case "${1:-}" in
build) cmd_build "${2:-}" ;;
crds) [[ -s "$CRDS" ]] || die "not built yet"; cp "$CRDS" "${2:?crds FILE}" ;;
prepare) (($# == 2)) || die "prepare KUBECONFIG"; cmd_prepare "$2" ;;
run) shift; (($# == 3)) || die "run KUBECONFIG GRPC_ADDR ADMIN_ADDR"; cmd_run "$@" ;;
bin) [[ -x "$BIN" ]] && echo "$BIN" ;;
*) sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2 ;;
esac
