//! The Redis registry copy under concurrent change: operators change signals and keys from
//! several processes while two reconcilers rebuild the copy back to back, and the api is sampled
//! after every change. A change must show within its bound and never flip back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::domain::ApiKey;
use sluice::keyspace::{API_KEYS, Keyspace};
use sluice::redis_pool::Redis;
use sluice::registry::{self, Registry};

use crate::support::{TestApi, TestEnv, event, valid};

/// Registry rows that make every rebuild slow, so changes land inside rebuilds.
const PADDING: i64 = 4000;
/// Changes each operator makes.
const ROUNDS: usize = 10;
const OPERATORS: usize = 3;
/// How long each change is watched for a revert; several rebuilds run meanwhile.
const WATCH: Duration = Duration::from_millis(400);

/// A registry of its own (own pools), as a separate `sluice-admin` or worker process has.
fn own_registry(env: &TestEnv) -> Registry {
    let settings = env.settings();
    Registry::new(
        sluice::pg::pool(&settings.postgres).unwrap(),
        Redis::new(&settings.redis).unwrap(),
        Keyspace::new(settings.redis.partitions),
    )
}

/// The signal as the copy holds it: None when absent, else whether it is active.
fn copied_signal(conn: &mut redis::Connection, hash: &str, slug: &str) -> Option<bool> {
    let packed: Option<String> = redis::cmd("HGET").arg(hash).arg(slug).query(conn).unwrap();
    packed.map(|p| p.split('|').nth(2) == Some("1"))
}

/// Watches one change: `want` must hold from the first sample on, and at every sample after.
/// Returns a description of the first sample that broke it.
async fn watch_change(mut sample: impl AsyncFnMut() -> bool, what: &str) -> Option<String> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < WATCH {
        if !sample().await {
            return Some(format!(
                "{what}: reverted at sample {n}, {:?} after the change returned",
                start.elapsed()
            ));
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    None
}

async fn operator(env: &TestEnv, api: &TestApi, tenant: &str, id: usize, key: &str) -> Vec<String> {
    let registry = own_registry(env);
    let keyspace = Keyspace::new(env.settings().redis.partitions);
    let hash = keyspace.registry(tenant);
    let mut conn = env.redis.conn();
    let mut broken = Vec::new();
    for round in 0..ROUNDS {
        let slug = format!("op{id}-{round}");
        registry
            .create_signal(
                &valid(tenant),
                &valid(&slug),
                "metric".parse().unwrap(),
                None,
                None,
            )
            .await
            .unwrap();
        let seen = watch_change(
            async || copied_signal(&mut conn, &hash, &slug) == Some(true),
            &format!("created signal {slug}"),
        )
        .await;
        broken.extend(seen);

        registry
            .set_active(&valid(tenant), &valid(&slug), false)
            .await
            .unwrap();
        let seen = watch_change(
            async || copied_signal(&mut conn, &hash, &slug) == Some(false),
            &format!("deactivated signal {slug}"),
        )
        .await;
        broken.extend(seen);

        // A key in use (cached as valid by the api), then revoked.
        let (key_id, secret) = registry.create_key(&valid(tenant), None).await.unwrap();
        let probe = json!([event("no-such-signal", "1")]);
        let status = api.batch(secret.expose(), probe.clone()).await.status;
        if status != 404 {
            broken.push(format!("created key {key_id}: answered {status}, not 404"));
        }
        let key_hash = ApiKey::hash_presented_key(secret.expose()).unwrap();
        registry.revoke_key(&key_id).await.unwrap();
        let seen = watch_change(
            async || {
                let stored: Option<String> = redis::cmd("HGET")
                    .arg(API_KEYS)
                    .arg(&key_hash)
                    .query(&mut conn)
                    .unwrap();
                stored.is_none()
            },
            &format!("revoked key {key_id}"),
        )
        .await;
        broken.extend(seen);
        // Through the api: refused within the contract's 5 s, and never accepted again.
        let revoked_at = Instant::now();
        let mut refused = false;
        while revoked_at.elapsed() < Duration::from_secs(6) {
            let status = api.batch(secret.expose(), probe.clone()).await.status;
            if status == 401 {
                refused = true;
            } else if refused {
                broken.push(format!("revoked key {key_id}: the api accepted it again"));
                break;
            }
            if refused && revoked_at.elapsed() > Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !refused {
            broken.push(format!("revoked key {key_id}: still accepted after 6 s"));
        }
        // The operator's own key is untouched by all of this.
        let status = api.batch(key, probe).await.status;
        if status != 404 {
            broken.push(format!(
                "the tenant's first key: answered {status}, not 404"
            ));
        }
    }
    broken
}

#[actix_web::test]
async fn no_rebuild_reverts_a_change_made_while_it_runs() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    let pg = env.pg_client().await;
    pg.batch_execute(&format!(
        "INSERT INTO signals (id, tenant_id, slug, name, type)
           SELECT 'sig_pad' || lpad(i::text, 8, '0'), '{tenant}', 'pad-' || i, 'pad', 'event'
           FROM generate_series(1, {PADDING}) i;
         INSERT INTO api_keys (id, tenant_id, key_hash)
           SELECT 'key_pad' || lpad(i::text, 8, '0'), '{tenant}', md5(i::text) || md5(i::text)
           FROM generate_series(1, {PADDING}) i;"
    ))
    .await
    .unwrap();
    env.registry.sync().await.unwrap();
    let api = env.spawn_api().await;

    // Two workers reconciling back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilds = Arc::new(AtomicUsize::new(0));
    let reconcilers: Vec<_> = (0..2)
        .map(|_| {
            let registry = own_registry(&env);
            let (stop, rebuilds) = (stop.clone(), rebuilds.clone());
            actix_web::rt::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    registry.sync().await.unwrap();
                    rebuilds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let operators = (0..OPERATORS).map(|id| operator(&env, &api, &tenant, id, &key));
    let broken: Vec<String> = futures_util::future::join_all(operators)
        .await
        .into_iter()
        .flatten()
        .collect();
    stop.store(true, Ordering::Relaxed);
    for r in reconcilers {
        r.await.unwrap();
    }
    let rebuilds = rebuilds.load(Ordering::Relaxed);
    assert!(
        rebuilds >= 20,
        "only {rebuilds} rebuilds overlapped the changes"
    );
    assert!(
        broken.is_empty(),
        "{} of {} changes flipped back during {rebuilds} rebuilds:\n{}",
        broken.len(),
        OPERATORS * ROUNDS * 3,
        broken.join("\n")
    );

    // After it all, one more rebuild has nothing left to repair: write-through was complete.
    let counts = env.registry.sync().await.unwrap();
    assert_eq!(counts.signals, PADDING as usize + OPERATORS * ROUNDS);
    assert_eq!(
        counts.keys,
        PADDING as usize + 1,
        "every operator key was revoked"
    );
    assert_eq!(counts.repaired, registry::Repaired::default());
}
