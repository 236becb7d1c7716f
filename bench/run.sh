#!/usr/bin/env bash
# Reproduces BENCHMARKS.md on this machine, in one run: the benchmark (bench/main.rs) starts Redis
# and PostgreSQL as deployed through the test suite's launchers, then the release binaries,
# measures them beside the raw limits of their dependencies, and rewrites BENCHMARKS.md (which
# links to bench/history.md for the history of changes).
#   bench/run.sh                                   full run, about five minutes
#   BENCH_SECONDS=3 BENCH_BACKLOG=50000 bench/run.sh   shorter measurements, a smaller backlog
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/dev/install-deps.sh
exec cargo bench --locked --bench run
