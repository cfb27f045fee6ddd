//! The metrics' HTTP server: `GET /metrics` only, with the protections of
//! the local page's server (`net::http_server` serves each
//! connection for both): a cap on connections, a deadline for each request
//! head and idle pause, a lifetime per connection, and the peer checked
//! against `metrics_allow_from` (loopback only without it) at accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Current;
use crate::config::may_scrape;
use crate::net::http_server::{Admit, Limits, accept_loop, serve_connection};

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
    stop: watch::Receiver<bool>,
) {
    let admit = |stream: TcpStream, peer: SocketAddr| {
        if may_scrape(&current.read().allow_from, peer.ip()) {
            return Admit::Serve(stream);
        }
        tracing::warn!(%peer, "metrics: connection from outside metrics_allow_from; refusing");
        let _ = stream.try_write(FORBIDDEN);
        Admit::Refused
    };
    let busy = |stream: TcpStream, peer: SocketAddr| {
        tracing::debug!(%peer, max = MAX_CONNECTIONS, "metrics: all connections in use; refusing");
        let _ = stream.try_write(BUSY);
    };
    let connection = |stream| connection(stream, registry.clone(), stop.clone());
    accept_loop(
        listener,
        MAX_CONNECTIONS,
        stop.clone(),
        "metrics",
        admit,
        busy,
        connection,
    )
    .await;
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
