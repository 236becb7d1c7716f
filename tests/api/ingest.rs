//! Accepted events: response shape, what lands in the stream, schema versions, tenant isolation,
//! and how fast registry and key changes reach the api.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestEnv, event, valid};

#[actix_web::test]
async fn the_contract_example_gets_the_contract_response() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    let signal_id = env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;

    let reply = api
        .batch(
            &key,
            json!([{
                "signal": "page_view",
                "identity": {"type": "account", "id": "acc_123"},
                "data": {"path": "/pricing", "nested": {"a": [1, 2.5, null, true]}},
                "timestamp": "2026-11-26T10:15:00+01:00",
                "reference": "evt-001"
            }, {
                "signal": "page_view",
                "identity": {"type": "contact", "id": "c-1"}
            }]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["success"], true);
    assert!(
        reply.body.get("rate_limited").is_none(),
        "absent when empty"
    );
    let data = reply.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let first = &data[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5, "{first}");
    assert_eq!(first["signal_id"], signal_id.as_str());
    assert_eq!(first["schema_version"], Value::Null);
    assert_eq!(first["status"], "pending");
    assert_eq!(first["reference"], "evt-001");
    assert_eq!(data[1]["reference"], Value::Null);
    let id = Uuid::parse_str(first["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "time-ordered ids");
    assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("98"));
    let reset = reply.header("x-ratelimit-reset").unwrap();
    assert!(reset.ends_with(":00Z") && reset.len() == 20, "{reset}");
    assert!(reply.header("retry-after").is_none());

    // What the worker will read.
    let entries = env.stream_entries();
    assert_eq!(entries.len(), 2);
    let entry = &entries[0];
    assert_eq!(entry["id"], id.to_string());
    assert_eq!(entry["tenant"], tenant);
    assert_eq!(entry["signal"], signal_id);
    assert_eq!(entry["type"], "event");
    assert_eq!(entry["version"], "0");
    let payload: Value = serde_json::from_str(&entry["event"]).unwrap();
    assert_eq!(payload["identity_type"], "account");
    assert_eq!(payload["identity_id"], "acc_123");
    assert_eq!(payload["data"]["nested"]["a"], json!([1, 2.5, null, true]));
    assert_eq!(payload["occurred_at"], "2026-11-26T09:15:00.000000Z");
    assert_eq!(payload["reference"], "evt-001");
    let second: Value = serde_json::from_str(&entries[1]["event"]).unwrap();
    assert_eq!(second["data"], json!({}));
    assert_eq!(
        second["occurred_at"], second["received_at"],
        "default timestamp is the time of receipt"
    );
}

#[actix_web::test]
async fn the_single_event_endpoint_answers_one_item() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    let signal_id = env.signal(&tenant, "plan", "state", Some(1)).await;
    let api = env.spawn_api().await;

    let mut e = event("plan", "acc-9");
    e["reference"] = json!("r-1");
    let ok = api.post("/v1/events", &key, &e).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["success"], true);
    assert_eq!(ok.body["data"]["signal_id"], signal_id.as_str());
    assert_eq!(ok.body["data"]["status"], "pending");
    assert_eq!(ok.body["data"]["reference"], "r-1");
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("0"));

    let limited = api.post("/v1/events", &key, &e).await;
    assert_eq!(limited.status, 429);
    assert!(limited.error().contains("plan"));
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );

    let bad = api
        .post("/v1/events", &key, &json!({"signal": "plan"}))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error(), "identity is required");

    let unknown = api.post("/v1/events", &key, &event("nope", "1")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error(), "Signals not found: nope");
    assert_eq!(env.stream_entries().len(), 1);
}

#[actix_web::test]
async fn schema_versions_resolve_to_latest_or_the_one_asked_for() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "mrr", "metric", None).await;
    let schema = json!({"type": "object", "properties": {"value": {"type": "number"}}});
    for expected in 1..=2 {
        let (_, v) = env
            .registry
            .add_schema(&valid(&tenant), &valid("mrr"), &schema)
            .await
            .unwrap();
        assert_eq!(v.version, expected);
    }
    let api = env.spawn_api().await;
    let with_version = |v: Value| {
        let mut e = event("mrr", "a");
        e["version"] = v;
        e
    };
    let reply = api
        .batch(
            &key,
            json!([
                event("mrr", "a"),
                with_version(json!(1)),
                with_version(json!("latest"))
            ]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let versions: Vec<Value> = reply.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["schema_version"].clone())
        .collect();
    assert_eq!(versions, [json!(2), json!(1), json!(2)]);
    let stored: Vec<String> = env
        .stream_entries()
        .iter()
        .map(|e| e["version"].clone())
        .collect();
    assert_eq!(stored, ["2", "1", "2"]);

    let too_new = api.batch(&key, json!([with_version(json!(3))])).await;
    assert_eq!(too_new.status, 400);
    assert!(
        too_new.error().contains("latest is 2"),
        "{}",
        too_new.error()
    );
}

#[actix_web::test]
async fn a_key_only_ever_touches_its_own_tenants_signals() {
    let env = TestEnv::start().await;
    let (tenant_a, key_a) = env.tenant().await;
    let (tenant_b, key_b) = env.tenant().await;
    env.signal(&tenant_a, "only_a", "state", Some(2)).await;
    env.signal(&tenant_b, "shared_name", "state", Some(2)).await;
    env.signal(&tenant_a, "shared_name", "state", Some(2)).await;
    let api = env.spawn_api().await;

    let cross = api.batch(&key_b, json!([event("only_a", "1")])).await;
    assert_eq!(cross.status, 404, "B cannot write A's signal");
    assert_eq!(cross.error(), "Signals not found: only_a");

    // Same slug in both tenants: separate signals, separate windows.
    for _ in 0..2 {
        assert_eq!(
            api.batch(&key_a, json!([event("shared_name", "1")]))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        api.batch(&key_a, json!([event("shared_name", "1")]))
            .await
            .status,
        429
    );
    let b = api.batch(&key_b, json!([event("shared_name", "1")])).await;
    assert_eq!(b.status, 200, "A's traffic does not count against B");
    assert_eq!(b.header("x-ratelimit-remaining"), Some("1"));
    let tenants: Vec<String> = env
        .stream_entries()
        .iter()
        .map(|e| e["tenant"].clone())
        .collect();
    assert_eq!(tenants.iter().filter(|t| **t == tenant_a).count(), 2);
    assert_eq!(tenants.iter().filter(|t| **t == tenant_b).count(), 1);
}

#[actix_web::test]
async fn deactivation_and_activation_reach_the_api_within_2_seconds() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let replicas = [env.spawn_api().await, env.spawn_api().await];
    // Each change, made by the operator's CLI in its own process, must show on every replica
    // within 2 s of the command returning, and stay.
    for (n, (command, want)) in [("deactivate", 404), ("activate", 200)]
        .into_iter()
        .enumerate()
    {
        env.admin(&[
            "signal",
            command,
            "--tenant",
            &tenant,
            "--slug",
            "page_view",
        ]);
        let changed = Instant::now();
        for api in &replicas {
            loop {
                let status = api
                    .batch(&key, json!([event("page_view", &format!("{n}"))]))
                    .await
                    .status;
                if status == want {
                    break;
                }
                assert!(
                    changed.elapsed() < Duration::from_secs(2),
                    "{command}: a replica still answers {status} after 2 s"
                );
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(changed.elapsed() < Duration::from_secs(2));
    }

    // A signal created after the api started is usable at once.
    env.signal(&tenant, "later", "metric", None).await;
    assert_eq!(
        replicas[0]
            .batch(&key, json!([event("later", "4")]))
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn a_revoked_key_stops_working_on_every_replica_within_5_seconds() {
    let env = TestEnv::start().await;
    let tenant = env.registry.create_tenant(&valid("t")).await.unwrap().id;
    let (key_id, key) = env
        .registry
        .create_key(&valid(&tenant), None)
        .await
        .unwrap();
    env.signal(&tenant, "page_view", "event", None).await;
    let replicas = [env.spawn_api().await, env.spawn_api().await];
    for api in &replicas {
        // Every replica has the key cached as valid.
        assert_eq!(
            api.batch(key.expose(), json!([event("page_view", "1")]))
                .await
                .status,
            200
        );
    }
    env.registry.revoke_key(&key_id).await.unwrap();
    let revoked = Instant::now();
    for api in &replicas {
        loop {
            let status = api
                .batch(key.expose(), json!([event("page_view", "2")]))
                .await
                .status;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                revoked.elapsed() < Duration::from_secs(5),
                "revoked key still accepted after 5 s"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(revoked.elapsed() < Duration::from_secs(5));
}

#[actix_web::test]
async fn odd_but_valid_unicode_is_kept_exactly() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let id = "ünï\u{200d}😀\u{202e}\u{fffd}".to_owned();
    let mut e = event("page_view", &id);
    e["data"] = json!({"emoji": "👩‍👩‍👧", "rtl": "\u{202e}abc", "escaped": "\\u0000 is text here"});
    e["reference"] = json!("ref-✓");
    let reply = api.batch(&key, json!([e])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["data"][0]["reference"], "ref-✓");
    let payload: Value = serde_json::from_str(&env.stream_entries()[0]["event"]).unwrap();
    assert_eq!(payload["identity_id"], id.as_str());
    assert_eq!(payload["data"]["emoji"], "👩‍👩‍👧");
}

#[actix_web::test]
async fn metrics_count_requests_and_probes_answer() {
    let (_env, api, key) = TestEnv::with_page_view().await;
    assert_eq!(
        api.batch(&key, json!([event("page_view", "1")]))
            .await
            .status,
        200
    );
    assert_eq!(api.get("/livez").await.status, 200);
    assert_eq!(api.get("/readyz").await.status, 200);
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains(r#"sluice_http_requests_total{route="/v1/events/batch",status="200"} 1"#),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains(r#"sluice_events_accepted_total{signal_type="event"} 1"#)
    );
}
