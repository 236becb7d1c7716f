# syntax=docker/dockerfile:1
# One runtime image holding all three binaries: sluice-api, sluice-worker, sluice-admin.
#   docker build -t sluice .
#   docker run --rm sluice sluice-admin --help

ARG RUST_VERSION=1.89
ARG DEBIAN=bookworm

# ---- build ---------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src

# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/bin/sluice-api.rs \
 && cp src/bin/sluice-api.rs src/bin/sluice-worker.rs \
 && cp src/bin/sluice-api.rs src/bin/sluice-admin.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bins \
 && rm -rf src target/release/deps/sluice* target/release/deps/libsluice* target/release/.fingerprint/sluice-*

COPY src src
COPY lua lua
COPY migrations migrations
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/sluice-api target/release/sluice-worker target/release/sluice-admin /out/

# ---- runtime -------------------------------------------------------------------------------
FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
ENV SLUICE__LOG__FORMAT=json
EXPOSE 8080 9091
# The api by default; the worker and migrations run the other binaries from the same image.
CMD ["sluice-api"]
