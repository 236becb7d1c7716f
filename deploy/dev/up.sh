#!/usr/bin/env bash
# Brings the whole system up locally, from a fresh Debian/Ubuntu machine with Rust:
# installs redis-server and PostgreSQL if absent, runs them under .sluice/, builds and starts
# Sluice, creates a demo tenant, API key and signals, and prints a curl to paste.
# Run it again at any time: it restarts what it started and keeps the data.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

"$ROOT/deploy/dev/install-deps.sh"
mkdir -p "$STATE"
"$ROOT/deploy/dev/down.sh" >/dev/null

echo "sluice: building (release)..." >&2
cargo build --release --locked --bins --example dev-postgres -q
BIN="$ROOT/target/release"

# Redis, with an append-only file so acknowledged events survive a restart, and a memory
# limit with noeviction: a full backlog refuses writes (ingest answers 503) instead of evicting
# acknowledged events. SLUICE_DEV_REDIS_MAXMEMORY sizes it (docs/operations.md, "Redis memory").
mkdir -p "$STATE/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" \
  --appendonly yes --appendfsync everysec --save "" \
  --maxmemory "${SLUICE_DEV_REDIS_MAXMEMORY:-512mb}" --maxmemory-policy noeviction \
  --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
# A large append-only file takes a while to load; Redis answers LOADING until then.
for _ in $(seq 600); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ] || { echo "redis did not become ready; see $STATE/redis.log" >&2; exit 1; }

# PostgreSQL, started as the tests and the benchmark start theirs (deploy/dev/postgres.rs).
"$BIN/examples/dev-postgres" "$(pg_data_dir)" "$PG_PORT"

"$BIN/sluice-admin" migrate >/dev/null

# The demo tenant: created once, reused afterwards.
if [ -f "$STATE/demo.env" ]; then
  source "$STATE/demo.env"
  # A full Redis refuses the write; the worker started below drains it and rebuilds the copy.
  "$BIN/sluice-admin" sync >/dev/null ||
    echo "sluice: the registry copy was not rebuilt now; the worker rebuilds it once Redis has room" >&2
else
  # sluice-admin prints compact JSON objects; pull one string field out of it.
  json() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/"; }
  TENANT=$("$BIN/sluice-admin" tenant create --name "Demo" | json id)
  KEY=$("$BIN/sluice-admin" key create --tenant "$TENANT" --name demo | json key)
  "$BIN/sluice-admin" signal create --tenant "$TENANT" --slug page_view --type event --name "Page view" >/dev/null
  "$BIN/sluice-admin" signal create --tenant "$TENANT" --slug mrr --type metric --name "Monthly recurring revenue" >/dev/null
  "$BIN/sluice-admin" signal create --tenant "$TENANT" --slug plan --type state --name "Current plan" >/dev/null
  "$BIN/sluice-admin" schema add --tenant "$TENANT" --slug mrr --file "$ROOT/deploy/dev/mrr.schema.json" >/dev/null
  printf 'TENANT=%s\nKEY=%s\n' "$TENANT" "$KEY" > "$STATE/demo.env"
  chmod 600 "$STATE/demo.env"
fi
# An admin token for the admin API (made once; a demo.env from before it existed gains one).
if [ -z "${ADMIN_TOKEN:-}" ]; then
  ADMIN_TOKEN=$("$BIN/sluice-admin" admin-token create --name demo | sed -E 's/.*"token":"([^"]*)".*/\1/')
  printf 'ADMIN_TOKEN=%s\n' "$ADMIN_TOKEN" >> "$STATE/demo.env"
fi

nohup "$BIN/sluice-worker" >"$STATE/worker.log" 2>&1 &
echo $! > "$STATE/worker.pid"
nohup "$BIN/sluice-api" >"$STATE/api.log" 2>&1 &
echo $! > "$STATE/api.pid"

wait_ready() {
  for _ in $(seq 100); do
    curl -fs "$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$2 did not become ready; see $STATE/$2.log" >&2
  exit 1
}
wait_ready "http://127.0.0.1:$API_PORT" api
wait_ready "http://127.0.0.1:$WORKER_PORT" worker

cat <<MSG

Sluice is up.
  api          http://127.0.0.1:$API_PORT   (log: $STATE/api.log; OpenAPI: /openapi.json)
  admin API    http://127.0.0.1:$ADMIN_PORT   (token: ADMIN_TOKEN in $STATE/demo.env)
  worker       http://127.0.0.1:$WORKER_PORT/metrics   (log: $STATE/worker.log)
  redis        127.0.0.1:$REDIS_PORT   postgres 127.0.0.1:$PG_PORT (database sluice)
  demo tenant  $TENANT   signals: page_view (event), mrr (metric, schema v1), plan (state)
  stop with    deploy/dev/down.sh

Send two events:

curl -s http://127.0.0.1:$API_PORT/v1/events/batch \\
  -H 'Authorization: Bearer $KEY' \\
  -H 'Content-Type: application/json' \\
  -d '{"events": [
        {"signal": "page_view", "identity": {"type": "account", "id": "acc_123"},
         "data": {"path": "/pricing"}, "reference": "evt-001"},
        {"signal": "mrr", "identity": {"type": "account", "id": "acc_123"},
         "data": {"value": 499.0}, "reference": "evt-002"}
      ]}'

See your signals and what is left of their windows:

curl -s http://127.0.0.1:$API_PORT/v1/signals -H 'Authorization: Bearer $KEY'

Follow them once stored (a moment after they are acknowledged): list the newest, then read one
by the id the answer gave, an identity's latest states, and a metric's hourly rollup:

curl -s 'http://127.0.0.1:$API_PORT/v1/events?limit=10' -H 'Authorization: Bearer $KEY'
curl -s http://127.0.0.1:$API_PORT/v1/events/<id> -H 'Authorization: Bearer $KEY'
curl -s http://127.0.0.1:$API_PORT/v1/identities/account/acc_123 -H 'Authorization: Bearer $KEY'
curl -s 'http://127.0.0.1:$API_PORT/v1/signals/mrr/rollups?identity_type=account&identity_id=acc_123&granularity=hour' -H 'Authorization: Bearer $KEY'

Manage the registry over HTTP, e.g. the demo tenant's signals:

curl -s http://127.0.0.1:$ADMIN_PORT/admin/v1/tenants/$TENANT/signals -H 'Authorization: Bearer $ADMIN_TOKEN'

Then see them stored:

psql -h 127.0.0.1 -p $PG_PORT -U postgres sluice -c 'SELECT id, signal_id, status, data FROM events'
MSG
