//! Plumbing shared by the fakes and the test client: a TCP stream that may have been upgraded
//! to TLS, a buffered line reader with a length cap, and the per-server record of what happened.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A TCP stream, plain or wrapped in TLS (client or server side).
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A buffered connection read line by line (with a cap) or by exact byte counts.
pub struct LineConn {
    io: BufReader<MaybeTls>,
}

impl LineConn {
    pub fn plain(tcp: TcpStream) -> Self {
        Self::new(MaybeTls::Plain(tcp))
    }

    fn new(stream: MaybeTls) -> Self {
        Self {
            io: BufReader::with_capacity(64 * 1024, stream),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io.get_ref(), MaybeTls::Tls(_))
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        self.io.buffer()
    }

    /// One line including its LF (and CR if any); `None` at a clean end of stream.
    /// More than `cap` bytes without an LF is an `InvalidData` error.
    pub async fn read_line(&mut self, cap: usize) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            let buf = self.io.fill_buf().await?;
            if buf.is_empty() {
                if line.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "stream ended inside a line: {:?}",
                        line.escape_ascii().to_string()
                    ),
                ));
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            self.io.consume(take);
            if line.len() > cap {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line longer than {cap} bytes"),
                ));
            }
            if done {
                return Ok(Some(line));
            }
        }
    }

    pub async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut data = vec![0; n];
        self.io.read_exact(&mut data).await?;
        Ok(data)
    }

    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.io.read_to_end(&mut data).await?;
        Ok(data)
    }

    /// Writes everything with one `write_all` and flushes.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(data).await?;
        stream.flush().await
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.get_mut().shutdown().await
    }

    /// Server side of a TLS handshake. Anything buffered before it is discarded (as a server
    /// must after STARTTLS, against command injection).
    pub async fn accept_tls(self, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        match self.io.into_inner() {
            MaybeTls::Plain(tcp) => {
                let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
                Ok(Self::new(MaybeTls::Tls(Box::new(tls.into()))))
            }
            MaybeTls::Tls(_) => Err(io::Error::other("TLS is already active")),
        }
    }

    /// Client side of a TLS handshake; anything buffered before it is discarded.
    pub async fn connect_tls(
        self,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad server name {server_name:?}: {e}"),
            )
        })?;
        match self.io.into_inner() {
            MaybeTls::Plain(tcp) => {
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok(Self::new(MaybeTls::Tls(Box::new(tls.into()))))
            }
            MaybeTls::Tls(_) => Err(io::Error::other("TLS is already active")),
        }
    }
}

/// Aborts a background task when dropped (so dropping a fake stops its accept loop).
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds 127.0.0.1:0 and runs `handle` for every accepted connection, each in its own task.
/// The listener is bound before this returns, so the address is immediately connectable.
pub async fn spawn_accept_loop<F, Fut>(what: &str, handle: F) -> (SocketAddr, AbortOnDrop)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot bind 127.0.0.1:0: {e}"));
    let addr = listener
        .local_addr()
        .expect("local_addr of a bound listener");
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(handle(tcp));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    (addr, AbortOnDrop(task))
}

/// What a fake mail server saw: shared by the IMAP, POP3 and SMTP fakes (their states deref
/// to it).
#[derive(Default)]
pub struct ServerLog {
    inner: Mutex<LogInner>,
    active: AtomicUsize,
    changed: Notify,
}

#[derive(Default)]
struct LogInner {
    commands: Vec<(bool, String)>,
    auth_attempts: usize,
    auth_successes: usize,
    connections: usize,
    max_active: usize,
    closed: usize,
    presented_tokens: Vec<String>,
    sasl_users: Vec<String>,
}

impl ServerLog {
    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Every command line received, in order, without its line end, with whether the session
    /// was authenticated when it arrived. SASL continuation lines and message data are not
    /// included.
    pub fn commands(&self) -> Vec<(bool, String)> {
        self.lock().commands.clone()
    }

    /// Just the command lines (without the authenticated flag).
    pub fn command_lines(&self) -> Vec<String> {
        self.lock()
            .commands
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub fn commands_before_auth(&self) -> Vec<String> {
        self.lock()
            .commands
            .iter()
            .filter(|(a, _)| !a)
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub fn commands_after_auth(&self) -> Vec<String> {
        self.lock()
            .commands
            .iter()
            .filter(|(a, _)| *a)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// XOAUTH2 exchanges started (valid or not).
    pub fn auth_attempts(&self) -> usize {
        self.lock().auth_attempts
    }

    pub fn auth_successes(&self) -> usize {
        self.lock().auth_successes
    }

    /// Access tokens presented in XOAUTH2 exchanges that could be decoded, in order.
    pub fn presented_tokens(&self) -> Vec<String> {
        self.lock().presented_tokens.clone()
    }

    /// The `user=` values of decoded XOAUTH2 exchanges, in order.
    pub fn sasl_users(&self) -> Vec<String> {
        self.lock().sasl_users.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Connections currently open.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Connections that have ended (closed by either side).
    pub fn closed_connections(&self) -> usize {
        self.lock().closed
    }

    /// The most connections that were open at the same time.
    pub fn max_active_connections(&self) -> usize {
        self.lock().max_active
    }

    /// Waits (at most 10 s, then panics naming `what`) until `pred` holds. Re-checked whenever
    /// the server records something.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("fake server: timed out after 10 s waiting until {what}");
            }
        }
    }

    pub(crate) fn record_command(&self, authenticated: bool, line: &[u8]) {
        let text = String::from_utf8_lossy(trim_eol(line)).into_owned();
        self.lock().commands.push((authenticated, text));
        self.changed();
    }

    pub(crate) fn record_auth_attempt(&self, decoded: Option<(String, String)>) {
        let mut inner = self.lock();
        inner.auth_attempts += 1;
        if let Some((user, token)) = decoded {
            inner.sasl_users.push(user);
            inner.presented_tokens.push(token);
        }
        drop(inner);
        self.changed();
    }

    pub(crate) fn record_auth_success(&self) {
        self.lock().auth_successes += 1;
        self.changed();
    }

    /// Counts a new connection; the guard counts it closed when dropped.
    pub(crate) fn open_connection(self: &Arc<Self>) -> ConnectionGuard {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inner = self.lock();
        inner.connections += 1;
        inner.max_active = inner.max_active.max(now);
        drop(inner);
        self.changed();
        ConnectionGuard(self.clone())
    }
}

pub(crate) struct ConnectionGuard(Arc<ServerLog>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.lock().closed += 1;
        self.0.changed();
    }
}

pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Decodes a base64 XOAUTH2 initial response into (user, token) if it has exactly the shape
/// `user=<user>\x01auth=Bearer <token>\x01\x01`.
pub fn decode_xoauth2(b64: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(trim_eol(b64))
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let rest = text.strip_prefix("user=")?.strip_suffix("\x01\x01")?;
    let (user, auth) = rest.split_once('\x01')?;
    let token = auth.strip_prefix("auth=Bearer ")?;
    if user.is_empty() || token.is_empty() || token.contains('\x01') {
        return None;
    }
    Some((user.to_owned(), token.to_owned()))
}

/// Checks an XOAUTH2 response against the expected user and the token server, recording the
/// attempt. Returns whether it is acceptable.
pub fn check_xoauth2(
    log: &ServerLog,
    tokens: &super::token_server::TokenState,
    expected_user: &str,
    response: &[u8],
) -> bool {
    let decoded = decode_xoauth2(response);
    let ok = decoded
        .as_ref()
        .is_some_and(|(user, token)| user == expected_user && tokens.is_valid_access_token(token));
    log.record_auth_attempt(decoded);
    if ok {
        log.record_auth_success();
    }
    ok
}

/// The literal announced at the end of an IMAP line: `{n}` gives `(n, false)`, the
/// non-synchronizing `{n+}` gives `(n, true)`.
pub fn literal_suffix(line: &[u8]) -> Option<(usize, bool)> {
    let line = trim_eol(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let (digits, non_sync) = match digits.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (digits, false),
    };
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((std::str::from_utf8(digits).ok()?.parse().ok()?, non_sync))
}
