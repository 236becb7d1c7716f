#!/usr/bin/env bash
# Runs every test: unit tests; the integration tests, which start their own redis-server and
# PostgreSQL processes on free ports in temporary directories; the Python SDK's tests; the validators over the
# deployment files (compose, Kubernetes manifests, Prometheus config and alert rules); and the
# compose check, which builds the image and runs the whole stack under Docker
# (SLUICE_SKIP_COMPOSE_CHECK=1 skips it, for a quick local run).
#
#   deploy/dev/test.sh                        everything, once
#   deploy/dev/test.sh --repeat 5             the same, with the unit and integration tests run
#                                             five times over (SLUICE_TEST_REPEAT=5 too): a test
#                                             that depends on timing fails one of the rounds
#   deploy/dev/test.sh --repeat 5 reconnect   only the tests whose names hold "reconnect",
#                                             without the validators and the compose check
set -euo pipefail
cd "$(dirname "$0")/../.."

repeat=${SLUICE_TEST_REPEAT:-1}
filters=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) repeat=${2:?--repeat takes a number}; shift 2 ;;
    --repeat=*) repeat=${1#--repeat=}; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) filters+=("$1"); shift ;;
  esac
done
case "$repeat" in
  ''|*[!0-9]*|0) echo "test: --repeat takes a whole number of at least 1, not '$repeat'" >&2; exit 2 ;;
esac

deploy/dev/install-deps.sh
deploy/dev/install-tools.sh
cargo fmt --all -- --check
[ ${#filters[@]} -gt 0 ] || deploy/dev/check-deploy.sh
# The Python SDK as its users get it: installed from clients/python, then its tests against
# the installed package (the scripted-server rules; tests/api/sdk.rs runs it against Sluice).
VENV=.sluice/tools/venv
sdk_tests() {
  "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps clients/python
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests
}
for ((round = 1; round <= repeat; round++)); do
  [ "$repeat" -eq 1 ] || echo "test: round $round of $repeat" >&2
  cargo test --locked --lib --tests -- "${filters[@]}"
  [ ${#filters[@]} -gt 0 ] || sdk_tests
done
if [ ${#filters[@]} -gt 0 ]; then
  echo "test: validators and compose check skipped (a selection of tests)" >&2
elif [ "${SLUICE_SKIP_COMPOSE_CHECK:-}" = 1 ]; then
  echo "test: compose check skipped (SLUICE_SKIP_COMPOSE_CHECK=1)" >&2
else
  deploy/dev/compose-check.sh
fi
