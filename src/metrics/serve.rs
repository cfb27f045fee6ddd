//! The metrics' HTTP server: `GET /metrics` only, with the protections of
//! the local page's server (`net::http_server` serves each
//! connection for both): a cap on connections, a deadline for each request
//! head and idle pause, a lifetime per connection, and the peer checked
//! against `metrics_allow_from` (loopback only without it) at accept.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Current;
use crate::config::may_scrape;
use crate::net::http_server::{Limits, serve_connection};

/// Connections served at once; more are closed at accept. A Prometheus
/// server keeps one; a few scrapers and a person with curl fit.
const MAX_CONNECTIONS: usize = 8;
/// For a request head, and an idle kept-alive connection between scrapes
/// (Prometheus scrapes every 15 to 60 seconds; it reconnects if closed).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is kept, however busy; the scraper reconnects.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Bytes hyper buffers for one request head (its smallest allowed buffer).
const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// After a failed accept (EMFILE and the like), a pause instead of a spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// OpenMetrics text, what `prometheus-client` encodes (Prometheus reads it).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

pub(super) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    current: Arc<RwLock<Current>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if !may_scrape(&current.read().allow_from, peer.ip()) {
            tracing::warn!(%peer, "metrics: connection from outside metrics_allow_from; refusing");
            let _ = stream.try_write(FORBIDDEN);
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = MAX_CONNECTIONS, "metrics: all connections in use; refusing");
            let _ = stream.try_write(BUSY);
            continue;
        };
        let registry = registry.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            connection(stream, registry, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(stream: TcpStream, registry: Arc<Registry>, stop: watch::Receiver<bool>) {
    let limits = Limits {
        request_timeout: REQUEST_TIMEOUT,
        max_head_bytes: MAX_REQUEST_HEAD_BYTES,
        lifetime: MAX_CONNECTION_LIFETIME,
    };
    let answer = move |request: Request<Incoming>| {
        let response = answer(&registry, &request);
        async move { response }
    };
    serve_connection(stream, answer, limits, stop, "metrics").await;
}

/// `GET /metrics` (a `HEAD` too); anything else is 404 or 405. The body of
/// a request is never read.
fn answer(registry: &Registry, request: &Request<Incoming>) -> Response<Body> {
    let status = |code: StatusCode| {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = code;
        response
    };
    if request.uri().path() != "/metrics" {
        return status(StatusCode::NOT_FOUND);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "metrics: cannot encode");
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}
