//! The formats Rust and the Lua scripts share, checked where they meet: the scripts' prelude
//! (built from the Rust types) run by a real Redis against values the Rust types write and read,
//! and the key map in `src/keyspace.rs` against every key a working system leaves in Redis.

use std::collections::BTreeSet;

use serde_json::json;
use sluice::keyspace::{IdempotencyRecord, Keyspace, PackedSignal, WindowCount};
use sluice::stream::entry::EntrySignal;

use crate::support::{TestEnv, event, eventually};

/// Runs `body` after the prelude, as the scripts run; its reply as strings.
fn eval(conn: &mut redis::Connection, body: &str, args: &[String]) -> Vec<String> {
    let script = sluice::scripts::build(&format!("#!lua\n{body}"));
    redis::cmd("EVAL")
        .arg(script)
        .arg(0)
        .arg(args)
        .query(conn)
        .unwrap_or_else(|e| panic!("{body}: {e}"))
}

#[actix_web::test]
async fn the_scripts_read_and_write_each_format_as_its_rust_type_does() {
    let env = TestEnv::start().await;
    let mut conn = env.redis.conn();

    let packed = PackedSignal {
        id: "sig_AbCd1234".into(),
        signal_type: "metric".parse().unwrap(),
        active: false,
        limit: None,
        schema_versions: 2,
    };
    assert_eq!(
        eval(
            &mut conn,
            "return {unpack_signal(ARGV[1])}",
            &[packed.to_string()]
        ),
        ["sig_AbCd1234", "metric", "0", "", "2"]
    );

    let window = WindowCount {
        start: 1_764_000_000,
        admitted: 42,
    };
    assert_eq!(
        eval(
            &mut conn,
            "return {read_window(ARGV[1])}",
            &[window.to_string()]
        ),
        ["1764000000", "42"]
    );
    let written = eval(
        &mut conn,
        "return {window_value(ARGV[1], ARGV[2])}",
        &["1764000000".into(), "42".into()],
    );
    assert_eq!(written[0].parse(), Ok(window));

    let signals = [
        EntrySignal {
            id: "sig_a".into(),
            signal_type: "event".into(),
            latest: 0,
            admitted: 3,
        },
        EntrySignal {
            id: "sig_b".into(),
            signal_type: "state".into(),
            latest: 2,
            admitted: 0,
        },
    ];
    let field = signals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(&EntrySignal::LIST_SEP.to_string());
    let read = eval(
        &mut conn,
        "local out = {}
         for id, typ, latest, admitted in entry_signals(ARGV[1]) do
           out[#out + 1] = id; out[#out + 1] = typ; out[#out + 1] = latest; out[#out + 1] = admitted
         end
         return out",
        std::slice::from_ref(&field),
    );
    assert_eq!(
        read,
        ["sig_a", "event", "0", "3", "sig_b", "state", "2", "0"]
    );
    let written = eval(
        &mut conn,
        "return {entry_signal('sig_a', 'event', 0, 3) .. ENTRY_SIGNAL_LIST ..
                 entry_signal('sig_b', 'state', 2, 0)}",
        &[],
    );
    assert_eq!(EntrySignal::parse_list(&written[0]), Ok(signals.to_vec()));

    let record = IdempotencyRecord {
        fingerprint: "00ff".into(),
        received_us: 1_764_000_000_123_456,
        signals: field.clone(),
    };
    assert_eq!(
        eval(
            &mut conn,
            "return {read_record(ARGV[1])}",
            &[record.to_string()]
        ),
        ["00ff", "1764000000123456", field.as_str()]
    );
    let written = eval(
        &mut conn,
        "return {record_value(ARGV[1], ARGV[2], ARGV[3])}",
        &["00ff".into(), "1764000000123456".into(), field.clone()],
    );
    assert_eq!(written[0].parse(), Ok(record));
}

/// One row of the key map: the key as documented, and its Redis type.
struct Documented {
    key: String,
    kind: String,
}

/// The key map's table, read from the module's own documentation.
fn key_map() -> Vec<Documented> {
    include_str!("../../src/keyspace.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .map(|row| {
            let (key, rest) = row.split_once('`').unwrap();
            let kind = rest.split('|').nth(1).unwrap().trim();
            Documented {
                key: key.to_owned(),
                kind: kind.to_owned(),
            }
        })
        .collect()
}

/// The documented key as a Redis glob: `{pNN}` a partition's tag, `<...>` any text.
fn glob(documented: &str) -> String {
    let mut out = String::new();
    let mut rest = documented.replace("{pNN}", "{p[0-9][0-9]}");
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push('*');
        rest = rest[close + 1..].to_owned();
    }
    out + &rest
}

fn keys(conn: &mut redis::Connection, pattern: &str) -> BTreeSet<String> {
    redis::cmd("KEYS").arg(pattern).query(conn).unwrap()
}

#[actix_web::test]
async fn every_key_in_redis_is_one_the_key_map_documents_and_each_is_used() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    let keyed = api
        .request(awc::http::Method::POST, "/v1/events/batch")
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Idempotency-Key", "order:42"));
    let body = json!({"events": [event("page_view", "1")]});
    let reply = api.send(keyed, body.to_string().into_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // An entry no api would write: the worker dead-letters it.
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let stream = Keyspace::stream(keyspace.partition_of(&tenant));
    let mut conn = env.redis.conn();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("garbage")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let dead = Keyspace::dead_stream(keyspace.partition_of(&tenant));
    eventually("the bad entry dead-lettered", async || {
        (keys(&mut conn, &dead).len() == 1).then_some(())
    })
    .await;

    let documented = key_map();
    let mut covered = BTreeSet::new();
    for row in &documented {
        let found = keys(&mut conn, &glob(&row.key));
        assert!(!found.is_empty(), "no key is {}", row.key);
        for k in &found {
            let kind: String = redis::cmd("TYPE").arg(k).query(&mut conn).unwrap();
            assert_eq!(kind, row.kind, "{k} is documented as {}", row.key);
        }
        covered.extend(found);
    }
    let all = keys(&mut conn, "*");
    let undocumented: Vec<_> = all.difference(&covered).collect();
    assert!(
        undocumented.is_empty(),
        "not in the key map: {undocumented:?}"
    );

    // The values are what the map says: a window count per slug, a record per keyed request.
    let windows: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keyspace.rate_limits(&tenant))
        .query(&mut conn)
        .unwrap();
    let window: WindowCount = windows["page_view"].parse().unwrap();
    assert_eq!(window.admitted, 1);
    let record: String = redis::cmd("GET")
        .arg(keyspace.idempotency(&tenant, "order:42"))
        .query(&mut conn)
        .unwrap();
    let record: IdempotencyRecord = record.parse().unwrap();
    let signals = EntrySignal::parse_list(&record.signals).unwrap();
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].admitted, 1);
}
