# Shared by the local-dev scripts: where state lives, which ports, how to run as the DB user.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${SLUICE_DEV_STATE:-$ROOT/.sluice}
REDIS_PORT=${SLUICE_DEV_REDIS_PORT:-6390}
PG_PORT=${SLUICE_DEV_PG_PORT:-5440}
API_PORT=${SLUICE_DEV_API_PORT:-8080}
WORKER_PORT=${SLUICE_DEV_WORKER_PORT:-9091}
ADMIN_PORT=${SLUICE_DEV_ADMIN_PORT:-8081}

export SLUICE__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export SLUICE__POSTGRES__URL="postgres://postgres@127.0.0.1:$PG_PORT/sluice"
export SLUICE__API__BIND="127.0.0.1:$API_PORT"
export SLUICE__WORKER__METRICS_BIND="127.0.0.1:$WORKER_PORT"
export SLUICE__ADMIN__BIND="127.0.0.1:$ADMIN_PORT"

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

# PostgreSQL will not run as root: then it runs as the postgres user, and its data directory
# must be somewhere that user can reach.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_data_dir() {
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
    echo "/var/tmp/sluice-dev-pg-$(echo "$STATE" | cksum | cut -d' ' -f1)"
  else
    echo "$STATE/pg"
  fi
}

stop_pidfile() {
  local file=$1
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
