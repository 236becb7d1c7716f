//! The partition count recorded in Redis (`sluice::redis_layout`): no binary lays events out
//! over another count than the one the streams hold, and `sluice-admin repartition` changes it
//! without stranding an acknowledged event.

use std::process::Stdio;

use serde_json::{Value, json};
use sluice::keyspace::Keyspace;

use crate::idempotency::send;
use crate::support::servers::free_port;
use crate::support::{
    TestApi, TestEnv, events, eventually, exits_refusing, ids_of, roomy_tenant, run_binary,
    spawn_api_process_to,
};
use crate::worker::assert_exactly_once;

const RECORD: &str = "sluice:partitions";

fn recorded(env: &TestEnv) -> Option<String> {
    redis::cmd("GET")
        .arg(RECORD)
        .query(&mut env.redis.conn())
        .unwrap()
}

fn set_record(env: &TestEnv, value: &str) {
    let () = redis::cmd("SET")
        .arg(RECORD)
        .arg(value)
        .query(&mut env.redis.conn())
        .unwrap();
}

/// `sluice-admin` with the environment's settings but `partitions`.
pub fn admin(env: &TestEnv, partitions: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut vars: Vec<(&str, &str)> = env
        .env_vars()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vars.push(("SLUICE__REDIS__PARTITIONS", partitions));
    run_binary(env!("CARGO_BIN_EXE_sluice-admin"), args, &vars)
}

/// A child process, killed if the test ends before it exits.
struct Running(Option<std::process::Child>);

impl Running {
    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A hash's fields, sorted.
fn hash(env: &TestEnv, key: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query(&mut env.redis.conn())
        .unwrap();
    fields.sort();
    fields
}

fn exists(env: &TestEnv, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query(&mut env.redis.conn())
        .unwrap()
}

async fn wait_ready(api: &TestApi) {
    eventually("the api ready", async || {
        (api.get("/readyz").await.status == 200).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn no_binary_uses_streams_laid_out_over_another_partition_count() {
    let env = TestEnv::start().await;
    let (_, key) = roomy_tenant(&env).await;
    // The first binary to reach Redis records its count (16, the default).
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    assert_eq!(recorded(&env).as_deref(), Some("16"));

    let other = "SLUICE__REDIS__PARTITIONS is 8, but the streams in this Redis are laid out over \
                 16 partitions";
    let eight = ("SLUICE__REDIS__PARTITIONS", "8".to_owned());
    for (bin, bind) in [
        (env!("CARGO_BIN_EXE_sluice-api"), "SLUICE__API__BIND"),
        (
            env!("CARGO_BIN_EXE_sluice-worker"),
            "SLUICE__WORKER__METRICS_BIND",
        ),
    ] {
        let bind = (bind, format!("127.0.0.1:{}", free_port()));
        let (code, stderr) = exits_refusing(&env, bin, &[eight.clone(), bind]);
        assert_eq!(code, Some(2), "{bin}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(other), "{bin}: {stderr}");
    }
    // sluice-admin writes nothing under the partitions' keys with another count.
    for args in [
        &["tenant", "create", "--name", "elsewhere"][..],
        &["sync"],
        &["doctor"],
    ] {
        let (code, stdout, stderr) = admin(&env, "8", args);
        assert_eq!(code, Some(1), "{args:?}: {stdout}");
        assert!(stderr.contains(other), "{args:?}: {stderr}");
    }
    let (code, stdout, stderr) = admin(&env, "16", &["doctor"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["partitions"],
        16
    );

    // A running api reads the record with Redis memory: another count recorded under it makes
    // it unready and it admits nothing, until the record is its own again.
    let api = env.spawn_api().await;
    assert_eq!(
        api.batch(&key, events("page_view", "before", 1))
            .await
            .status,
        200
    );
    set_record(&env, "32");
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(
        ready.text.contains("laid out over 32 partitions"),
        "{}",
        ready.text
    );
    let (status, body) = worker.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("laid out over 32 partitions"), "{body}");
    let refused = api.batch(&key, events("page_view", "refused", 1)).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.error().contains("not configured to keep events"));
    set_record(&env, "16");
    assert_eq!(api.get("/readyz").await.status, 200);
    assert_eq!(
        api.batch(&key, events("page_view", "after", 1))
            .await
            .status,
        200
    );

    // A Redis that lost its data has no record: the next reading makes it again.
    let () = redis::cmd("DEL")
        .arg(RECORD)
        .query(&mut env.redis.conn())
        .unwrap();
    assert_eq!(api.get("/readyz").await.status, 200);
    assert_eq!(recorded(&env).as_deref(), Some("16"));
}

#[actix_web::test]
async fn repartition_waits_until_the_streams_drain_and_strands_no_event() {
    let env = TestEnv::start().await;
    let (sixteen, eight) = (Keyspace::new(16), Keyspace::new(8));
    // A tenant the change moves to another partition (half of them).
    let (tenant, key) = loop {
        let (tenant, key) = roomy_tenant(&env).await;
        if sixteen.partition_of(&tenant) != eight.partition_of(&tenant) {
            break (tenant, key);
        }
    };
    env.signal(&tenant, "scarce", "event", Some(5)).await;
    let (_api16, base) = spawn_api_process_to(&env, None, &[], Stdio::null());
    let api16 = TestApi::at(&base);
    wait_ready(&api16).await;
    let mut acked = Vec::new();
    let first = api16.batch(&key, events("page_view", "queued", 50)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    acked.extend(ids_of(&first));
    // A request answered before the change, whose client retries after it.
    let keyed = json!({"events": events("scarce", "keyed", 3)});
    let answered = send(
        &api16,
        "/v1/events/batch",
        &key,
        Some("before-the-change"),
        &keyed,
    )
    .await;
    assert_eq!(answered.status, 200, "{}", answered.text);
    acked.extend(ids_of(&answered));

    // No worker: the stream does not drain, so the count stays and ingest resumes.
    let (code, stdout, stderr) = admin(&env, "8", &["repartition", "--wait", "1"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("of 16 still holds events no worker has stored"),
        "{stderr}"
    );
    assert_eq!(recorded(&env).as_deref(), Some("16"));
    let resumed = eventually("ingest resumed", async || {
        let reply = api16.batch(&key, events("page_view", "resumed", 10)).await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    acked.extend(ids_of(&resumed));

    // With a worker draining, the change goes through. While it is under way no replica
    // admits anything, and afterwards the replicas of the old count admit nothing either.
    let change = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-admin"))
        .args(["repartition", "--wait", "120"])
        .envs(env.env_vars())
        .env_remove("SLUICE_CONFIG")
        .env("SLUICE__REDIS__PARTITIONS", "8")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let change = Running(Some(change));
    eventually("the api refusing", async || {
        let ready = api16.get("/readyz").await;
        (ready.status == 503).then_some(())
    })
    .await;
    let refused = api16.batch(&key, events("page_view", "refused", 1)).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    // A worker of the old count that starts while the count changes (a restart, a reschedule)
    // runs, and drains the old streams the change waits for.
    let worker16 = env.spawn_worker(&[]);
    worker16.wait_ready(200).await;
    // What the tenant's windows held once nothing could be admitted any more.
    let windows = hash(&env, &sixteen.rate_limits(&tenant));
    assert!(
        windows.iter().any(|(slug, _)| slug == "scarce"),
        "{windows:?}"
    );
    let out = change.wait_with_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&changed["partitions"], &changed["was"]),
        (&json!(8), &json!(16))
    );
    // The tenant's windows and records moved with it; its old registry copy is gone.
    assert!(changed["moved"]["windows"].as_u64() >= Some(1), "{changed}");
    assert!(
        changed["moved"]["idempotency_records"].as_u64() >= Some(1),
        "{changed}"
    );
    assert_eq!(hash(&env, &eight.rate_limits(&tenant)), windows);
    for old in [
        sixteen.rate_limits(&tenant),
        sixteen.registry(&tenant),
        sixteen.idempotency(&tenant, "before-the-change"),
    ] {
        assert!(!exists(&env, &old), "{old} left behind");
    }
    assert!(exists(
        &env,
        &eight.idempotency(&tenant, "before-the-change")
    ));
    assert!(exists(&env, &eight.registry(&tenant)));
    assert_eq!(recorded(&env).as_deref(), Some("8"));
    let ready = api16.get("/readyz").await;
    assert!(
        ready.text.contains("SLUICE__REDIS__PARTITIONS is 16, but"),
        "{}",
        ready.text
    );
    assert_eq!(
        api16
            .batch(&key, events("page_view", "old", 1))
            .await
            .status,
        503
    );
    drop(worker16);

    // Binaries of the new count start, admit and store; every acknowledged event is stored once.
    let eight = [("SLUICE__REDIS__PARTITIONS", "8")];
    let (_api8, base) = spawn_api_process_to(&env, None, &eight, Stdio::null());
    let api8 = TestApi::at(&base);
    wait_ready(&api8).await;
    let worker8 = env.spawn_worker(&eight);
    worker8.wait_ready(200).await;
    let later = api8.batch(&key, events("page_view", "later", 20)).await;
    assert_eq!(later.status, 200, "{}", later.text);
    acked.extend(ids_of(&later));
    // The retry is answered from the record made before the change: the same events, once.
    let retried = send(
        &api8,
        "/v1/events/batch",
        &key,
        Some("before-the-change"),
        &keyed,
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(ids_of(&retried), ids_of(&answered));
    assert_eq!(
        env.wait_for_events(acked.len() as i64, 60).await,
        acked.len() as i64
    );
    assert_exactly_once(&env, &acked).await;
}
