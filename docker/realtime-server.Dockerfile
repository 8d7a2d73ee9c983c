# syntax=docker/dockerfile:1
# realtime-server: the socket.io gateway every RealtimeCluster runs.
# Build from the repository root (the workspace is one Cargo.lock):
#   docker build -f docker/realtime-server.Dockerfile --build-arg VERSION=0.1.0 \
#     -t ghcr.io/realtime-operator/realtime-server:0.1.0 .
# The runtime is distroless/cc (glibc, CA certificates, no shell) as uid 65532; the builder's
# Debian release matches it so the binary's glibc requirement is met.

ARG RUST_VERSION=1.94

FROM docker.io/library/rust:${RUST_VERSION}-slim-trixie AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target folder between builds (BuildKit); the binary is
# copied out of the mounted target folder before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p realtime-server --bin realtime-server \
 && install -D -m 0755 target/release/realtime-server /out/realtime-server

FROM gcr.io/distroless/cc-debian13:nonroot
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
