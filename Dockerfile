# Tributary broker image: build with the pinned toolchain, run as a non-root
# user on a slim Debian with CA certificates (for S3 and PostgreSQL TLS).
#
#   docker build -t tributary .
#   docker run -p 9092:9092 -p 9464:9464 tributary serve --listen 0.0.0.0:9092 --metrics-listen 0.0.0.0:9464

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka's build (dev-dependency, not in the image) is not needed for the binary.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY crates ./crates
# kafka-protocol with its pre-allocation patch ([patch.crates-io] in Cargo.toml).
COPY vendor ./vendor
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked -p tributary-cli --bin tributary \
    && strip target/release/tributary

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tributary --create-home tributary
COPY --from=build /src/target/release/tributary /usr/local/bin/tributary
USER tributary
WORKDIR /var/lib/tributary
ENV TRIBUTARY_DATA_DIR=/var/lib/tributary \
    TRIBUTARY_LISTENERS=PLAINTEXT://0.0.0.0:9092 \
    TRIBUTARY_METRICS_LISTEN=0.0.0.0:9464
EXPOSE 9092 9464
ENTRYPOINT ["tributary"]
CMD ["serve"]
