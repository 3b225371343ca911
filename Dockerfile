# syntax=docker/dockerfile:1
# One small image with every tracefold binary: tracefold (CLI, dev, migrate, loadgen),
# tracefold-producer, tracefold-grouper, tracefold-writer, tracefold-detector.
#
#   docker build -t tracefold:0.1.0 .
#   docker run --rm tracefold:0.1.0 tracefold --help

# --- build: the Rust toolchain and what librdkafka's build needs; nothing of it ships.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tracefold -p tracefold-producer -p tracefold-grouper -p tracefold-writer -p tracefold-detector \
 && mkdir /out \
 && cp target/release/tracefold target/release/tracefold-producer target/release/tracefold-grouper target/release/tracefold-writer target/release/tracefold-detector /out/

# --- runtime: the binaries, the shared libraries they link (OpenSSL, zlib), CA certificates.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tracefold \
 && useradd --system --uid 10001 --gid tracefold --no-create-home --shell /usr/sbin/nologin tracefold
COPY --from=build /out/ /usr/local/bin/
COPY deploy/config/ /etc/tracefold/
USER 10001:10001
EXPOSE 8080 9101 9102 9103
ENTRYPOINT []
CMD ["tracefold", "--help"]
