# Hush server image: hush-node (the server) and hush (the CLI client).
# Used by docker-compose.yml; build it alone with `docker build -t hush .`
#
# Stage 1 builds both binaries in release with the committed Cargo.lock
# (--locked). proto/*.proto is compiled by protox (pure Rust) and SQLite is
# bundled, so the builder needs only cargo and a C compiler (rust:*-slim has
# gcc). Stage 2 is a slim Debian with the binaries and nothing else.

FROM rust:1-slim-bookworm AS builder
WORKDIR /src
# The whole workspace (see .dockerignore for what stays out); the build
# cache is the layer below, so any source change rebuilds from scratch.
COPY . .
# .git stays out of the context: the build names its commit through this
# (`docker build --build-arg HUSH_GIT_SHA=$(git rev-parse HEAD) .`; the
# node's `hush_build_info` says "unknown" without it).
ARG HUSH_GIT_SHA=unknown
ENV HUSH_GIT_SHA=${HUSH_GIT_SHA}
RUN cargo build --release --locked --bin hush-node --bin hush \
 && install -m 0755 target/release/hush-node target/release/hush /usr/local/bin/

FROM debian:bookworm-slim
# ca-certificates: for TLS to ScyllaDB or anything else outside the cluster.
# bash (already in the base image) runs the compose healthcheck.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 hush \
 && useradd --system --uid 10001 --gid hush --home-dir /var/lib/hush --shell /usr/sbin/nologin hush \
 && mkdir -p /var/lib/hush/data /var/lib/hush/ca /var/lib/hush/secrets /var/lib/hush/certs/n1 /var/lib/hush/certs/n2 /var/lib/hush/certs/n3 /etc/hush \
 && chown -R hush:hush /var/lib/hush
COPY --from=builder /usr/local/bin/hush-node /usr/local/bin/hush /usr/local/bin/
# An empty named volume mounted on one of these directories takes its
# ownership, so the unprivileged node can write its data and the shared dev
# CA key (docker-compose.yml mounts volumes exactly here).
USER hush
WORKDIR /var/lib/hush
# Documentation only: the real ports come from the config file. Gateways
# (HTTP/WebSocket/SSE) of docker-compose.yml and the single-node default;
# node-to-node QUIC (UDP).
EXPOSE 7300-7303/tcp 7401-7403/udp
ENTRYPOINT ["hush-node"]
# Alone (`docker run -p 7300:7300 hush`): one node on the embedded store.
# docker-compose.yml replaces this with its config file and node id.
CMD ["--listen", "0.0.0.0:7300", "--data", "/var/lib/hush/data"]
