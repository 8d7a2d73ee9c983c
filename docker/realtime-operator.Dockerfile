# syntax=docker/dockerfile:1
# realtime-operator: the controller that reconciles RealtimeCluster resources.
# Build from the repository root (the workspace is one Cargo.lock):
#   docker build -f docker/realtime-operator.Dockerfile --build-arg VERSION=0.1.0 \
#     -t ghcr.io/realtime-operator/realtime-operator:0.1.0 .
# The runtime is distroless/cc (glibc, CA certificates, no shell) as uid 65532; the builder's
# Debian release matches it so the binary's glibc requirement is met.

ARG RUST_VERSION=1.94

FROM docker.io/library/rust:${RUST_VERSION}-slim-trixie AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p realtime-operator --bin realtime-operator \
 && install -D -m 0755 target/release/realtime-operator /out/realtime-operator

FROM gcr.io/distroless/cc-debian13:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="realtime-operator" \
      org.opencontainers.image.description="Kubernetes operator for RealtimeCluster (horizontally scaled socket.io)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/realtime-operator/realtime-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/realtime-operator /usr/local/bin/realtime-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/realtime-operator"]
