//! Fault injection under continuous load: three api replicas, two workers, Redis with an
//! append-only file, PostgreSQL. During the load a worker is killed, an api replica is killed and
//! restarted, Redis is killed and restarted, PostgreSQL crashes and restarts. Afterwards every
//! acknowledged event is in `events` exactly once, no response was a 5xx other than 503, and every
//! process that was not killed is still alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{ApiProcess, TestEnv, event, spawn_api_process};

/// What the load saw.
#[derive(Default)]
pub struct LoadReport {
    /// Every acknowledged event id, with when its response arrived.
    pub acked: Vec<(Instant, String)>,
    pub statuses: HashMap<u16, u64>,
    /// Requests that got no HTTP answer (a replica down or killed mid-request).
    pub no_answer: u64,
}

/// Sends batches of 10 events from `clients` concurrent loops, round-robin over `targets` and
/// `keys` (tenants), until `stop`. Runs on its own thread and runtime so fault injection can
/// block freely. Every key's tenant needs the signals `visits` (metric) and `clicks` (event).
pub fn start_load(
    targets: Vec<String>,
    keys: Vec<String>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<LoadReport> {
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let loops = (0..clients).map(|c| {
                let targets = targets.clone();
                let keys = keys.clone();
                let stop = stop.clone();
                async move {
                    let client = awc::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .finish();
                    let mut report = LoadReport::default();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let target = &targets[(c + n) % targets.len()];
                        let key = &keys[(c + n) % keys.len()];
                        let events: Vec<Value> = (0..10)
                            .map(|i| {
                                if i % 2 == 0 {
                                    let mut e = event("visits", &format!("c{c}-{n}"));
                                    e["data"] = json!({"value": i});
                                    e
                                } else {
                                    event("clicks", &format!("c{c}-{n}-{i}"))
                                }
                            })
                            .collect();
                        n += 1;
                        let sent = client
                            .post(format!("http://{target}/v1/events/batch"))
                            .insert_header(("Authorization", format!("Bearer {key}")))
                            .insert_header(("Content-Type", "application/json"))
                            .send_body(json!({ "events": events }).to_string())
                            .await;
                        match sent {
                            Ok(mut res) => {
                                let status = res.status().as_u16();
                                *report.statuses.entry(status).or_default() += 1;
                                match res.body().limit(1 << 20).await {
                                    Ok(body) if status == 200 => {
                                        let body: Value = serde_json::from_slice(&body).unwrap();
                                        let at = Instant::now();
                                        report.acked.extend(
                                            body["data"].as_array().unwrap().iter().map(|d| {
                                                (at, d["id"].as_str().unwrap().to_owned())
                                            }),
                                        );
                                    }
                                    // An answer cut off before its body arrived acknowledges nothing.
                                    _ => {}
                                }
                            }
                            Err(_) => {
                                report.no_answer += 1;
                                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    report
                }
            });
            let reports = futures_util::future::join_all(loops).await;
            let mut all = LoadReport::default();
            for r in reports {
                all.acked.extend(r.acked);
                all.no_answer += r.no_answer;
                for (s, n) in r.statuses {
                    *all.statuses.entry(s).or_default() += n;
                }
            }
            all
        })
    })
}

fn alive(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

#[actix_web::test]
async fn every_acknowledged_event_survives_killed_workers_apis_redis_and_postgres() {
    let mut env = TestEnv::start_durable_with(&[
        ("SLUICE__LIMITS__EVENT", "1000000"),
        ("SLUICE__LIMITS__METRIC", "1000000"),
        ("SLUICE__API__WORKERS", "1"),
    ])
    .await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "visits", "metric", None).await;
    env.signal(&tenant, "clicks", "event", None).await;

    let mut apis: Vec<(ApiProcess, String)> =
        (0..3).map(|_| spawn_api_process(&env, None, &[])).collect();
    let worker_vars = [
        ("SLUICE__WORKER__CLAIM_IDLE_MS", "1000"),
        ("SLUICE__WORKER__BATCH_SIZE", "50"),
    ];
    let mut doomed_worker = env.spawn_worker(&worker_vars);
    let mut worker = env.spawn_worker(&worker_vars);
    worker.wait_ready(200).await;

    let stop = Arc::new(AtomicBool::new(false));
    let targets = apis.iter().map(|(_, addr)| addr.clone()).collect();
    let load = start_load(targets, vec![key.clone()], 6, stop.clone());
    let pause = |secs: f64| std::thread::sleep(Duration::from_secs_f64(secs));

    pause(2.0);
    doomed_worker.kill9();

    pause(1.5);
    let port: u16 = apis[1].1.rsplit(':').next().unwrap().parse().unwrap();
    let _ = apis[1].0.kill();
    let _ = apis[1].0.wait();
    pause(1.0);
    apis[1] = spawn_api_process(&env, Some(port), &[]);

    pause(1.5);
    env.redis.stop(); // kill -9
    pause(0.5);
    env.redis.restart(); // same port, same append-only file

    pause(2.0);
    env.pg.crash();
    pause(1.5);
    env.pg.start_again();

    pause(2.0);
    stop.store(true, Ordering::Relaxed);
    let report = load.join().unwrap();

    println!(
        "load: {} acknowledged, statuses {:?}, {} without an answer",
        report.acked.len(),
        report.statuses,
        report.no_answer
    );
    let five_xx: Vec<_> = report
        .statuses
        .iter()
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .collect();
    assert!(
        five_xx.is_empty(),
        "5xx other than 503: {:?}",
        report.statuses
    );
    assert!(
        report.acked.len() > 1000,
        "the load kept going: {:?}, {} acked",
        report.statuses,
        report.acked.len()
    );
    assert!(
        report.statuses.get(&503).copied().unwrap_or(0) > 0 || report.no_answer > 0,
        "the faults were felt"
    );

    // Everything acknowledged arrives, exactly once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = loop {
        if let Ok((client, conn)) =
            tokio_postgres::connect(&env.pg.url("sluice"), tokio_postgres::NoTls).await
        {
            actix_web::rt::spawn(conn);
            break client;
        }
        assert!(Instant::now() < deadline);
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    };
    let acked: std::collections::HashSet<&String> = report.acked.iter().map(|(_, id)| id).collect();
    assert_eq!(acked.len(), report.acked.len(), "ids are unique");
    let mut missing = acked.len();
    let mut stored: HashMap<String, i64> = HashMap::new();
    while Instant::now() < deadline {
        stored = client
            .query("SELECT id::text, count(*) FROM events GROUP BY id", &[])
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        missing = acked
            .iter()
            .filter(|id| !stored.contains_key(id.as_str()))
            .count();
        if missing == 0 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged events never stored",
        acked.len()
    );
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    crate::worker::assert_rolled_up_once(&client).await;

    // Nothing that was not killed died.
    for (child, addr) in apis.iter_mut() {
        assert!(alive(child), "api {addr} died");
    }
    assert!(worker.is_alive(), "the surviving worker died");
}
