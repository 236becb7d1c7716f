#!/usr/bin/env bash
# Stops everything deploy/dev/up.sh started. Data stays in .sluice/ for the next `up`.
set -euo pipefail
source "$(dirname "$0")/common.sh"

stop_pidfile "$STATE/worker.pid"
stop_pidfile "$STATE/api.pid"
stop_pidfile "$STATE/redis.pid"
PG_DATA=$(pg_data_dir)
if [ -n "$PG_BIN" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
fi
echo "sluice: stopped (data kept in $STATE; remove it for a clean slate)"
