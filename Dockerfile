# syntax=docker/dockerfile:1
#
# card-registrar and d1-simulator in one image.
#
#   docker build -t card-registrar .
#   docker run --rm card-registrar --help
#
# The image holds no keys and no configuration: settings come from the environment (see the
# README's Configuration) and key files are mounted at run time (a Kubernetes Secret, a compose volume).
# No HEALTHCHECK: the same image runs the worker, the simulator and one-shot jobs (migrate, publish,
# keys), and the admin port is configurable, so one instruction cannot fit them all. Orchestrators
# probe instead: Kubernetes httpGet probes on /healthz and /readyz, compose healthchecks per service.

# Rust >= 1.88 (apache-avro 0.22's rust-version); the workspace is edition 2024.
ARG RUST_VERSION=1.95

# ---------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-bookworm AS builder

# rdkafka builds librdkafka with cmake (statically linked into the binary) against OpenSSL and zlib;
# libcurl's headers are there for librdkafka's optional HTTP features, which we do not enable.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep the registry and the compiled dependencies between builds, so a source
# change recompiles only our two crates. The binaries leave the cached target/ in the same step,
# with their line tables (release profile: debug = "line-tables-only", for file:line in panics)
# compressed: card-registrar is ~100 MB as built, ~41 MB compressed, ~17 MB stripped.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && objcopy --compress-debug-sections=zlib target/release/card-registrar /out/card-registrar \
 && objcopy --compress-debug-sections=zlib target/release/d1-simulator /out/d1-simulator

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim AS runtime

# Only the shared libraries the binaries link beyond the base image's libc and libgcc_s (ldd:
# libssl.so.3, libcrypto.so.3, libz.so.1) and the CA bundle for TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
RUN groupadd --system --gid 10001 card-registrar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin card-registrar

COPY --from=builder /out/card-registrar /out/d1-simulator /usr/local/bin/

LABEL org.opencontainers.image.title="card-registrar" \
      org.opencontainers.image.description="Registers a bank's cards with Thales D1, exactly once" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /app
USER 10001:10001

# In a container the admin endpoints must be reachable from outside it (probes, Prometheus).
ENV ADMIN_LISTEN=0.0.0.0:9464
EXPOSE 9464

ENTRYPOINT ["card-registrar"]
CMD ["run"]
