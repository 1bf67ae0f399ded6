# meshlink as a static binary on an empty image, running as a non-root user.
#
#   docker build -t meshlink:latest .        (or: buildah bud -t meshlink:latest .)
#
# The build stage links glibc statically (`+crt-static`); naming the target keeps the
# flag off build scripts and proc macros. scripts/image-check.sh builds the binary the
# same way on the host and hands it in as the `build` context, where no registry is
# reachable to pull the Rust image.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm

FROM ${RUST_IMAGE} AS build
ARG TARGET=x86_64-unknown-linux-gnu
WORKDIR /src
COPY . .
RUN RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release --locked --target "${TARGET}" --bin meshlink \
 && mkdir -p /out \
 && cp "target/${TARGET}/release/meshlink" /out/meshlink \
 && strip --strip-debug /out/meshlink

FROM scratch
COPY --from=build /out/meshlink /meshlink
# The uid deploy/ runs it as (runAsNonRoot, runAsUser 65532).
USER 65532:65532
ENTRYPOINT ["/meshlink"]
CMD ["--help"]
