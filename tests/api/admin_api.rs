//! The admin HTTP API (SLUICE__ADMIN__BIND) as operators and their automation use it: every
//! registry task with an admin token and no database access, each change seen by the ingest API.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestEnv, event};

/// An admin token, made as operators make one.
fn admin_token(env: &TestEnv) -> (String, String) {
    let made = env.admin(&["admin-token", "create", "--name", "ops"]);
    let id = made["id"].as_str().unwrap().to_owned();
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("adm_") && token.starts_with("sat_"),
        "{made}"
    );
    (id, token)
}

/// Calls until `done` holds for the reply or `within` passes; the last reply.
async fn eventually(
    within: Duration,
    mut call: impl AsyncFnMut() -> crate::support::Reply,
    done: impl Fn(&crate::support::Reply) -> bool,
) -> crate::support::Reply {
    let started = Instant::now();
    loop {
        let reply = call().await;
        if done(&reply) || started.elapsed() > within {
            return reply;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn an_operator_runs_the_registry_over_http_and_ingest_follows() {
    let env = TestEnv::start().await;
    let (_, token) = admin_token(&env);
    let (api, admin) = env.spawn_api_with_admin();
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let (admin, token) = (&admin, token.clone());
        async move { admin.call(method, &path, &token, body.as_ref()).await }
    };

    let tenant = call(
        "POST",
        "/admin/v1/tenants".into(),
        Some(json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(tenant.status, 201, "{}", tenant.text);
    assert_eq!(tenant.body["success"], true);
    let t = tenant.body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(tenant.body["data"]["name"], "Acme");
    let shown = call("GET", format!("/admin/v1/tenants/{t}"), None).await;
    assert_eq!(shown.status, 200);
    assert!(
        shown.body["data"]["stream"]
            .as_str()
            .unwrap()
            .ends_with(":events")
    );

    // A key: its secret once, never in a list.
    let made = call(
        "POST",
        format!("/admin/v1/tenants/{t}/keys"),
        Some(json!({"name": "prod"})),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let key = made.body["data"]["key"].as_str().unwrap().to_owned();
    let key_id = made.body["data"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_"));
    let keys = call("GET", format!("/admin/v1/tenants/{t}/keys"), None).await;
    assert_eq!(keys.body["data"][0]["id"], key_id.as_str());
    assert_eq!(keys.body["data"][0]["revoked_at"], Value::Null);
    assert!(
        !keys.text.contains(&key) && !keys.text.contains("sk_"),
        "{}",
        keys.text
    );

    // A signal, then changes to it, each seen by the ingest API at once.
    let created = call(
        "POST",
        format!("/admin/v1/tenants/{t}/signals"),
        Some(json!({"slug": "page_view", "type": "event", "name": "Page view"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["data"]["limit"], 100);
    assert_eq!(created.body["data"]["default_limit"], true);
    let again = call(
        "POST",
        format!("/admin/v1/tenants/{t}/signals"),
        Some(json!({"slug": "page_view", "type": "metric"})),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(
        again
            .error()
            .contains("already has a signal with slug page_view")
    );
    assert_eq!(
        api.batch(&key, json!([event("page_view", "a1")]))
            .await
            .status,
        200
    );

    let signal = format!("/admin/v1/tenants/{t}/signals/page_view");
    let limited = call("PATCH", signal.clone(), Some(json!({"limit": 2}))).await;
    assert_eq!(limited.status, 200, "{}", limited.text);
    assert_eq!(limited.body["data"]["limit"], 2);
    assert_eq!(limited.body["data"]["default_limit"], false);
    let mine = api.call("GET", "/v1/signals/page_view", &key, None).await;
    assert_eq!(mine.body["data"]["limit"], 2, "{}", mine.text);
    assert_eq!(mine.body["data"]["window"]["used"], 1);

    let off = call("PATCH", signal.clone(), Some(json!({"active": false}))).await;
    assert_eq!(off.body["data"]["active"], false);
    let refused = api.batch(&key, json!([event("page_view", "a2")])).await;
    assert_eq!(refused.status, 404);
    assert_eq!(refused.error(), "Signals not found: page_view");
    let on = call("PATCH", signal.clone(), Some(json!({"active": true}))).await;
    assert_eq!(on.body["data"]["active"], true);
    assert_eq!(
        on.body["data"]["limit"], 2,
        "a PATCH leaves what it does not name"
    );

    // PUT of the limit: the same request twice leaves the same state.
    for _ in 0..2 {
        let put = call(
            "PUT",
            format!("{signal}/limit"),
            Some(json!({"limit": null})),
        )
        .await;
        assert_eq!(put.status, 200, "{}", put.text);
        assert_eq!(put.body["data"]["limit"], 100);
        assert_eq!(put.body["data"]["default_limit"], true);
    }
    let listed = call("GET", format!("/admin/v1/tenants/{t}/signals"), None).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["next_cursor"], Value::Null);

    // Schemas: versions 1, 2; a document that is no schema is refused.
    for (n, schema) in [(1, json!({"type": "object"})), (2, json!(true))] {
        let added = call(
            "POST",
            format!("{signal}/schemas"),
            Some(json!({"schema": schema})),
        )
        .await;
        assert_eq!(added.status, 201, "{}", added.text);
        assert_eq!(added.body["data"]["version"], n);
    }
    let bad = call(
        "POST",
        format!("{signal}/schemas"),
        Some(json!({"schema": {"type": 5}})),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().starts_with("not a valid JSON Schema"),
        "{}",
        bad.text
    );
    let versions = call("GET", format!("{signal}/schemas"), None).await;
    assert_eq!(versions.body["data"].as_array().unwrap().len(), 2);
    let one = call("GET", format!("{signal}/schemas/1"), None).await;
    assert_eq!(one.body["data"]["schema"], json!({"type": "object"}));
    assert_eq!(
        call("GET", format!("{signal}/schemas/3"), None)
            .await
            .status,
        404
    );
    let at_version = api
        .batch(&key, json!([{"signal": "page_view", "version": 2, "identity": {"type": "account", "id": "a"}}]))
        .await;
    assert_eq!(at_version.status, 200, "{}", at_version.text);
    assert_eq!(at_version.body["data"][0]["schema_version"], 2);

    // Revocation: the key stops within the contract's 5 seconds; revoking again is harmless.
    let revoked = call("DELETE", format!("/admin/v1/keys/{key_id}"), None).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert!(revoked.body["data"]["revoked_at"].is_string());
    let again = call("DELETE", format!("/admin/v1/keys/{key_id}"), None).await;
    assert_eq!(
        again.body["data"]["revoked_at"],
        revoked.body["data"]["revoked_at"]
    );
    let refused = eventually(
        Duration::from_secs(5),
        async || api.batch(&key, json!([event("page_view", "a3")])).await,
        |r| r.status == 401,
    )
    .await;
    assert_eq!(refused.error(), "Invalid API key");

    let synced = call("POST", "/admin/v1/sync".into(), None).await;
    assert_eq!(synced.status, 200, "{}", synced.text);
    assert_eq!(synced.body["data"]["signals"], 1);
    assert_eq!(
        synced.body["data"]["repaired"],
        json!({"signals": 0, "keys": 0})
    );
    let dead = call("GET", "/admin/v1/dead-letters".into(), None).await;
    assert_eq!((dead.status, dead.body["data"].clone()), (200, json!([])));
    let replayed = call(
        "POST",
        "/admin/v1/dead-letters/replay".into(),
        Some(json!({})),
    )
    .await;
    assert_eq!(replayed.body["data"]["replayed"], 0, "{}", replayed.text);
    let missing = call(
        "POST",
        "/admin/v1/dead-letters/replay".into(),
        Some(json!({"id": 7})),
    )
    .await;
    assert_eq!(missing.status, 404);
}

#[actix_web::test]
async fn admin_tokens_are_required_checked_and_revocable_and_the_listener_is_separate() {
    let env = TestEnv::start().await;
    let (id, token) = admin_token(&env);
    let (tenant, api_key) = env.tenant().await;
    let (api, admin) = env.spawn_api_with_admin();

    let bare = admin.get("/admin/v1/tenants").await;
    assert_eq!((bare.status, bare.error()), (401, "Missing admin token"));
    assert_eq!(bare.header("www-authenticate"), Some("Bearer"));
    for wrong in ["sat_nope", api_key.as_str(), &token[..token.len() - 1]] {
        let reply = admin.call("GET", "/admin/v1/tenants", wrong, None).await;
        assert_eq!(
            (reply.status, reply.error()),
            (401, "Invalid admin token"),
            "{wrong}"
        );
    }
    // Refused before the body is read: a bad body without a token is still a 401.
    let no_token_bad_body = admin
        .send(
            admin.request("POST".parse().unwrap(), "/admin/v1/tenants"),
            b"{".to_vec(),
        )
        .await;
    assert_eq!(no_token_bad_body.status, 401);
    // The valid token twice: which header counts would depend on who reads it, so none does.
    let twice = admin
        .send(
            admin
                .request("GET".parse().unwrap(), "/admin/v1/tenants")
                .append_header(("Authorization", format!("Bearer {token}")))
                .append_header(("Authorization", format!("Bearer {token}"))),
            Vec::new(),
        )
        .await;
    assert_eq!((twice.status, twice.error()), (401, "Invalid admin token"));
    let ok = admin
        .call("GET", &format!("/admin/v1/tenants/{tenant}"), &token, None)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // The document is public on its listener; the admin API is not on the ingest listener.
    assert_eq!(admin.get("/openapi.json").await.status, 200);
    let on_public = api.call("GET", "/admin/v1/tenants", &token, None).await;
    assert_eq!(on_public.status, 404);
    assert_eq!(
        api.call("GET", "/v1/signals", &token, None).await.status,
        401
    );

    // Revoked: refused from the next request on.
    let revoked = env.admin(&["admin-token", "revoke", "--id", &id]);
    assert_eq!(revoked["revoked"], true);
    let after = admin.call("GET", "/admin/v1/tenants", &token, None).await;
    assert_eq!((after.status, after.error()), (401, "Invalid admin token"));

    // Off unless SLUICE__ADMIN__BIND is set.
    let plain = sluice::api::serve(&env.settings(), "127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(plain.admin.is_none());
}

#[actix_web::test]
async fn lists_page_with_a_cursor_and_bad_requests_get_clear_4xx() {
    let env = TestEnv::start().await;
    let (_, token) = admin_token(&env);
    let (_api, admin) = env.spawn_api_with_admin();
    let get = async |path: &str| admin.call("GET", path, &token, None).await;
    for i in 0..5 {
        let made = admin
            .call(
                "POST",
                "/admin/v1/tenants",
                &token,
                Some(&json!({"name": format!("t{i}")})),
            )
            .await;
        assert_eq!(made.status, 201);
    }
    for blank in [" ", "\u{3000}\t"] {
        let reply = admin
            .call(
                "POST",
                "/admin/v1/tenants",
                &token,
                Some(&json!({"name": blank})),
            )
            .await;
        assert_eq!(reply.status, 400, "{blank:?}: {}", reply.text);
        assert!(reply.error().contains("not all blank"), "{}", reply.text);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/tenants?limit=2&cursor={c}"),
            None => "/admin/v1/tenants?limit=2".to_owned(),
        };
        let page = get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        let items = page.body["data"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (seen.len(), unique.len()),
        (5, 5),
        "every tenant once: {seen:?}"
    );

    for (path, status, message) in [
        (
            "/admin/v1/tenants?limit=0",
            400,
            "limit must be from 1 to 1000",
        ),
        (
            "/admin/v1/tenants?limit=1001",
            400,
            "limit must be from 1 to 1000",
        ),
        ("/admin/v1/tenants?sort=name", 400, "Invalid query string"),
        (
            "/admin/v1/tenants/nope",
            400,
            "is not a tenant id: ten_ and 16 letters or digits",
        ),
        (
            "/admin/v1/tenants/ten_0000000000000000",
            404,
            "no tenant with id ten_0000000000000000",
        ),
        (
            "/admin/v1/dead-letters?cursor=x",
            400,
            "cursor is not one this list returned",
        ),
        ("/admin/v1/nothing", 404, "Not found: GET /admin/v1/nothing"),
    ] {
        let reply = get(path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text);
        assert!(reply.error().contains(message), "{path}: {}", reply.text);
    }
    let tenant = get("/admin/v1/tenants?limit=1").await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let signals = format!("/admin/v1/tenants/{tenant}/signals");
    for (body, message) in [
        (json!([]), "the body must be a JSON object"),
        (
            json!({"slug": "a", "type": "event", "colour": "red"}),
            "unknown field `colour`",
        ),
        (
            json!({"slug": "a", "type": "gauge"}),
            "unknown variant `gauge`",
        ),
        (json!({"slug": "A!", "type": "event"}), "invalid slug"),
        (
            json!({"slug": "a", "type": "event", "limit": 0}),
            "limit must be a positive number",
        ),
        (
            json!({"slug": "a", "type": "event", "limit": 1.5}),
            "is not a whole number",
        ),
        (
            json!({"slug": "a", "type": "event", "name": "x\u{0}y"}),
            "without NUL",
        ),
    ] {
        let reply = admin.call("POST", &signals, &token, Some(&body)).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert!(reply.error().contains(message), "{body}: {}", reply.text);
    }
    // A whole number is one however it is written.
    let made = admin
        .call(
            "POST",
            &signals,
            &token,
            Some(&json!({"slug": "a", "type": "event", "limit": 5.0})),
        )
        .await;
    assert_eq!(
        (made.status, made.body["data"]["limit"].clone()),
        (201, json!(5))
    );

    let not_json = admin
        .send(
            admin
                .request("POST".parse().unwrap(), &signals)
                .insert_header(("Authorization", format!("Bearer {token}")))
                .insert_header(("Content-Type", "text/plain")),
            b"slug=a".to_vec(),
        )
        .await;
    assert_eq!(
        (not_json.status, not_json.error()),
        (415, "Content-Type must be application/json")
    );
    let broken = admin
        .send(
            admin
                .request("POST".parse().unwrap(), &signals)
                .insert_header(("Authorization", format!("Bearer {token}")))
                .insert_header(("Content-Type", "application/json")),
            b"{\"slug\":".to_vec(),
        )
        .await;
    assert_eq!(broken.status, 400);
    assert!(
        broken.error().starts_with("Invalid JSON"),
        "{}",
        broken.text
    );
    let wrong_method = admin.call("DELETE", &signals, &token, None).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD, POST"));
}

/// Admin bodies are read by the ingest API's rules: a JSON-based media type, gzip, a byte order
/// mark, UTF-8 and the size limit, each refusal in the contract's shape.
#[actix_web::test]
async fn admin_bodies_are_read_as_ingest_bodies_are() {
    use std::io::Write;
    let env = TestEnv::start().await;
    let (_, token) = admin_token(&env);
    let (_api, admin) = env.spawn_api_with_admin();
    let send = async |headers: &[(&str, &str)], body: Vec<u8>| {
        let mut req = admin
            .request("POST".parse().unwrap(), "/admin/v1/tenants")
            .insert_header(("Authorization", format!("Bearer {token}")));
        for &(name, value) in headers {
            req = req.insert_header((name, value));
        }
        admin.send(req, body).await
    };
    let json = [("Content-Type", "application/json")];
    let bom = [b"\xEF\xBB\xBF".as_slice(), br#"{"name": "bom"}"#].concat();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"name": "gzip"}"#).unwrap();
    let gzip = [json[0], ("Content-Encoding", "gzip")];
    for (name, reply) in [
        ("bom", send(&json, bom).await),
        ("gzip", send(&gzip, gz.finish().unwrap()).await),
        (
            "vnd",
            send(
                &[("Content-Type", "application/vnd.api+json")],
                br#"{"name": "vnd"}"#.to_vec(),
            )
            .await,
        ),
    ] {
        assert_eq!(
            (reply.status, reply.body["data"]["name"].as_str()),
            (201, Some(name)),
            "{}",
            reply.text
        );
    }
    let text_json = send(
        &[("Content-Type", "text/json")],
        br#"{"name": "x"}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (text_json.status, text_json.error()),
        (415, "Content-Type must be application/json")
    );
    let latin1 = send(&json, b"{\"name\": \"caf\xE9\"}".to_vec()).await;
    assert_eq!(
        (latin1.status, latin1.error()),
        (400, "Invalid JSON: body is not valid UTF-8 at byte 13")
    );
    let big = format!(r#"{{"name": "{}"}}"#, "a".repeat(1 << 20));
    let big = send(&json, big.into_bytes()).await;
    assert_eq!(big.status, 413, "{}", big.text);
    let deflate = [json[0], ("Content-Encoding", "deflate")];
    let deflate = send(&deflate, br#"{"name": "x"}"#.to_vec()).await;
    assert_eq!(deflate.status, 415, "{}", deflate.text);
    let names: Vec<Value> = admin
        .call("GET", "/admin/v1/tenants", &token, None)
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

/// The HTTP API and `sluice-admin` read every input by the same rule: the same refusals with
/// the same words, and what they accept kept alike (a label measured as sent, then trimmed).
#[actix_web::test]
async fn http_and_the_cli_judge_inputs_by_one_rule() {
    let env = TestEnv::start().await;
    let (_, token) = admin_token(&env);
    let (_api, admin) = env.spawn_api_with_admin();
    let t = env.admin(&["tenant", "create", "--name", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.admin(&[
        "signal", "create", "--tenant", &t, "--slug", "plan", "--type", "state",
    ]);
    let keys = format!("/admin/v1/tenants/{t}/keys");
    let padded = format!("{}{}", "x".repeat(195), " ".repeat(10));
    let cases: Vec<(&str, String, Value, Vec<&str>, &str)> = vec![
        (
            "POST",
            keys.clone(),
            json!({"name": padded}),
            vec!["key", "create", "--tenant", &t, "--name", &padded],
            "at most 200 characters",
        ),
        (
            "POST",
            "/admin/v1/tenants/ten_short/keys".into(),
            json!({}),
            vec!["key", "create", "--tenant", "ten_short"],
            "\"ten_short\" is not a tenant id: ten_ and 16 letters or digits",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{t}/signals"),
            json!({"slug": "Bad Slug", "type": "event"}),
            vec![
                "signal", "create", "--tenant", &t, "--slug", "Bad Slug", "--type", "event",
            ],
            "invalid slug \"Bad Slug\"",
        ),
        (
            "PUT",
            format!("/admin/v1/tenants/{t}/signals/plan/limit"),
            json!({"limit": 0}),
            vec![
                "signal", "create", "--tenant", &t, "--slug", "x", "--type", "event", "--limit",
                "0",
            ],
            "limit must be a positive number of events per minute",
        ),
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"name": " \u{3000}"}),
            vec!["tenant", "create", "--name", " \u{3000}"],
            "tenant name must be 1-200 characters, not all blank",
        ),
        (
            "GET",
            "/admin/v1/dead-letters?limit=ten".into(),
            json!({}),
            vec!["dead-letters", "list", "--limit", "ten"],
            "limit must be from 1 to 1000",
        ),
    ];
    for (method, path, body, args, message) in cases {
        let http = admin.call(method, &path, &token, Some(&body)).await;
        assert_eq!(http.status, 400, "{method} {path}: {}", http.text);
        assert!(
            http.error().contains(message),
            "{method} {path}: {}",
            http.text
        );
        let cli = env.admin_refused(&args);
        assert!(cli.contains(message), "{args:?}: {cli}");
    }

    // Every list's `limit` and a schema's version are refused naming the rule, whatever the text.
    let signal = format!("/admin/v1/tenants/{t}/signals/plan");
    for (path, message) in [
        (
            "/admin/v1/tenants?limit=-1".to_owned(),
            "limit must be from 1 to 1000",
        ),
        (
            format!("{keys}?limit=99999999999"),
            "limit must be from 1 to 1000",
        ),
        (
            format!("/admin/v1/tenants/{t}/signals?limit=1.5"),
            "limit must be from 1 to 1000",
        ),
        (
            format!("{signal}/schemas?limit=0"),
            "limit must be from 1 to 1000",
        ),
        (
            "/admin/v1/dead-letters?limit=1001".to_owned(),
            "limit must be from 1 to 1000",
        ),
        (
            "/admin/v1/dead-letters?all=yes".to_owned(),
            "all must be true or false, not \"yes\"",
        ),
        (
            format!("{signal}/schemas/latest"),
            "schema version must be a whole number from 1 to 2147483647, not \"latest\"",
        ),
        (
            format!("{signal}/schemas/0"),
            "schema version must be a whole number from 1 to 2147483647, not \"0\"",
        ),
        (
            format!("{signal}/schemas/2147483648"),
            "schema version must be a whole number from 1 to 2147483647, not \"2147483648\"",
        ),
    ] {
        let refused = admin.call("GET", &path, &token, None).await;
        assert_eq!((refused.status, refused.error()), (400, message), "{path}");
    }
    for all in ["true", "false"] {
        let path = format!("/admin/v1/dead-letters?all={all}");
        let listed = admin.call("GET", &path, &token, None).await;
        assert_eq!(listed.status, 200, "{path}: {}", listed.text);
    }
    let missing = admin
        .call("GET", &format!("{signal}/schemas/1"), &token, None)
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text);

    let blank_edged = format!("  {}  ", "y".repeat(150));
    let made = admin
        .call("POST", &keys, &token, Some(&json!({"name": blank_edged})))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    env.admin(&["key", "create", "--tenant", &t, "--name", &blank_edged]);
    let listed = admin.call("GET", &keys, &token, None).await;
    let names: Vec<&Value> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["name"])
        .collect();
    assert_eq!(names, vec![&json!("y".repeat(150)); 2], "{}", listed.text);
}

#[actix_web::test]
async fn with_postgresql_down_the_admin_api_answers_503_and_ingest_goes_on() {
    let mut env = TestEnv::start().await;
    let (_, token) = admin_token(&env);
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (api, admin) = env.spawn_api_with_admin();
    assert_eq!(
        admin
            .call("GET", "/admin/v1/tenants", &token, None)
            .await
            .status,
        200
    );

    env.pg.stop();
    let down = admin.call("GET", "/admin/v1/tenants", &token, None).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert!(down.error().starts_with("PostgreSQL: "), "{}", down.text);
    assert!(down.error().ends_with("please retry"), "{}", down.text);
    assert_eq!(down.header("retry-after"), Some("1"));
    // Ingest and self-service need only Redis.
    assert_eq!(
        api.batch(&key, json!([event("page_view", "p1")]))
            .await
            .status,
        200
    );
    assert_eq!(api.call("GET", "/v1/signals", &key, None).await.status, 200);

    env.pg.start_again();
    let back = eventually(
        crate::support::PATIENCE,
        async || admin.call("GET", "/admin/v1/tenants", &token, None).await,
        |r| r.status == 200,
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.text);
}

/// `sluice-admin` lists and shows the registry as the admin API does, item for item, and sets a
/// signal's limit or puts it back on its type's default: an operator without the admin API
/// enabled can still find the key to revoke or the limit in force.
#[actix_web::test]
async fn the_cli_lists_shows_and_sets_limits_as_the_http_api_does() {
    let env = TestEnv::start().await;
    let (_, token) = admin_token(&env);
    let (_api, admin) = env.spawn_api_with_admin();
    let http = async |path: &str| {
        let reply = admin.call("GET", path, &token, None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        reply.body["data"].clone()
    };
    let made: Vec<String> = ["Acme", "Globex", "Initech"]
        .iter()
        .map(|name| {
            env.admin(&["tenant", "create", "--name", name])["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    // Tenants, two pages of at most two.
    let first = env.admin(&["tenant", "list", "--limit", "2"]);
    assert_eq!(first["count"], 2, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = env.admin(&["tenant", "list", "--limit", "2", "--cursor", &cursor]);
    assert_eq!(
        (second["count"].clone(), second["next_cursor"].clone()),
        (json!(1), Value::Null)
    );
    let listed: Vec<Value> = [&first, &second]
        .iter()
        .flat_map(|page| page["tenants"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        listed,
        http("/admin/v1/tenants").await.as_array().unwrap().clone()
    );
    let mut ids: Vec<&str> = listed.iter().map(|t| t["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected: Vec<&str> = made.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let t = &made[0];
    assert_eq!(
        env.admin(&["tenant", "show", "--id", t]),
        http(&format!("/admin/v1/tenants/{t}")).await
    );

    // Keys: the revoked one says when; no secret anywhere.
    let kept = env.admin(&["key", "create", "--tenant", t, "--name", "kept"]);
    let gone = env.admin(&["key", "create", "--tenant", t, "--name", "gone"]);
    env.admin(&["key", "revoke", "--id", gone["id"].as_str().unwrap()]);
    let keys = env.admin(&["key", "list", "--tenant", t]);
    assert_eq!(
        keys["keys"],
        http(&format!("/admin/v1/tenants/{t}/keys")).await
    );
    let text = keys.to_string();
    for secret in [&kept["key"], &gone["key"]] {
        assert!(!text.contains(secret.as_str().unwrap()), "{text}");
    }
    let mut revoked: Vec<(&str, bool)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), !k["revoked_at"].is_null()))
        .collect();
    revoked.sort();
    assert_eq!(keys["count"], 2);
    assert_eq!(revoked, vec![("gone", true), ("kept", false)]);

    // Signals: list and show as the admin API does; a limit set, then back to the default.
    env.admin(&[
        "signal",
        "create",
        "--tenant",
        t,
        "--slug",
        "page_view",
        "--type",
        "event",
    ]);
    env.admin(&[
        "signal", "create", "--tenant", t, "--slug", "plan", "--type", "state",
    ]);
    let set = env.admin(&[
        "signal", "limit", "--tenant", t, "--slug", "plan", "--limit", "45",
    ]);
    assert_eq!(
        (set["limit"].clone(), set["default_limit"].clone()),
        (json!(45), json!(false))
    );
    let signals = env.admin(&["signal", "list", "--tenant", t]);
    assert_eq!(
        signals["signals"],
        http(&format!("/admin/v1/tenants/{t}/signals")).await
    );
    let show = env.admin(&["signal", "show", "--tenant", t, "--slug", "plan"]);
    assert_eq!(
        show,
        http(&format!("/admin/v1/tenants/{t}/signals/plan")).await
    );
    assert_eq!(show["limit"], 45);
    let back = env.admin(&[
        "signal",
        "limit",
        "--tenant",
        t,
        "--slug",
        "plan",
        "--default",
    ]);
    assert_eq!(
        (back["limit"].clone(), back["default_limit"].clone()),
        (json!(30), json!(true))
    );
    assert_eq!(
        back,
        http(&format!("/admin/v1/tenants/{t}/signals/plan")).await
    );

    // Refusals name what is wrong.
    for (args, message) in [
        (
            vec!["tenant", "list", "--cursor", ""],
            "cursor is not one this list returned",
        ),
        (
            vec!["key", "list", "--tenant", t, "--limit", "0"],
            "limit must be from 1 to 1000",
        ),
        (
            vec!["signal", "show", "--tenant", t, "--slug", "nope"],
            "has no signal with slug nope",
        ),
        (
            vec!["signal", "limit", "--tenant", t, "--slug", "plan"],
            "--limit <LIMIT>|--default",
        ),
        (
            vec![
                "signal",
                "limit",
                "--tenant",
                t,
                "--slug",
                "plan",
                "--limit",
                "5",
                "--default",
            ],
            "cannot be used with",
        ),
    ] {
        let stderr = env.admin_refused(&args);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
