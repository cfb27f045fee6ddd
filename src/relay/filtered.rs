//! The fixed-account relay: the client's bytes go through
//! `protocol::smtp::filter` on their way up, the server's come back through
//! it as they are (it only sees where each reply ends). A client login
//! never comes here: its relay is the byte pipe of `relay.rs`.
//!
//! Bytes are counted in the listener's stats as each write completes, like
//! the byte pipe's.
//!
//! One task, both directions: each side is read only while the other
//! side's pending bytes stay under [`HIGH_WATER`], so a slow reader
//! stops the writer instead of growing a buffer, and a write never waits
//! behind a read (both are polled together).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Totals;
use crate::escape::log_text;
use crate::health::Bytes;
use crate::protocol::smtp::filter::{Event, Filter, Output};

/// One read from either side. Scanners send a few MiB per message; 16 KiB
/// holds several TLS records and keeps a session small.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes waiting to be written to one side before the other side is no
/// longer read (the filter adds at most a CRLF per line to what it reads).
const HIGH_WATER: usize = 4 * READ_CHUNK;

/// Bytes for one side and how far they are written.
#[derive(Default)]
struct Outgoing {
    written: usize,
    flushed: bool,
}

/// Relays until the server closes (or either side fails). What the client
/// sent ahead (its first `MAIL FROM`, and what was pipelined after it) goes
/// through the filter first; what the server sent ahead goes to the client.
pub(crate) async fn relay_filtered<C, U>(
    client: &mut C,
    client_pending: &[u8],
    upstream: &mut U,
    upstream_pending: &[u8],
    mut filter: Filter,
    peer: SocketAddr,
    counted: &Bytes,
) -> io::Result<Totals>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Output::default();
    let mut totals = Totals {
        to_upstream: 0,
        to_client: 0,
    };
    filter
        .from_server(upstream_pending, &mut out)
        .map_err(io::Error::other)?;
    filter.from_client(client_pending, &mut out);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let mut client_buf = vec![0u8; READ_CHUNK];
    let mut up_buf = vec![0u8; READ_CHUNK];
    let (mut to_client, mut to_server) = (Outgoing::default(), Outgoing::default());
    to_client.flushed = true;
    to_server.flushed = true;
    let mut client_done = false;
    let mut upstream_shut = false;
    loop {
        log_events(&mut out, peer);
        compact(&mut out.to_client, &mut to_client);
        compact(&mut out.to_server, &mut to_server);
        if filter.closes() && out.to_client.is_empty() && to_client.flushed {
            let _ = client_w.shutdown().await;
            break;
        }
        if client_done && out.to_server.is_empty() && to_server.flushed && !upstream_shut {
            up_w.shutdown().await?;
            upstream_shut = true;
        }
        let read_client = !client_done
            && filter.wants_client()
            && out.to_server.len() - to_server.written < HIGH_WATER;
        let read_upstream = out.to_client.len() - to_client.written < HIGH_WATER;
        let client_rest = out.to_client.get(to_client.written..).unwrap_or_default();
        let server_rest = out.to_server.get(to_server.written..).unwrap_or_default();
        tokio::select! {
            n = write_or_flush(&mut client_w, client_rest), if to_client.busy(client_rest) => {
                let n = to_client.wrote(n?) as u64;
                totals.to_client += n;
                counted.to_client.inc_by(n);
            }
            n = write_or_flush(&mut up_w, server_rest), if to_server.busy(server_rest) => {
                let n = to_server.wrote(n?) as u64;
                totals.to_upstream += n;
                counted.to_server.inc_by(n);
            }
            n = client_r.read(&mut client_buf), if read_client => {
                match n? {
                    // The client is done: what the filter holds of an
                    // unfinished line never goes up.
                    0 => client_done = true,
                    n => filter.from_client(client_buf.get(..n).unwrap_or_default(), &mut out),
                }
            }
            n = up_r.read(&mut up_buf), if read_upstream => {
                match n? {
                    0 => {
                        let rest = out.to_client.get(to_client.written..).unwrap_or_default();
                        client_w.write_all(rest).await?;
                        totals.to_client += rest.len() as u64;
                        counted.to_client.inc_by(rest.len() as u64);
                        let _ = client_w.shutdown().await;
                        break;
                    }
                    n => filter
                        .from_server(up_buf.get(..n).unwrap_or_default(), &mut out)
                        .map_err(io::Error::other)?,
                }
            }
        }
    }
    Ok(totals)
}

impl Outgoing {
    /// Whether there is something to write or flush.
    fn busy(&self, rest: &[u8]) -> bool {
        !rest.is_empty() || !self.flushed
    }

    /// After [`write_or_flush`]: `Some(n)` octets written, `None` flushed.
    fn wrote(&mut self, n: Option<usize>) -> usize {
        match n {
            Some(n) => {
                self.written += n;
                self.flushed = false;
                n
            }
            None => {
                self.flushed = true;
                0
            }
        }
    }
}

/// Writes some of `rest`, or flushes once it is all written (a TLS stream
/// may hold the last records until flushed).
async fn write_or_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    rest: &[u8],
) -> io::Result<Option<usize>> {
    if rest.is_empty() {
        w.flush().await.map(|()| None)
    } else {
        nonzero(w.write(rest).await?).map(Some)
    }
}

/// Drops what was written, once all of it was, so the buffers stay small.
fn compact(buf: &mut Vec<u8>, state: &mut Outgoing) {
    if state.written > 0 && state.written == buf.len() {
        buf.clear();
        state.written = 0;
    }
}

fn nonzero(n: usize) -> io::Result<usize> {
    if n == 0 {
        Err(io::ErrorKind::WriteZero.into())
    } else {
        Ok(n)
    }
}

fn log_events(out: &mut Output, peer: SocketAddr) {
    for event in out.events.drain(..) {
        match event {
            Event::SenderRefused(sender) => tracing::warn!(%peer, sender = %log_text(&sender),
                "MAIL FROM refused: not in allowed_senders"),
            Event::TooManyRecipients => {
                tracing::warn!(%peer, "RCPT TO refused: the message has max_recipients already")
            }
        }
    }
}
