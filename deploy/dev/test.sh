#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests, which start their own redis-server
# and PostgreSQL processes on free ports in temporary directories.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/dev/install-deps.sh
cargo fmt --all -- --check
cargo test --locked --all-targets
