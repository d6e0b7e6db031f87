# syntax=docker/dockerfile:1
# linkd: build with the Rust toolchain, run from a slim Debian as a non-root
# user. The protos, catalog, migrations and Link page are compiled into the
# binary; the image needs DATABASE_URL and LINKD_ENCRYPTION_KEY to start.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin linkd \
    && cp target/release/linkd /usr/local/bin/linkd

FROM debian:bookworm-slim
# ca-certificates: TLS to providers, connectors and webhook receivers;
# curl: the health check below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin linkd
COPY --from=build /usr/local/bin/linkd /usr/local/bin/linkd
USER 10001:10001
ENV LINKD_LISTEN=0.0.0.0:8080 \
    LINKD_LOG_FORMAT=json
EXPOSE 8080
# Ready means the database answers and linkd is not draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/linkd"]
