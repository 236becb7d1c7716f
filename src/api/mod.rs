//! The HTTP replica: routes, extractors and the mapping of every failure to the contract's JSON.
//!
//! A replica holds nothing another needs: its only state is a Redis pool, the compiled script,
//! and a few-seconds cache of API-key lookups.

pub mod admin;
mod auth;
mod body;
pub(crate) mod error;
mod events;
mod idempotency;
pub mod openapi;
mod rate_headers;
mod reads;
mod schemas;
mod signals;

pub use auth::Principal;
pub use error::ApiError;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpServer, web};
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";

/// A client's request id is echoed into logs and headers only when it is short, printable
/// ASCII: anything else could forge log lines or bloat them.
fn is_sane_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

use crate::config::{ApiSettings, Settings};
use crate::ingest::Admission;
use crate::ingest::windows::Windows;
use crate::keyspace::Keyspace;
use crate::metrics::ApiMetrics;
use crate::ops;
use crate::pg::reads::Reads;
use crate::redis_memory::{Brake, REFRESH_EVERY};
use crate::redis_pool::Redis;

/// What every request handler shares.
pub struct AppState {
    pub redis: Redis,
    pub admission: Admission,
    pub windows: Windows,
    pub keys: auth::KeyCache,
    pub settings: ApiSettings,
    pub metrics: ApiMetrics,
    /// Refuses ingest while Redis evicts or the backlog is (nearly) full.
    pub memory: Brake,
    /// The read API's own PostgreSQL pool (connections open on first read).
    pub reads: Reads,
}

impl AppState {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let metrics = ApiMetrics::new();
        Ok(AppState {
            memory: Brake::new(
                Keyspace::new(settings.redis.partitions),
                settings.api.max_memory_fraction,
                settings.redis.allow_eviction,
                metrics.memory.clone(),
            ),
            reads: Reads::new(&settings.postgres).map_err(|e| e.to_string())?,
            redis: Redis::for_requests(&settings.redis)?,
            admission: Admission::new(
                Keyspace::new(settings.redis.partitions),
                settings.limits,
                settings.redis.min_replicas_ack,
            ),
            windows: Windows::new(Keyspace::new(settings.redis.partitions), settings.limits),
            keys: auth::KeyCache::new(
                settings.api.key_cache_ttl,
                Keyspace::new(settings.redis.partitions),
            ),
            settings: settings.api.clone(),
            metrics,
        })
    }
}

/// A bound, not yet awaited, api server.
pub struct ApiServer {
    pub server: Server,
    pub addr: SocketAddr,
    /// The admin API's server, when `SLUICE__ADMIN__BIND` is set.
    pub admin: Option<Box<ApiServer>>,
}

/// Binds the api on `bind` (port 0 picks a free port), and the admin API on
/// `settings.admin.bind` if set, and returns the running servers.
pub fn serve(settings: &Settings, bind: SocketAddr) -> Result<ApiServer, String> {
    let state = web::Data::new(AppState::new(settings)?);
    watch_memory(&state);
    let admin = match settings.admin.bind {
        Some(admin_bind) => Some(Box::new(serve_admin(settings, &state, admin_bind)?)),
        None => None,
    };
    let workers = settings.api.workers;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(observe))
            .configure(routes)
    });
    if workers > 0 {
        server = server.workers(workers);
    }
    // SIGTERM/SIGINT: stop accepting, let in-flight requests finish within the grace period.
    // Slow or idle clients are cut off so they cannot hold connections forever.
    // Signals are the binary's to handle (crate::shutdown); it stops the server by its handle.
    server = server
        .disable_signals()
        .shutdown_timeout(settings.api.shutdown_grace.as_secs())
        .client_request_timeout(settings.api.client_timeout)
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .keep_alive(settings.api.keep_alive)
        .max_connections(settings.api.max_connections)
        // Answers go out at once, not after the client's acknowledgement of an earlier segment.
        .tcp_nodelay(true);
    let server = server
        .bind(bind)
        .map_err(|e| format!("SLUICE__API__BIND: cannot listen on {bind}: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or("no listening address")?;
    Ok(ApiServer {
        server: server.run(),
        addr,
        admin,
    })
}

/// Reads Redis memory every [`REFRESH_EVERY`] for the brake and the gauges, for as long as the
/// server holds its state.
fn watch_memory(state: &web::Data<AppState>) {
    let state = Arc::downgrade(&state.clone().into_inner());
    actix_web::rt::spawn(async move {
        while let Some(state) = state.upgrade() {
            if let Err(e) = state.memory.refresh(&state.redis).await {
                tracing::debug!(error = %e, "reading Redis memory failed");
            }
            drop(state);
            actix_web::rt::time::sleep(REFRESH_EVERY).await;
        }
    });
}

/// The admin listener: its own server (two threads: it serves operators, not traffic), sharing
/// the api's Redis connections and metrics.
fn serve_admin(
    settings: &Settings,
    state: &web::Data<AppState>,
    bind: SocketAddr,
) -> Result<ApiServer, String> {
    let pg = crate::pg::pool(&settings.postgres).map_err(|e| e.to_string())?;
    let admin_state = web::Data::new(admin::AdminState::new(
        pg,
        state.redis.clone(),
        Keyspace::new(settings.redis.partitions),
        settings.limits,
        settings.api.body_timeout,
    ));
    let state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(admin_state.clone())
            .app_data(query_config())
            .app_data(path_config())
            .wrap(from_fn(observe))
            .configure(admin_routes)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(settings.api.shutdown_grace.as_secs())
    .client_request_timeout(settings.api.client_timeout)
    .keep_alive(settings.api.keep_alive);
    let server = server
        .bind(bind)
        .map_err(|e| format!("SLUICE__ADMIN__BIND: cannot listen on {bind}: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or("no listening address")?;
    Ok(ApiServer {
        server: server.run(),
        addr,
        admin: None,
    })
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::BadRequest(format!("Invalid query string: {err}")).into()
    })
}

/// A path segment that cannot be what the route names (an id of another shape, a slug that
/// breaks the slug rule): 400, with the rule's own message.
fn path_config() -> web::PathConfig {
    use actix_web::error::PathError;
    web::PathConfig::default().error_handler(|err, _req| {
        let message = match err {
            PathError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::BadRequest(message).into()
    })
}

/// The admin API's routes.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    use ops::get;
    use web::{delete, patch, post, put};
    let signal = "/tenants/{tenant_id}/signals/{slug}";
    cfg.service(ops::resource("/openapi.json", "GET").route(get().to(openapi::admin_document)))
        .service(
            web::scope("/admin/v1")
                .wrap(from_fn(admin::authorize))
                .service(
                    ops::resource("/tenants", "GET, POST")
                        .route(post().to(admin::create_tenant))
                        .route(get().to(admin::list_tenants)),
                )
                .service(
                    ops::resource("/tenants/{tenant_id}", "GET").route(get().to(admin::get_tenant)),
                )
                .service(
                    ops::resource("/tenants/{tenant_id}/keys", "GET, POST")
                        .route(post().to(admin::create_key))
                        .route(get().to(admin::list_keys)),
                )
                .service(
                    ops::resource("/keys/{key_id}", "DELETE").route(delete().to(admin::revoke_key)),
                )
                .service(
                    ops::resource("/tenants/{tenant_id}/signals", "GET, POST")
                        .route(post().to(admin::create_signal))
                        .route(get().to(admin::list_signals)),
                )
                .service(
                    ops::resource(signal, "GET, PATCH")
                        .route(get().to(admin::get_signal))
                        .route(patch().to(admin::patch_signal)),
                )
                .service(
                    ops::resource(&format!("{signal}/limit"), "PUT")
                        .route(put().to(admin::put_limit)),
                )
                .service(
                    ops::resource(&format!("{signal}/schemas"), "GET, POST")
                        .route(post().to(admin::add_schema))
                        .route(get().to(admin::list_schemas)),
                )
                .service(
                    ops::resource(&format!("{signal}/schemas/{{version}}"), "GET")
                        .route(get().to(admin::get_schema)),
                )
                .service(
                    ops::resource("/dead-letters", "GET").route(get().to(admin::list_dead_letters)),
                )
                .service(
                    ops::resource("/dead-letters/replay", "POST")
                        .route(post().to(admin::replay_dead_letters)),
                )
                .service(ops::resource("/sync", "POST").route(post().to(admin::sync)))
                .default_service(web::to(ops::not_found)),
        )
        .default_service(web::to(ops::not_found));
}

/// Every route, with JSON answers for unknown paths and wrong methods.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use ops::get;
    use web::post;
    cfg.service(ops::resource("/v1/events/batch", "POST").route(post().to(events::batch)))
        .service(
            ops::resource("/v1/events", "GET, POST")
                .route(post().to(events::single))
                .route(get().to(reads::events)),
        )
        .app_data(path_config())
        .app_data(query_config())
        .service(ops::resource("/v1/events/{id}", "GET").route(get().to(reads::event)))
        .service(
            ops::resource("/v1/identities/{type}/{id}", "GET")
                .route(get().to(reads::identity_states)),
        )
        .service(ops::resource("/v1/signals", "GET").route(get().to(signals::list)))
        .service(ops::resource("/v1/signals/{slug}", "GET").route(get().to(signals::one)))
        .service(ops::resource("/v1/signals/{slug}/rollups", "GET").route(get().to(reads::rollups)))
        .service(ops::resource("/openapi.json", "GET").route(get().to(openapi::public_document)))
        .configure(ops::routes::<AppState>)
        .default_service(web::to(ops::not_found));
}

/// The api is ready only while Redis answers (without it, it can neither authenticate nor
/// admit) and keeps what it is given (`maxmemory-policy noeviction`).
impl ops::Probe for AppState {
    async fn failing(&self) -> Vec<ops::Failing> {
        let error = match self.redis.ping().await {
            Ok(()) => match self.memory.refresh(&self.redis).await {
                Ok(None) => return Vec::new(),
                Ok(Some(refusal)) => refusal,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        vec![ops::Failing {
            dependency: "redis",
            error,
        }]
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Tags every request with an id (the client's `X-Request-Id` when it is sane, else a new
/// one, returned either way), then counts, times and logs it in one line.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            // A UUIDv7 from the thread's generator (`now_v7` would make a system call).
            let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
            uuid::Builder::from_unix_timestamp_millis(millis, &rand::random())
                .into_uuid()
                .to_string()
        });
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), value);
    }
    let _entered = span.enter();
    if let Some(state) = state {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let status = response.status();
        state
            .metrics
            .http_requests
            .with_label_values(&[route.as_str(), status.as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let tenant = response
            .request()
            .extensions()
            .get::<Principal>()
            .map(|p| Arc::clone(&p.tenant_id));
        tracing::info!(
            method = %response.request().method(),
            route = %route,
            status = status.as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            tenant = tenant.as_deref().unwrap_or("-"),
            "request"
        );
    }
    Ok(response)
}
