//! TLS to PostgreSQL and Redis, as managed services require it: servers that accept
//! connections over TLS only, certificates from a throwaway CA, every `sslmode` as libpq means
//! it, and Redis standalone and Cluster over `rediss://` with mutual TLS.

use std::process::Command;

use serde_json::json;

use crate::support::certs::{RedisTls, TestCa};
use crate::support::cluster::RedisCluster;
use crate::support::servers::RedisServer;
use crate::support::{
    Postgres, TestApi, TestEnv, WorkerProcess, event, run_binary, spawn_api_process,
};

/// `sluice-admin migrate` (which also creates the database on a fresh server) against `env`
/// with the PostgreSQL URL `url` and extra settings: its exit success and stderr.
fn admin_migrate(env: &TestEnv, url: &str, extra: &[(&str, &str)]) -> (bool, String) {
    let vars: Vec<(&str, &str)> = env
        .env_vars()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("SLUICE__POSTGRES__URL", url)])
        .chain(extra.iter().copied())
        .collect();
    let (code, _, stderr) = run_binary(env!("CARGO_BIN_EXE_sluice-admin"), &["migrate"], &vars);
    (code == Some(0), stderr)
}

#[actix_web::test]
async fn every_binary_works_against_a_tls_only_postgres_with_full_verification() {
    let ca = TestCa::new("Sluice test CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    let pg = Postgres::start_tls(&server.cert, &server.key);
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/sluice?sslmode=verify-full",
        pg.port
    );
    let ca_file = ca.file();
    let ca_file = ca_file.to_str().unwrap();
    // The test environment's own setup (create database, migrate, registry) goes over TLS too.
    let env = TestEnv::start_on_postgres(
        pg,
        &[
            ("SLUICE__POSTGRES__URL", url.as_str()),
            ("SLUICE__POSTGRES__TLS_CA_FILE", ca_file),
        ],
    )
    .await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    // The api admits, the worker stores over TLS; sluice-admin works over TLS, with the CA from
    // the URL too.
    let _worker = ingest_and_drain(&env, &env.spawn_api().await, &key).await;
    let with_url_ca = format!("{url}&sslrootcert={}", ca_file.replace('/', "%2F"));
    let (ok, stderr) = admin_migrate(&env, &with_url_ca, &[("SLUICE__POSTGRES__TLS_CA_FILE", "")]);
    assert!(ok, "{stderr}");

    // The server saw TLS on every TCP connection of ours.
    let client = env.pg_client().await;
    let plain: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.client_addr IS NOT NULL AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);
}

#[actix_web::test]
async fn bad_certificates_and_disabled_tls_are_refused_with_a_clear_error() {
    let ca = TestCa::new("Sluice test CA");
    let other_ca = TestCa::new("Someone else's CA");
    let good = ca.server(&["localhost", "127.0.0.1"]);
    let pg = Postgres::start_tls(&good.cert, &good.key);
    let port = pg.port;
    let env = TestEnv::start_on_postgres(
        pg,
        &[(
            "SLUICE__POSTGRES__URL",
            format!("postgres://postgres@127.0.0.1:{port}/sluice?sslmode=require").as_str(),
        )],
    )
    .await;
    let url = |mode: &str, port: u16| {
        format!("postgres://postgres@127.0.0.1:{port}/sluice?sslmode={mode}")
    };
    let ca_file = ca.file();
    let other_ca_file = other_ca.file();
    let with_ca = |file: &std::path::Path| {
        vec![(
            "SLUICE__POSTGRES__TLS_CA_FILE".to_owned(),
            file.to_str().unwrap().to_owned(),
        )]
    };
    let run = |url: String, extra: Vec<(String, String)>| {
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        admin_migrate(&env, &url, &extra)
    };

    // Encrypted but unverified (require), and verified by the right CA: accepted.
    assert!(run(url("require", port), vec![]).0);
    assert!(run(url("verify-full", port), with_ca(&ca_file)).0);

    // A certificate from a CA we do not trust.
    let (ok, stderr) = run(url("verify-full", port), with_ca(&other_ca_file));
    assert!(!ok);
    assert!(
        stderr.contains("refused") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );

    // Without TLS, against a server that requires it: refused at once, naming the cause.
    let (ok, stderr) = run(url("disable", port), vec![]);
    assert!(!ok);
    assert!(
        stderr.contains("no encryption") || stderr.contains("pg_hba"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // The worker, too, stops at start with one line instead of retrying forever.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .envs(env.env_vars())
        .env("SLUICE__POSTGRES__URL", url("disable", port))
        .env("SLUICE__WORKER__METRICS_BIND", "127.0.0.1:0")
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.lines().last().is_some_and(|l| l.contains("refused")),
        "{stderr}"
    );

    // An expired certificate.
    let expired = ca.expired_server(&["localhost", "127.0.0.1"]);
    let old = Postgres::start_tls(&expired.cert, &expired.key);
    let (ok, stderr) = run(url("verify-full", old.port), with_ca(&ca_file));
    assert!(!ok);
    assert!(stderr.contains("certificate expired"), "{stderr}");

    // A certificate for another host: refused by verify-full, accepted by verify-ca, which
    // checks the chain but not the name.
    let elsewhere = ca.server(&["db.example.com"]);
    let misnamed = Postgres::start_tls(&elsewhere.cert, &elsewhere.key);
    let (ok, stderr) = run(url("verify-full", misnamed.port), with_ca(&ca_file));
    assert!(!ok);
    assert!(stderr.contains("not valid for name"), "{stderr}");
    let (ok, stderr) = run(url("verify-ca", misnamed.port), with_ca(&ca_file));
    assert!(ok, "{stderr}");
}

/// Two `page_view` events, admitted by `api`.
async fn admit_two(api: &TestApi, key: &str) {
    let reply = api
        .batch(
            key,
            json!([event("page_view", "1"), event("page_view", "2")]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Two events admitted by `api`, then stored by a worker (returned, still running): the whole
/// path over whatever TLS `env` uses.
async fn ingest_and_drain(env: &TestEnv, api: &TestApi, key: &str) -> WorkerProcess {
    admit_two(api, key).await;
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    assert_eq!(env.wait_for_events(2, 30).await, 2);
    worker
}

/// `sluice-admin sync` (which reads PostgreSQL and writes the registry copy in Redis) against
/// `env` with these settings replaced: its exit code and stderr.
fn admin_sync(env: &TestEnv, replaced: &[(&str, &str)]) -> (Option<i32>, String) {
    let vars: Vec<(&str, &str)> = env
        .env_vars()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| !replaced.iter().any(|(r, _)| r == k))
        .chain(replaced.iter().copied())
        .collect();
    let (code, _, stderr) = run_binary(env!("CARGO_BIN_EXE_sluice-admin"), &["sync"], &vars);
    (code, stderr)
}

#[actix_web::test]
async fn every_binary_works_against_a_tls_only_redis_with_mutual_tls() {
    let ca = TestCa::new("Sluice test CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    // No plain-text port at all, and a client certificate required.
    let redis = RedisServer::start_tls(RedisTls::new(&ca, &server, true));
    let env = TestEnv::start_on_redis(redis, &[]).await;
    assert!(env.env_vars()["SLUICE__REDIS__URL"].starts_with("rediss://localhost:"));
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;

    // The api binary admits over TLS; the worker drains over TLS; sluice-admin syncs over TLS.
    let (_api, base) = spawn_api_process(&env, None, &[]);
    let _worker = ingest_and_drain(&env, &TestApi::at(&base), &key).await;
    let (code, stderr) = admin_sync(&env, &[]);
    assert_eq!(code, Some(0), "{stderr}");

    // Without the client certificate the server refuses the connection.
    let (code, stderr) = admin_sync(
        &env,
        &[
            ("SLUICE__REDIS__TLS_CERT_FILE", ""),
            ("SLUICE__REDIS__TLS_KEY_FILE", ""),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to Redis"), "{stderr}");
}

#[actix_web::test]
async fn bad_redis_certificates_and_settings_are_refused_with_a_clear_error() {
    let ca = TestCa::new("Sluice test CA");
    let other_ca = TestCa::new("Someone else's CA");
    let good = ca.server(&["localhost", "127.0.0.1"]);
    let redis = RedisServer::start_tls(RedisTls::new(&ca, &good, false));
    let port = redis.port;
    let env = TestEnv::start_on_redis(redis, &[]).await;
    let other_ca_file = other_ca.file();
    let other_ca_file = other_ca_file.to_str().unwrap();

    // The right CA: accepted (no client certificate needed by this server).
    let (code, stderr) = admin_sync(&env, &[]);
    assert_eq!(code, Some(0), "{stderr}");

    // A certificate from a CA we do not trust; the system's roots do not know it either.
    for ca_file in [other_ca_file, ""] {
        let (code, stderr) = admin_sync(&env, &[("SLUICE__REDIS__TLS_CA_FILE", ca_file)]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot connect to Redis") && stderr.contains("UnknownIssuer"),
            "{stderr}"
        );
    }
    // The api is not ready and answers 503: it never admits over an unverified connection.
    let (_api, base) =
        spawn_api_process(&env, None, &[("SLUICE__REDIS__TLS_CA_FILE", other_ca_file)]);
    assert_eq!(TestApi::at(&base).get("/readyz").await.status, 503);

    // Plain text to a TLS-only port.
    let plain = format!("redis://127.0.0.1:{port}");
    let (code, stderr) = admin_sync(
        &env,
        &[
            ("SLUICE__REDIS__URL", plain.as_str()),
            ("SLUICE__REDIS__TLS_CA_FILE", ""),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");

    // An expired certificate, and one issued for another host.
    let expired = RedisServer::start_tls(RedisTls::new(
        &ca,
        &ca.expired_server(&["localhost", "127.0.0.1"]),
        false,
    ));
    let (code, stderr) = admin_sync(&env, &[("SLUICE__REDIS__URL", expired.url().as_str())]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("certificate expired"), "{stderr}");
    let elsewhere = ca.server(&["cache.example.com"]);
    let misnamed = RedisServer::start_tls(RedisTls::new(&ca, &elsewhere, false));
    let (code, stderr) = admin_sync(&env, &[("SLUICE__REDIS__URL", misnamed.url().as_str())]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not valid for name"), "{stderr}");

    // Settings that cannot be right stop every binary at start, naming the variable.
    let tls_url = env.env_vars()["SLUICE__REDIS__URL"].clone();
    let insecure = format!("{tls_url}/#insecure");
    // Any readable file: a key without its certificate is refused whatever it holds.
    let key_file = other_ca_file;
    for (vars, expected) in [
        (
            vec![("SLUICE__REDIS__URL", plain.as_str())],
            "is not rediss://",
        ),
        (vec![("SLUICE__REDIS__URL", insecure.as_str())], "#insecure"),
        (
            vec![("SLUICE__REDIS__TLS_KEY_FILE", key_file)],
            "go together",
        ),
        (
            vec![("SLUICE__REDIS__TLS_CA_FILE", "/nonexistent/ca.pem")],
            "SLUICE__REDIS__TLS_CA_FILE",
        ),
    ] {
        let (code, stderr) = admin_sync(&env, &vars);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains(&tls_url), "never echo the URL: {stderr}");
    }
}

#[actix_web::test]
async fn a_redis_cluster_over_tls_ingests_and_drains() {
    let ca = TestCa::new("Sluice test CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    // Clients, the cluster bus and replication all over TLS, client certificates required.
    let cluster = RedisCluster::start_tls(RedisTls::new(&ca, &server, true));
    let env = TestEnv::start_on_cluster(&cluster, &[]).await;
    assert!(env.env_vars()["SLUICE__REDIS__URL"].starts_with("rediss://"));
    let mut keys = Vec::new();
    for _ in 0..6 {
        let (tenant, key) = env.tenant().await;
        env.signal(&tenant, "page_view", "event", None).await;
        keys.push(key);
    }
    let api = env.spawn_api().await;
    for key in &keys {
        admit_two(&api, key).await;
    }
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    assert_eq!(env.wait_for_events(12, 60).await, 12);
}
