//! The post-authentication pipe: bytes in both directions until either side
//! closes. Nothing is parsed and nothing is kept.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Per-direction copy buffer. One TLS record carries at most 16 KiB of
/// plaintext, so a larger buffer buys little throughput and costs memory on
/// every idle session (IMAP IDLE sessions live for hours).
pub const RELAY_BUFFER: usize = 16 * 1024;

/// How far into the server's first post-login bytes to look for Office 365's
/// "authenticated but not connected" answer.
const WATCH_WINDOW: usize = 4 * 1024;
const NOT_CONNECTED: &[u8] = b"User is authenticated but not connected";

pub struct Totals {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Writes what each side sent ahead (the client's pipelined commands go up
/// only now, after the server's OK), then copies both ways until EOF.
pub async fn relay<C, U>(
    client: &mut C,
    client_pending: &[u8],
    upstream: &mut U,
    upstream_pending: &[u8],
    account: &str,
) -> io::Result<Totals>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut watched = Watch::new(upstream, account);
    watched.inspect(upstream_pending);
    if !upstream_pending.is_empty() {
        client.write_all(upstream_pending).await?;
    }
    if !client_pending.is_empty() {
        watched.write_all(client_pending).await?;
    }
    let (up, down) =
        tokio::io::copy_bidirectional_with_sizes(client, &mut watched, RELAY_BUFFER, RELAY_BUFFER)
            .await?;
    Ok(Totals {
        to_upstream: up + client_pending.len() as u64,
        to_client: down + upstream_pending.len() as u64,
    })
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
            let fresh = buf.filled()[before..].to_vec();
            self.inspect(&fresh);
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
