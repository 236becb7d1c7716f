#!/usr/bin/env bash
# Runs every test: unit tests; the integration tests, which start their own redis-server and
# PostgreSQL processes on free ports in temporary directories; the validators over the
# deployment files (compose, Kubernetes manifests, Prometheus config and alert rules); and the
# compose check, which builds the image and runs the whole stack under Docker
# (SLUICE_SKIP_COMPOSE_CHECK=1 skips it, for a quick local run).
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/dev/install-deps.sh
deploy/dev/install-tools.sh
cargo fmt --all -- --check
deploy/dev/check-deploy.sh
cargo test --locked --lib --tests
if [ "${SLUICE_SKIP_COMPOSE_CHECK:-}" = 1 ]; then
  echo "test: compose check skipped (SLUICE_SKIP_COMPOSE_CHECK=1)" >&2
else
  deploy/dev/compose-check.sh
fi
