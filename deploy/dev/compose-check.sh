#!/usr/bin/env bash
# Proves `docker compose up` works, end to end, as a new user would run it: builds the image from
# this checkout, brings the whole stack up, waits for health, runs the demo's curl and a batch
# over all three demo signals, checks the events are stored, reads the worker's metrics through
# Prometheus and its targets, checks /metrics is not served on the public port, then `down` and
# `up` again and checks the demo kept its tenant and key, and finally `down -v`.
#
# Needs a Docker engine and docker-compose (deploy/dev/install-docker.sh installs and starts
# them). Where no image registry is reachable, ../shared/compose/standins.sh (if present beside
# the checkout) builds local stand-ins of the base images first; it skips images that exist.
# Grafana is not started: it is the one image with no stand-in, and nothing here depends on it.
#
#   deploy/dev/compose-check.sh           # the whole check; exits non-zero on the first failure
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-sluicecheck}
# Published ports, overridable so the check can run beside a local stack.
export SLUICE_HTTP_PORT=${SLUICE_HTTP_PORT:-18080}
export SLUICE_PROMETHEUS_PORT=${SLUICE_PROMETHEUS_PORT:-19090}
export SLUICE_ADMIN_PORT=${SLUICE_ADMIN_PORT:-18081}
SERVICES=(redis postgres migrate api1 api2 worker demo lb prometheus)
BASE="http://127.0.0.1:$SLUICE_HTTP_PORT"
PROM="http://127.0.0.1:$SLUICE_PROMETHEUS_PORT"
ADMIN="http://127.0.0.1:$SLUICE_ADMIN_PORT"

say() { echo "compose-check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
dc() { docker-compose -f docker-compose.yml "$@"; }

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    say "logs of the failed run:"
    dc ps >&2 || true
    dc logs --no-color --tail 40 >&2 || true
  fi
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  exit "$status"
}

deploy/dev/install-docker.sh
STANDINS="$ROOT/../shared/compose/standins.sh"
if [ -f "$STANDINS" ]; then
  say "base images (stand-ins where none can be pulled)"
  bash "$STANDINS" >&2
fi

# A run interrupted before its cleanup leaves containers and volumes behind: start clean.
dc down -v --remove-orphans >/dev/null 2>&1 || true
volumes_before=$(docker volume ls -q | wc -l)
trap cleanup EXIT

say "building the image from this checkout"
dc build >&2
size=$(docker image inspect sluice:local --format '{{.Size}}')
say "image sluice:local: $((size / 1024 / 1024)) MiB"
for bin in $(sed -n '/^\[\[bin\]\]$/{n;s/^name = "\(.*\)"$/\1/p}' Cargo.toml); do
  docker run --rm sluice:local "$bin" --version >/dev/null || fail "$bin is not in the image"
done
[ "$(docker run --rm sluice:local id -u)" = 10001 ] || fail "the image does not run as uid 10001"

health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(dc ps -q "$1")" 2>/dev/null; }
up_and_wait() {
  dc up -d "${SERVICES[@]}" >&2
  local deadline=$((SECONDS + 240))
  for service in api1 api2 worker; do
    until [ "$(health "$service")" = healthy ]; do
      [ $SECONDS -lt $deadline ] || fail "$service not healthy after 240 s"
      sleep 2
    done
  done
  until [ "$(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(dc ps -q demo)")" = "exited 0" ]; do
    [ $SECONDS -lt $deadline ] || fail "the demo did not finish"
    sleep 2
  done
  until curl -fs "$BASE/livez" >/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "the load balancer does not answer on $BASE"
    sleep 1
  done
}
psql_q() { dc exec -T postgres psql -U sluice -d sluice -Atc "$1"; }
# What `docker compose logs demo` shows a user, without the "demo_1  | " prefix of each line.
demo_output() { dc logs --no-color demo | sed 's/^[^|]*| \{0,1\}//'; }

say "first up"
up_and_wait
demo=$(demo_output)
key=$(echo "$demo" | grep -o 'Bearer sk_[0-9a-f]*' | head -n 1 | cut -d' ' -f2)
tenant=$(echo "$demo" | grep -o 'Demo tenant ten_[A-Za-z0-9]*' | head -n 1 | cut -d' ' -f3)
[ -n "$key" ] && [ -n "$tenant" ] || fail "docker compose logs demo printed no key: $demo"

# The demo's own curl, exactly as printed, against the published port.
curl_cmd=$(echo "$demo" | awk '/^curl /{on=1} on{print} on && /-d /{exit}' | sed "s|http://localhost:8080|$BASE|")
reply=$(bash -c "$curl_cmd")
echo "$reply" | grep -q '"success":true' || fail "the demo's curl answered: $reply"
# Self-service through the load balancer, and the admin API on api1's loopback-only port, with
# the curls the demo printed.
for printed in '/v1/signals -H' '/admin/v1/tenants/'; do
  cmd=$(echo "$demo" | grep -F "$printed" | head -n 1 | sed "s|http://localhost:8080|$BASE|; s|http://localhost:8081|$ADMIN|")
  [ -n "$cmd" ] || fail "the demo printed no curl for $printed: $demo"
  reply=$(bash -c "$cmd")
  echo "$reply" | grep -q '"slug":"page_view"' || fail "$cmd answered: $reply"
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/admin/v1/tenants")" = 404 ] || fail "the admin API answers on the public port"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/admin/v1/tenants")" = 401 ] || fail "the admin API answers without a token"
# A batch over every demo signal: an event, a metric with its schema, a state.
reply=$(curl -s "$BASE/v1/events/batch" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d '{"events": [
  {"signal": "page_view", "identity": {"type": "account", "id": "acc_1"}, "reference": "check-1"},
  {"signal": "mrr", "identity": {"type": "account", "id": "acc_1"}, "data": {"value": 49.5}, "reference": "check-2"},
  {"signal": "plan", "identity": {"type": "account", "id": "acc_1"}, "data": {"plan": "pro"}, "reference": "check-3"}]}')
[ "$(echo "$reply" | grep -o '"status":"pending"' | wc -l)" = 3 ] || fail "the batch answered: $reply"

say "events reach PostgreSQL"
deadline=$((SECONDS + 60))
until [ "$(psql_q "select count(*) from events where reference in ('evt-001','check-1','check-2','check-3') and status = 'processed'")" = 4 ]; do
  [ $SECONDS -lt $deadline ] || fail "the events were not stored: $(psql_q 'select reference, status, error from events')"
  sleep 1
done
[ "$(psql_q "select sum(count) from metric_rollups where granularity = 'hour'")" = 1 ] || fail "no metric rollup"
[ "$(psql_q "select data->>'plan' from signal_states")" = pro ] || fail "no latest state"

say "the read API answers through the load balancer"
id=$(echo "$reply" | grep -o '"id":"[^"]*"' | head -n 1 | cut -d'"' -f4)
event=$(curl -s "$BASE/v1/events/$id" -H "Authorization: Bearer $key")
echo "$event" | grep -q '"status":"processed"' || fail "GET /v1/events/$id answered: $event"
states=$(curl -s "$BASE/v1/identities/account/acc_1" -H "Authorization: Bearer $key")
echo "$states" | grep -q '"plan":"pro"' || fail "GET /v1/identities/account/acc_1 answered: $states"

say "/metrics stays off the public port; Prometheus scrapes every replica and the worker"
code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/metrics")
[ "$code" = 404 ] || fail "GET /metrics on the public port answered $code"
deadline=$((SECONDS + 60))
until [ "$(curl -fs "$PROM/api/v1/targets" | grep -o '"health":"up"' | wc -l)" -ge 3 ]; do
  [ $SECONDS -lt $deadline ] || fail "Prometheus targets: $(curl -s "$PROM/api/v1/targets")"
  sleep 2
done
until curl -fs "$PROM/api/v1/query" --data-urlencode 'query=sum(sluice_worker_events_stored_total{status="processed"})' | grep -q '"4"'; do
  [ $SECONDS -lt $deadline ] || fail "the worker's stored-events counter never read 4 in Prometheus"
  sleep 2
done

say "down, then up again: the demo keeps its tenant and key"
dc down >&2
up_and_wait
again=$(demo_output)
echo "$again" | grep -q "Bearer $key" || fail "after down/up the demo printed another key: $again"
[ "$(psql_q "select count(*) from tenants where name = 'Demo'")" = 1 ] || fail "a second demo tenant was created"
reply=$(curl -s "$BASE/v1/events" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"signal": "page_view", "identity": {"type": "account", "id": "acc_2"}, "reference": "check-4"}')
echo "$reply" | grep -q '"success":true' || fail "the demo key no longer works after down/up: $reply"
[ "$(psql_q "select count(*) from events where reference like 'check-%' or reference = 'evt-001'")" -ge 4 ] \
  || fail "stored events did not survive down/up"

# Nothing of the stack may outlive `down -v`: no volume of any kind left behind.
dc down -v --remove-orphans >&2
volumes_after=$(docker volume ls -q | wc -l)
[ "$volumes_after" -le "$volumes_before" ] || fail "down -v left $((volumes_after - volumes_before)) volumes behind"
say "ok: image built, stack healthy, demo curl 200, events stored, metrics scraped, state kept across down/up"
