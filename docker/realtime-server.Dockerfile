# realtime-server: the socket.io gateway every RealtimeCluster runs.
# Build from the repository root (the workspace is one Cargo.lock):
#   docker build -f docker/realtime-server.Dockerfile --build-arg VERSION=0.1.0 \
#     -t ghcr.io/realtime-operator/realtime-server:0.1.0 .
# It builds with BuildKit (docker buildx build, DOCKER_BUILDKIT=1) and with the legacy builder of
# Debian's docker.io alike: no `# syntax=` line (no frontend image to fetch) and no `RUN --mount`.
#
# Build arguments (every image and everything fetched can be replaced; docker/README.md):
#   BUILDER_IMAGE  the Rust toolchain image (default: rust:${RUST_VERSION}-slim-trixie). Offline:
#                  docker/local-base-images.sh builder, a bookworm image with this machine's
#                  toolchain and every crate of Cargo.lock vendored (no crates.io at build time).
#   RUNTIME_IMAGE  the runtime base (default: distroless/cc-debian13:nonroot, glibc + CA
#                  certificates, no shell). Its Debian release must be the builder's or newer
#                  (glibc). Offline: docker/local-base-images.sh runtime (bookworm).
#   CARGO_BUILD_ARGS  extra `cargo build` arguments (e.g. --offline, -j1).
#   VERSION, REVISION  OCI labels.
# The build stage is the same in both Dockerfiles (it builds both binaries), so the second image
# reuses the first one's build step from the layer cache instead of compiling again.

ARG RUST_VERSION=1.94
ARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-slim-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

FROM ${BUILDER_IMAGE} AS build
ARG CARGO_BUILD_ARGS=""
WORKDIR /src
COPY . .
# target/ is removed in the same step: without BuildKit cache mounts it would otherwise stay in
# the layer (gigabytes).
RUN cargo build --release --locked ${CARGO_BUILD_ARGS} -p realtime-server -p realtime-operator \
      --bin realtime-server --bin realtime-operator \
 && install -D -m 0755 target/release/realtime-server /out/realtime-server \
 && install -D -m 0755 target/release/realtime-operator /out/realtime-operator \
 && rm -rf target

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="realtime-server" \
      org.opencontainers.image.description="Horizontally scaled socket.io gateway (socketioxide + Redis adapter)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/realtime-operator/realtime-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/realtime-server /usr/local/bin/realtime-server
USER 65532:65532
# 3000: socket.io (public); 9090: /healthz /readyz /metrics and the publish API (admin, in-cluster).
EXPOSE 3000 9090
# Listen on all interfaces inside the pod; every flag has an env equivalent (see --help).
ENV BIND=0.0.0.0 PORT=3000 ADMIN_PORT=9090
ENTRYPOINT ["/usr/local/bin/realtime-server"]
