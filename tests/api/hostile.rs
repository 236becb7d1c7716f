//! Adversarial and buggy clients: every request gets a 4xx in the contract's shape or a 200,
//! never a 5xx; and every event that was accepted is stored.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use awc::http::Method;
use serde_json::{Value, json};

use crate::support::{TestEnv, event};

/// A raw body, the headers to send it with, and the status class expected.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    expect: u16,
}

fn json_case(name: &'static str, body: Value, expect: u16) -> Case {
    Case {
        name,
        body: body.to_string().into_bytes(),
        headers: vec![],
        expect,
    }
}

fn raw_case(name: &'static str, body: impl Into<Vec<u8>>, expect: u16) -> Case {
    Case {
        name,
        body: body.into(),
        headers: vec![],
        expect,
    }
}

fn with_event(f: impl FnOnce(&mut Value)) -> Value {
    let mut e = event("page_view", "acc-1");
    f(&mut e);
    json!({ "events": [e] })
}

fn cases() -> Vec<Case> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_data = format!(
        r#"{{"events":[{{"signal":"page_view","identity":{{"type":"account","id":"a"}},"data":{{"x":{}1{}}}}}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let many_keys: serde_json::Map<String, Value> =
        (0..20_000).map(|i| (format!("k{i}"), json!(i))).collect();
    vec![
        // Pathological JSON.
        raw_case("nesting 100k deep", deep, 400),
        raw_case("data nested past the parser's limit", deep_data, 400),
        raw_case(
            "NaN literal",
            r#"{"events":[{"signal":"page_view","identity":{"type":"account","id":"a"},"data":{"v":NaN}}]}"#,
            400,
        ),
        raw_case(
            "Infinity literal",
            r#"{"events":[{"signal":"page_view","identity":{"type":"account","id":"a"},"data":{"v":Infinity}}]}"#,
            400,
        ),
        raw_case("byte-order mark", "\u{feff}{\"events\":[]}", 400),
        raw_case("trailing garbage", r#"{"events":[]} {"#, 400),
        raw_case("single quotes", "{'events': []}", 400),
        raw_case("comment", r#"{"events": /* hi */ []}"#, 400),
        raw_case(
            "lone surrogate in a key",
            r#"{"events":[{"signal":"page_view","identity":{"type":"account","id":"a"},"data":{"\ud800":1}}]}"#,
            400,
        ),
        raw_case(
            "overlong UTF-8",
            b"{\"events\":[{\"signal\":\"\xc0\xafx\"}]}".to_vec(),
            400,
        ),
        raw_case(
            "NUL byte raw in the body",
            b"{\"events\":[\x00]}".to_vec(),
            400,
        ),
        raw_case(
            "number with 5000 digits",
            format!(
                r#"{{"events":[{{"signal":"page_view","identity":{{"type":"account","id":"a"}},"data":{{"v":{}}}}}]}}"#,
                "9".repeat(5000)
            ),
            400,
        ),
        json_case(
            "20,000 keys in data (fits the limit)",
            with_event(|e| e["data"] = Value::Object(many_keys)),
            200,
        ),
        json_case("duplicated data keys are kept verbatim", json!({}), 400),
        raw_case(
            "duplicated identity id",
            r#"{"events":[{"signal":"page_view","identity":{"type":"account","id":"a","id":"b"}}]}"#,
            400,
        ),
        raw_case("duplicated events key", r#"{"events":[],"events":[]}"#, 400),
        // Values other systems cannot hold.
        json_case(
            "NUL in identity id",
            with_event(|e| e["identity"]["id"] = json!("a\u{0}b")),
            400,
        ),
        json_case(
            "NUL in reference",
            with_event(|e| e["reference"] = json!("\u{0}")),
            400,
        ),
        json_case(
            "NUL escaped in data",
            with_event(|e| e["data"] = json!({"s": "\u{0}"})),
            400,
        ),
        json_case("1e400 in data", json!({}), 400),
        json_case(
            "year 0000 timestamp",
            with_event(|e| e["timestamp"] = json!("0000-06-01T00:00:00Z")),
            400,
        ),
        json_case(
            "year 9999 timestamp",
            with_event(|e| e["timestamp"] = json!("9999-12-31T23:59:59.999999+00:00")),
            200,
        ),
        json_case(
            "year 9999 with a negative offset, so year 10000 in UTC",
            with_event(|e| e["timestamp"] = json!("9999-12-31T23:00:00-05:00")),
            400,
        ),
        json_case(
            "year 9999 up to its last microsecond in UTC, given with an offset",
            with_event(|e| e["timestamp"] = json!("9999-12-31T18:59:59.999999-05:00")),
            200,
        ),
        json_case(
            "leap second",
            with_event(|e| e["timestamp"] = json!("2016-12-31T23:59:60Z")),
            200,
        ),
        json_case(
            "timestamp without offset",
            with_event(|e| e["timestamp"] = json!("2026-11-26T10:15:00")),
            400,
        ),
        json_case("version 0", with_event(|e| e["version"] = json!(0)), 400),
        json_case("version -1", with_event(|e| e["version"] = json!(-1)), 400),
        json_case(
            "version 1e30",
            with_event(|e| e["version"] = json!(1e30)),
            400,
        ),
        json_case(
            "version LATEST",
            with_event(|e| e["version"] = json!("LATEST")),
            400,
        ),
        json_case(
            "version beyond int32",
            with_event(|e| e["version"] = json!(4_294_967_296u64)),
            400,
        ),
        // Names that try to escape their slot in Redis keys, Lua patterns or SQL.
        json_case(
            "slug with a pipe",
            with_event(|e| e["signal"] = json!("page_view|event|1||0")),
            404,
        ),
        json_case(
            "slug with Lua pattern characters",
            with_event(|e| e["signal"] = json!("%s.*[^|]")),
            404,
        ),
        json_case(
            "slug with a hash tag",
            with_event(|e| e["signal"] = json!("{p00}x")),
            404,
        ),
        json_case(
            "slug with NUL",
            with_event(|e| e["signal"] = json!("page_view\u{0}")),
            404,
        ),
        json_case(
            "slug of 65 characters",
            with_event(|e| e["signal"] = json!("a".repeat(65))),
            400,
        ),
        json_case(
            "SQL in identity id is just text",
            with_event(|e| e["identity"]["id"] = json!("'); DROP TABLE events;--")),
            200,
        ),
        json_case(
            "Lua in data is just data",
            with_event(|e| e["data"] = json!({"x": "redis.call('FLUSHALL')"})),
            200,
        ),
        // Odd but valid Unicode.
        json_case(
            "RTL override and zero-width joiner",
            with_event(|e| e["identity"]["id"] = json!("\u{202e}ab\u{200d}c")),
            200,
        ),
        json_case(
            "256 four-byte characters",
            with_event(|e| e["identity"]["id"] = json!("😀".repeat(256))),
            200,
        ),
        json_case(
            "257 four-byte characters",
            with_event(|e| e["identity"]["id"] = json!("😀".repeat(257))),
            400,
        ),
        json_case(
            "combining marks in reference",
            with_event(|e| e["reference"] = json!("e\u{301}\u{301}\u{301}")),
            200,
        ),
        // Wrong shapes.
        json_case(
            "identity is a string",
            with_event(|e| e["identity"] = json!("acc-1")),
            400,
        ),
        json_case(
            "data is an array",
            with_event(|e| e["data"] = json!([1, 2])),
            400,
        ),
        json_case(
            "data is a string of JSON",
            with_event(|e| e["data"] = json!("{}")),
            400,
        ),
        json_case("events of nulls", json!({"events": [null, null]}), 400),
        json_case("events is a number", json!({"events": 5}), 400),
        json_case(
            "100 valid events",
            json!({"events": (0..100).map(|i| event("page_view", &i.to_string())).collect::<Vec<_>>()}),
            200,
        ),
    ]
}

#[actix_web::test]
async fn adversarial_requests_get_4xx_in_the_contract_shape_and_accepted_events_are_stored() {
    let env = TestEnv::start_with(&[("SLUICE__LIMITS__EVENT", "100000")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;

    let mut cases = cases();
    // Built here: serde_json cannot produce them from a Value.
    let dup = r#"{"events":[{"signal":"page_view","identity":{"type":"account","id":"a"},"data":{"k":1,"k":2}}]}"#;
    cases
        .iter_mut()
        .find(|c| c.name.starts_with("duplicated data keys"))
        .unwrap()
        .body = dup.into();
    cases
        .iter_mut()
        .find(|c| c.name.starts_with("duplicated data keys"))
        .unwrap()
        .expect = 200;
    let big = r#"{"events":[{"signal":"page_view","identity":{"type":"account","id":"a"},"data":{"v":1e400}}]}"#;
    cases
        .iter_mut()
        .find(|c| c.name.starts_with("1e400"))
        .unwrap()
        .body = big.into();

    let mut accepted = Vec::new();
    for case in cases {
        let mut req = api
            .request(Method::POST, "/v1/events/batch")
            .insert_header(("Authorization", format!("Bearer {key}")))
            .insert_header(("Content-Type", "application/json"));
        for (k, v) in &case.headers {
            req = req.insert_header((*k, v.as_str()));
        }
        let reply = api.send(req, case.body).await;
        assert_eq!(
            reply.status,
            case.expect,
            "{}: {}",
            case.name,
            reply.text.chars().take(300).collect::<String>()
        );
        if reply.status == 200 {
            accepted.extend(
                reply.body["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].as_str().unwrap().to_owned()),
            );
        } else {
            assert_eq!(
                reply.body["success"], false,
                "{}: {}",
                case.name, reply.text
            );
            assert!(
                reply.body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                case.name
            );
        }
    }

    // Everything accepted reaches PostgreSQL.
    let _worker = env.spawn_worker(&[]);
    assert_eq!(
        env.wait_for_events(accepted.len() as i64, 60).await,
        accepted.len() as i64
    );
    let client = env.pg_client().await;
    let invalid: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE status <> 'processed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        invalid, 0,
        "hostile but valid events are stored as they are"
    );
    let sql: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE identity_id = $1",
            &[&"'); DROP TABLE events;--"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sql, 1);
}

#[actix_web::test]
async fn header_abuse_is_refused_without_5xx() {
    let (_env, api, key) = TestEnv::with_page_view().await;
    let body = json!({"events": [event("page_view", "a")]})
        .to_string()
        .into_bytes();
    let post = || {
        api.request(Method::POST, "/v1/events/batch")
            .insert_header(("Authorization", format!("Bearer {key}")))
            .insert_header(("Content-Type", "application/json"))
    };
    let cases: Vec<(&str, awc::ClientRequest, u16)> = vec![
        (
            "100 kB Authorization",
            api.request(Method::POST, "/v1/events/batch")
                .insert_header((
                    "Authorization",
                    format!("Bearer sk_{}", "a".repeat(100_000)),
                ))
                .insert_header(("Content-Type", "application/json")),
            401,
        ),
        (
            "key with a trailing character",
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}x")))
                .insert_header(("Content-Type", "application/json")),
            401,
        ),
        (
            "two Authorization schemes",
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Basic x, Bearer {key}")))
                .insert_header(("Content-Type", "application/json")),
            401,
        ),
        (
            "the valid key in two Authorization headers",
            api.request(Method::POST, "/v1/events/batch")
                .append_header(("Authorization", format!("Bearer {key}")))
                .append_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json")),
            401,
        ),
        (
            "Content-Type with parameters",
            post().insert_header((
                "Content-Type",
                "application/json; charset=utf-8; boundary=x",
            )),
            200,
        ),
        (
            "Content-Type JSON lookalike",
            post().insert_header(("Content-Type", "application/jsonp")),
            415,
        ),
        (
            "Content-Encoding deflate",
            post().insert_header(("Content-Encoding", "deflate")),
            415,
        ),
        (
            "stacked encodings",
            post().insert_header(("Content-Encoding", "gzip, gzip")),
            415,
        ),
    ];
    for (name, req, expect) in cases {
        let reply = api.send(req, body.clone()).await;
        assert_eq!(reply.status, expect, "{name}: {}", reply.text);
        assert!(reply.status < 500, "{name}");
    }
}

#[actix_web::test]
async fn a_gzip_bomb_is_413_not_memory() {
    let (env, api, key) = TestEnv::with_page_view().await;
    // 1 GiB of zeros inflates from about 1 MB: the reader stops at the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..1024 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(
        bomb.len() < 1 << 20,
        "the bomb itself fits the limit: {}",
        bomb.len()
    );
    let started = Instant::now();
    let reply = api
        .send(
            api.request(Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Content-Encoding", "gzip")),
            bomb,
        )
        .await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn slow_clients_are_cut_off() {
    let env = TestEnv::start_with(&[
        ("SLUICE__API__CLIENT_TIMEOUT_MS", "500"),
        ("SLUICE__API__BODY_TIMEOUT_MS", "800"),
    ])
    .await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;
    let addr = api.base.trim_start_matches("http://").to_owned();

    // Headers never finished: answered 408 (or closed) once the client timeout passes.
    let head_addr = addr.clone();
    let (held, text) = actix_web::rt::task::spawn_blocking(move || {
        let mut slow_head = TcpStream::connect(&head_addr).unwrap();
        slow_head
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        slow_head
            .write_all(b"POST /v1/events/batch HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let n = slow_head.read(&mut buf).unwrap_or(0);
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(held < Duration::from_secs(3), "held for {held:?}");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // Body trickled: answered 408 in the contract's shape once the body deadline passes. On
    // an api whose header deadline is far off: on a loaded machine the head of this request may
    // be read later than 500 ms after the connection, and then actix's own 408 (no body) would
    // answer first.
    let mut settings = env.settings();
    settings.api.client_timeout = Duration::from_secs(30);
    let body_api = env.spawn_api_with(&settings);
    let addr = body_api.base.trim_start_matches("http://").to_owned();
    let body = json!({"events": [event("page_view", "slow")]}).to_string();
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let text = actix_web::rt::task::spawn_blocking(move || {
        let mut slow_body = TcpStream::connect(&addr).unwrap();
        slow_body
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        slow_body.write_all(head.as_bytes()).unwrap();
        slow_body.write_all(&body.as_bytes()[..5]).unwrap();
        let mut buf = [0u8; 4096];
        let n = slow_body.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""success":false"#), "{text}");
    assert!(env.stream_entries().is_empty());
}

#[actix_web::test]
async fn the_connection_cap_holds_new_connections_until_a_slot_frees() {
    let env = TestEnv::start_with(&[
        ("SLUICE__API__MAX_CONNECTIONS", "2"),
        ("SLUICE__API__WORKERS", "1"),
        ("SLUICE__API__CLIENT_TIMEOUT_MS", "1500"),
    ])
    .await;
    let api = env.spawn_api().await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    let (held, status) = actix_web::rt::task::spawn_blocking(move || {
        // Two clients take both slots and stall mid-headers.
        let stalled: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // A third is not served until the head timeout frees a slot.
        let started = Instant::now();
        let mut third = TcpStream::connect(&addr).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        third
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = third.read(&mut buf).unwrap_or(0);
        drop(stalled);
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        held >= Duration::from_millis(1000),
        "served after {held:?}: the cap did not hold it back"
    );
}
