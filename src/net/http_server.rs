//! One HTTP/1.1 connection of a small local server (the sign-in page, the
//! metrics), served by hyper under the limits every such server needs
//! against a neighbour holding sockets open: a deadline for each request
//! head and idle pause, a cap on the head's size, and a lifetime.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The limits of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// For a request head, and an idle kept-alive connection.
    pub request_timeout: Duration,
    /// Bytes hyper buffers for one request head (8 KiB at the least).
    pub max_head_bytes: usize,
    /// The longest the connection is kept, however busy: then it closes
    /// once the request in hand is answered.
    pub lifetime: Duration,
}

/// Serves requests on `stream` with `answer` until the client closes, stays
/// silent past the timeout, or the connection reaches its lifetime or `stop`
/// turns true; `what` names the server in the debug log.
pub(crate) async fn serve_connection<F, Fut, B>(
    stream: TcpStream,
    answer: F,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) where
    F: Fn(Request<Incoming>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let answered = answer(request);
        async move { Ok::<_, Infallible>(answered.await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(limits.max_head_bytes);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(limits.lifetime);
    tokio::pin!(lifetime);
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "{what} connection ended");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = &mut lifetime, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
