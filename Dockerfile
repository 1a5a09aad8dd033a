# syntax=docker/dockerfile:1
# The vaultlet agent image: the `vaultlet` binary alone on distroless, as a
# non-root user. deploy/ runs it (serve, recrypt) and operators use it for
# `seal`.
#
#   docker build -t ghcr.io/vaultlet/vaultlet:0.1.0 .
#
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK; Kubernetes probes /healthz and /readyz on the admin port, and the image has no shell or HTTP client to run one

# Bookworm on both sides: the binary links the builder's glibc, which the
# runtime image (Debian 12) must have.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# .dockerignore lets in only the Cargo workspace (agent, client-rust, csi, webhook, parse,
# tests, proto); `--locked` builds exactly Cargo.lock. protoc is vendored by a build
# dependency.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vaultlet \
    && install -D -m 0755 target/release/vaultlet /out/vaultlet

# cc: glibc plus libgcc_s, which Rust's unwinder needs; CA certificates for
# OpenBao's TLS. No shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vaultlet /usr/local/bin/vaultlet
# The UID and GID deploy/daemonset.yaml runs the agent as (runAsUser,
# runAsGroup), numeric so that runAsNonRoot can verify it. Its socket
# belongs to this group; app pods join it with supplementalGroups.
USER 10750:10750
ENTRYPOINT ["/usr/local/bin/vaultlet"]
CMD ["--help"]
