//! Operating Sluice: metrics that pass promtool, request ids, structured logs that never carry
//! keys or event data, and graceful shutdown of the api.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestEnv, event, run_binary};

/// `promtool check metrics` over an exposition: no error and no lint finding.
fn assert_promtool_clean(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (deploy/dev/install-tools.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool: {findings}\n---\n{exposition}"
    );
}

#[actix_web::test]
async fn api_and_worker_metrics_pass_promtool_without_lint_findings() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "plan", "state", Some(1)).await;
    env.signal(&tenant, "mrr", "metric", None).await;
    let api = env.spawn_api().await;
    // Every api metric gets samples: accepted, rate limited, rejected, a 404, a 401.
    let mut mrr = event("mrr", "a");
    mrr["data"] = json!({"value": 3});
    assert_eq!(
        api.batch(&key, json!([event("plan", "a"), event("plan", "b"), mrr]))
            .await
            .status,
        200
    );
    assert_eq!(
        api.batch(&key, json!([{"signal": "plan"}])).await.status,
        400
    );
    assert_eq!(api.get("/nope").await.status, 404);
    let metrics = api.get("/metrics").await;
    for name in [
        "sluice_http_requests_total",
        "sluice_http_request_duration_seconds_bucket",
        "sluice_events_accepted_total",
        "sluice_events_rate_limited_total",
        "sluice_events_rejected_total",
        "sluice_redis_script_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics.text.contains(name), "{name} missing");
    }
    let build = format!(
        "sluice_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        crate::support::metric_value(&metrics.text, &build),
        Some(1.0)
    );
    assert!(
        metrics
            .text
            .contains(r#"sluice_events_rejected_total{reason="validation"} 1"#),
        "{}",
        metrics.text
    );
    assert!(!metrics.text.contains(&tenant), "no tenant ids in labels");
    assert_promtool_clean(&metrics.text);

    let worker = env.spawn_worker(&[]);
    assert_eq!(env.wait_for_events(2, 30).await, 2);
    // Gauges are published every few seconds.
    // The age of the oldest unacknowledged entry: seconds at most here (an age counted from the
    // wrong clock or epoch would be enormous). Partitions are published one after another, so
    // wait for this tenant's.
    let partition = sluice::keyspace::Keyspace::new(16).partition_of(&tenant);
    let oldest = format!("sluice_worker_oldest_pending_seconds{{partition=\"{partition}\"}}");
    let lag = format!("sluice_worker_stream_lag{{partition=\"{partition}\"}}");
    let exposition = crate::support::eventually("the tenant's partition published", async || {
        let exposition = worker.get("/metrics").await.1;
        (exposition.contains(&oldest) && exposition.contains(&lag)).then_some(exposition)
    })
    .await;
    for name in [
        "sluice_worker_events_stored_total{status=\"processed\"} 2",
        "sluice_worker_batch_duration_seconds_bucket",
        "sluice_worker_stream_pending{",
        "sluice_worker_stream_lag{",
        "process_resident_memory_bytes",
    ] {
        assert!(
            exposition.contains(name),
            "{name} missing from\n{exposition}"
        );
    }
    let age = crate::support::metric_value(&exposition, &oldest);
    assert!(
        age.is_some_and(|a| (0.0..60.0).contains(&a)),
        "{exposition}"
    );
    // The rebuild at start found the copy as write-through left it.
    for kind in ["signal", "key"] {
        let series = format!("sluice_worker_registry_repaired_total{{kind=\"{kind}\"}}");
        assert_eq!(
            crate::support::metric_value(&exposition, &series),
            Some(0.0),
            "{exposition}"
        );
    }
    let build = format!(
        "sluice_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(crate::support::metric_value(&exposition, &build), Some(1.0));
    assert_promtool_clean(&exposition);
}

#[actix_web::test]
async fn request_ids_are_kept_when_sane_and_made_otherwise() {
    let env = TestEnv::start().await;
    let api = env.spawn_api().await;
    let kept = api
        .send(
            api.request(awc::http::Method::GET, "/livez")
                .insert_header(("X-Request-Id", "abc-123")),
            vec![],
        )
        .await;
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));
    let made = api.get("/livez").await;
    let id = made
        .header("x-request-id")
        .expect("an id is always returned");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let long = "x".repeat(500);
    let replaced = api
        .send(
            api.request(awc::http::Method::GET, "/livez")
                .insert_header(("X-Request-Id", long.as_str())),
            vec![],
        )
        .await;
    assert_ne!(replaced.header("x-request-id"), Some(long.as_str()));
}

/// `HEAD` on `path` beside `GET`: the same status and headers, no body. Returns the status.
async fn head_matches_get(api: &crate::support::TestApi, path: &str, bearer: Option<&str>) -> u16 {
    let with = |method| {
        let req = api.request(method, path);
        match bearer {
            Some(b) => req.insert_header(("Authorization", format!("Bearer {b}"))),
            None => req,
        }
    };
    let get = api.send(with(awc::http::Method::GET), vec![]).await;
    let head = api.send(with(awc::http::Method::HEAD), vec![]).await;
    assert_eq!(head.status, get.status, "HEAD {path}: {}", get.text);
    assert_eq!(head.text, "", "HEAD {path} sent a body");
    for name in ["content-type", "allow", "x-ratelimit-limit"] {
        assert_eq!(head.header(name), get.header(name), "HEAD {path}: {name}");
    }
    // The length of the body GET sends, where that body does not change between the two (the
    // metrics count the GET; 404 and 405 name the method).
    if !path.starts_with("/metrics") && !matches!(get.status, 404 | 405) {
        let length = get.text.len().to_string();
        assert_eq!(
            head.header("content-length"),
            Some(length.as_str()),
            "HEAD {path}"
        );
    }
    head.status
}

#[actix_web::test]
async fn head_answers_every_get_route_as_get_does_without_the_body() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let token = env.admin(&["admin-token", "create", "--name", "ops"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (api, admin) = env.spawn_api_with_admin();
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;

    for path in ["/livez", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(head_matches_get(&api, path, None).await, 200, "{path}");
    }
    for path in ["/v1/signals", "/v1/signals/page_view", "/v1/events?limit=1"] {
        assert_eq!(
            head_matches_get(&api, path, Some(&key)).await,
            200,
            "{path}"
        );
    }
    // Authentication, missing routes and wrong methods answer HEAD as they answer GET.
    assert_eq!(head_matches_get(&api, "/v1/signals", None).await, 401);
    assert_eq!(head_matches_get(&api, "/v1/nothing", None).await, 404);
    assert_eq!(head_matches_get(&api, "/v1/events/batch", None).await, 405);
    let path = format!("/admin/v1/tenants/{tenant}");
    assert_eq!(head_matches_get(&admin, &path, Some(&token)).await, 200);
    assert_eq!(head_matches_get(&admin, "/openapi.json", None).await, 200);

    // The worker's listener too.
    let head = crate::support::client()
        .head(format!("{}/livez", worker.metrics_url))
        .send()
        .await
        .expect("the worker answers");
    assert_eq!(head.status(), 200);
}

/// Whether process `pid` has accepted `client`'s connection: it holds the socket of the
/// connection's other end (found by its ports in `/proc/net/tcp`). Counting the process's
/// sockets would not tell: the connection that found it listening may still be closing.
fn holds_connection(pid: u32, client: &TcpStream) -> bool {
    let (ours, theirs) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // Columns: sl, local address, remote address, state, queues, timer, retransmits, uid,
    // timeout, inode. A connection not yet accepted has no inode (0).
    let inode = table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (columns.get(1)?, columns.get(2)?, columns.get(9)?);
        (port(local) == Some(theirs.port()) && port(remote) == Some(ours.port()) && *inode != "0")
            .then(|| format!("socket:[{inode}]"))
    });
    let Some(inode) = inode else {
        return false;
    };
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .any(|target| target.to_string_lossy() == inode)
    })
}

fn sigterm(child: &std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// A raw HTTP/1.1 POST of a batch; the connection, with the body not yet fully sent.
fn start_post(base: &str, key: &str, body: &[u8], send_first: usize) -> TcpStream {
    let mut stream = TcpStream::connect(base).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: {base}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: req-under-test\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..send_first]).unwrap();
    stream
}

fn status_of(stream: &mut TcpStream) -> u16 {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Runs an api process logging in `format`, sends it `body` `times` times (each answered 200),
/// stops it with SIGTERM and returns its tenant, key and everything it wrote to stderr; the
/// process must have exited 0.
async fn logs_of(format: &str, body: impl Fn() -> Value, times: usize) -> (String, String, String) {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (mut child, base) = crate::support::spawn_api_process(
        &env,
        None,
        &[
            ("SLUICE__LOG__FORMAT", format),
            ("SLUICE__LOG__LEVEL", "info"),
        ],
    );
    let body = json!({"events": [body()]}).to_string();
    for _ in 0..times {
        let mut stream = start_post(&base, &key, body.as_bytes(), body.len());
        assert_eq!(status_of(&mut stream), 200);
    }
    sigterm(&child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    (tenant, key, stderr)
}

#[actix_web::test]
async fn json_logs_have_one_line_per_request_and_never_the_key_or_event_data() {
    let secret_event = || {
        let mut e = event("page_view", "identity-secret-id");
        e["data"] = json!({"marker": "event-data-must-not-be-logged"});
        e
    };
    let (tenant, key, stderr) = logs_of("json", secret_event, 1).await;

    assert!(!stderr.contains(&key), "the API key was logged");
    assert!(
        !stderr.contains(&key[3..20]),
        "part of the API key was logged"
    );
    assert!(
        !stderr.contains("event-data-must-not-be-logged"),
        "event data was logged"
    );
    assert!(
        !stderr.contains("identity-secret-id"),
        "identity ids are event data too"
    );
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(requests.len(), 1, "{stderr}");
    let line = requests[0];
    assert_eq!(line["route"], "/v1/events/batch");
    assert_eq!(line["status"], 200);
    assert_eq!(line["tenant"], tenant.as_str());
    assert_eq!(line["method"], "POST");
    assert!(line["latency_ms"].as_f64().is_some());
    assert_eq!(line["span"]["request_id"], "req-under-test");
}

/// Text logs going to a file or a pipe are plain text (no terminal colour codes), and the lines
/// still waiting in the log writer when the binary stops are written before it exits.
#[actix_web::test]
async fn text_logs_to_a_pipe_are_plain_and_complete_at_exit() {
    let (_, _, stderr) = logs_of("text", || event("page_view", "acc-1"), 20).await;
    assert!(!stderr.contains('\u{1b}'), "terminal codes in: {stderr}");
    let requests = stderr
        .lines()
        .filter(|l| l.contains(" request ") && l.contains("route=/v1/events/batch"))
        .count();
    assert_eq!(requests, 20, "{stderr}");
}

#[actix_web::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (mut child, base) = crate::support::spawn_api_process(
        &env,
        None,
        &[("SLUICE__API__SHUTDOWN_GRACE_SECS", "10")],
    );
    let body = json!({"events": [event("page_view", "in-flight")]}).to_string();
    // Half the body is sent and the api has taken the connection; then it is asked to stop.
    let mut stream = start_post(&base, &key, body.as_bytes(), body.len() / 2);
    crate::support::wait_until("the api to accept the connection", || {
        holds_connection(child.id(), &stream)
    });
    sigterm(&child);
    // No new connections once stopping.
    crate::support::wait_until("the api to close its listener", || {
        TcpStream::connect(&base).is_err()
    });
    stream
        .write_all(&body.as_bytes()[body.len() / 2..])
        .unwrap();
    assert_eq!(
        status_of(&mut stream),
        200,
        "the in-flight request completes"
    );
    drop(stream);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not exit within the grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        env.stream_entries().len(),
        1,
        "the in-flight event was admitted"
    );
}

#[test]
fn every_binary_answers_help_and_version_without_starting() {
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_sluice-api"), "sluice-api"),
        (env!("CARGO_BIN_EXE_sluice-worker"), "sluice-worker"),
        (env!("CARGO_BIN_EXE_sluice-admin"), "sluice-admin"),
        (env!("CARGO_BIN_EXE_sluice-loadgen"), "sluice-loadgen"),
    ] {
        let (code, stdout, stderr) = run_binary(bin, &["--help"], &[]);
        assert_eq!(code, Some(0), "{name} --help: {stderr}");
        assert!(
            stdout.contains("Usage:") && stdout.contains(name),
            "{name}: {stdout}"
        );
        let (code, stdout, _) = run_binary(bin, &["--version"], &[]);
        assert_eq!(code, Some(0));
        assert_eq!(
            stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[actix_web::test]
async fn healthcheck_says_whether_the_service_on_this_host_is_ready() {
    let (mut env, _api, _key) = TestEnv::with_page_view().await;
    let (_api, base) = crate::support::spawn_api_process(&env, None, &[]);
    let vars: Vec<(&str, &str)> = env
        .env_vars()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("SLUICE__API__BIND", base.as_str())])
        .collect();
    let (code, _, stderr) = run_binary(env!("CARGO_BIN_EXE_sluice-api"), &["healthcheck"], &vars);
    assert_eq!(code, Some(0), "{stderr}");

    // Nothing listening: not ready, with the reason on one line.
    let closed = format!("127.0.0.1:{}", crate::support::servers::free_port());
    let vars: Vec<(&str, &str)> = vec![("SLUICE__WORKER__METRICS_BIND", closed.as_str())];
    let (code, _, stderr) =
        run_binary(env!("CARGO_BIN_EXE_sluice-worker"), &["healthcheck"], &vars);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("not ready") && stderr.contains(&closed),
        "{stderr}"
    );

    // A ready worker, then the same worker once its PostgreSQL is gone.
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    let bind = worker.metrics_url.trim_start_matches("http://").to_owned();
    let mut owned: Vec<(String, String)> = env.env_vars().clone().into_iter().collect();
    owned.push(("SLUICE__WORKER__METRICS_BIND".into(), bind));
    let vars: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let check = || run_binary(env!("CARGO_BIN_EXE_sluice-worker"), &["healthcheck"], &vars);
    let (code, _, stderr) = check();
    assert_eq!(code, Some(0), "{stderr}");
    env.pg.stop();
    let (code, _, stderr) = check();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("postgres"), "{stderr}");
}

/// A 405 names every method the resource takes, `HEAD` included wherever `GET` is (every `GET`
/// route answers `HEAD` too), on the ingest and the admin listeners alike.
#[actix_web::test]
async fn a_405_names_head_wherever_get_is_taken() {
    let env = TestEnv::start().await;
    let token = env.admin(&["admin-token", "create", "--name", "ops"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (api, admin) = env.spawn_api_with_admin();
    // The admin listener checks the token first.
    let bearer = format!("Bearer {token}");
    for (service, method, path, allow) in [
        (&api, "DELETE", "/livez", "GET, HEAD"),
        (&api, "POST", "/v1/signals", "GET, HEAD"),
        (&api, "PUT", "/v1/events", "GET, HEAD, POST"),
        (&api, "GET", "/v1/events/batch", "POST"),
        (&admin, "DELETE", "/admin/v1/tenants", "GET, HEAD, POST"),
        (&admin, "GET", "/admin/v1/sync", "POST"),
    ] {
        let request = service
            .request(method.parse().unwrap(), path)
            .insert_header(("Authorization", bearer.as_str()));
        let wrong = service.send(request, vec![]).await;
        assert_eq!(
            (wrong.status, wrong.header("allow")),
            (405, Some(allow)),
            "{method} {path}"
        );
        assert_eq!(
            wrong.error(),
            format!("Method {method} not allowed; use {allow}"),
            "{method} {path}"
        );
    }
}
