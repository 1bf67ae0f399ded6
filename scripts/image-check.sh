#!/usr/bin/env bash
#
# image-check.sh - prove that the Dockerfile makes a working meshlink image, on a
# machine that reaches no container registry (so the Dockerfile's Rust build image
# cannot be pulled).
#
# Steps:
#   1. build the binary on the host exactly as the Dockerfile's build stage does
#      (RUSTFLAGS='-C target-feature=+crt-static', --release --locked --target ...);
#      one release build, reusing CARGO_TARGET_DIR (default target/);
#   2. check that it is statically linked (`file`, `ldd`);
#   3. build the Dockerfile with buildah, handing that binary in as the `build`
#      context: the build stage is replaced, only the final `FROM scratch` stage runs;
#   4. check the image: user 65532, and `buildah run` of `meshlink --help`.
# If buildah cannot build or run here, step 3-4 become: run the binary as uid 65532
# from a root directory holding nothing but it (unshare + chroot), and say so.
#
# Installs what it needs with apt-get (buildah, crun, file, binutils) when run as root on
# Debian. Exit status 0 when the image (or, failing buildah, the binary from an empty
# root) runs `meshlink --help`.
#
# Environment:
#   MESHLINK_IMAGE       image name to tag (default localhost/meshlink:latest)
#   CARGO_TARGET_DIR     cargo's target directory (default target/)

set -euo pipefail

readonly TARGET="x86_64-unknown-linux-gnu"
readonly IMAGE="${MESHLINK_IMAGE:-localhost/meshlink:latest}"
readonly RUN_AS="65532:65532"

PROG="$(basename "$0")"
readonly PROG
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

STARTED=$SECONDS
step() { log "[$((SECONDS - STARTED))s] $*"; }

install_tools() {
    local missing=()
    command -v file >/dev/null || missing+=(file)
    command -v strip >/dev/null || missing+=(binutils)
    command -v buildah >/dev/null || missing+=(buildah)
    # buildah runs containers with an OCI runtime; Debian only recommends one.
    command -v crun >/dev/null || command -v runc >/dev/null || missing+=(crun)
    if ((${#missing[@]} == 0)); then
        return
    fi
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "cannot install ${missing[*]} (needs root and apt-get); going on without them"
        return
    fi
    step "installing ${missing[*]} from Debian's archive"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_binary() {
    step "building the static binary (as the Dockerfile's build stage does)"
    (
        cd "$ROOT"
        RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build --release --locked --target "$TARGET" --bin meshlink
    )
    BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/meshlink"
    [[ -x "$BINARY" ]] || die "no binary at $BINARY"
}

check_static() {
    local what
    what="$(file -b "$BINARY")"
    log "file: $what"
    case "$what" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$BINARY is not statically linked: $what" ;;
    esac
    # ldd says so on stdout or stderr, with exit status 1, for a static binary.
    if ldd "$BINARY" 2>&1 | grep -q '=>'; then
        die "$BINARY loads shared libraries: $(ldd "$BINARY" 2>&1 | tr '\n' ' ')"
    fi
}

# Builds the image; sets IMAGE_OK=1 when the image runs `meshlink --help` as 65532.
check_image() {
    IMAGE_OK=0
    if ! command -v buildah >/dev/null; then
        IMAGE_WHY="buildah is not installed"
        return
    fi
    local ctx out ctr user
    ctx="$(mktemp -d)"
    mkdir -p "$ctx/out"
    cp "$BINARY" "$ctx/out/meshlink"
    # As the build stage does: the release profile keeps line tables for backtraces.
    strip --strip-debug "$ctx/out/meshlink"
    local previous
    previous="$(buildah images -q "$IMAGE" 2>/dev/null || true)"
    step "building $IMAGE from the Dockerfile, the binary as its build stage"
    if ! out="$(buildah bud --quiet --build-context "build=$ctx" -f "$ROOT/Dockerfile" \
        -t "$IMAGE" "$ROOT" 2>&1)"; then
        rm -rf "$ctx"
        IMAGE_WHY="buildah bud failed: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        return
    fi
    rm -rf "$ctx"
    # The image this tag named before, now untagged: do not pile them up.
    if [[ -n "$previous" && "$previous" != "$(buildah images -q "$IMAGE")" ]]; then
        buildah rmi "$previous" >/dev/null 2>&1 || true
    fi
    user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
    [[ "$user" == "$RUN_AS" ]] || die "the image runs as '$user', not $RUN_AS"
    ctr="$(buildah from --quiet "$IMAGE")"
    # OCI isolation needs cgroups the runtime accepts; chroot isolation runs anywhere
    # buildah does (same image, user and entrypoint; fewer namespaces).
    local isolation
    for isolation in oci chroot; do
        step "running the image's meshlink --help (buildah run, $isolation isolation)"
        if out="$(buildah run --isolation "$isolation" "$ctr" -- /meshlink --help 2>&1)"; then
            grep -q '^Usage: meshlink' <<<"$out" || die "unexpected --help output: $out"
            IMAGE_OK=1
            break
        fi
        IMAGE_WHY="buildah run failed: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        log "$IMAGE_WHY"
    done
    buildah rm "$ctr" >/dev/null || true
}

# The same binary as uid 65532 from a root that holds nothing else.
check_empty_root() {
    local root out
    root="$(mktemp -d)"
    cp "$BINARY" "$root/meshlink"
    chmod 0755 "$root" "$root/meshlink"
    step "running meshlink --help from an empty root as $RUN_AS"
    out="$(unshare --mount --pid --net --fork chroot --userspec="$RUN_AS" "$root" /meshlink --help 2>&1)" ||
        die "meshlink --help failed from an empty root: $out"
    rm -rf "$root"
    grep -q '^Usage: meshlink' <<<"$out" || die "unexpected --help output: $out"
}

install_tools
build_binary
check_static
check_image
if ((IMAGE_OK)); then
    step "ok: image $IMAGE (FROM scratch, user $RUN_AS) runs meshlink --help"
else
    log "the image could not be checked here ($IMAGE_WHY)"
    check_empty_root
    step "ok: the static binary the Dockerfile packs runs from an empty root (image not built here)"
fi
