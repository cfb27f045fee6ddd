//! The post-authentication pipe: bytes in both directions until either side
//! closes. Nothing is parsed and nothing is kept. (A fixed-account SMTP
//! relay, which sends as its account for whoever may connect, reads the
//! client's commands instead: `filtered.rs`.)
//!
//! This is `tokio::io::copy_bidirectional` with one change, measured with
//! `cargo bench --bench proxy`: a direction holds a buffer only while bytes
//! are in flight. Buffers come from a small per-thread pool and go back as
//! soon as they are written out, and a read that finds nothing gives its
//! buffer back at once. An idle session (IMAP IDLE, for hours) therefore
//! holds no copy buffer at all, while a transfer gets large buffers and few
//! system calls. With fixed 16 KiB buffers an idle session cost 35 KiB and
//! the relay ran at 56-74% of direct TLS; with fixed 64 KiB buffers it cost
//! 64 KiB per session.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::health::Bytes;

mod filtered;
pub(crate) use filtered::relay_filtered;

/// Size of one copy buffer. Several TLS records per system call; the cost is
/// paid only while a transfer is under way.
pub(crate) const RELAY_BUFFER: usize = 64 * 1024;
/// Buffers kept per worker thread for reuse (4 MiB at most), so a steady
/// transfer does not allocate, and a burst does not pin memory for ever.
const POOL_KEEP: usize = 64;

/// How far into the server's first post-login bytes to look for Office 365's
/// "authenticated but not connected" answer.
const WATCH_WINDOW: usize = 4 * 1024;
const NOT_CONNECTED: &[u8] = b"User is authenticated but not connected";

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; RELAY_BUFFER].into_boxed_slice())
}

fn give_buffer(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    });
}

pub(crate) struct Totals {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Writes what each side sent ahead (the client's pipelined commands go up
/// only now, after the server's OK), then copies both ways until EOF.
pub(crate) async fn relay<C, U>(
    client: &mut C,
    client_pending: &[u8],
    upstream: &mut U,
    upstream_pending: &[u8],
    account: &str,
    counted: &Bytes,
) -> io::Result<Totals>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut watched = Watch::new(upstream, account);
    watched.inspect(upstream_pending);
    if !upstream_pending.is_empty() {
        client.write_all(upstream_pending).await?;
        counted.to_client.inc_by(upstream_pending.len() as u64);
    }
    if !client_pending.is_empty() {
        watched.write_all(client_pending).await?;
        counted.to_server.inc_by(client_pending.len() as u64);
    }
    let (up, down) = copy_both(
        client,
        &mut watched,
        (&counted.to_server, &counted.to_client),
    )
    .await?;
    Ok(Totals {
        to_upstream: up + client_pending.len() as u64,
        to_client: down + upstream_pending.len() as u64,
    })
}

/// Copies `a → b` and `b → a` until both directions have seen EOF; an EOF
/// on one side shuts down the write half of the other. Returns the bytes
/// copied each way, and adds them to `counted` (`a → b`, `b → a`) as each
/// write completes: one relaxed atomic add per write of up to a buffer,
/// so a scrape sees a long transfer grow.
pub(crate) async fn copy_both<A, B>(
    a: &mut A,
    b: &mut B,
    counted: (&Counter, &Counter),
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Half::default();
    let mut b_to_a = Half::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll(cx, &mut *a, &mut *b, counted.0)?;
        let ba = b_to_a.poll(cx, &mut *b, &mut *a, counted.1)?;
        match (ab, ba) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction: read into a pooled buffer, write it all out, return the
/// buffer; at EOF flush and shut the writer down.
#[derive(Default)]
struct Half {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    eof: bool,
    need_flush: bool,
    done: bool,
    copied: u64,
}

impl Half {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counted: &Counter,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if self.pos == self.end && !self.eof {
                let mut buf = self.buf.take().unwrap_or_else(take_buffer);
                let mut read = ReadBuf::new(&mut buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                    Poll::Pending => {
                        // Nothing to carry while waiting: the buffer goes back.
                        give_buffer(buf);
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        give_buffer(buf);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.eof = true;
                            give_buffer(buf);
                        } else {
                            self.pos = 0;
                            self.end = n;
                            self.buf = Some(buf);
                        }
                    }
                }
            }
            while self.pos < self.end {
                let buf = self
                    .buf
                    .as_ref()
                    .expect("a buffer holds the unwritten bytes");
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                counted.inc_by(n as u64);
                self.need_flush = true;
            }
            if let Some(buf) = self.buf.take() {
                give_buffer(buf);
                self.pos = 0;
                self.end = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

/// Passes the upstream through untouched while looking at its first few KiB
/// for a known trap, so the log can say what to fix.
struct Watch<'a, U> {
    inner: &'a mut U,
    seen: usize,
    tail: Vec<u8>,
    account: &'a str,
}

impl<'a, U> Watch<'a, U> {
    fn new(inner: &'a mut U, account: &'a str) -> Self {
        Watch {
            inner,
            seen: 0,
            tail: Vec::new(),
            account,
        }
    }

    fn inspect(&mut self, bytes: &[u8]) {
        if self.seen >= WATCH_WINDOW || bytes.is_empty() {
            return;
        }
        let take = bytes.len().min(WATCH_WINDOW - self.seen);
        self.seen += take;
        self.tail.extend_from_slice(&bytes[..take]);
        if self
            .tail
            .windows(NOT_CONNECTED.len())
            .any(|w| w == NOT_CONNECTED)
        {
            tracing::warn!(
                account = %self.account,
                "the server accepted the token but says the user is not connected to the mailbox: \
                 the signed-in user needs access to this mailbox (for a shared mailbox: Add-MailboxPermission \
                 -AccessRights FullAccess), or IMAP/POP is disabled for it (Set-CASMailbox)"
            );
            self.seen = WATCH_WINDOW;
        }
        if self.seen >= WATCH_WINDOW {
            self.tail = Vec::new();
        }
    }
}

impl<U: AsyncRead + Unpin> AsyncRead for Watch<'_, U> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if self.seen < WATCH_WINDOW && matches!(poll, Poll::Ready(Ok(()))) {
            self.inspect(&buf.filled()[before..]);
        }
        poll
    }
}

impl<U: AsyncWrite + Unpin> AsyncWrite for Watch<'_, U> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    /// Deterministic bytes that make any reordering or loss visible.
    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn copies_both_ways_byte_exact_and_counts() {
        // Small duplex pipes force many partial reads and writes.
        let (client, mut proxy_client_side) = duplex(1000);
        let (mut proxy_upstream_side, server) = duplex(777);
        let counted = Bytes::default();
        let counters = counted.clone();
        let relay = tokio::spawn(async move {
            let counted = (&counters.to_server, &counters.to_client);
            copy_both(&mut proxy_client_side, &mut proxy_upstream_side, counted).await
        });
        let up = pattern(3 * RELAY_BUFFER + 17, 1);
        let down = pattern(5 * RELAY_BUFFER + 3, 2);
        // Each end writes its side and reads the other's at the same time.
        async fn talk(end: tokio::io::DuplexStream, send: Vec<u8>) -> Vec<u8> {
            let (mut r, mut w) = tokio::io::split(end);
            let writer = async move {
                w.write_all(&send).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let reader = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(writer, reader).1
        }
        let (got_down, got_up) = tokio::join!(talk(client, up.clone()), talk(server, down.clone()));
        let (a, b) = relay.await.unwrap().unwrap();
        assert!(got_up == up, "upstream bytes differ");
        assert!(got_down == down, "client bytes differ");
        assert_eq!((a, b), (up.len() as u64, down.len() as u64));
        assert_eq!(
            (counted.to_server.get(), counted.to_client.get()),
            (a, b),
            "the counters saw every byte"
        );
    }

    #[tokio::test]
    async fn an_idle_relay_holds_no_buffer() {
        let (_client, mut a) = duplex(64);
        let (mut b, _server) = duplex(64);
        let mut half = Half::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            half.poll(&mut cx, &mut a, &mut b, &Counter::default())
                .is_pending()
        );
        assert!(
            half.buf.is_none(),
            "a pending read must give its buffer back"
        );
    }
}
