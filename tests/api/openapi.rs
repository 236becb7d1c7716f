//! The OpenAPI documents against the live system, as a client developer's tools see them:
//! `openapi-spec-validator` accepts both, and schemathesis attacks every operation of both
//! listeners of a real `sluice-api` (backed by real Redis and PostgreSQL), and the worker's
//! operations listener, with every check on, and finds nothing. Settings and the one adjusted check, with its reason:
//! tests/api/schemathesis.toml. The tools come from deploy/dev/install-tools.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::{TestApi, TestEnv, servers::free_port, spawn_api_process_to};

/// The project's tools virtualenv.
fn tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".sluice/tools/venv/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run deploy/dev/install-tools.sh (the test command does)",
        path.display()
    );
    path
}

fn report(what: &str, out: &Output) -> String {
    format!(
        "{what} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs schemathesis over the document at `base`/openapi.json with `token`.
fn schemathesis(base: &str, token: &str, config: &Path, workdir: &Path) -> Output {
    Command::new(tool("st"))
        .current_dir(workdir)
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(config)
        .args(["run", &format!("http://{base}/openapi.json")])
        // Every check is on by the config file's `checks.enabled` (not `--checks all`, which
        // would override its per-operation settings).
        .args(["--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .output()
        .expect("schemathesis runs")
}

#[actix_web::test]
async fn the_documents_validate_and_schemathesis_finds_nothing_on_any_listener() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    env.signal(&tenant, "mrr", "metric", None).await;
    let dir = tempfile::tempdir().unwrap();
    env.schema(
        &tenant,
        "mrr",
        json!({"type": "object", "required": ["value"]}),
    )
    .await;
    // A key of its own for the admin run to revoke (the public run keeps `key`).
    let spare = env.admin(&["key", "create", "--tenant", &tenant, "--name", "spare"]);
    let token = env.admin(&["admin-token", "create", "--name", "fuzz"]);
    let token = token["token"].as_str().unwrap();

    let admin_addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("api.log")).unwrap();
    let (_api, base) = spawn_api_process_to(
        &env,
        None,
        &[("SLUICE__ADMIN__BIND", &admin_addr)],
        log.into(),
    );
    crate::support::servers::wait_until("the admin listener", || {
        std::net::TcpStream::connect(&admin_addr).is_ok()
    });

    // The worker's operations listener serves a document of its own too.
    let worker = env.spawn_worker(&[]);
    let worker_addr = worker.metrics_url.trim_start_matches("http://").to_owned();
    worker.wait_ready(200).await;

    // Each listener serves its own document: the public one describes no admin operation.
    let mut documents = Vec::new();
    for (addr, name) in [
        (&base, "public"),
        (&admin_addr, "admin"),
        (&worker_addr, "worker"),
    ] {
        let reply = TestApi::at(addr).get("/openapi.json").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["openapi"], "3.1.0");
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &reply.text).unwrap();
        documents.push((name, reply.body, path));
    }
    let paths = |doc: &Value| -> Vec<String> {
        doc["paths"].as_object().unwrap().keys().cloned().collect()
    };
    assert!(
        paths(&documents[0].1)
            .iter()
            .all(|p| !p.starts_with("/admin"))
    );
    assert!(paths(&documents[0].1).contains(&"/v1/signals".to_owned()));
    assert!(paths(&documents[1].1).iter().all(|p| !p.starts_with("/v1")));
    assert!(paths(&documents[1].1).contains(&"/admin/v1/dead-letters/replay".to_owned()));
    assert_eq!(
        paths(&documents[2].1),
        ["/livez", "/metrics", "/openapi.json", "/readyz"]
    );

    for (name, _, path) in &documents {
        let out = Command::new(tool("openapi-spec-validator"))
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            report(&format!("openapi-spec-validator ({name})"), &out)
        );
    }

    let seed = std::env::var("SLUICE_FUZZ_SEED").unwrap_or_else(|_| "20261126".into());
    let examples = std::env::var("SLUICE_FUZZ_EXAMPLES").unwrap_or_else(|_| "60".into());
    let config = include_str!("schemathesis.toml")
        .replace("@EXAMPLES@", &examples)
        .replace("@SEED@", &seed)
        .replace("@TENANT@", &tenant)
        .replace("@KEY_ID@", spare["id"].as_str().unwrap());
    let config_path = dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, config).unwrap();

    for (addr, credential, name) in [
        (&base, key.as_str(), "public"),
        (&admin_addr, token, "admin"),
    ] {
        let out = schemathesis(addr, credential, &config_path, dir.path());
        let log = std::fs::read_to_string(dir.path().join("api.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        assert!(
            out.status.success(),
            "{}\n--- api log (last lines, newest first)\n{}",
            report(
                &format!("schemathesis ({name} listener, seed {seed})"),
                &out
            ),
            tail.join("\n")
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("Tested:"),
            "schemathesis tested nothing:\n{stdout}"
        );
    }
}
