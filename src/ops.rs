//! The operations endpoints every binary serves — `GET /livez`, `GET /readyz`, `GET /metrics` —
//! and the JSON answers for requests that match no route, in the contract's error shape.
//!
//! A binary describes itself through [`Probe`]: which dependencies it needs to be ready, and its
//! metrics. The api mounts [`routes`] beside its ingest routes on its public listener; the worker
//! serves them alone with [`serve`].

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::http::header::ALLOW;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, guard, web};

use crate::config::Settings;

/// A dependency that does not answer: its name (`redis`, `postgres`) and what went wrong.
pub struct Failing {
    pub dependency: &'static str,
    pub error: String,
}

/// What the ops endpoints ask of a binary.
pub trait Probe: Send + Sync + 'static {
    /// The dependencies that do not answer now; ready when none.
    fn failing(&self) -> impl Future<Output = Vec<Failing>>;
    /// The Prometheus text exposition of the binary's metrics.
    fn metrics(&self) -> String;
}

/// A resource at `path` that answers 405, naming the methods in `allow` (and `HEAD` beside
/// `GET`, which every [`get`] route answers too), to any method its routes do not take.
pub fn resource(path: &str, allow: &str) -> actix_web::Resource {
    let allow: Arc<str> = with_head(allow).into();
    web::resource(path).default_service(web::to(move |req: HttpRequest| {
        method_not_allowed(req, Arc::clone(&allow))
    }))
}

/// The methods of `allow` (`"GET, POST"`) with `HEAD` after `GET`.
fn with_head(allow: &str) -> String {
    let mut methods = Vec::new();
    for method in allow.split(", ") {
        methods.push(method);
        if method == "GET" {
            methods.push("HEAD");
        }
    }
    methods.join(", ")
}

/// A route for `GET` that also answers `HEAD`, as HTTP asks of every `GET` resource: the same
/// handler, status and headers, with the body left unsent (actix-http drops it for `HEAD`).
/// Monitors and load balancers often probe with `HEAD`.
pub fn get() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// The OpenAPI tag of the operations endpoints: no credential, no store behind them.
pub const TAG: &str = "operations";

/// Mounts `/livez`, `/readyz` and `/metrics` for probe `P`, which the app holds as
/// `web::Data<P>`. `HEAD` answers as `GET` does; other methods on these paths answer
/// 405 naming `GET`.
pub fn routes<P: Probe>(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/livez", "GET").route(get().to(livez)))
        .service(resource("/readyz", "GET").route(get().to(readyz::<P>)))
        .service(resource("/metrics", "GET").route(get().to(metrics::<P>)));
}

/// Serves only the ops endpoints and their OpenAPI document (the worker's metrics listener), on
/// one thread. The server
/// installs no signal handlers: the binary stops it through its handle on shutdown.
/// `setting` names the bind address's setting in the error.
pub fn serve<P: Probe>(
    probe: Arc<P>,
    bind: SocketAddr,
    setting: &str,
) -> Result<(Server, SocketAddr), String> {
    let state = web::Data::from(probe);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes::<P>)
            .service(resource("/openapi.json", "GET").route(get().to(operations_document)))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .bind(bind)
    .map_err(|e| format!("{setting}: cannot listen on {bind}: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or("no listening address")?;
    Ok((server.run(), addr))
}

/// `{"status": "alive"}` or `{"status": "ready"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    #[schema(example = "ready")]
    status: &'static str,
}

/// What `/readyz` answers while a dependency does not.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Unready {
    #[schema(example = "unavailable")]
    status: &'static str,
    /// The dependencies that do not answer, e.g. `redis`.
    failing: Vec<&'static str>,
    /// What went wrong with each.
    error: String,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/livez", tag = TAG,
    responses((status = 200, description = "Alive", body = Status)))]
pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(Status { status: "alive" })
}

/// Readiness: 200 while every dependency answers; 503 naming each one that does not.
#[utoipa::path(get, path = "/readyz", tag = TAG,
    responses((status = 200, description = "Ready", body = Status),
        (status = 503, description = "A dependency does not answer", body = Unready)))]
pub async fn readyz<P: Probe>(probe: web::Data<P>) -> HttpResponse {
    let failing = probe.failing().await;
    if failing.is_empty() {
        return HttpResponse::Ok().json(Status { status: "ready" });
    }
    let errors: Vec<String> = failing
        .iter()
        .map(|f| format!("{}: {}", f.dependency, f.error))
        .collect();
    HttpResponse::ServiceUnavailable().json(Unready {
        status: "unavailable",
        failing: failing.iter().map(|f| f.dependency).collect(),
        error: errors.join("; "),
    })
}

/// The Prometheus text exposition of the process's metrics.
#[utoipa::path(get, path = "/metrics", tag = TAG,
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub async fn metrics<P: Probe>(probe: web::Data<P>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(probe.metrics())
}

/// A request no route matches, answered in the contract's error shape.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("Not found: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("Method {method} not allowed; use {allow}")]
    MethodNotAllowed { method: String, allow: Arc<str> },
}

impl ResponseError for RouteError {
    fn status_code(&self) -> StatusCode {
        match self {
            RouteError::NotFound { .. } => StatusCode::NOT_FOUND,
            RouteError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let RouteError::MethodNotAllowed { allow, .. } = self {
            response.insert_header((ALLOW, allow.to_string()));
        }
        // The contract's field order, as every other error answer has it.
        response.json(crate::api::error::Body::message(self.to_string()))
    }
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, RouteError> {
    Err(RouteError::NotFound {
        method: req.method().to_string(),
        path: shorten(req.path()),
    })
}

pub async fn method_not_allowed(
    req: HttpRequest,
    allow: Arc<str>,
) -> Result<HttpResponse, RouteError> {
    Err(RouteError::MethodNotAllowed {
        method: req.method().to_string(),
        allow,
    })
}

/// The `healthcheck` subcommand of the services: asks the process listening on `bind` (on this
/// host) for `GET /readyz`, for container health checks in images that carry no HTTP client.
/// `Ok` on 200; otherwise what was wrong, in one line.
pub fn healthcheck(bind: SocketAddr) -> Result<(), String> {
    let mut addr = bind;
    // A wildcard listener is reached on the loopback address of its family.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot ask {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let status = response.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) == Some("200") {
        return Ok(());
    }
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    Err(format!(
        "GET http://{addr}/readyz answered {status:?}: {body}"
    ))
}

/// How a service binary starts: its settings, then either the `healthcheck` subcommand's answer
/// (the service listening on `bind` on this host: exit 0 when ready, 1 with the reason) or
/// logging set up for the service to run (hold the [`Logs`](crate::telemetry::Logs) until it
/// exits). `Err` is the exit code to stop with: 2 after one line naming a bad setting.
pub fn start_service(
    name: &str,
    healthcheck_only: bool,
    bind: impl FnOnce(&Settings) -> SocketAddr,
) -> Result<(Settings, crate::telemetry::Logs), std::process::ExitCode> {
    let settings = Settings::load().map_err(|e| {
        eprintln!("{name}: {e}");
        std::process::ExitCode::from(2)
    })?;
    if healthcheck_only {
        return Err(match healthcheck(bind(&settings)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: not ready: {e}");
                std::process::ExitCode::FAILURE
            }
        });
    }
    let logs = crate::telemetry::init(&settings.log);
    Ok((settings, logs))
}

/// Echoes at most 200 characters of a client-chosen path.
fn shorten(path: &str) -> String {
    path.chars().take(200).collect()
}

/// The worker's operations listener's document: its health, metrics and itself.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sluice worker",
        description = "The worker's operations listener (`SLUICE__WORKER__METRICS_BIND`): health, \
                       metrics and this document."
    ),
    paths(livez, readyz, metrics, operations_document)
)]
struct OperationsDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = TAG,
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn operations_document() -> HttpResponse {
    use utoipa::OpenApi;
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    serve_document(DOC.get_or_init(|| {
        let mut doc = OperationsDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.to_json().expect("the document serializes")
    }))
}

/// Answers an OpenAPI document built once per process (held in a static, so never copied).
pub fn serve_document(doc: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc)
}
