# syntax=docker/dockerfile:1
# One runtime image holding every binary of the package: sluice-api, sluice-worker, sluice-admin,
# and sluice-loadgen (a load generator, shipped so load tests can run from inside a cluster).
#   docker build -t sluice .
#   docker run --rm sluice sluice-admin --help

ARG RUST_VERSION=1.89
ARG DEBIAN=bookworm

# ---- build ---------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
# Release binaries without debug information, stripped: the image carries only what runs.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# Dependencies first, against stub sources made from Cargo.toml's own [[bin]] list: this layer is
# rebuilt only when Cargo.toml or Cargo.lock change, and a binary added to Cargo.toml needs no
# change here.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && touch src/lib.rs \
 && sed -n 's/^path = "\(src\/bin\/[^"]*\.rs\)"$/\1/p' Cargo.toml > /tmp/bin-paths \
 && test -s /tmp/bin-paths \
 && while read -r path; do mkdir -p "$(dirname "$path")"; echo 'fn main() {}' > "$path"; done < /tmp/bin-paths \
 && cargo build --release --locked --bins \
 && rm -rf src target/release/deps/sluice* target/release/deps/libsluice* target/release/.fingerprint/sluice-*

COPY src src
COPY lua lua
COPY migrations migrations
# Every [[bin]] of Cargo.toml, by name.
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && sed -n '/^\[\[bin\]\]$/{n;s/^name = "\(.*\)"$/\1/p}' Cargo.toml > /tmp/bin-names \
 && test -s /tmp/bin-names \
 && while read -r name; do cp "target/release/$name" /out/; done < /tmp/bin-names

# ---- runtime -------------------------------------------------------------------------------
FROM debian:${DEBIAN}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Event ingestion for CRM signals: rate-limited, acknowledged at once, stored exactly once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --no-create-home --shell /usr/sbin/nologin sluice \
 && mkdir /state && chown 10001:10001 /state
COPY --from=build /out/ /usr/local/bin/
# /state: where the compose demo keeps its tenant and key. A named volume mounted there starts
# as a copy of this directory, owned by the unprivileged user the image runs as. (No VOLUME
# instruction: it would give every container of the image an anonymous volume to leak.)
USER 10001:10001
ENV SLUICE__LOG__FORMAT=json
EXPOSE 8080 9091
# The api by default; the worker and migrations run the other binaries from the same image.
CMD ["sluice-api"]
