# card-registrar and d1-simulator in one image.
#
#   DOCKER_BUILDKIT=1 docker build -t card-registrar .
#   docker run --rm card-registrar --help
#
# Where no image registry is reachable, `scripts/image-demo` makes both base images locally (a
# debootstrap'd Debian bookworm, and a build image holding the machine's Rust toolchain) and passes
# them in: --build-arg BUILDER_IMAGE=... --build-arg RUNTIME_IMAGE=...; it also vendors the crates
# into vendor/ (`cargo vendor`), which the build then uses instead of the network.
# No `# syntax=` line: the BuildKit frontend built into the engine is used, so nothing is pulled.
#
# The image holds no keys and no configuration: settings come from the environment (see the
# README's Configuration) and key files are mounted at run time (a Kubernetes Secret, a compose volume).
# No HEALTHCHECK: the same image runs the worker, the simulator and one-shot jobs (migrate, publish,
# keys), and the admin port is configurable, so one instruction cannot fit them all. Orchestrators
# probe instead: Kubernetes httpGet probes on /healthz and /readyz, compose healthchecks per service.

# Rust >= 1.88 (apache-avro 0.22's rust-version); the workspace is edition 2024; rust-toolchain.toml
# names the release we test with. Both stages must share a Debian release (glibc, libssl3).
ARG BUILDER_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- build
FROM ${BUILDER_IMAGE} AS builder

# rdkafka builds librdkafka with cmake (statically linked into the binary) against OpenSSL, zlib and
# libcurl (librdkafka's OIDC token fetch for Kafka SASL/OAUTHBEARER).
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
# With vendor/ in the context the crates come from it (source replacement) and no registry is read.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    if [ -d vendor ]; then \
      mkdir -p .cargo \
      && printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "vendor"\n' \
           > .cargo/config.toml; \
    fi \
 && cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && objcopy --compress-debug-sections=zlib target/release/card-registrar /out/card-registrar \
 && objcopy --compress-debug-sections=zlib target/release/d1-simulator /out/d1-simulator

# ---------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE} AS runtime

# Only the shared libraries the binaries link beyond the base image's libc and libgcc_s (ldd:
# libssl.so.3, libcrypto.so.3, libz.so.1, libcurl.so.4) and the CA bundle for TLS.
# apt's package caches go too (~80 MB in a debootstrap'd base, which lacks the slim image's
# docker-clean settings).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libcurl4 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

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
