# The build image for `Dockerfile`'s builder stage when no registry is reachable: a local Debian base
# (scripts/image-demo: debootstrap --variant=minbase bookworm | docker import), the C toolchain and
# libraries rdkafka and openssl-sys build against, and the Rust toolchain copied from the machine
# (rustup's downloads may be unreachable). The build context is that toolchain directory.
#
#   docker build -f deploy/image/builder.Dockerfile --build-arg BASE_IMAGE=card-registrar-base:bookworm \
#     -t card-registrar-builder:1.95.0 ~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu
ARG BASE_IMAGE=debian:bookworm
FROM ${BASE_IMAGE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# rustc, cargo, rust-std, rustfmt, clippy: the toolchain's own directory, used without rustup.
COPY . /usr/local/rust/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo
RUN rustc --version && cargo --version
