#!/usr/bin/env bash
# Reproduces BENCHMARKS.md on this machine, in one run: starts Redis, PostgreSQL, the api and the
# worker itself, measures them beside the raw limits of their dependencies, and rewrites
# BENCHMARKS.md (which links to bench/history.md for the history of changes).
#   bench/run.sh            # full run, a few minutes
#   BENCH_SECONDS=3 bench/run.sh   # shorter measurements
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_PER_RUN=${BENCH_SECONDS:-8}
BACKLOG=${BENCH_BACKLOG:-200000}

"$ROOT/deploy/dev/install-deps.sh"
command -v python3 >/dev/null || { echo "bench: python3 is needed to read results" >&2; exit 1; }
echo "bench: building release binaries" >&2
cargo build --release --locked --bins -q
BIN="$ROOT/target/release"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/pg/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  [ -f "$WORK/tls/redis.pid" ] && kill "$(cat "$WORK/tls/redis.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT=$(free_port); PG_PORT=$(free_port)
export SLUICE__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export SLUICE__POSTGRES__URL="postgres://postgres@127.0.0.1:$PG_PORT/sluice"
export SLUICE__LOG__LEVEL=warn

# Redis as deployed: append-only file, fsync every second.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --appendonly yes --appendfsync everysec \
  --save "" --daemonize yes --logfile "$WORK/redis.log"
mkdir -p "$WORK/pg"; [ "$(id -u)" -eq 0 ] && chown postgres "$WORK/pg"
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust -E UTF8 --locale=C >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1" start >/dev/null
"$BIN/sluice-admin" migrate >/dev/null
field() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/"; }
TENANT=$("$BIN/sluice-admin" tenant create --name bench | field id)
KEY=$("$BIN/sluice-admin" key create --tenant "$TENANT" | field key)
# Ten signals, as the issue's reference case: each request's 100 events spread over all of them.
SIGNALS=()
for i in $(seq 0 9); do
  "$BIN/sluice-admin" signal create --tenant "$TENANT" --slug "bench$i" --type event --limit 2000000000 >/dev/null
  SIGNALS+=(--signal "bench$i")
done
STREAM=$("$BIN/sluice-admin" tenant show --id "$TENANT" | field stream)
EVENT_BYTES=300

start_apis() { # $1 = replicas
  API_URLS=(); API_PIDS=()
  for _ in $(seq "$1"); do
    local port; port=$(free_port)
    SLUICE__API__BIND="127.0.0.1:$port" "$BIN/sluice-api" 2>>"$WORK/api.log" &
    API_PIDS+=($!); PIDS+=($!); API_URLS+=("--url" "http://127.0.0.1:$port")
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
  done
}
stop_apis() { for pid in "${API_PIDS[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done; }
loadgen() { "$BIN/sluice-loadgen" "${API_URLS[@]}" --key "$KEY" "${SIGNALS[@]}" --event-bytes "$EVENT_BYTES" --json "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d'+sys.argv[1]))" "$1"; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# CPU seconds (user + system) a process has used so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
# The admission script's Redis-side cost per call since the last CONFIG RESETSTAT.
script_usec() { redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | grep -E '^cmdstat_(evalsha|eval):' | sed -E 's/.*usec_per_call=([0-9.]+).*/\1/' | sort -n | tail -n 1; }

RESULTS="$WORK/results.txt"; : > "$RESULTS"
record() { echo "$1=$2" >> "$RESULTS"; }

# 1. Ingest throughput: batch sizes x replicas, worker not running (the api alone). For the
# reference case (1 replica, batch 100) also the script's cost in Redis and the api's CPU.
for replicas in 1 2; do
  start_apis "$replicas"
  for batch in 1 10 100; do
    redis-cli -p "$REDIS_PORT" del "$STREAM" >/dev/null
    redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
    cpu0=$(cpu_seconds "${API_PIDS[0]}")
    out=$(loadgen --batch "$batch" --connections 32 --duration "$SECONDS_PER_RUN" --warmup 0)
    cpu1=$(cpu_seconds "${API_PIDS[0]}")
    record "ingest_${replicas}_${batch}_eps" "$(echo "$out" | json "['events_per_sec']")"
    record "ingest_${replicas}_${batch}_rps" "$(echo "$out" | json "['requests_per_sec']")"
    record "ingest_${replicas}_${batch}_p50" "$(echo "$out" | json "['latency_ms']['p50']")"
    record "ingest_${replicas}_${batch}_p99" "$(echo "$out" | json "['latency_ms']['p99']")"
    record "ingest_${replicas}_${batch}_non200" "$(echo "$out" | json "['statuses']" | python3 -c "import ast,sys; d=ast.literal_eval(sys.stdin.read()); print(', '.join(f'{k}: {v}' for k,v in d.items() if k!='200'))")"
    record "ingest_${replicas}_${batch}_script_us" "$(script_usec)"
    if [ "$replicas" -eq 1 ]; then
      record "ingest_1_${batch}_cpu_s" "$(python3 -c "print($cpu1-$cpu0)")"
      record "ingest_1_${batch}_events" "$(echo "$out" | json "['events_accepted']")"
    fi
    echo "bench: ingest replicas=$replicas batch=$batch: $(echo "$out" | json "['events_per_sec']") events/s" >&2
  done
  if [ "$replicas" -eq 1 ]; then
    # 2. Latency at a constant light rate, open loop: 100 requests/s of 100 events.
    out=$(loadgen --batch 100 --connections 8 --rate 100 --duration "$SECONDS_PER_RUN")
    record light_p50 "$(echo "$out" | json "['latency_ms']['p50']")"
    record light_p95 "$(echo "$out" | json "['latency_ms']['p95']")"
    record light_p99 "$(echo "$out" | json "['latency_ms']['p99']")"
    record light_max "$(echo "$out" | json "['latency_ms']['max']")"
    # 3. Peak memory of the replica after all of the above.
    record api_rss_mib "$(peak_rss_mib "${API_PIDS[0]}")"
  fi
  stop_apis
done

# 1c. Requests with an Idempotency-Key (a fresh one each: every answer recorded) beside the same
# requests without, 1 replica, batch 100; and the memory one record takes.
start_apis 1
for mode in plain keyed; do
  redis-cli -p "$REDIS_PORT" del "$STREAM" >/dev/null
  flag=(); [ "$mode" = keyed ] && flag=(--idempotency-keys)
  out=$(loadgen --batch 100 --connections 32 --duration "$SECONDS_PER_RUN" "${flag[@]}")
  record "idem_${mode}_eps" "$(echo "$out" | json "['events_per_sec']")"
  record "idem_${mode}_p99" "$(echo "$out" | json "['latency_ms']['p99']")"
  echo "bench: ingest batch=100 $mode: $(echo "$out" | json "['events_per_sec']") events/s" >&2
done
record idem_record_bytes "$(redis-cli -p "$REDIS_PORT" --raw memory usage "$(redis-cli -p "$REDIS_PORT" --raw --scan --pattern 'sluice:*:idem:*' | head -n 1)")"
record idem_records "$(redis-cli -p "$REDIS_PORT" --raw --scan --pattern 'sluice:*:idem:*' | wc -l)"
stop_apis

# 1b. The same ingest over TLS to Redis (rustls, certificate verified), beside plain text above:
# a second, TLS-only Redis with a throwaway CA, its registry copy written by sluice-admin sync.
TLS_DIR="$WORK/tls"; mkdir -p "$TLS_DIR"
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" -days 2 -subj /CN=bench-ca
ec -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" -subj /CN=localhost
openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
  -CAcreateserial -days 2 -out "$TLS_DIR/server.pem" \
  -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1") 2>/dev/null
TLS_PORT=$(free_port)
redis-server --port 0 --tls-port "$TLS_PORT" --tls-cert-file "$TLS_DIR/server.pem" \
  --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients no \
  --bind 127.0.0.1 --dir "$TLS_DIR" --appendonly yes --appendfsync everysec --save "" \
  --daemonize yes --pidfile "$TLS_DIR/redis.pid" --logfile "$TLS_DIR/redis.log"
tls_cli() { redis-cli --tls --cacert "$TLS_DIR/ca.pem" -p "$TLS_PORT" "$@"; }
for _ in $(seq 100); do tls_cli ping >/dev/null 2>&1 && break; sleep 0.05; done
PLAIN_REDIS_URL=$SLUICE__REDIS__URL
export SLUICE__REDIS__URL="rediss://localhost:$TLS_PORT" SLUICE__REDIS__TLS_CA_FILE="$TLS_DIR/ca.pem"
"$BIN/sluice-admin" sync >/dev/null
start_apis 1
for batch in 1 100; do
  tls_cli del "$STREAM" >/dev/null
  out=$(loadgen --batch "$batch" --connections 32 --duration "$SECONDS_PER_RUN")
  record "tls_${batch}_eps" "$(echo "$out" | json "['events_per_sec']")"
  record "tls_${batch}_p50" "$(echo "$out" | json "['latency_ms']['p50']")"
  record "tls_${batch}_p99" "$(echo "$out" | json "['latency_ms']['p99']")"
  record "tls_${batch}_non200" "$(echo "$out" | json "['statuses']" | python3 -c "import ast,sys; d=ast.literal_eval(sys.stdin.read()); print(', '.join(f'{k}: {v}' for k,v in d.items() if k!='200'))")"
  echo "bench: ingest over TLS batch=$batch: $(echo "$out" | json "['events_per_sec']") events/s" >&2
done
stop_apis
export SLUICE__REDIS__URL=$PLAIN_REDIS_URL; unset SLUICE__REDIS__TLS_CA_FILE
tls_cli shutdown nosave >/dev/null 2>&1 || true

# 4. The physical limit: pipelined XADD, one entry per event, each the size of one event of the
# reference case (its JSON as the api writes it, and the one-event layout's meta field), on the
# same Redis: what one XADD per event could reach at best.
start_apis 1
redis-cli -p "$REDIS_PORT" del "$STREAM" >/dev/null
loadgen --batch 100 --connections 1 --requests 1 --warmup 0 --duration 5 >/dev/null
stop_apis
EVENT_JSON=$(redis-cli -p "$REDIS_PORT" --raw xrange "$STREAM" - + count 1 | tail -n +2 | python3 -c "
import sys, json
lines = sys.stdin.read().split('\n')
b = lines[lines.index('b') + 1]
print(json.dumps(json.loads(b)[0], separators=(',', ':')))")
META="$TENANT|sig_bench0|event|0"
record entry_bytes "$(( ${#EVENT_JSON} + ${#META} ))"
raw=$(redis-benchmark -p "$REDIS_PORT" -c 32 -P 16 -n 2000000 -q xadd rawbench '*' m "$META" e "$EVENT_JSON" 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -n 1 | awk '{print $1}')
redis-cli -p "$REDIS_PORT" del rawbench >/dev/null
record raw_xadd "$raw"

# 5. Worker drain of a backlog, beside a raw \copy of the same rows.
start_apis 1
redis-cli -p "$REDIS_PORT" del "$STREAM" >/dev/null
loadgen --batch 100 --connections 16 --requests $((BACKLOG / 100)) --warmup 0 --duration 600 >/dev/null
stop_apis
BACKLOG_LEN=$BACKLOG
SLUICE__WORKER__METRICS_BIND="127.0.0.1:$(free_port)" "$BIN/sluice-worker" 2>>"$WORK/worker.log" &
WORKER=$!; PIDS+=($WORKER)
t0=$(date +%s.%N)
while [ "$(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d sluice -Atc 'select count(*) from events')" -lt "$BACKLOG_LEN" ]; do sleep 0.2; done
t1=$(date +%s.%N)
kill $WORKER; wait $WORKER 2>/dev/null || true
record drain_events "$BACKLOG_LEN"
record drain_seconds "$(python3 -c "print($t1-$t0)")"
PSQL=(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d sluice -q)
"${PSQL[@]}" -c "\\copy (select * from events) to '$WORK/events.csv' csv"
"${PSQL[@]}" -c "create table events_copy (like events including defaults including indexes)"
t0=$(date +%s.%N)
"${PSQL[@]}" -c "\\copy events_copy from '$WORK/events.csv' csv"
t1=$(date +%s.%N)
record copy_seconds "$(python3 -c "print($t1-$t0)")"

# 5a. The read API over that backlog, now stored: BACKLOG events of one tenant. One connection,
# one request at a time, so each latency is a request's own: a lookup by id, the first page of an
# identity's events, the first page of a signal's events, each over many different targets.
# As autovacuum would shortly after such a bulk load: statistics of the new rows, so the plans are
# the steady state's (without them, a list by signal may sort the whole signal).
"${PSQL[@]}" -c "analyze events"
"${PSQL[@]}" -At -c "select '/v1/events/' || id from events order by random() limit 5000" > "$WORK/read_by_id"
"${PSQL[@]}" -At -c "select '/v1/events?identity_type=account&identity_id=' || identity_id from (select distinct identity_id from events) i order by random() limit 5000" > "$WORK/read_by_identity"
"${PSQL[@]}" -At -c "select '/v1/events?signal=' || slug from signals" > "$WORK/read_by_signal"
record read_events "$("${PSQL[@]}" -At -c 'select count(*) from events')"
start_apis 1
for kind in by_id by_identity by_signal; do
  out=$("$BIN/sluice-loadgen" "${API_URLS[@]}" --key "$KEY" --get-paths "$WORK/read_$kind" \
    --connections 1 --duration "$SECONDS_PER_RUN" --json)
  record "read_${kind}_rps" "$(echo "$out" | json "['requests_per_sec']")"
  record "read_${kind}_p50" "$(echo "$out" | json "['latency_ms']['p50']")"
  record "read_${kind}_p99" "$(echo "$out" | json "['latency_ms']['p99']")"
  record "read_${kind}_non200" "$(echo "$out" | json "['statuses']" | python3 -c "import ast,sys; d=ast.literal_eval(sys.stdin.read()); print(', '.join(f'{k}: {v}' for k,v in d.items() if k!='200'))")"
  echo "bench: read $kind: p99 $(echo "$out" | json "['latency_ms']['p99']") ms" >&2
done
stop_apis

# 5b. Recovery after a worker crash. A consumer reads the whole backlog and never acknowledges
# it, exactly as a worker killed with it in hand leaves it; then a worker started with a short
# claim idle time claims and stores all of it. Measured from the "crash" to the last row stored.
RECOVERY_IDLE_MS=2000
"${PSQL[@]}" -c "truncate events, metric_rollups, signal_states"
redis-cli -p "$REDIS_PORT" del "$STREAM" >/dev/null
start_apis 1
loadgen --batch 100 --connections 16 --requests $((BACKLOG / 200)) --warmup 0 --duration 600 >/dev/null
stop_apis
RECOVERY_ENTRIES=$(redis-cli -p "$REDIS_PORT" xlen "$STREAM")
redis-cli -p "$REDIS_PORT" xgroup create "$STREAM" sluice 0 mkstream >/dev/null
redis-cli -p "$REDIS_PORT" xreadgroup group sluice crashed-worker count "$RECOVERY_ENTRIES" streams "$STREAM" ">" >/dev/null
t0=$(date +%s.%N)
# Entries hold 100 events each.
HELD=$(( $(redis-cli -p "$REDIS_PORT" xpending "$STREAM" sluice | head -n 1) * 100 ))
RECOVERY_LEN=$HELD
SLUICE__WORKER__CLAIM_IDLE_MS=$RECOVERY_IDLE_MS SLUICE__WORKER__METRICS_BIND="127.0.0.1:$(free_port)" \
  "$BIN/sluice-worker" 2>>"$WORK/worker.log" &
WORKER=$!; PIDS+=($WORKER)
while [ "$(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d sluice -Atc 'select count(*) from events')" -lt "$RECOVERY_LEN" ]; do sleep 0.1; done
t1=$(date +%s.%N)
kill $WORKER; wait $WORKER 2>/dev/null || true
record recovery_events "$RECOVERY_LEN"
record recovery_held "$HELD"
record recovery_idle_seconds "$(python3 -c "print($RECOVERY_IDLE_MS/1000)")"
record recovery_seconds "$(python3 -c "print($t1-$t0)")"

# 6. BENCHMARKS.md
python3 - "$RESULTS" "$ROOT/BENCHMARKS.md" "$SECONDS_PER_RUN" <<'PY'
import sys, platform, subprocess, datetime
r = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[1]) if "=" in l)
f = lambda k: float(r[k])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
ver = lambda cmd: subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip().splitlines()[0]
raw = f("raw_xadd")
drain = f("drain_events") / f("drain_seconds"); copy = f("drain_events") / f("copy_seconds")
best100 = max(f("ingest_1_100_eps"), f("ingest_2_100_eps"))
rows = []
for rep in (1, 2):
    for b in (1, 10, 100):
        k = f"ingest_{rep}_{b}"
        rows.append(f"| {rep} | {b} | {f(k+'_eps'):,.0f} | {f(k+'_rps'):,.0f} | {f(k+'_p50'):.2f} | {f(k+'_p99'):.2f} | {f(k+'_script_us'):.1f} | {r[k+'_non200'] or 'none'} |")
cpu_us = lambda b: f(f"ingest_1_{b}_cpu_s") / max(f(f"ingest_1_{b}_events"), 1) * 1e6
def verdict(ok): return "met" if ok else "not met"
out = f"""# Benchmarks

Reproduce with one command: `bench/run.sh` (starts Redis, PostgreSQL, the api and the worker itself;
{sys.argv[3]} s per measurement; about four minutes). The load generator is `sluice-loadgen`, on the same
machine, sharing its cores.

- Machine: {cpu}, {subprocess.run("nproc", capture_output=True, text=True).stdout.strip()} cores, {int(mem)//1024} MiB
- Run: {datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}; {ver("redis-server --version")}; {ver("psql --version")}
- Redis with `appendonly yes`, `appendfsync everysec`; PostgreSQL defaults.

## Ingest (api only, worker stopped; 32 connections; events of about 300 bytes over 10 signals)

Each admitted request is one stream entry; the admission script's cost is per request and per
signal, not per event (docs/design.md, "One stream entry per request").

| api replicas | batch | events/s | requests/s | p50 ms | p99 ms | script µs per call | non-200 |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

## Against the physical limits and the targets

| measure | value | target | |
|---|---|---|---|
| raw pipelined XADD, one entry per event of the same size ({r['entry_bytes']} bytes; redis-benchmark, 32 clients, pipeline 16) | {raw:,.0f} entries/s | | |
| best ingest with 100-event batches over 10 signals ÷ raw per-event XADD | {best100:,.0f} ÷ {raw:,.0f} = **{best100/raw:.2f}** | ≥ 1.0 | {verdict(best100/raw >= 1.0)} |
| admission script per 100-event request over 10 signals (`INFO commandstats` `usec_per_call`, 1 replica) | **{f('ingest_1_100_script_us'):.1f} µs** | ≤ 100 µs | {verdict(f('ingest_1_100_script_us') <= 100)} |
| api CPU per event, batch 100 (user + system from `/proc`, 1 replica) | **{cpu_us(100):.2f} µs** ({cpu_us(100):.2f} s per million events) | ≤ 3 µs | {verdict(cpu_us(100) <= 3)} |
| api CPU per event, batch 10 / batch 1 | {cpu_us(10):.2f} µs / {cpu_us(1):.2f} µs | | |
| latency at a constant light rate (open loop, 100 requests/s of 100 events, from each request's scheduled time) | p50 {f('light_p50'):.2f} ms, p95 {f('light_p95'):.2f} ms, p99 **{f('light_p99'):.2f} ms**, max {f('light_max'):.2f} ms | p99 ≤ 5 ms | {verdict(f('light_p99') <= 5)} |
| latency at saturation (1 replica, batch 100, 32 connections) | p50 {f('ingest_1_100_p50'):.2f} ms, p99 {f('ingest_1_100_p99'):.2f} ms | | |
| api peak RSS after the runs above | **{r['api_rss_mib']} MiB** | ≤ 128 MiB | {verdict(float(r['api_rss_mib']) <= 128)} |
| worker drain of a {int(f('drain_events')):,}-event backlog | {drain:,.0f} events/s ({f('drain_seconds'):.1f} s) | | |
| raw `\\copy` of the same rows into a table like `events` | {copy:,.0f} rows/s ({f('copy_seconds'):.1f} s) | | |
| worker drain ÷ raw COPY | **{drain/copy:.2f}** | ≥ 0.8 | {verdict(drain/copy >= 0.8)} |

## Reads

The read API over the {int(f('read_events')):,} events of one tenant stored by the drain above (one api replica,
one connection, one request at a time, each to a different target; `sluice-loadgen --get-paths`).

| read | requests/s | p50 ms | p99 ms | target | | non-200 |
|---|---|---|---|---|---|---|
""" + "\n".join(
    f"| {what} | {f(f'read_{k}_rps'):,.0f} | {f(f'read_{k}_p50'):.2f} | **{f(f'read_{k}_p99'):.2f}** | p99 ≤ {t} ms | {verdict(f(f'read_{k}_p99') <= t)} | {r[f'read_{k}_non200'] or 'none'} |"
    for what, k, t in (("`GET /v1/events/{id}`", "by_id", 10),
                       ("`GET /v1/events?identity_type=…&identity_id=…` (first page of 100)", "by_identity", 30),
                       ("`GET /v1/events?signal=…` (first page of 100)", "by_signal", 30))
) + f"""

Query plans and the indexes behind them: docs/design.md, "Reads".

## Idempotency-Key

The same ingest (1 api replica, batch 100, 32 connections) with a fresh `Idempotency-Key` on every
request, so every answer is recorded by the admission script, beside the same requests without.

| | events/s | p99 ms |
|---|---|---|
| without a key | {f('idem_plain_eps'):,.0f} | {f('idem_plain_p99'):.2f} |
| with a key | {f('idem_keyed_eps'):,.0f} | {f('idem_keyed_p99'):.2f} |
| with ÷ without | **{f('idem_keyed_eps')/f('idem_plain_eps'):.2f}** | |

One record (100 events over 10 signals, a key of about 30 characters as the load generator sends): **{r['idem_record_bytes']} bytes**
of Redis memory (`MEMORY USAGE`); {int(f('idem_records')):,} records were written in the run. Capacity
arithmetic: docs/operations.md, "Idempotency records".

## TLS to Redis

The same ingest (1 api replica, 32 connections), once over `rediss://` to a TLS-only Redis with
the certificate verified (rustls), beside the plain-text figures of the table above.

| batch | plain events/s | TLS events/s | TLS ÷ plain | plain p99 ms | TLS p99 ms | TLS non-200 |
|---|---|---|---|---|---|---|
""" + "\n".join(
    f"| {b} | {f(f'ingest_1_{b}_eps'):,.0f} | {f(f'tls_{b}_eps'):,.0f} | **{f(f'tls_{b}_eps')/f(f'ingest_1_{b}_eps'):.2f}** | {f(f'ingest_1_{b}_p99'):.2f} | {f(f'tls_{b}_p99'):.2f} | {r[f'tls_{b}_non200'] or 'none'} |"
    for b in (1, 100)
) + f"""

## Recovery after a worker crash

A consumer takes all {int(f('recovery_held')):,} events of a backlog and dies without acknowledging any, as a
worker killed with them in hand would; a worker started with
`SLUICE__WORKER__CLAIM_IDLE_MS={int(f('recovery_idle_seconds')*1000)}` claims and stores them once idle
(`tests/api/recovery.rs` does the same with a real `kill -9`).

| measure | value |
|---|---|
| everything stored, from the crash | {f('recovery_seconds'):.1f} s |
| of which the claim idle time | {f('recovery_idle_seconds'):.1f} s |
| recovery rate after the idle time | **{f('recovery_held')/max(f('recovery_seconds')-f('recovery_idle_seconds'), 0.001):,.0f} events/s** |
| normal drain rate (above) | {drain:,.0f} events/s |
| recovery ÷ normal drain | **{(f('recovery_held')/max(f('recovery_seconds')-f('recovery_idle_seconds'), 0.001))/drain:.2f}** |


"""
out += """## History

What each change to the hot paths bought, with before and after figures, and the experiments that
made no difference: [bench/history.md](bench/history.md). What bounds ingest today, with its
profile, is written there too.
"""
open(sys.argv[2], "w").write(out)
PY
echo "bench: wrote BENCHMARKS.md" >&2
