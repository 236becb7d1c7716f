//! Clients generated from the OpenAPI documents, as most customers will get theirs:
//! openapi-python-client, openapi-typescript (with openapi-fetch) and openapi-to-rust generate
//! from both listeners' `/openapi.json` without a warning; the generated Python and Rust clients
//! send a batch whose events carry nested `data`, read `GET /v1/signals`, and create a tenant,
//! key, signal and schema on a real api; a TypeScript file sending such a batch type-checks
//! under `tsc --strict` (tests/generators/). The tools come from deploy/dev/install-tools.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{TestApi, TestEnv, servers::free_port, spawn_api_process};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of the project's tools (`.sluice/tools/...`), which must be installed.
fn tool(relative: &str) -> PathBuf {
    let path = root().join(".sluice/tools").join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run deploy/dev/install-tools.sh (the test command does)",
        path.display()
    );
    path
}

fn run(what: &str, command: &mut Command) -> String {
    let out: Output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} exited {:?}:\n{text}",
        out.status.code()
    );
    text
}

#[actix_web::test]
async fn generated_python_typescript_and_rust_clients_send_events_with_nested_data() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let token = env.admin(&["admin-token", "create", "--name", "generated"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let (_api, base) = spawn_api_process(&env, None, &[("SLUICE__ADMIN__BIND", &admin_addr)]);
    crate::support::servers::wait_until("the admin listener", || {
        std::net::TcpStream::connect(&admin_addr).is_ok()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut documents = Vec::new();
    for (addr, name) in [(&base, "public"), (&admin_addr, "admin")] {
        let reply = TestApi::at(addr).get("/openapi.json").await;
        assert_eq!(reply.status, 200);
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &reply.text).unwrap();
        documents.push((name, path));
    }

    // Python: generated without a warning (no post-hooks: formatting the code is not ours).
    let config = dir.path().join("openapi-python-client.yml");
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    for (name, document) in &documents {
        let out = run(
            &format!("openapi-python-client ({name})"),
            Command::new(tool("venv/bin/openapi-python-client"))
                .arg("generate")
                .arg("--path")
                .arg(document)
                .arg("--output-path")
                .arg(dir.path().join(format!("sluice_{name}")))
                .args(["--meta", "none", "--config"])
                .arg(&config),
        );
        let noise: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("Generating "))
            .collect();
        assert!(
            noise.is_empty(),
            "openapi-python-client ({name}) warned:\n{out}"
        );
    }
    let used = run(
        "the generated Python clients",
        Command::new(tool("venv/bin/python"))
            .arg(root().join("tests/generators/use_python_client.py"))
            .args([
                format!("http://{base}"),
                key.clone(),
                format!("http://{admin_addr}"),
                token.clone(),
            ])
            .env("PYTHONPATH", dir.path()),
    );
    let seen: Value = serde_json::from_str(used.lines().last().unwrap()).unwrap();
    assert_eq!(seen["accepted"].as_array().unwrap().len(), 2, "{seen}");
    assert!(
        seen["signals"]
            .as_array()
            .unwrap()
            .contains(&"page_view".into())
    );
    assert_eq!(seen["schema_version"], 1);
    assert_eq!(seen["key_created"], true);
    let pg = env.pg_client().await;
    let _worker = env.spawn_worker(&[]);
    assert_eq!(
        env.wait_for_events(2, crate::support::PATIENCE.as_secs())
            .await,
        2
    );
    let stored: Value = pg
        .query_one(
            "SELECT data FROM events WHERE reference = 'generated-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["utm"]["tags"][1], "b", "nested data arrives as sent");

    // TypeScript: types from openapi-typescript, a client from openapi-fetch, tsc --strict.
    // The check lives beside the npm tools, so that `openapi-fetch` resolves.
    let node = root().join(".sluice/tools/node");
    let ts = tempfile::tempdir_in(&node).unwrap();
    for file in ["client.ts", "tsconfig.json"] {
        std::fs::copy(
            root().join("tests/generators").join(file),
            ts.path().join(file),
        )
        .unwrap();
    }
    for (name, document) in &documents {
        let out = run(
            &format!("openapi-typescript ({name})"),
            Command::new(tool("node/node_modules/.bin/openapi-typescript"))
                .arg(document)
                .arg("-o")
                .arg(ts.path().join(format!("{name}.d.ts"))),
        );
        assert!(
            !out.to_lowercase().contains("warn") && !out.contains('⚠'),
            "openapi-typescript ({name}) warned:\n{out}"
        );
    }
    run(
        "tsc --strict on tests/generators/client.ts",
        Command::new(tool("node/node_modules/.bin/tsc"))
            .arg("-p")
            .arg(ts.path().join("tsconfig.json")),
    );

    // Rust: openapi-to-rust's typed clients, compiled into tests/generators/rust and run.
    let rust = dir.path().join("rust-client");
    std::fs::create_dir_all(rust.join("src")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        std::fs::copy(
            root().join("tests/generators/rust").join(file),
            rust.join(file),
        )
        .unwrap();
    }
    for (name, document) in &documents {
        let out = run(
            &format!("openapi-to-rust ({name})"),
            Command::new(tool("cargo/bin/openapi-to-rust"))
                .arg("generate")
                .arg(document)
                .arg("--output-dir")
                .arg(rust.join("src").join(name))
                .args(["--module-name", name]),
        );
        let noise: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with("Generated ") && !l.starts_with("Dependency fragment: "))
            .collect();
        assert!(noise.is_empty(), "openapi-to-rust ({name}) warned:\n{out}");
    }
    let used = run(
        "the generated Rust clients",
        Command::new("cargo")
            .args(["run", "--quiet", "--locked", "--manifest-path"])
            .arg(rust.join("Cargo.toml"))
            .env(
                "CARGO_TARGET_DIR",
                root().join("target/generated-rust-client"),
            )
            .env("SLUICE_URL", format!("http://{base}"))
            .env("SLUICE_KEY", &key)
            .env("SLUICE_ADMIN_URL", format!("http://{admin_addr}"))
            .env("SLUICE_ADMIN_TOKEN", &token),
    );
    let seen: Value = serde_json::from_str(used.lines().last().unwrap()).unwrap();
    assert_eq!(seen["batch"]["data"].as_array().unwrap().len(), 1, "{seen}");
    let slugs: Vec<&Value> = seen["signals"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["slug"])
        .collect();
    assert!(slugs.contains(&&Value::from("page_view")), "{seen}");
    assert_eq!(seen["tenant"]["data"]["name"], "Generated in Rust");
    assert!(
        seen["key"]["data"]["key"]
            .as_str()
            .unwrap()
            .starts_with("sk_")
    );
    assert_eq!(seen["signal"]["data"]["type"], "metric");
    assert_eq!(seen["schema"]["data"]["version"], 1);
    assert_eq!(
        env.wait_for_events(3, crate::support::PATIENCE.as_secs())
            .await,
        3
    );
    let stored: Value = pg
        .query_one("SELECT data FROM events WHERE reference = 'rust-1'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored["visit"]["tags"][1]["deep"],
        serde_json::json!([1, 2.5, null, true]),
        "nested data arrives as sent"
    );
}
