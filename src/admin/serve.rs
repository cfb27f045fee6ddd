//! The page's HTTP server: an accept loop with a connection cap, and
//! HTTP/1.1 (hyper) with a deadline for every request head, body and idle
//! pause. Other local users can reach a loopback port too: without these a
//! few hundred half-sent requests kept the page's sockets open for good and
//! took the whole process's file descriptors, the mail listeners' included.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service as _;

use super::MAX_BODY_BYTES;
use crate::net::http_server::{Admit, Limits, accept_loop, serve_connection};

/// Connections the page serves at once; more are refused at accept. A
/// browser opens at most six per host, a person has one or two tabs, and a
/// terminal server has a few dozen users: 64 is plenty, and it keeps the
/// page's share of file descriptors small beside the mail listeners'.
pub(crate) const MAX_PAGE_CONNECTIONS: usize = 64;
/// The longest a connection is kept, however busy: then it is closed once
/// its request in progress is answered. Longer than any sign-in exchange
/// (bounded by `connect_timeout_secs`), so it only ends a connection that
/// someone keeps alive on purpose.
pub(crate) const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Bytes hyper buffers for one request head (its smallest allowed buffer
/// is 8 KiB). A browser's request head for the page is well under 4 KiB.
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
/// How often the log says that the cap refused connections.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// What a refused connection is told (best effort: it is not waited for).
const BUSY_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
    Content-Type: text/plain\r\nContent-Length: 24\r\n\r\nToo many connections now";

/// The server's limits that come from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// For a request head, its body, and an idle kept-alive connection.
    pub request: Duration,
}

/// Serves `app` on `listener` until `stop` turns true; then connections
/// finish the request in hand and close.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
) {
    let mut refused = 0u64;
    let mut refusals_logged: Option<Instant> = None;
    let busy = |stream: TcpStream, peer: std::net::SocketAddr| {
        refused += 1;
        if refusals_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(%peer, refused, max = MAX_PAGE_CONNECTIONS,
                "the sign-in page has all its connections open; refusing more \
                 (a browser needs a few: something on this machine holds many)");
            refusals_logged = Some(Instant::now());
        }
        refuse(stream);
    };
    let connection = |stream| connection(stream, app.clone(), timeouts, stop.clone());
    let admit = |stream, _peer| Admit::Serve(stream);
    let what = "the sign-in page";
    accept_loop(
        listener,
        MAX_PAGE_CONNECTIONS,
        stop.clone(),
        what,
        admit,
        busy,
        connection,
    )
    .await;
}

/// Tells a connection over the cap that the page is busy, without waiting
/// for it, and closes it.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(BUSY_REPLY);
}

/// One connection: requests until the client closes, stays silent past the
/// timeout, or the connection reaches its lifetime or the page stops.
async fn connection(
    stream: TcpStream,
    app: Router,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
) {
    let limits = Limits {
        request_timeout: timeouts.request,
        max_head_bytes: MAX_REQUEST_HEAD_BYTES,
        lifetime: MAX_CONNECTION_LIFETIME,
    };
    let answer = move |request: Request<Incoming>| answer(app.clone(), request, timeouts);
    serve_connection(stream, answer, limits, stop, "sign-in page").await;
}

/// Reads the (small) body within the timeout, then lets the routes answer.
async fn answer(mut app: Router, request: Request<Incoming>, timeouts: Timeouts) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout(timeouts.request, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
        }
        Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "Request body unreadable"),
        Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "Request body not sent in time"),
    };
    match app.call(Request::from_parts(parts, Body::from(body))).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// A short answer that also closes the connection.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}
