//! Large requests: their events wait under a key of their own (`sluice:{pNN}:staged:<id>`)
//! that their stream entry names, instead of passing through the admission script. Nothing of
//! it may leak, lose or double an event.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sluice::keyspace::{Keyspace, WindowCount};
use sluice::stream::entry::{EVENTS, STAGED};

use crate::idempotency::send;
use crate::support::proxy::DelayProxy;
use crate::support::{Reply, TestApi, TestEnv, events, eventually, ids_of};
use crate::worker::assert_exactly_once;

fn staged_keys(conn: &mut redis::Connection) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("sluice:*:staged:*")
        .query(conn)
        .unwrap()
}

fn entries(conn: &mut redis::Connection, stream: &str) -> Vec<(String, HashMap<String, String>)> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap()
}

async fn keyed(api: &TestApi, key: &str, idem: &str, events: &Value) -> Reply {
    let body = json!({ "events": events });
    send(api, "/v1/events/batch", key, Some(idem), &body).await
}

/// A tenant with signal `page_view` (its own limit, if given), an api, the tenant's stream and
/// a connection to Redis.
struct Setup {
    env: TestEnv,
    api: TestApi,
    tenant: String,
    key: String,
    keyspace: Keyspace,
    stream: String,
    conn: redis::Connection,
}

async fn setup(limit: Option<u32>) -> Setup {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", limit).await;
    let api = env.spawn_api().await;
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let stream = Keyspace::stream(keyspace.partition_of(&tenant));
    let conn = env.redis.conn();
    Setup {
        env,
        api,
        tenant,
        key,
        keyspace,
        stream,
        conn,
    }
}

#[actix_web::test]
async fn a_large_requests_events_wait_under_their_own_key_until_the_worker_has_stored_them() {
    let Setup {
        env,
        api,
        tenant,
        key,
        keyspace,
        stream,
        mut conn,
    } = setup(Some(1000)).await;
    let large = api.batch(&key, events("page_view", "large", 100)).await;
    assert_eq!(large.status, 200, "{}", large.text);
    let small = api.batch(&key, events("page_view", "small", 1)).await;
    assert_eq!(small.status, 200, "{}", small.text);

    let written = entries(&mut conn, &stream);
    assert_eq!(written.len(), 2);
    // The large request's entry names its events' key; the small one carries its events.
    let (large_entry, small_entry) = (&written[0].1, &written[1].1);
    assert!(!large_entry.contains_key(EVENTS), "{large_entry:?}");
    assert!(small_entry.contains_key(EVENTS) && !small_entry.contains_key(STAGED));
    let staged = &large_entry[STAGED];
    let tag = Keyspace::tag(keyspace.partition_of(&tenant));
    assert!(
        staged.starts_with(&format!("sluice:{tag}:staged:")),
        "{staged}"
    );
    assert_eq!(staged_keys(&mut conn), vec![staged.clone()]);
    // Kept for good once enqueued: no expiry may drop events the worker has not stored yet.
    let ttl: i64 = redis::cmd("PTTL").arg(staged).query(&mut conn).unwrap();
    assert_eq!(ttl, -1, "the staged events of an entry never expire");
    let text: String = redis::cmd("GET").arg(staged).query(&mut conn).unwrap();
    let held: Vec<Value> = serde_json::from_str(&text).unwrap();
    let held_ids: Vec<&str> = held.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(held_ids, ids_of(&large));

    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    assert_eq!(env.wait_for_events(101, 60).await, 101);
    eventually("the staged events deleted once stored", async || {
        (env.drained() && staged_keys(&mut conn).is_empty()).then_some(())
    })
    .await;
    let acked: Vec<String> = ids_of(&large).into_iter().chain(ids_of(&small)).collect();
    assert_exactly_once(&env, &acked).await;
}

#[actix_web::test]
async fn a_large_request_that_enqueues_nothing_leaves_no_staged_events() {
    // `_env` keeps Redis and PostgreSQL running to the end (`..` would drop them here).
    let Setup {
        env: _env,
        api,
        key,
        stream,
        mut conn,
        ..
    } = setup(Some(100)).await;
    let check = |conn: &mut redis::Connection, reply: &Reply, status: u16, kept: usize| {
        assert_eq!(reply.status, status, "{}", reply.text);
        assert_eq!(staged_keys(conn).len(), kept, "after a {status}");
        assert_eq!(entries(conn, &stream).len(), kept, "after a {status}");
    };

    let unknown = api.batch(&key, events("nope", "u", 100)).await;
    check(&mut conn, &unknown, 404, 0);
    let body = events("page_view", "k", 100);
    let first = keyed(&api, &key, "order-1", &body).await;
    check(&mut conn, &first, 200, 1);
    // The same request again: the recorded answer, nothing enqueued again.
    let replay = keyed(&api, &key, "order-1", &body).await;
    check(&mut conn, &replay, 200, 1);
    assert_eq!(ids_of(&replay), ids_of(&first));
    let other = keyed(&api, &key, "order-1", &events("page_view", "x", 100)).await;
    check(&mut conn, &other, 422, 1);
    // The window is used up: every event rate limited.
    let limited = api.batch(&key, events("page_view", "l", 100)).await;
    check(&mut conn, &limited, 429, 1);
}

#[actix_web::test]
async fn staged_events_gone_before_the_call_runs_count_and_enqueue_nothing() {
    let Setup {
        env: _env,
        api,
        tenant,
        key,
        keyspace,
        stream,
        mut conn,
    } = setup(None).await;
    let reply = api.batch(&key, events("page_view", "a", 1)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let partition = keyspace.partition_of(&tenant);
    let windows = keyspace.rate_limits(&tenant);
    let script = redis::Script::new(&sluice::scripts::build(include_str!("../../lua/admit.lua")));
    // One request of 100 events, staged under a key that is not there (as when its `SET`
    // expired, or failed, before the call ran).
    let missing = Keyspace::staged(partition, &uuid::Uuid::now_v7());
    let answer: Vec<Vec<String>> = script
        .key(&stream)
        .key(keyspace.registry(&tenant))
        .key(&windows)
        .key(&missing)
        .arg(100)
        .arg(1000)
        .arg(30)
        .arg(1)
        .arg(&tenant)
        .arg(0)
        .arg(1)
        .arg("page_view")
        .arg(100)
        .arg(0)
        .arg("")
        .invoke(&mut conn)
        .unwrap();
    assert_eq!(answer, vec![vec!["unstaged".to_owned()]]);
    let count: String = redis::cmd("HGET")
        .arg(&windows)
        .arg("page_view")
        .query(&mut conn)
        .unwrap();
    let count: WindowCount = count.parse().unwrap();
    assert_eq!(count.admitted, 1, "nothing counted");
    assert_eq!(entries(&mut conn, &stream).len(), 1, "nothing enqueued");
}

#[actix_web::test]
async fn an_entry_whose_staged_events_are_gone_is_dead_lettered_and_its_neighbours_stored() {
    let Setup {
        env,
        api,
        key,
        stream,
        mut conn,
        ..
    } = setup(Some(1000)).await;
    let lost = api.batch(&key, events("page_view", "lost", 100)).await;
    assert_eq!(lost.status, 200, "{}", lost.text);
    let kept = api.batch(&key, events("page_view", "kept", 100)).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    let written = entries(&mut conn, &stream);
    // What an evicting Redis, or an operator's mistake, would do.
    let _: i64 = redis::cmd("DEL")
        .arg(&written[0].1[STAGED])
        .query(&mut conn)
        .unwrap();

    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    eventually("the batch handled", async || {
        (env.drained() && staged_keys(&mut conn).is_empty()).then_some(())
    })
    .await;
    assert_exactly_once(&env, &ids_of(&kept)).await;
    let client = env.pg_client().await;
    let letters = client
        .query("SELECT entry_id, error FROM dead_letters", &[])
        .await
        .unwrap();
    let letters: Vec<(String, String)> = letters.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, written[0].0);
    assert!(
        letters[0].1.contains("staged") && letters[0].1.contains("gone"),
        "{letters:?}"
    );
}

#[actix_web::test]
async fn requests_of_every_shape_sharing_a_call_are_each_answered_as_if_alone() {
    // One api thread and one partition: the requests that arrive while a call is in flight
    // share the next one. Each passes only the keys and arguments it has (a record's key with
    // an Idempotency-Key, a staged key when large), so the script must find each one's own.
    let env = TestEnv::start_with(&[
        ("SLUICE__API__WORKERS", "1"),
        ("SLUICE__REDIS__PARTITIONS", "1"),
    ])
    .await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", Some(100_000))
        .await;
    let proxy = DelayProxy::start(env.redis.port);
    let api = env.spawn_api_with(&env.settings_through(&proxy, &[]));
    // Caches the key: only the script calls meet the delay.
    let warm = api.batch(&key, events("page_view", "warm", 1)).await;
    assert_eq!(warm.status, 200, "{}", warm.text);
    proxy.delay_replies(Duration::from_millis(20));
    env.reset_redis_stats();

    // 48 requests at once, of four shapes in turn: large, small, large under one of two
    // Idempotency-Keys, small under one of two others (each key sent six times, same body).
    const REQUESTS: usize = 48;
    let shape = |i: usize| -> (Value, Option<String>) {
        let n = i / 4 % 2;
        match i % 4 {
            0 => (events("page_view", &format!("large{i}"), 100), None),
            1 => (events("page_view", &format!("small{i}"), 1), None),
            2 => (
                events("page_view", &format!("large-key{n}"), 100),
                Some(format!("large-{n}")),
            ),
            _ => (
                events("page_view", &format!("small-key{n}"), 1),
                Some(format!("small-{n}")),
            ),
        }
    };
    let requests = (0..REQUESTS).map(|i| {
        let (api, key) = (&api, &key);
        let (events, idem) = shape(i);
        async move {
            let reply = match idem {
                Some(idem) => keyed(api, key, &idem, &events).await,
                None => api.batch(key, events).await,
            };
            (i, reply)
        }
    });
    let replies = join_all(requests).await;
    let calls = env.script_calls();
    assert!(
        calls < REQUESTS as u64,
        "requests waiting on a call in flight share the next: {calls} calls for {REQUESTS}"
    );

    let mut acked = ids_of(&warm);
    let mut under_key = HashMap::<String, Vec<String>>::new();
    for (i, reply) in &replies {
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text);
        let ids = ids_of(reply);
        let (events, idem) = shape(*i);
        assert_eq!(ids.len(), events.as_array().unwrap().len(), "request {i}");
        match idem {
            Some(idem) => match under_key.get(&idem) {
                Some(first) => assert_eq!(&ids, first, "{idem}: the first answer's ids"),
                None => {
                    under_key.insert(idem, ids.clone());
                    acked.extend(ids);
                }
            },
            None => acked.extend(ids),
        }
    }
    assert_eq!(under_key.len(), 4);

    // One entry per admitted request: 12 large and 12 small without a key, one per key, and
    // the warm-up; each large one names staged events that are there, and no others are left.
    let stream = Keyspace::stream(0);
    let mut conn = env.redis.conn();
    let written = entries(&mut conn, &stream);
    assert_eq!(written.len(), 12 + 12 + 4 + 1);
    let mut named: Vec<String> = written
        .iter()
        .filter_map(|(_, fields)| fields.get(STAGED).cloned())
        .collect();
    named.sort();
    let mut left = staged_keys(&mut conn);
    left.sort();
    assert_eq!(named.len(), 12 + 2);
    assert_eq!(
        left, named,
        "exactly the staged events the entries name are kept"
    );

    let mut stored: Vec<String> = env
        .stream_entries()
        .into_iter()
        .map(|e| e["id"].clone())
        .collect();
    stored.sort();
    acked.sort();
    assert_eq!(
        stored, acked,
        "every acknowledged event is in the stream once, and nothing else"
    );
}
