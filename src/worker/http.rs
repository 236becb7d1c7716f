//! The worker's operations endpoints: `/metrics`, `/livez`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;

use super::Worker;

/// Binds the endpoints; the server runs until stopped through its handle.
pub fn serve(worker: Arc<Worker>, bind: SocketAddr) -> Result<(Server, SocketAddr), String> {
    let state = web::Data::from(worker);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/livez",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "alive"})) }),
            )
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .default_service(web::to(|| async {
                HttpResponse::NotFound().json(json!({"success": false, "error": "Not found"}))
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(bind)
    .map_err(|e| format!("SLUICE__WORKER__METRICS_BIND: cannot listen on {bind}: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or("no listening address")?;
    Ok((server.run(), addr))
}

/// Ready only while both Redis and PostgreSQL answer.
async fn readyz(worker: web::Data<Worker>) -> HttpResponse {
    let mut failing = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = worker.redis().ping().await {
        failing.push("redis");
        errors.push(format!("redis: {e}"));
    }
    let pg = async {
        let client = worker.pg().get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), pg).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            failing.push("postgres");
            errors.push(format!("postgres: {e}"));
        }
        Err(_) => {
            failing.push("postgres");
            errors.push("postgres: no answer within 2s".to_owned());
        }
    }
    if failing.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "failing": failing, "error": errors.join("; ")}))
    }
}

async fn metrics(worker: web::Data<Worker>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(worker.metrics.render())
}
