#!/usr/bin/env bash
# Reproduces BENCHMARKS.md on this machine, in one run: the benchmark (bench/main.rs) starts Redis
# and PostgreSQL as deployed through the test suite's launchers, then the release binaries,
# measures them beside the raw limits of their dependencies and beside PostHog's capture server
# (bench/peer.rs), and rewrites BENCHMARKS.md (which links to bench/history.md).
#   bench/run.sh                                       full run, about ten minutes with the capture server
#   BENCH_SECONDS=3 BENCH_BACKLOG=50000 bench/run.sh   shorter measurements, a smaller backlog
#   BENCH_CAPTURE_SRC=/path/to/capture bench/run.sh    build the capture server from a clone of
#                                                      PostHog/capture (once) and measure it too
#   BENCH_CAPTURE_BIN=/path/to/capture-server          or use one already built
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/dev/install-deps.sh
# wrk drives the comparison with the capture server; cmake and libssl-dev build it.
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ -n "${BENCH_CAPTURE_SRC:-}" ]; then
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev pkg-config)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bench: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
exec cargo bench --locked --bench run
