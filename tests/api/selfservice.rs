//! Self-service for client developers: `GET /v1/signals[/{slug}]` with the tenant's own key
//! shows its signals and how much of each window is left, from the counters admission uses.

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};

use crate::support::{TestEnv, event};

/// Waits out the end of a minute, so that what a test admits and reads falls in one window.
async fn early_in_a_minute() {
    let second = Utc::now().second();
    if second >= 50 {
        actix_web::rt::time::sleep(std::time::Duration::from_secs(u64::from(61 - second))).await;
    }
}

fn by_slug<'a>(list: &'a Value, slug: &str) -> &'a Value {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slug"] == slug)
        .unwrap_or_else(|| panic!("no {slug} in {list}"))
}

#[actix_web::test]
async fn a_key_sees_its_own_signals_and_the_window_admission_uses() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    let (other_tenant, other_key) = env.tenant().await;
    let page_view = env.signal(&tenant, "page_view", "event", Some(5)).await;
    env.signal(&tenant, "mrr", "metric", None).await;
    env.signal(&tenant, "plan", "state", None).await;
    env.admin(&[
        "signal",
        "deactivate",
        "--tenant",
        &tenant,
        "--slug",
        "plan",
    ]);
    for _ in 0..2 {
        env.schema(&tenant, "mrr", json!({"type": "object"})).await;
    }
    let other_page_view = env.signal(&other_tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;

    early_in_a_minute().await;
    let sent = api
        .batch(
            &key,
            json!([
                event("page_view", "a"),
                event("page_view", "b"),
                event("page_view", "c")
            ]),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);

    let mine = api.call("GET", "/v1/signals", &key, None).await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    let slugs: Vec<&str> = mine.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        ["mrr", "page_view", "plan"],
        "every signal, inactive too, by slug"
    );
    let pv = by_slug(&mine.body, "page_view");
    assert_eq!(pv["id"], page_view.as_str());
    assert_eq!(
        (
            pv["type"].clone(),
            pv["active"].clone(),
            pv["limit"].clone()
        ),
        (json!("event"), json!(true), json!(5))
    );
    assert_eq!(pv["window"]["used"], 3);
    assert_eq!(pv["window"]["remaining"], 2);
    // The window ends where the ingest answer said it does: at the next UTC minute.
    assert_eq!(
        pv["window"]["reset"].as_str(),
        sent.header("x-ratelimit-reset")
    );
    let reset: DateTime<Utc> = pv["window"]["reset"].as_str().unwrap().parse().unwrap();
    assert_eq!(reset.second(), 0);
    assert!(reset > Utc::now() && reset <= Utc::now() + chrono::Duration::seconds(61));
    let mrr = by_slug(&mine.body, "mrr");
    assert_eq!(mrr["schema_versions"], json!([1, 2]));
    assert_eq!(
        mrr["window"],
        json!({"used": 0, "remaining": 1000, "reset": pv["window"]["reset"]})
    );
    assert_eq!(by_slug(&mine.body, "plan")["active"], false);

    // Reading counts against nothing: many reads later the window is as it was.
    for _ in 0..20 {
        assert_eq!(
            api.call("GET", "/v1/signals/page_view", &key, None)
                .await
                .status,
            200
        );
    }
    let one = api.call("GET", "/v1/signals/page_view", &key, None).await;
    assert_eq!(one.body["data"]["window"]["used"], 3, "{}", one.text);
    let rest = api
        .batch(
            &key,
            json!([
                event("page_view", "d"),
                event("page_view", "e"),
                event("page_view", "f")
            ]),
        )
        .await;
    assert_eq!(
        rest.body["rate_limited"].as_array().map(Vec::len),
        Some(1),
        "{}",
        rest.text
    );
    let full = api.call("GET", "/v1/signals/page_view", &key, None).await;
    assert_eq!(full.body["data"]["window"]["used"], 5);
    assert_eq!(full.body["data"]["window"]["remaining"], 0);

    // Another tenant's key sees its own page_view only, with its own window.
    let theirs = api.call("GET", "/v1/signals", &other_key, None).await;
    assert_eq!(
        theirs.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        theirs.text
    );
    assert_eq!(theirs.body["data"][0]["id"], other_page_view.as_str());
    assert_eq!(theirs.body["data"][0]["window"]["used"], 0);
    let not_theirs = api.call("GET", "/v1/signals/mrr", &other_key, None).await;
    assert_eq!(
        (not_theirs.status, not_theirs.error()),
        (404, "Signal not found: mrr")
    );

    let bad = api
        .call("GET", "/v1/signals/Not%20A%20Slug", &key, None)
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.error().starts_with("invalid slug"), "{}", bad.text);
    let bare = api.get("/v1/signals").await;
    assert_eq!((bare.status, bare.error()), (401, "Missing API key"));
    let wrong = api
        .call("POST", "/v1/signals", &key, Some(&json!({})))
        .await;
    assert_eq!(
        (wrong.status, wrong.header("allow")),
        (405, Some("GET, HEAD"))
    );
}
