//! `sluice-worker`: every acknowledged event stored exactly once, through crashes, outages and
//! bad entries; rollups, states, dead letters, trimming and registry healing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::keyspace::Keyspace;

use crate::support::{TestApi, TestEnv, event, eventually, valid};

/// Settings that let one signal take all the load these tests send.
pub const HIGH_LIMITS: &[(&str, &str)] = &[
    ("SLUICE__LIMITS__EVENT", "1000000"),
    ("SLUICE__LIMITS__METRIC", "1000000"),
    ("SLUICE__LIMITS__STATE", "1000000"),
];

/// Sends `batches` batches of 100 events alternating two signals; returns every acknowledged id.
pub async fn ingest(api: &TestApi, key: &str, batches: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for b in 0..batches {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    let mut e = event("visits", &format!("{tag}-{b}-{}", i % 7));
                    e["data"] = json!({"value": i});
                    e
                } else {
                    event("clicks", &format!("{tag}-{b}-{i}"))
                }
            })
            .collect();
        let reply = api.batch(key, json!(events)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        ids.extend(
            reply.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
    }
    ids
}

async fn setup() -> (TestEnv, TestApi, String) {
    let env = TestEnv::start_with(HIGH_LIMITS).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "visits", "metric", None).await;
    env.signal(&tenant, "clicks", "event", None).await;
    let api = env.spawn_api().await;
    (env, api, key)
}

/// Every acknowledged id is in `events` exactly once, and nothing else is.
/// The day rollups count every processed metric event exactly once.
pub async fn assert_rolled_up_once(client: &tokio_postgres::Client) {
    let rolled: i64 = client
        .query_one(
            "SELECT coalesce(sum(count), 0)::bigint FROM metric_rollups WHERE granularity = 'day'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let metrics: i64 = client
        .query_one(
            "SELECT count(*) FROM events e JOIN signals s ON s.id = e.signal_id
             WHERE s.type = 'metric' AND e.status = 'processed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rolled, metrics,
        "every processed metric event rolled up exactly once"
    );
    // The totals over every identity are the per-identity rows added up, bucket by bucket.
    let apart: i64 = client
        .query_one(
            "SELECT count(*) FROM (
                 SELECT signal_id, granularity, bucket_start, sum(count)::bigint AS count
                 FROM metric_rollups GROUP BY 1, 2, 3
             ) r FULL JOIN metric_rollup_totals t USING (signal_id, granularity, bucket_start)
             WHERE r.count IS DISTINCT FROM t.count",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(apart, 0, "rollup totals match the per-identity rollups");
}

pub async fn assert_exactly_once(env: &TestEnv, acked: &[String]) {
    let client = env.pg_client().await;
    let rows = client
        .query("SELECT id::text, count(*) FROM events GROUP BY id", &[])
        .await
        .unwrap();
    let stored: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let acked: HashSet<&String> = acked.iter().collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(
        stored.len(),
        acked.len(),
        "nothing stored that was not acknowledged"
    );
    assert_rolled_up_once(&client).await;
}

#[actix_web::test]
async fn stores_events_with_rollups_states_and_invalid_reasons() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    let mrr = env.signal(&tenant, "mrr", "metric", None).await;
    let plan = env.signal(&tenant, "plan", "state", None).await;
    env.signal(&tenant, "page_view", "event", None).await;
    env.registry
        .add_schema(
            &valid(&tenant),
            &valid("mrr"),
            &json!({"type": "object", "properties": {"value": {"type": "number", "minimum": 0}}}),
        )
        .await
        .unwrap();
    let api = env.spawn_api().await;
    let at = |t: &str, slug: &str, id: &str, data: Value| {
        let mut e = event(slug, id);
        e["timestamp"] = json!(t);
        e["data"] = data;
        e
    };
    let first = api
        .batch(
            &key,
            json!([
                at("2026-11-26T10:05:00Z", "mrr", "acc-1", json!({"value": 10})),
                at(
                    "2026-11-26T10:35:00Z",
                    "mrr",
                    "acc-1",
                    json!({"value": 30.5})
                ),
                at("2026-11-26T11:01:00Z", "mrr", "acc-1", json!({"value": -4})),
                at(
                    "2026-11-26T11:02:00Z",
                    "mrr",
                    "acc-1",
                    json!({"value": "lots"})
                ),
                at("2026-11-26T11:03:00Z", "mrr", "acc-2", json!({"other": 1})),
                at(
                    "2026-11-26T12:00:00Z",
                    "plan",
                    "acc-1",
                    json!({"plan": "pro"})
                ),
                at(
                    "2026-11-26T09:00:00Z",
                    "plan",
                    "acc-1",
                    json!({"plan": "trial"})
                ),
                at(
                    "2026-11-26T10:00:00Z",
                    "page_view",
                    "acc-1",
                    json!({"path": "/"})
                ),
            ]),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let _worker = env.spawn_worker(&[]);
    assert_eq!(env.wait_for_events(8, 30).await, 8);

    // An older state arriving later does not overwrite the newer one.
    let late = api
        .batch(
            &key,
            json!([at(
                "2026-11-26T11:59:59Z",
                "plan",
                "acc-1",
                json!({"plan": "basic"})
            )]),
        )
        .await;
    assert_eq!(late.status, 200);
    assert_eq!(env.wait_for_events(9, 30).await, 9);
    let newer = api
        .batch(
            &key,
            json!([at(
                "2026-11-26T13:00:00Z",
                "plan",
                "acc-2",
                json!({"plan": "team"})
            )]),
        )
        .await;
    assert_eq!(newer.status, 200);
    assert_eq!(env.wait_for_events(10, 30).await, 10);

    let client = env.pg_client().await;
    let statuses: Vec<(String, Option<String>)> = client
        .query(
            "SELECT status, error FROM events WHERE signal_id = $1 ORDER BY occurred_at",
            &[&mrr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(statuses[0].0, "processed");
    assert_eq!(statuses[1].0, "processed");
    assert_eq!(statuses[2].0, "invalid", "-4 breaks minimum 0");
    assert!(
        statuses[2]
            .1
            .as_deref()
            .unwrap()
            .contains("schema version 1"),
        "{:?}",
        statuses[2]
    );
    assert_eq!(statuses[3].0, "invalid", "a string value breaks the schema");
    assert_eq!(statuses[4].0, "invalid");
    assert!(
        statuses[4]
            .1
            .as_deref()
            .unwrap()
            .contains("numeric data.value"),
        "{:?}",
        statuses[4]
    );

    let rollups: Vec<(String, String, i64, f64, f64, f64)> = client
        .query(
            "SELECT granularity, to_char(bucket_start AT TIME ZONE 'UTC', 'HH24:MI'), count, sum, min, max
             FROM metric_rollups WHERE signal_id = $1 AND identity_id = 'acc-1' ORDER BY granularity, bucket_start",
            &[&mrr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        rollups,
        [
            ("day".into(), "00:00".into(), 2, 40.5, 10.0, 30.5),
            ("hour".into(), "10:00".into(), 2, 40.5, 10.0, 30.5)
        ],
        "only processed events are rolled up"
    );

    let states: HashMap<String, Value> = client
        .query(
            "SELECT identity_id, data FROM signal_states WHERE signal_id = $1",
            &[&plan],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        states["acc-1"],
        json!({"plan": "pro"}),
        "latest by event timestamp"
    );
    assert_eq!(states["acc-2"], json!({"plan": "team"}));

    let versions: Vec<Option<i32>> = client
        .query(
            "SELECT DISTINCT schema_version FROM events WHERE signal_id = $1",
            &[&mrr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [Some(1)]);
    // Rows are visible once their transaction commits; the entries' acknowledgement follows.
    eventually("everything stored acknowledged", async || {
        (env.pending() == 0).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn kill_9_mid_batch_then_another_worker_claims_everything_exactly_once() {
    let (env, api, key) = setup().await;
    let acked = ingest(&api, &key, 40, "k").await;
    let mut first = env.spawn_worker(&[
        ("SLUICE__WORKER__BATCH_SIZE", "5"),
        ("SLUICE__WORKER__CONSUMER", "doomed"),
    ]);
    // Let it get part of the way, then kill it wherever it is.
    let partial = env.wait_for_events(200, 30).await;
    first.kill9();
    assert!(
        partial >= 200 && partial < acked.len() as i64,
        "killed mid-way: {partial}"
    );

    let second = env.spawn_worker(&[("SLUICE__WORKER__CLAIM_IDLE_MS", "500")]);
    second.wait_ready(200).await;
    let stored = env.wait_for_events(acked.len() as i64, 60).await;
    assert_eq!(stored, acked.len() as i64);
    // The entries the dead worker held are claimed, stored (or found stored) and acknowledged.
    eventually("every entry acknowledged", async || {
        (env.pending() == 0).then_some(())
    })
    .await;
    assert_exactly_once(&env, &acked).await;
    let (_, metrics) = second.get("/metrics").await;
    let claimed = crate::support::metric_value(&metrics, "sluice_worker_claimed_total");
    assert!(claimed.is_some_and(|n| n > 0.0), "{metrics}");
}

#[actix_web::test]
async fn postgres_outage_under_ingest_loses_nothing() {
    let (mut env, api, key) = setup().await;
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    let mut acked = ingest(&api, &key, 5, "before").await;
    env.wait_for_events(acked.len() as i64, 30).await;

    env.pg.stop();
    // Ingest goes on: the api needs only Redis, and the streams buffer.
    acked.extend(ingest(&api, &key, 10, "during").await);
    let body = worker.wait_ready(503).await;
    assert!(body.contains("postgres"), "{body}");

    env.pg.restart();
    acked.extend(ingest(&api, &key, 5, "after").await);
    worker.wait_ready(200).await;
    assert_eq!(
        env.wait_for_events(acked.len() as i64, 60).await,
        acked.len() as i64
    );
    assert_exactly_once(&env, &acked).await;
}

#[actix_web::test]
async fn redis_outage_makes_the_worker_unready_then_it_resumes() {
    let (mut env, api, key) = setup().await;
    // This Redis keeps nothing across a restart, so the registry copy must be rebuilt too.
    let mut worker = env.spawn_worker(&[("SLUICE__WORKER__RECONCILE_INTERVAL_MS", "300")]);
    worker.wait_ready(200).await;
    let acked = ingest(&api, &key, 2, "r").await;
    env.wait_for_events(acked.len() as i64, 30).await;

    env.redis.stop();
    let body = worker.wait_ready(503).await;
    assert!(body.contains("redis"), "{body}");
    assert!(worker.is_alive(), "the worker waits out the outage");
    env.redis.restart();
    worker.wait_ready(200).await;
    // A Redis that lost its data: the worker recreates the registry copy and the groups (the
    // api answers 404 for the tenant's signal until then), and new events flow again.
    eventually("the registry copy rebuilt after the restart", async || {
        let reply = api.batch(&key, json!([event("clicks", "probe")])).await;
        // Until then the tenant's key or signal is unknown to the new Redis: 401 or 404.
        assert!(
            [200, 401, 404].contains(&reply.status),
            "a restarted Redis costs no request: {} {}",
            reply.status,
            reply.text
        );
        (reply.status == 200).then_some(())
    })
    .await;
    let more = ingest(&api, &key, 2, "r2").await;
    let total = (acked.len() + more.len() + 1) as i64; // + the accepted probe
    assert_eq!(env.wait_for_events(total, 30).await, total);
}

#[actix_web::test]
async fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    let (env, api, key) = setup().await;
    let acked = ingest(&api, &key, 30, "t").await;
    let mut worker = env.spawn_worker(&[("SLUICE__WORKER__BATCH_SIZE", "25")]);
    env.wait_for_events(100, 30).await;
    assert_eq!(worker.terminate(10), Some(0), "exits 0 promptly");
    assert_eq!(env.pending(), 0, "nothing read is left unacknowledged");

    let _next = env.spawn_worker(&[]);
    assert_eq!(
        env.wait_for_events(acked.len() as i64, 60).await,
        acked.len() as i64
    );
    assert_exactly_once(&env, &acked).await;
}

#[actix_web::test]
async fn a_poisoned_entry_does_not_block_its_batch_and_is_kept_or_dead_lettered() {
    let (env, api, key) = setup().await;
    let good = ingest(&api, &key, 1, "g").await;
    // Entries no api would write, added straight to the tenant's stream beside the good ones.
    let stream = env.stream_entries();
    let template = stream[0].clone();
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let tenant = template["tenant"].clone();
    let stream_key = Keyspace::stream(keyspace.partition_of(&tenant));
    let mut conn = env.redis.conn();
    let add = |fields: Vec<(String, String)>, conn: &mut redis::Connection| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream_key).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd.query::<String>(conn).unwrap()
    };
    // Same meta as a real entry, a new id, and the event given.
    let with_event = |mut event: Value| {
        event["id"] = json!(uuid::Uuid::now_v7().to_string());
        vec![
            ("m".to_owned(), template["m"].clone()),
            ("e".to_owned(), event.to_string()),
        ]
    };
    let base: Value = serde_json::from_str(&template["event"]).unwrap();
    let mut nul_in_data = base.clone();
    nul_in_data["data"] = json!({"text": "a\u{0}b"});
    let mut nul_in_identity = base.clone();
    nul_in_identity["identity_id"] = json!("x\u{0}y");
    add(vec![("garbage".into(), "1".into())], &mut conn);
    add(with_event(nul_in_data), &mut conn);
    add(with_event(nul_in_identity), &mut conn);
    let more = ingest(&api, &key, 1, "h").await;

    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    let expected = (good.len() + more.len() + 1) as i64;
    assert_eq!(env.wait_for_events(expected, 30).await, expected);
    eventually("every entry acknowledged", async || {
        (env.pending() == 0).then_some(())
    })
    .await;

    let client = env.pg_client().await;
    let kept: (String, String) = {
        let row = client
            .query_one(
                "SELECT data::text, error FROM events WHERE status = 'invalid'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        kept.0.contains("\\\\u0000"),
        "raw data kept as text: {}",
        kept.0
    );
    assert!(kept.1.contains("stored as text"), "{}", kept.1);
    let dead: i64 = client
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 2, "the unreadable entry and the unstorable identity");
    let dead_stream: i64 = redis::cmd("XLEN")
        .arg(Keyspace::dead_stream(keyspace.partition_of(&tenant)))
        .query(&mut conn)
        .unwrap();
    assert_eq!(dead_stream, 2);
    let mut stored_ids: Vec<String> = good.iter().chain(&more).cloned().collect();
    stored_ids.sort();
    let mut processed: Vec<String> = client
        .query(
            "SELECT id::text FROM events WHERE status = 'processed'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    processed.sort();
    assert_eq!(
        processed, stored_ids,
        "the good events of the same batches are all stored"
    );
}

#[actix_web::test]
async fn dead_letters_can_be_listed_and_replayed_without_duplicates() {
    let (env, api, key) = setup().await;
    let acked = ingest(&api, &key, 1, "d").await;
    let entry = env.stream_entries()[0].clone();
    // A dead letter of an entry that is also still on the stream: replaying it after the
    // worker stored the original must not store it twice.
    let client = env.pg_client().await;
    let raw = json!({"m": entry["m"], "e": entry["e"]}).to_string();
    client
        .execute(
            "INSERT INTO dead_letters (stream, entry_id, event_id, tenant_id, raw, error, deliveries)
             VALUES ('s', '1-0', $1, $2, $3, 'not stored after 5 deliveries', 5)",
            &[&entry["id"], &entry["tenant"], &raw],
        )
        .await
        .unwrap();
    let admin = |args: &[&str]| env.admin(args);
    let listed = admin(&["dead-letters", "list"]);
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["dead_letters"][0]["event_id"], entry["id"].as_str());
    let id = listed["dead_letters"][0]["id"]
        .as_i64()
        .unwrap()
        .to_string();

    let _worker = env.spawn_worker(&[]);
    assert_eq!(
        env.wait_for_events(acked.len() as i64, 30).await,
        acked.len() as i64
    );
    let replayed = admin(&["dead-letters", "replay", "--id", &id]);
    assert_eq!(replayed["replayed"], 1);
    eventually("the replayed entry handled", async || {
        env.drained().then_some(())
    })
    .await;
    assert_exactly_once(&env, &acked).await;
    assert_eq!(
        admin(&["dead-letters", "list"])["count"],
        0,
        "replayed letters leave the default list"
    );
    assert_eq!(admin(&["dead-letters", "list", "--all"])["count"], 1);
}

#[actix_web::test]
async fn trimming_never_drops_an_unacknowledged_entry() {
    let (env, api, key) = setup().await;
    // 100 entries: one per request.
    for i in 0..100 {
        let reply = api
            .batch(&key, json!([event("clicks", &format!("x-{i}"))]))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let tenant = env.stream_entries()[0]["tenant"].clone();
    let p = keyspace.partition_of(&tenant);
    let stream = Keyspace::stream(p);
    let streams = sluice::stream::Consumer::new(
        sluice::redis_pool::Redis::new(&env.settings().redis).unwrap(),
        keyspace,
        "trimmer".into(),
    );
    streams.ensure_groups().await.unwrap();
    let mut conn = env.redis.conn();
    let read = |n: usize, conn: &mut redis::Connection| -> Vec<String> {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("sluice")
            .arg("c1")
            .arg("COUNT")
            .arg(n)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query(conn)
            .unwrap();
        reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|i| i.id))
            .collect()
    };
    let ack = |ids: &[String], conn: &mut redis::Connection| {
        let _: i64 = redis::cmd("XACK")
            .arg(&stream)
            .arg("sluice")
            .arg(ids)
            .query(conn)
            .unwrap();
    };
    let len =
        |conn: &mut redis::Connection| redis::cmd("XLEN").arg(&stream).query::<i64>(conn).unwrap();

    // 30 delivered, of which the first 10 acknowledged; 70 never delivered.
    let delivered = read(30, &mut conn);
    ack(&delivered[..10], &mut conn);
    assert_eq!(streams.trim(p).await.unwrap(), 10);
    assert_eq!(len(&mut conn), 90);
    // An acknowledged entry after an unacknowledged one is kept too: trimming is below the first pending.
    ack(&delivered[15..30], &mut conn);
    streams.trim(p).await.unwrap();
    assert_eq!(len(&mut conn), 90);
    let first: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        first[0].0, delivered[10],
        "the oldest unacknowledged entry is still there"
    );
    // Acknowledge everything delivered: only the undelivered remain.
    ack(&delivered[10..15], &mut conn);
    streams.trim(p).await.unwrap();
    assert_eq!(len(&mut conn), 70);
    let rest = read(100, &mut conn);
    assert_eq!(rest.len(), 70, "nothing undelivered was trimmed");
    ack(&rest, &mut conn);
    streams.trim(p).await.unwrap();
    assert_eq!(len(&mut conn), 0);
}

#[actix_web::test]
async fn a_flushed_redis_heals_its_registry_copy_from_postgres() {
    let (env, api, key) = setup().await;
    let api_no_cache = env.spawn_api_with(&{
        let mut s = env.settings();
        s.api.key_cache_ttl = Duration::ZERO;
        s
    });
    let _worker = env.spawn_worker(&[("SLUICE__WORKER__RECONCILE_INTERVAL_MS", "300")]);
    let _: () = redis::cmd("FLUSHALL").query(&mut env.redis.conn()).unwrap();
    eventually("the worker to rebuild the registry copy", async || {
        let status = api_no_cache
            .batch(&key, json!([event("clicks", "1")]))
            .await
            .status;
        (status == 200).then_some(())
    })
    .await;
    drop(api);
    assert_eq!(
        env.wait_for_events(1, 30).await,
        1,
        "and its groups, so events flow again"
    );
}

/// A daily `events` partition from long ago: `events_20200101`.
async fn make_2020_partition(client: &tokio_postgres::Client) {
    client
        .batch_execute("CREATE TABLE events_20200101 PARTITION OF events FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00')")
        .await
        .unwrap();
}

#[actix_web::test]
async fn partitions_are_made_ahead_and_expired_ones_dropped() {
    let (env, _api, _key) = setup().await;
    let client = env.pg_client().await;
    make_2020_partition(&client).await;
    let worker = env.spawn_worker(&[("SLUICE__WORKER__RETENTION_DAYS", "30")]);
    worker.wait_ready(200).await;
    let tomorrow = sluice::worker::sink::partition_name(
        chrono::Utc::now().date_naive() + chrono::Duration::days(1),
    );
    let names = eventually(
        "tomorrow's partition made, the expired one dropped",
        async || {
            let names: Vec<String> = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
            (names.contains(&tomorrow) && !names.contains(&"events_20200101".to_owned()))
                .then_some(names)
        },
    )
    .await;
    assert!(names.contains(&tomorrow), "{names:?}");
    assert!(
        !names.contains(&"events_20200101".to_owned()),
        "expired partition dropped: {names:?}"
    );
}

/// A retention longer than the calendar (up to `u32::MAX` days) keeps everything; it used to
/// overflow the date arithmetic and stop the worker with a panic at its first maintenance pass.
#[actix_web::test]
async fn a_retention_longer_than_the_calendar_keeps_every_partition() {
    let (env, api, key) = setup().await;
    let client = env.pg_client().await;
    make_2020_partition(&client).await;
    let mut worker = env.spawn_worker(&[("SLUICE__WORKER__RETENTION_DAYS", "4294967295")]);
    // The stream gauges are set after the partitions' pass, in the same round of maintenance.
    eventually("the worker's first maintenance pass", async || {
        let (_, metrics) = worker.get("/metrics").await;
        metrics
            .contains("sluice_worker_stream_pending{partition=\"0\"}")
            .then_some(())
    })
    .await;
    assert!(worker.is_alive(), "the worker stopped");
    assert_eq!(
        api.batch(&key, json!([event("clicks", "kept")]))
            .await
            .status,
        200
    );
    assert_eq!(env.wait_for_events(1, 30).await, 1);
    let kept = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'events_20200101'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(kept, 1, "a partition from 2020 is within the retention");
    assert!(worker.is_alive(), "the worker stopped");
}

/// The raw fields of every entry of `stream`, oldest first, staged events read back into
/// their entry's `b` field (as the worker reads them).
fn raw_entries(
    conn: &mut redis::Connection,
    stream: &str,
) -> Vec<(String, HashMap<String, String>)> {
    let mut entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    for (_, fields) in &mut entries {
        crate::support::unstage(conn, fields);
    }
    entries
}

fn xadd(conn: &mut redis::Connection, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query(conn).unwrap()
}

/// Waits until the group has nothing pending and nothing undelivered is left to read.
async fn wait_drained(env: &TestEnv, processed: i64) {
    let client = env.pg_client().await;
    for _ in 0..300 {
        let stored: i64 = client
            .query_one(
                "SELECT count(*) FROM events WHERE status = 'processed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if stored >= processed && env.drained() {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not drained");
}

#[actix_web::test]
async fn one_event_entries_left_by_an_upgrade_are_drained_beside_new_ones() {
    let (env, api, key) = setup().await;
    // What the previous version wrote: one entry per event, fields m and e. The events of a
    // request of this version, written that way, stand in for them.
    let acked = ingest(&api, &key, 2, "old").await;
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let events = env.stream_entries();
    let stream = Keyspace::stream(keyspace.partition_of(&events[0]["tenant"]));
    let mut conn = env.redis.conn();
    let _: i64 = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    for e in &events {
        xadd(&mut conn, &stream, &[("m", &e["m"]), ("e", &e["e"])]);
    }
    assert_eq!(raw_entries(&mut conn, &stream).len(), 200);
    // Then the upgraded api adds entries of the new layout behind them.
    let new = ingest(&api, &key, 2, "new").await;
    assert_eq!(raw_entries(&mut conn, &stream).len(), 202);

    let _worker = env.spawn_worker(&[]);
    let all: Vec<String> = acked.into_iter().chain(new).collect();
    assert_eq!(env.wait_for_events(400, 30).await, 400);
    assert_exactly_once(&env, &all).await;
    assert_rolled_up_once(&env.pg_client().await).await;
}

#[actix_web::test]
async fn a_poisoned_event_is_dead_lettered_alone_and_a_redelivered_entry_stores_nothing_twice() {
    let (env, api, key) = setup().await;
    let acked = ingest(&api, &key, 1, "p").await;
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let tenant = env.stream_entries()[0]["tenant"].clone();
    let stream = Keyspace::stream(keyspace.partition_of(&tenant));
    let mut conn = env.redis.conn();
    let (id, fields) = raw_entries(&mut conn, &stream).remove(0);
    // Two of its 100 events poisoned where no api would let them through: a NUL PostgreSQL
    // refuses in a text column, and a timestamp that cannot be read.
    let mut events: Vec<Value> = serde_json::from_str(&fields["b"]).unwrap();
    events[37]["identity_id"] = json!("x\u{0}y");
    events[50]["occurred_at"] = json!("not a time");
    let poisoned = [&events[37]["id"], &events[50]["id"]].map(|v| v.as_str().unwrap().to_owned());
    let b = Value::Array(events).to_string();
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&id)
        .query(&mut conn)
        .unwrap();
    let entry = xadd(
        &mut conn,
        &stream,
        &[("t", &fields["t"]), ("s", &fields["s"]), ("b", &b)],
    );

    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    wait_drained(&env, 98).await;
    let client = env.pg_client().await;
    let stored = crate::support::stored_event_ids(&client).await;
    assert_eq!(stored.len(), 98, "the 98 neighbours are stored");
    assert!(poisoned.iter().all(|p| !stored.contains(p)));
    let good: Vec<String> = acked
        .iter()
        .filter(|a| !poisoned.contains(a))
        .cloned()
        .collect();
    assert_exactly_once(&env, &good).await;
    let dead = client
        .query(
            "SELECT entry_id, event_id, raw FROM dead_letters ORDER BY entry_id",
            &[],
        )
        .await
        .unwrap();
    let letters: Vec<(String, String)> = dead.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        letters,
        vec![
            (format!("{entry}/37"), poisoned[0].clone()),
            (format!("{entry}/50"), poisoned[1].clone()),
        ],
        "each poisoned event dead-lettered alone, named by its entry and place"
    );
    // Kept as a one-event entry, which replaying puts back on the stream as that event.
    let raw: Value = serde_json::from_str(&dead[0].get::<_, String>(2)).unwrap();
    assert!(
        raw["m"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{tenant}|"))
    );
    let replayed = env.admin(&["dead-letters", "replay"]);
    assert_eq!(replayed["replayed"], 2);
    let back: Vec<String> = env
        .stream_entries()
        .iter()
        .filter_map(|e| e.get("id").cloned())
        .filter(|id| poisoned.contains(id))
        .collect();
    assert_eq!(back.len(), 2, "both are on the stream again, alone");

    // The same entry delivered again (as a crash before XACK would): nothing stored twice.
    xadd(
        &mut conn,
        &stream,
        &[("t", &fields["t"]), ("s", &fields["s"]), ("b", &b)],
    );
    wait_drained(&env, 98).await;
    assert_exactly_once(&env, &good).await;
    assert_rolled_up_once(&client).await;
}

/// The consumer group's view of a stream, from Redis's typed replies: a stream not created yet
/// reads as empty (not as an error), a live one as Redis counts it.
#[actix_web::test]
async fn the_group_reads_missing_and_live_streams_as_redis_reports_them() {
    use sluice::stream::group::GroupStats;
    let env = TestEnv::start().await;
    let settings = env.settings();
    let redis = sluice::redis_pool::Redis::new(&settings.redis).unwrap();
    let keyspace = Keyspace::new(settings.redis.partitions);
    let group = sluice::stream::Consumer::new(redis, keyspace, "probe".into());
    assert_eq!(group.stats(0).await.unwrap(), GroupStats::default());
    assert_eq!(group.trim(0).await.unwrap(), 0);

    group.ensure_groups().await.unwrap();
    let mut conn = env.redis.conn();
    let mut ids = Vec::new();
    for n in 0..3 {
        let id: String = redis::cmd("XADD")
            .arg(Keyspace::stream(0))
            .arg("*")
            .arg("n")
            .arg(n)
            .query(&mut conn)
            .unwrap();
        ids.push(id);
    }
    let read = group.read(2, 0, false).await.unwrap();
    assert_eq!(read.len(), 2);
    let stats = group.stats(0).await.unwrap();
    let first_ms: u64 = ids[0].split('-').next().unwrap().parse().unwrap();
    assert_eq!(
        stats,
        GroupStats {
            pending: 2,
            lag: 1,
            oldest_pending_ms: Some(first_ms),
        }
    );
    let stale = group.stale(0, 0, 10).await.unwrap();
    let stale: Vec<(String, u64)> = stale
        .into_iter()
        .map(|s| (s.entry_id, s.deliveries))
        .collect();
    assert_eq!(stale, vec![(ids[0].clone(), 1), (ids[1].clone(), 1)]);
    group.ack(&read[..1]).await.unwrap();
    // Below the first pending entry everything is stored: trimmed.
    assert_eq!(group.trim(0).await.unwrap(), 1);
    assert_eq!(group.stats(0).await.unwrap().pending, 1);
}
