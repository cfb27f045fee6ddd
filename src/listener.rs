//! Accept loops: one per configured listener. Each connection passes the
//! listener's gates in order (connection limit, `allow_from`, connections
//! per source address) and is handed to its protocol's session; a refusal
//! is a protocol-correct goodbye (over TLS on an implicit-TLS listener).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::config::{ListenerConfig, LocalTls, Protocol, is_allowed};
use crate::drain::Sessions;
use crate::health::{Counters, ListenerStats, RefusedBecause};
use crate::session::Context;
use crate::session::client::ClientStream;

/// A refusal gets this long for its TLS handshake and goodbye; a refused
/// client is not owed the whole pre-authentication time.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Bound {
    pub listener: TcpListener,
    pub config: Arc<ListenerConfig>,
    /// Its counters (open connections for the sign-in page, the rest for
    /// `metrics`); kept with the socket.
    pub stats: Arc<ListenerStats>,
}

impl Bound {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }
}

pub(crate) async fn bind(config: &ListenerConfig, counters: &Counters) -> anyhow::Result<Bound> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} for {}: {e}",
            config.listen,
            config.protocol
        )
    })?;
    // Labelled with the bound address (the port chosen for port 0).
    let listen = listener.local_addr().unwrap_or(config.listen);
    Ok(Bound {
        listener,
        config: Arc::new(config.clone()),
        stats: Arc::new(counters.listener(&config.protocol.to_string(), &listen.to_string())),
    })
}

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
}

/// Why a connection is turned away before its session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Busy,
    NotAllowed,
    TooManyFromSource,
}

impl Refusal {
    fn counted_as(self) -> RefusedBecause {
        match self {
            Refusal::Busy => RefusedBecause::max_connections,
            Refusal::NotAllowed => RefusedBecause::not_allowed,
            Refusal::TooManyFromSource => RefusedBecause::max_connections_per_source,
        }
    }
}

fn refusal_reply(protocol: Protocol, why: Refusal) -> &'static [u8] {
    match (protocol, why) {
        (Protocol::Imap, Refusal::Busy) => {
            b"* BYE [UNAVAILABLE] Too many connections to xoauth2-proxy; try again later\r\n"
        }
        (Protocol::Pop3, Refusal::Busy) => {
            b"-ERR [SYS/TEMP] Too many connections to xoauth2-proxy; try again later\r\n"
        }
        (Protocol::Smtp, Refusal::Busy) => {
            b"421 4.7.0 Too many connections to xoauth2-proxy; try again later\r\n"
        }
        (Protocol::Imap, Refusal::NotAllowed) => {
            b"* BYE Connections from your address are not allowed here\r\n"
        }
        (Protocol::Pop3, Refusal::NotAllowed) => {
            b"-ERR [SYS/PERM] Connections from your address are not allowed here\r\n"
        }
        (Protocol::Smtp, Refusal::NotAllowed) => {
            b"554 5.7.1 Connections from your address are not allowed here\r\n"
        }
        (Protocol::Imap, Refusal::TooManyFromSource) => {
            b"* BYE [UNAVAILABLE] Too many connections from your address; try again later\r\n"
        }
        (Protocol::Pop3, Refusal::TooManyFromSource) => {
            b"-ERR [SYS/TEMP] Too many connections from your address; try again later\r\n"
        }
        (Protocol::Smtp, Refusal::TooManyFromSource) => {
            b"421 4.7.0 Too many connections from your address; try again later\r\n"
        }
    }
}

/// Open connections per source address; a [`SourceSlot`] gives its place
/// back when dropped.
struct SourceCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

struct SourceSlot {
    counts: Arc<SourceCounts>,
    ip: IpAddr,
}

impl SourceCounts {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts until `shutdown` turns true, then hands the socket back (a
/// reload keeps it for the same address). Connections run as tasks of
/// `sessions`, which the shutdown drains.
pub(crate) async fn serve(
    bound: Bound,
    ctx: Arc<Context>,
    limits: Limits,
    sessions: Arc<Sessions>,
    mut shutdown: watch::Receiver<bool>,
) -> Bound {
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Arc::new(SourceCounts {
        counts: Mutex::new(HashMap::new()),
        max: limits.max_per_source,
    });
    let allowed: Vec<IpNet> = bound.config.allowed_networks();
    let addr = bound.local_addr();
    tracing::info!(protocol = %bound.config.protocol, listen = %addr, upstream = %bound.config.upstream_name(),
        local_tls = ?bound.config.local_tls, allow_from = ?bound.config.allow_from, "listening");
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
        let config = bound.config.clone();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, listen = %addr, max_connections = limits.max_connections,
                "connection limit reached; refusing");
            bound.stats.refused(Refusal::Busy.counted_as());
            // No TLS handshake for a refusal when the listener is already full.
            if config.local_tls != LocalTls::Implicit {
                sessions.spawn(refuse(stream, config, ctx.clone(), Refusal::Busy));
            }
            continue;
        };
        let ctx = ctx.clone();
        if !allowed.is_empty() && !is_allowed(&allowed, peer.ip()) {
            tracing::warn!(%peer, listen = %addr, "connection from outside allow_from; refusing");
            bound.stats.refused(Refusal::NotAllowed.counted_as());
            sessions.spawn(async move {
                refuse(stream, config, ctx, Refusal::NotAllowed).await;
                drop(permit);
            });
            continue;
        }
        // On a loopback-only listener every client is this machine, the same
        // source: max_connections is the limit there.
        let slot = if config.is_exposed() {
            sources.take(peer.ip().to_canonical())
        } else {
            None
        };
        if config.is_exposed() && slot.is_none() {
            tracing::warn!(%peer, listen = %addr, max_connections_per_source = limits.max_per_source,
                "too many connections from this address; refusing");
            bound.stats.refused(Refusal::TooManyFromSource.counted_as());
            sessions.spawn(async move {
                refuse(stream, config, ctx, Refusal::TooManyFromSource).await;
                drop(permit);
            });
            continue;
        }
        let open = bound.stats.opened();
        let stats = bound.stats.clone();
        sessions.spawn(async move {
            tracing::debug!(%peer, protocol = %config.protocol, "connection accepted");
            crate::session::serve(ClientStream::Plain(stream), peer, config, ctx, stats).await;
            drop(open);
            drop(slot);
            drop(permit);
        });
    }
    tracing::info!(listen = %addr, "stopped listening");
    bound
}

/// Writes the refusal (after a TLS handshake on an implicit-TLS listener)
/// and closes.
async fn refuse(stream: TcpStream, config: Arc<ListenerConfig>, ctx: Arc<Context>, why: Refusal) {
    let reply = refusal_reply(config.protocol, why);
    let goodbye = async {
        let mut client = ClientStream::Plain(stream);
        if config.local_tls == LocalTls::Implicit {
            let acceptor = ctx.local_tls.as_ref()?;
            let deadline = Instant::now() + REFUSAL_TIMEOUT;
            client.start_tls(acceptor, deadline).await.ok()?;
        }
        client.write_all(reply).await.ok()?;
        client.shutdown().await.ok()
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, goodbye).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_slots_are_counted_and_given_back() {
        let counts = Arc::new(SourceCounts {
            counts: Mutex::new(HashMap::new()),
            max: 2,
        });
        let a: IpAddr = "192.168.1.5".parse().unwrap();
        let b: IpAddr = "192.168.1.6".parse().unwrap();
        let s1 = counts.take(a).unwrap();
        let _s2 = counts.take(a).unwrap();
        assert!(counts.take(a).is_none());
        let _other = counts.take(b).unwrap();
        drop(s1);
        let _s3 = counts.take(a).unwrap();
        assert!(counts.take(a).is_none());
    }
}
