#!/usr/bin/env bash
# Runs every test: unit tests; the integration tests, which start their own redis-server and
# PostgreSQL processes on free ports in temporary directories; and the validators over the
# deployment files (compose, Kubernetes manifests, Prometheus config and alert rules).
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/dev/install-deps.sh
deploy/dev/install-tools.sh
cargo fmt --all -- --check
deploy/dev/check-deploy.sh
cargo test --locked --lib --tests
