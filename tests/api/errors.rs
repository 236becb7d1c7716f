//! Every row of the contract's error table, in the contract's JSON shape.

use std::io::Write;
use std::time::{Duration, Instant};

use awc::http::Method;
use serde_json::{Value, json};

use crate::support::{TestEnv, event, valid};

#[actix_web::test]
async fn missing_and_invalid_keys_are_401() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let body = json!({"events": [event("page_view", "a")]});

    let no_header = api
        .send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Content-Type", "application/json")),
            body.to_string().into(),
        )
        .await;
    assert_eq!(no_header.status, 401);
    assert_eq!(no_header.error(), "Missing API key");

    let basic = api
        .send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", "Basic dXNlcjpwYXNz"))
                .insert_header(("Content-Type", "application/json")),
            body.to_string().into(),
        )
        .await;
    assert_eq!(basic.status, 401);
    assert_eq!(basic.error(), "Missing API key");

    let unknown = format!("sk_{}", "0".repeat(64));
    for bad in [
        "sk_nope",
        "not-a-key",
        unknown.as_str(),
        &key.to_uppercase(),
    ] {
        let reply = api.post("/v1/events/batch", bad, &body).await;
        assert_eq!(reply.status, 401, "{bad}");
        assert_eq!(reply.error(), "Invalid API key");
    }
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn malformed_bodies_are_400_and_ingest_nothing() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let raw = |body: &'static str| {
        api.send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json")),
            body.as_bytes().to_vec(),
        )
    };
    for (body, expected) in [
        ("{\"events\": [", "Invalid JSON: EOF while parsing"),
        ("not json", "Invalid JSON: expected ident"),
        (
            "[1, 2]",
            "Invalid JSON: expected a JSON object, found an array",
        ),
        (
            "\"events\"",
            "Invalid JSON: expected a JSON object, found a string",
        ),
        ("", "Invalid JSON: EOF while parsing"),
        ("{}", "events array is required and must not be empty"),
        (
            "{\"events\": []}",
            "events array is required and must not be empty",
        ),
        (
            "{\"events\": {\"signal\": \"page_view\"}}",
            "events array is required and must not be empty",
        ),
        (
            "{\"events\": \"page_view\"}",
            "events array is required and must not be empty",
        ),
    ] {
        let reply = raw(body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert!(
            reply.error().starts_with(expected),
            "{body}: {}",
            reply.error()
        );
    }
    let not_utf8 = api
        .send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json")),
            b"{\"events\": [\"\xff\"]}".to_vec(),
        )
        .await;
    assert_eq!(not_utf8.status, 400);
    assert!(
        not_utf8
            .error()
            .starts_with("Invalid JSON: body is not valid UTF-8")
    );
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn more_than_100_events_is_400() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let events: Vec<Value> = (0..101)
        .map(|i| event("page_view", &i.to_string()))
        .collect();
    let reply = api.batch(&key, json!(events)).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), "Maximum 100 events per batch");
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn field_errors_name_the_first_bad_field_and_list_every_problem() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let reply = api
        .batch(
            &key,
            json!([
                event("page_view", "ok"),
                {"signal": "page_view", "identity": {"type": "account"}},
                {"signal": "page_view", "identity": {"type": "Not A Type", "id": "x"}, "timestamp": "soon"},
            ]),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), "events[1].identity.id is required");
    let details = reply.body["details"].as_array().unwrap();
    let fields: Vec<(&str, u64)> = details
        .iter()
        .map(|d| (d["field"].as_str().unwrap(), d["index"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        fields,
        [
            ("events[1].identity.id", 1),
            ("events[2].identity.type", 2),
            ("events[2].timestamp", 2)
        ]
    );
    assert!(details.iter().all(|d| {
        d["message"]
            .as_str()
            .unwrap()
            .starts_with(d["field"].as_str().unwrap())
    }));
    assert!(
        env.stream_entries().is_empty(),
        "a rejected request ingests nothing"
    );
}

#[actix_web::test]
async fn unknown_schema_version_is_400_naming_event_version_and_signal() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let mut e = event("page_view", "a");
    e["version"] = json!(2);
    let reply = api.batch(&key, json!([event("page_view", "ok"), e])).await;
    assert_eq!(reply.status, 400);
    let msg = reply.error();
    assert!(
        msg.contains("events[1]") && msg.contains('2') && msg.contains("page_view"),
        "{msg}"
    );
    assert_eq!(reply.body["details"][0]["field"], "events[1].version");
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn unknown_or_inactive_signals_are_404_listing_distinct_slugs_in_order() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let tenant = env.registry.create_tenant(&valid("x")).await.unwrap();
    let _ = tenant;
    let reply = api
        .batch(
            &key,
            json!([
                event("zeta", "1"),
                event("page_view", "2"),
                event("alpha", "3"),
                event("zeta", "4")
            ]),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), "Signals not found: zeta, alpha");
    assert!(
        env.stream_entries().is_empty(),
        "nothing is ingested when any slug is unknown"
    );
}

#[actix_web::test]
async fn oversized_bodies_are_413_plain_and_after_decompression() {
    let env = TestEnv::start_with(&[("SLUICE__API__BODY_LIMIT_BYTES", "4096")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;
    let mut big = event("page_view", "a");
    big["data"] = json!({"pad": "x".repeat(5000)});
    let body = json!({"events": [big]}).to_string();

    let plain = api
        .post("/v1/events/batch", &key, &json!({"events": [big]}))
        .await;
    assert_eq!(plain.status, 413);
    assert!(plain.error().contains("4096"), "{}", plain.error());

    // 5 kB of 'x' gzips to well under 4 kB: the limit must apply to the inflated bytes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
    assert!(compressed.len() < 4096);
    let reply = api
        .send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Content-Encoding", "gzip")),
            compressed,
        )
        .await;
    assert_eq!(reply.status, 413);
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn gzip_bodies_are_accepted_and_bad_gzip_is_400() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let body = json!({"events": [event("page_view", "gz")]}).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let req = || {
        api.request(Method::POST, "/v1/events/batch")
            .insert_header(("Authorization", format!("Bearer {key}")))
            .insert_header(("Content-Type", "application/json; charset=utf-8"))
            .insert_header(("Content-Encoding", "gzip"))
    };
    let reply = api.send(req(), gz.finish().unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(env.stream_entries().len(), 1);

    let reply = api.send(req(), b"definitely not gzip".to_vec()).await;
    assert_eq!(reply.status, 400);
    assert!(reply.error().starts_with("Invalid gzip body"));
}

/// RFC 8259 lets a parser ignore a byte order mark, and some Windows tools write one before
/// UTF-8 (PowerShell 5's `Out-File -Encoding utf8`): read past it, plain or gzipped.
#[actix_web::test]
async fn a_byte_order_mark_before_the_json_is_read_past() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let body = json!({"events": [event("page_view", "bom")]}).to_string();
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&with_bom).unwrap();
    let req = |encoding: &'static str| {
        api.request(Method::POST, "/v1/events/batch")
            .insert_header(("Authorization", format!("Bearer {key}")))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Content-Encoding", encoding))
    };
    for (encoding, sent) in [
        ("identity", with_bom.clone()),
        ("gzip", gz.finish().unwrap()),
    ] {
        let reply = api.send(req(encoding), sent).await;
        assert_eq!(reply.status, 200, "{encoding}: {}", reply.text);
    }
    assert_eq!(env.stream_entries().len(), 2);
    // Only one, and only at the start.
    for bad in [
        [b"\xEF\xBB\xBF\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat(),
        [b" \xEF\xBB\xBF".as_slice(), body.as_bytes()].concat(),
    ] {
        let reply = api.send(req("identity"), bad).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert!(reply.error().starts_with("Invalid JSON"), "{}", reply.text);
    }
}

#[actix_web::test]
async fn non_json_content_types_are_415() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let body = json!({"events": [event("page_view", "a")]})
        .to_string()
        .into_bytes();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = api
            .request(Method::POST, "/v1/events/batch")
            .insert_header(("Authorization", format!("Bearer {key}")));
        if let Some(ct) = content_type {
            req = req.insert_header(("Content-Type", ct));
        }
        let reply = api.send(req, body.clone()).await;
        assert_eq!(reply.status, 415, "{content_type:?}");
        assert!(reply.error().contains("application/json"));
    }
    let br = api
        .send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Content-Encoding", "br")),
            body,
        )
        .await;
    assert_eq!(br.status, 415);
    assert!(env.stream_entries().is_empty());
}

/// A JSON-based media type (`application/<name>+json`, RFC 6839) is JSON; lookalikes are not.
#[actix_web::test]
async fn json_based_media_types_are_read_as_json() {
    let (env, api, key) = TestEnv::with_page_view().await;
    let body = json!({"events": [event("page_view", "a")]})
        .to_string()
        .into_bytes();
    let send = async |content_type: &str| {
        let req = api
            .request(Method::POST, "/v1/events/batch")
            .insert_header(("Authorization", format!("Bearer {key}")))
            .insert_header(("Content-Type", content_type));
        api.send(req, body.clone()).await
    };
    for json in [
        "application/vnd.api+json",
        "Application/Merge-Patch+JSON; charset=utf-8",
    ] {
        let reply = send(json).await;
        assert_eq!(reply.status, 200, "{json}: {}", reply.text);
    }
    for not_json in [
        "application/+json",
        "text/json",
        "application/json+x",
        "text/x+json",
    ] {
        let reply = send(not_json).await;
        assert_eq!(reply.status, 415, "{not_json}: {}", reply.text);
    }
    assert_eq!(env.stream_entries().len(), 2);
}

#[actix_web::test]
async fn redis_down_is_503_quickly_and_ready_says_so() {
    let (mut env, api, key) = TestEnv::with_page_view().await;
    // Warm the key cache, then take Redis away.
    assert_eq!(
        api.batch(&key, json!([event("page_view", "a")]))
            .await
            .status,
        200
    );
    env.redis.stop();
    let started = Instant::now();
    let reply = api.batch(&key, json!([event("page_view", "b")])).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert!(reply.error().contains("retry"));
    // What a client behind the load balancer sees must stay the contract's answer: JSON with
    // Retry-After. This is why the Kubernetes readiness probe is /livez (docs/operations.md).
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        reply.header("content-type")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.text.contains("redis"));
    assert_eq!(api.get("/livez").await.status, 200);

    env.redis.restart();
    crate::support::eventually("readyz to recover once Redis is back", async || {
        (api.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    // The restarted Redis lost its data: the registry copy is rebuilt, and ingest works again.
    env.registry.sync().await.unwrap();
    assert_eq!(
        api.batch(&key, json!([event("page_view", "c")]))
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn hung_redis_is_503_within_the_timeout() {
    let (env, api, key) = TestEnv::with_page_view().await;
    assert_eq!(
        api.batch(&key, json!([event("page_view", "a")]))
            .await
            .status,
        200
    );
    env.redis.freeze();
    let started = Instant::now();
    let reply = api.batch(&key, json!([event("page_view", "b")])).await;
    let took = started.elapsed();
    env.redis.thaw();
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert!(
        took < Duration::from_millis(2500),
        "a hung Redis held the request for {took:?}"
    );
}

#[actix_web::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_contract_shape() {
    let (_env, api, _key) = TestEnv::with_page_view().await;
    let missing = api.get("/v1/nothing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error(), "Not found: GET /v1/nothing");
    // The contract's shape, field for field in its order, as every other error answer.
    assert_eq!(
        missing.text,
        r#"{"success":false,"error":"Not found: GET /v1/nothing"}"#
    );

    let wrong = api.get("/v1/events/batch").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_eq!(
        wrong.text,
        r#"{"success":false,"error":"Method GET not allowed; use POST"}"#
    );

    let delete = api
        .send(api.request(Method::DELETE, "/metrics"), Vec::new())
        .await;
    assert_eq!(delete.status, 405);
    assert_eq!(delete.body["success"], false);
}

#[actix_web::test]
async fn a_burst_against_a_hung_redis_is_503_within_the_timeout_waiting_included() {
    // One api thread: the burst's requests queue behind one another's script calls.
    let env = TestEnv::start_with(&[("SLUICE__API__WORKERS", "1")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;
    assert_eq!(
        api.batch(&key, json!([event("page_view", "a")]))
            .await
            .status,
        200
    );
    env.redis.freeze();
    // 96 requests of about 60 KB at once: a call takes at most 512 KiB of them, so without a
    // deadline that counts the wait for the calls ahead, the last would be answered only after
    // a dozen timeouts (of 1 s).
    let pad = "x".repeat(500);
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..96).map(|i| {
        let (api, key, pad) = (&api, &key, &pad);
        async move {
            let events: Vec<Value> = (0..100)
                .map(|j| {
                    let mut e = event("page_view", &format!("b{i}-{j}"));
                    e["data"] = json!({ "pad": pad });
                    e
                })
                .collect();
            let reply = api.batch(key, Value::Array(events)).await;
            (reply, started.elapsed())
        }
    }))
    .await;
    env.redis.thaw();
    for (reply, took) in &replies {
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert!(
            *took < Duration::from_millis(2500),
            "a hung Redis held a request of the burst for {took:?}"
        );
    }
}
