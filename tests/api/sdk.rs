//! The Python SDK (clients/python) against a real `sluice-api` and worker: events tracked while
//! the api answers 503 after its admission script ran (Redis's replies held back past the api's
//! deadline by a proxy) are stored exactly once, because each batch keeps its Idempotency-Key
//! across retries; the events the api refuses (400, 404) are given up alone, their batch's
//! other events stored; and batches over a body limit lower than the SDK's default are split.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::proxy::DelayProxy;
use crate::support::{
    PATIENCE, TestApi, TestEnv, event, eventually, metric_value, spawn_api_process,
};

const EVENTS: usize = 3000;

#[actix_web::test]
async fn events_tracked_through_late_answers_are_stored_exactly_once() {
    let env = TestEnv::start_with(&[("SLUICE__LIMITS__EVENT", "1000000")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let proxy = DelayProxy::start(env.redis.port);
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let (_api, base) = spawn_api_process(
        &env,
        None,
        &[
            ("SLUICE__REDIS__URL", redis_url.as_str()),
            ("SLUICE__REDIS__TIMEOUT_MS", "300"),
            ("SLUICE__REDIS__POOL_SIZE", "1"),
        ],
    );
    let api = TestApi::at(&base);
    // The key cached and the connection open: from here on only scripts meet the delay.
    let warm = api.batch(&key, json!([event("page_view", "warm")])).await;
    assert_eq!(warm.status, 200, "{}", warm.text);
    let _worker = env.spawn_worker(&[]);

    proxy.delay_replies(Duration::from_millis(600));
    let mut script = Script::start(
        "track.py",
        &[&format!("http://{base}"), &key, &EVENTS.to_string(), "4"],
    );
    // Until the api has answered several requests 503 after running their scripts.
    let late = "sluice_http_requests_total{route=\"/v1/events/batch\",status=\"503\"}";
    eventually(
        "the api to answer 503s while replies are late",
        async || {
            let metrics = api.get("/metrics").await.text;
            metric_value(&metrics, late).filter(|n| *n >= 3.0)
        },
    )
    .await;
    proxy.delay_replies(Duration::ZERO);

    let (status, out) = script.finish().await;
    assert!(status.success(), "the SDK gave up on events: {out}");

    let total = (EVENTS + 1) as i64;
    assert_eq!(env.wait_for_events(total, PATIENCE.as_secs()).await, total);
    let pg = env.pg_client().await;
    let stored: HashMap<String, i64> = pg
        .query(
            "SELECT reference, count(*) FROM events WHERE reference LIKE 'sdk-%' GROUP BY reference",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored.len(), EVENTS, "every event tracked is stored");
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
}

/// A batch the api refuses because of a few of its events: the SDK gives up those alone, each
/// with the api's reason, and the others are stored, once each.
#[actix_web::test]
async fn events_the_api_refuses_do_not_take_their_batch_with_them() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (_api, base) = spawn_api_process(&env, None, &[]);
    let _worker = env.spawn_worker(&[]);

    let given_up = given_up("refused.py", &base, &key).await;
    let mut refused: Vec<(&str, u64)> = given_up
        .iter()
        .map(|(reference, why)| (reference.as_str(), why[0].as_u64().unwrap()))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            ("bad-signal", 404),
            ("bad-timestamp", 400),
            ("bad-version", 400)
        ],
        "{given_up:?}"
    );
    let reason = |reference: &str| given_up[reference][1].as_str().unwrap().to_owned();
    assert!(
        reason("bad-timestamp").contains("timestamp"),
        "{given_up:?}"
    );
    assert!(reason("bad-signal").contains("nope"), "{given_up:?}");
    assert!(reason("bad-version").contains("version 7"), "{given_up:?}");

    assert_eq!(env.wait_for_events(17, PATIENCE.as_secs()).await, 17);
    eventually("the worker to finish with every entry", async || {
        env.drained().then_some(())
    })
    .await;
    let pg = env.pg_client().await;
    let stored: Vec<String> = pg
        .query("SELECT reference FROM events ORDER BY reference", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<String> = (0..17).map(|i| format!("good-{i}")).collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "the good events, each once, and nothing else"
    );
}

/// An api whose body limit is below the SDK's default batch size: the SDK's first batch gets a
/// 413, which it splits to the limit the answer states; every event that fits is stored once,
/// and the one event over the limit by itself is given up alone.
#[actix_web::test]
async fn batches_over_a_lower_body_limit_are_split_and_stored_once() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", Some(1000)).await;
    let (_api, base) = spawn_api_process(&env, None, &[("SLUICE__API__BODY_LIMIT_BYTES", "65536")]);
    let _worker = env.spawn_worker(&[]);

    let given_up = given_up("large.py", &base, &key).await;
    assert_eq!(
        given_up.keys().collect::<Vec<_>>(),
        ["too-large"],
        "{given_up:?}"
    );
    assert_eq!(given_up["too-large"][0], 413, "{given_up:?}");
    assert!(
        given_up["too-large"][1]
            .as_str()
            .unwrap()
            .contains("limit of 65536 bytes"),
        "{given_up:?}"
    );

    assert_eq!(env.wait_for_events(100, PATIENCE.as_secs()).await, 100);
    eventually("the worker to finish with every entry", async || {
        env.drained().then_some(())
    })
    .await;
    let pg = env.pg_client().await;
    let stored: Vec<(String, i64)> = pg
        .query(
            "SELECT reference, count(*) FROM events GROUP BY reference ORDER BY reference",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected: Vec<(String, i64)> = (0..100).map(|i| (format!("fits-{i}"), 1)).collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "every event that fits, once, and nothing else"
    );
}

/// Runs a script of clients/python/tests/e2e that prints what its client gave up
/// (`reporting.py`), which must have flushed: {reference: [status, message]}.
async fn given_up(
    script: &str,
    base: &str,
    key: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let (_, out) = Script::start(script, &[&format!("http://{base}"), key])
        .finish()
        .await;
    let out: serde_json::Value = serde_json::from_str(&out).expect("the script's JSON line");
    assert_eq!(out["flushed"], true, "{out}");
    out["given_up"].as_object().expect("given_up").clone()
}

/// A script of clients/python/tests/e2e run with the SDK on its path; killed if the test ends
/// before it does, pass or fail.
struct Script(std::process::Child);

impl Script {
    fn start(name: &str, args: &[&str]) -> Self {
        let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
        let mut command = Command::new("python3");
        // The scripts reach the test's api straight, whatever proxy the machine names.
        for var in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
            command.env_remove(var).env_remove(var.to_uppercase());
        }
        let child = command
            .arg(sdk.join("tests/e2e").join(name))
            .args(args)
            .env("PYTHONPATH", &sdk)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        Script(child)
    }

    /// Waits for the script to end: how it ended and what it printed.
    async fn finish(&mut self) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < PATIENCE * 3, "the SDK never finished");
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        };
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (status, out)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
