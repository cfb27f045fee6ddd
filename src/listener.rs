//! Accept loops: one per configured listener, with a connection limit, each
//! connection handed to its protocol's session.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::{ListenerConfig, Protocol};
use crate::session::Context;

pub struct Bound {
    pub listener: TcpListener,
    pub config: Arc<ListenerConfig>,
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }
}

pub async fn bind(config: &ListenerConfig) -> anyhow::Result<Bound> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} for {}: {e}",
            config.listen,
            config.protocol
        )
    })?;
    Ok(Bound {
        listener,
        config: Arc::new(config.clone()),
    })
}

/// The refusal sent when a listener is at its connection limit.
fn busy_reply(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => {
            b"* BYE [UNAVAILABLE] Too many connections to xoauth2-proxy; try again later\r\n"
        }
        Protocol::Pop3 => {
            b"-ERR [SYS/TEMP] Too many connections to xoauth2-proxy; try again later\r\n"
        }
        Protocol::Smtp => b"421 4.7.0 Too many connections to xoauth2-proxy; try again later\r\n",
    }
}

/// Accepts until `shutdown` turns true. Sessions already running are left
/// to finish on their own.
pub async fn serve(
    bound: Bound,
    ctx: Arc<Context>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let addr = bound.local_addr();
    tracing::info!(protocol = %bound.config.protocol, listen = %addr, upstream = %bound.config.upstream, "listening");
    loop {
        let accepted = tokio::select! {
            a = bound.listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: pause briefly instead of spinning.
                tracing::warn!(listen = %addr, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, listen = %addr, max_connections, "connection limit reached; refusing");
            let protocol = bound.config.protocol;
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream.write_all(busy_reply(protocol)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let config = bound.config.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, protocol = %config.protocol, "connection accepted");
            dispatch(stream, peer, config, ctx).await;
            drop(permit);
        });
    }
    tracing::info!(listen = %addr, "stopped listening");
}

async fn dispatch(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ListenerConfig>,
    ctx: Arc<Context>,
) {
    match config.protocol {
        Protocol::Imap => crate::session::imap::serve(stream, peer, config, ctx).await,
        Protocol::Pop3 => crate::session::pop3::serve(stream, peer, config, ctx).await,
        Protocol::Smtp => crate::session::smtp::serve(stream, peer, config, ctx).await,
    }
}
