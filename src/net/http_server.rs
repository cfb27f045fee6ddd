//! The small local HTTP servers (the sign-in page, the metrics): their
//! accept loop (`accept_loop`: a cap on connections, a pause after a failed
//! accept, a check of each peer) and each HTTP/1.1 connection
//! (`serve_connection`), served by hyper under the limits every such server
//! needs against a neighbour holding sockets open: a deadline for each
//! request head and idle pause, a cap on the head's size, and a lifetime.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// After a failed accept (EMFILE and the like), a pause instead of a spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What one accepted connection gets: served, or refused by the server's
/// own rule (it has been told why, or just closed).
pub(crate) enum Admit {
    Serve(TcpStream),
    Refused,
}

/// Accepts on `listener` until `stop` turns true, then waits for the
/// connections in hand. Each connection goes through `admit` (the server's
/// peer check), then takes one of `max_connections` slots (over the cap it
/// goes to `busy`, which may answer it without waiting and logs as it
/// likes), then is served by `connection` in its own task. `what` names the
/// server in the log.
pub(crate) async fn accept_loop<A, B, C, Fut>(
    listener: TcpListener,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    mut admit: A,
    mut busy: B,
    connection: C,
) where
    A: FnMut(TcpStream, SocketAddr) -> Admit,
    B: FnMut(TcpStream, SocketAddr),
    C: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
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
                tracing::warn!(error = %e, "{what}: cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Admit::Serve(stream) = admit(stream, peer) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            busy(stream, peer);
            continue;
        };
        let served = connection(stream);
        connections.spawn(async move {
            served.await;
            drop(slot);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

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
