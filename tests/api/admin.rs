//! `sluice-admin` as operators run it: the real binary, one JSON object on stdout, clear
//! failures on stderr with a non-zero exit. Also: binaries refuse a bad configuration at start.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::{TestEnv, event, valid};

struct Admin<'a> {
    env: &'a TestEnv,
}

impl Admin<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sluice-admin"))
            .args(args)
            .envs(self.env.env_vars())
            .env_remove("SLUICE_CONFIG")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its JSON.
    fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Runs a command that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "nothing on stdout on failure");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.trim().is_empty());
        stderr
    }
}

#[actix_web::test]
async fn every_command_prints_its_json_and_the_api_sees_the_result() {
    let env = TestEnv::start().await;
    let admin = Admin { env: &env };

    let migrated = admin.ok(&["migrate"]);
    assert_eq!(
        migrated["applied"],
        json!([]),
        "already migrated by the test env"
    );

    let tenant = admin.ok(&["tenant", "create", "--name", "Acme"]);
    assert_eq!(tenant["name"], "Acme");
    let tenant_id = tenant["id"].as_str().unwrap();
    // Where the tenant's events queue.
    let shown = admin.ok(&["tenant", "show", "--id", tenant_id]);
    let partition = sluice::keyspace::Keyspace::new(16).partition_of(tenant_id);
    assert_eq!(
        shown,
        json!({"id": tenant_id, "name": "Acme", "partition": partition,
               "stream": format!("sluice:{{p{partition:02}}}:events")})
    );
    assert!(
        admin
            .fails(&["tenant", "show", "--id", "ten_AAAAAAAAAAAAAAAA"])
            .contains("no tenant")
    );

    let key = admin.ok(&["key", "create", "--tenant", tenant_id, "--name", "ci"]);
    let key_secret = key["key"].as_str().unwrap();
    assert!(key_secret.starts_with("sk_"));
    let stored: i64 = {
        let client = env.pg_client().await;
        client
            .query_one(
                "SELECT count(*) FROM api_keys WHERE key_hash LIKE '%' || $1 || '%'",
                &[&&key_secret[3..]],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(stored, 0, "the secret is never stored");

    let signal = admin.ok(&[
        "signal", "create", "--tenant", tenant_id, "--slug", "plan", "--type", "state",
    ]);
    assert_eq!(signal["slug"], "plan");
    assert_eq!(signal["type"], "state");
    assert_eq!(signal["active"], true);
    assert_eq!(signal["limit"], 30, "the type's default");
    assert!(signal["id"].as_str().unwrap().starts_with("sig_"));
    assert_eq!(signal["id"].as_str().unwrap().len(), 12);

    let custom = admin.ok(&[
        "signal", "create", "--tenant", tenant_id, "--slug", "mrr", "--type", "metric", "--name",
        "MRR", "--limit", "5",
    ]);
    assert_eq!(custom["limit"], 5);

    let dir = tempfile::tempdir().unwrap();
    let schema_file = dir.path().join("schema.json");
    std::fs::write(&schema_file, r#"{"type":"object","required":["value"]}"#).unwrap();
    let schema_path = schema_file.to_str().unwrap();
    let added = admin.ok(&[
        "schema",
        "add",
        "--tenant",
        tenant_id,
        "--slug",
        "mrr",
        "--file",
        schema_path,
    ]);
    assert_eq!(added, json!({"signal_id": custom["id"], "version": 1}));
    let added = admin.ok(&[
        "schema",
        "add",
        "--tenant",
        tenant_id,
        "--slug",
        "mrr",
        "--file",
        schema_path,
    ]);
    assert_eq!(added["version"], 2);

    let api = env.spawn_api().await;
    let reply = api
        .batch(key_secret, json!([event("plan", "1"), event("mrr", "1")]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["data"][1]["schema_version"], 2);

    let off = admin.ok(&[
        "signal",
        "deactivate",
        "--tenant",
        tenant_id,
        "--slug",
        "plan",
    ]);
    assert_eq!(off, json!({"id": signal["id"], "active": false}));
    assert_eq!(
        api.batch(key_secret, json!([event("plan", "1")]))
            .await
            .status,
        404
    );
    let on = admin.ok(&[
        "signal", "activate", "--tenant", tenant_id, "--slug", "plan",
    ]);
    assert_eq!(on["active"], true);
    assert_eq!(
        api.batch(key_secret, json!([event("plan", "1")]))
            .await
            .status,
        200
    );

    let revoked = admin.ok(&["key", "revoke", "--id", key["id"].as_str().unwrap()]);
    assert_eq!(revoked, json!({"id": key["id"], "revoked": true}));
}

#[actix_web::test]
async fn sync_rebuilds_a_flushed_registry_copy() {
    let env = TestEnv::start().await;
    let admin = Admin { env: &env };
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "plan", "state", None).await;
    let (revoked_id, revoked_key) = env
        .registry
        .create_key(&valid(&tenant), None)
        .await
        .unwrap();
    env.registry.revoke_key(&revoked_id).await.unwrap();
    let api = env.spawn_api_with(&{
        let mut s = env.settings();
        s.api.key_cache_ttl = std::time::Duration::ZERO;
        s
    });

    let _: () = redis::cmd("FLUSHALL").query(&mut env.redis.conn()).unwrap();
    assert_eq!(
        api.batch(&key, json!([event("plan", "1")])).await.status,
        401
    );

    // The flush lost the signal and the valid key: the rebuild restores and counts both.
    let counts = admin.ok(&["sync"]);
    assert_eq!(
        counts,
        json!({"tenants": 1, "signals": 1, "keys": 1, "repaired": {"signals": 1, "keys": 1}})
    );
    assert_eq!(
        api.batch(&key, json!([event("plan", "1")])).await.status,
        200
    );
    assert_eq!(
        api.batch(revoked_key.expose(), json!([event("plan", "1")]))
            .await
            .status,
        401
    );

    // Entries the registry no longer has are removed by the next sync.
    let keyspace = sluice::keyspace::Keyspace::new(env.settings().redis.partitions);
    let _: () = redis::cmd("HSET")
        .arg(keyspace.registry(&tenant))
        .arg("ghost")
        .arg("sig_ghost123|event|1||0")
        .query(&mut env.redis.conn())
        .unwrap();
    let counts = admin.ok(&["sync"]);
    assert_eq!(counts["repaired"], json!({"signals": 1, "keys": 0}));
    assert_eq!(
        api.batch(&key, json!([event("ghost", "1")])).await.status,
        404
    );
    // A copy in order: nothing to repair.
    let counts = admin.ok(&["sync"]);
    assert_eq!(counts["repaired"], json!({"signals": 0, "keys": 0}));
}

#[actix_web::test]
async fn failures_say_why_on_stderr_and_exit_non_zero() {
    let env = TestEnv::start().await;
    let admin = Admin { env: &env };
    let tenant = admin.ok(&["tenant", "create", "--name", "Acme"]);
    let t = tenant["id"].as_str().unwrap();
    admin.ok(&[
        "signal", "create", "--tenant", t, "--slug", "plan", "--type", "state",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let not_json = dir.path().join("bad.json");
    std::fs::write(&not_json, "{nope").unwrap();
    let not_schema = dir.path().join("not-schema.json");
    std::fs::write(&not_schema, r#"{"type": "no-such-type"}"#).unwrap();
    let missing = dir.path().join("missing.json");

    for (args, expected) in [
        (
            vec!["key", "create", "--tenant", "ten_0000000000000000"],
            "no tenant",
        ),
        (
            vec!["key", "create", "--tenant", "garbage"],
            "is not a tenant id",
        ),
        (
            vec!["key", "revoke", "--id", "key_0000000000000000"],
            "no API key",
        ),
        (
            vec![
                "signal", "create", "--tenant", t, "--slug", "plan", "--type", "state",
            ],
            "already has a signal",
        ),
        (
            vec![
                "signal", "create", "--tenant", t, "--slug", "Bad Slug", "--type", "state",
            ],
            "invalid slug",
        ),
        (
            vec![
                "signal", "create", "--tenant", t, "--slug", "x", "--type", "gauge",
            ],
            "unknown signal type",
        ),
        (
            vec![
                "signal", "create", "--tenant", t, "--slug", "x", "--type", "event", "--limit", "0",
            ],
            "positive",
        ),
        (
            vec!["signal", "deactivate", "--tenant", t, "--slug", "nope"],
            "no signal",
        ),
        (
            vec![
                "schema",
                "add",
                "--tenant",
                t,
                "--slug",
                "plan",
                "--file",
                not_json.to_str().unwrap(),
            ],
            "is not JSON",
        ),
        (
            vec![
                "schema",
                "add",
                "--tenant",
                t,
                "--slug",
                "plan",
                "--file",
                not_schema.to_str().unwrap(),
            ],
            "not a valid JSON Schema",
        ),
        (
            vec![
                "schema",
                "add",
                "--tenant",
                t,
                "--slug",
                "plan",
                "--file",
                missing.to_str().unwrap(),
            ],
            "cannot read",
        ),
        (vec!["tenant", "create", "--name", "  "], "tenant name"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let stderr = admin.fails(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// A schema file that starts with a byte order mark (as PowerShell 5 writes UTF-8) is read past
/// it, as request bodies are; a mark anywhere else is still not JSON.
#[actix_web::test]
async fn a_schema_file_with_a_byte_order_mark_is_read() {
    let env = TestEnv::start().await;
    let admin = Admin { env: &env };
    let tenant = admin.ok(&["tenant", "create", "--name", "Bom"]);
    let t = tenant["id"].as_str().unwrap();
    admin.ok(&[
        "signal", "create", "--tenant", t, "--slug", "plan", "--type", "state",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let add = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let args = [
            "schema", "add", "--tenant", t, "--slug", "plan", "--file", &file,
        ];
        admin.run(&args)
    };
    let marked = add("marked.json", "\u{FEFF}{\"type\": \"object\"}");
    assert!(
        marked.status.success(),
        "{}",
        String::from_utf8_lossy(&marked.stderr)
    );
    let added: Value = serde_json::from_slice(&marked.stdout).unwrap();
    assert_eq!(added["version"], 1);
    let twice = add("twice.json", "\u{FEFF}\u{FEFF}{\"type\": \"object\"}");
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("is not JSON"));
}

/// `dead-letters list` pages as the admin API does: at most `--limit` (1-1000), and a
/// `next_cursor` to pass as `--cursor` while more are left — never a silently short list.
#[actix_web::test]
async fn dead_letters_are_listed_a_page_at_a_time() {
    let env = TestEnv::start().await;
    let admin = Admin { env: &env };
    let pg = env.pg_client().await;
    for n in 0..3 {
        pg.execute(
            "INSERT INTO dead_letters (stream, entry_id, raw, error, deliveries)
             VALUES ('s', $1, '{}', 'not stored after 5 deliveries', 5)",
            &[&format!("{n}-0")],
        )
        .await
        .unwrap();
    }
    let first = admin.ok(&["dead-letters", "list", "--limit", "2"]);
    assert_eq!(first["count"], 2, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a cursor while more are left");
    let rest = admin.ok(&["dead-letters", "list", "--limit", "2", "--cursor", cursor]);
    assert_eq!(rest["count"], 1, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null, "{rest}");
    let entries: Vec<&str> = [&first, &rest]
        .iter()
        .flat_map(|page| page["dead_letters"].as_array().unwrap())
        .map(|d| d["entry_id"].as_str().unwrap())
        .collect();
    assert_eq!(entries, ["2-0", "1-0", "0-0"], "newest first, each once");

    for (args, expected) in [
        (vec!["--limit", "0"], "limit must be from 1 to 1000"),
        (vec!["--limit", "1001"], "limit must be from 1 to 1000"),
        (
            vec!["--cursor", "abc"],
            "cursor is not one this list returned",
        ),
    ] {
        let stderr = admin.fails(&[&["dead-letters", "list"][..], &args].concat());
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[actix_web::test]
async fn binaries_refuse_a_bad_configuration_with_one_line_naming_the_key() {
    for (bin, var, value) in [
        (
            env!("CARGO_BIN_EXE_sluice-api"),
            "SLUICE__REDIS__PARTITIONS",
            "0",
        ),
        (
            env!("CARGO_BIN_EXE_sluice-api"),
            "SLUICE__REDIS__URL",
            "http://nope",
        ),
        (
            env!("CARGO_BIN_EXE_sluice-admin"),
            "SLUICE__POSTGRES__URL",
            "mysql://x",
        ),
        (
            env!("CARGO_BIN_EXE_sluice-admin"),
            "SLUICE__LIMITS__STATE",
            "-1",
        ),
        // A misspelt setting is not silently ignored.
        (
            env!("CARGO_BIN_EXE_sluice-worker"),
            "SLUICE__WORKER__BATCHSIZE",
            "10",
        ),
        (env!("CARGO_BIN_EXE_sluice-api"), "SLUICE__API__BINDD", "x"),
        // A rejected URL is named, but its password is never printed.
        (
            env!("CARGO_BIN_EXE_sluice-admin"),
            "SLUICE__POSTGRES__URL",
            "postgres://u:hunter2@db:notaport/sluice",
        ),
    ] {
        let args: &[&str] = if bin.ends_with("sluice-admin") {
            &["sync"]
        } else {
            &[]
        };
        let out = Command::new(bin)
            .args(args)
            .env(var, value)
            .env_remove("SLUICE_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "[limits]\nevent = \"many\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-admin"))
        .arg("sync")
        .env("SLUICE_CONFIG", &file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE__LIMITS__EVENT"));
}

#[actix_web::test]
async fn admin_says_it_needs_database_access_when_postgres_is_unreachable() {
    let env = TestEnv::start().await;
    let closed = crate::support::servers::free_port();
    for args in [
        vec!["migrate"],
        vec!["tenant", "create", "--name", "x"],
        vec!["sync"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-admin"))
            .args(&args)
            .envs(env.env_vars())
            .env(
                "SLUICE__POSTGRES__URL",
                format!("postgres://postgres@127.0.0.1:{closed}/sluice"),
            )
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("needs access to the database")
                && stderr.contains("SLUICE__POSTGRES__URL"),
            "{args:?}: {stderr}"
        );
    }
}

#[actix_web::test]
async fn no_secret_ever_reaches_redis_and_isolation_holds_both_ways() {
    let env = TestEnv::start().await;
    let (tenant_a, key_a) = env.tenant().await;
    let (tenant_b, key_b) = env.tenant().await;
    env.signal(&tenant_a, "only_a", "state", Some(5)).await;
    env.signal(&tenant_b, "only_b", "state", Some(5)).await;
    let api = env.spawn_api().await;
    assert_eq!(
        api.batch(&key_a, json!([event("only_b", "1")]))
            .await
            .status,
        404,
        "A cannot write B's signal"
    );
    assert_eq!(
        api.batch(&key_b, json!([event("only_a", "1")]))
            .await
            .status,
        404,
        "B cannot write A's signal"
    );
    let a = api.batch(&key_a, json!([event("only_a", "1")])).await;
    let b = api.batch(&key_b, json!([event("only_b", "1")])).await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(
        a.header("x-ratelimit-remaining"),
        Some("4"),
        "A's window holds only A's event"
    );
    assert_eq!(
        b.header("x-ratelimit-remaining"),
        Some("4"),
        "B's window holds only B's event"
    );

    // Dump every key and value in Redis: no API key secret anywhere, only their hashes.
    let mut conn = env.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut everything = keys.join("\n");
    for k in &keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut conn).unwrap();
        everything.push_str(&String::from_utf8_lossy(&dump));
    }
    for key in [&key_a, &key_b] {
        assert!(
            !everything.contains(&key[3..]),
            "an API key secret is stored in Redis"
        );
    }
    assert!(everything.contains(&sluice::domain::ApiKey::hash_presented_key(&key_a).unwrap()));
}
