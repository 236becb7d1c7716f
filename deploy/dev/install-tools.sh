#!/usr/bin/env bash
# Installs the validators the test command runs: kubectl (Debian package, for kustomize),
# promtool (Debian package prometheus), docker-compose (Debian package), and, from PyPI into a
# virtualenv under .sluice/tools, kubernetes-validate (deployment files), openapi-spec-validator
# and schemathesis (the OpenAPI documents, tests/api/openapi.rs), pytest and trustme (the Python
# SDK) and openapi-python-client, and from npm into .sluice/tools/node the TypeScript generator
# and compiler, and from crates.io into .sluice/tools/cargo the Rust generator openapi-to-rust
# (tests/api/generators.rs). Safe to run again; installs only what is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV="$ROOT/.sluice/tools/venv"

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-tools: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The prometheus package starts a server where a service manager runs; only promtool is wanted.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $sudo systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
fi

# PyPI tools, pinned: a new release of a fuzzer can find new things, which is a change to make
# on purpose.
pypi=()
[ -x "$VENV/bin/kubernetes-validate" ] || pypi+=('kubernetes-validate==1.37.0')
[ -x "$VENV/bin/openapi-spec-validator" ] || pypi+=('openapi-spec-validator==0.9.0')
[ -x "$VENV/bin/st" ] || pypi+=('schemathesis==4.32.5')
# pytest for the Python SDK's tests (clients/python); schemathesis depends on the same version.
[ -x "$VENV/bin/pytest" ] || pypi+=('pytest==9.2.0')
# trustme: a throwaway CA and certificates for the SDK's HTTPS tests.
"$VENV/bin/python" -c 'import trustme' >/dev/null 2>&1 || pypi+=('trustme==1.2.1')
# Client generators run on the OpenAPI documents (tests/api/generators.rs).
[ -x "$VENV/bin/openapi-python-client" ] || pypi+=('openapi-python-client==0.29.1')
if [ ${#pypi[@]} -gt 0 ]; then
  echo "install-tools: installing ${pypi[*]} into $VENV" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${pypi[@]}"
fi

# npm tools, exactly as tests/generators/package-lock.json pins them, in .sluice/tools/node:
# openapi-typescript, openapi-fetch and TypeScript (tests/api/generators.rs).
NODE_DIR="$ROOT/.sluice/tools/node"
LOCK="$ROOT/tests/generators/package-lock.json"
if [ ! -x "$NODE_DIR/node_modules/.bin/tsc" ] || ! cmp -s "$LOCK" "$NODE_DIR/package-lock.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-tools: installing nodejs npm" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "install-tools: installing the npm tools of tests/generators into $NODE_DIR" >&2
  mkdir -p "$NODE_DIR"
  cp "$ROOT/tests/generators/package.json" "$LOCK" "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# openapi-to-rust from crates.io, the Rust client generator (tests/api/generators.rs), in
# .sluice/tools/cargo; built once per machine (a few minutes), kept in target/tools after.
O2R_VERSION=0.22.0
O2R="$ROOT/.sluice/tools/cargo/bin/openapi-to-rust"
if [ ! -x "$O2R" ] || [ "$("$O2R" --version 2>/dev/null)" != "openapi-to-rust $O2R_VERSION" ]; then
  echo "install-tools: building openapi-to-rust $O2R_VERSION into $ROOT/.sluice/tools/cargo" >&2
  cargo install --locked --quiet "openapi-to-rust@$O2R_VERSION" \
    --root "$ROOT/.sluice/tools/cargo" --target-dir "$ROOT/target/tools"
fi
