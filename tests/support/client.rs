//! A line-oriented test client. Every read gives up after a timeout (10 s by default) with a
//! panic that says what it was waiting for, so no test can hang.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::conn::{LineConn, literal_suffix, trim_eol};

/// Longest line the client accepts (a FETCH literal is read separately, not as a line).
const MAX_LINE: usize = 1024 * 1024;

pub struct TestClient {
    conn: Option<LineConn>,
    timeout: Duration,
    peer: SocketAddr,
}

impl TestClient {
    /// Plain TCP.
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = within(
            Duration::from_secs(10),
            &format!("TCP connect to {addr}"),
            TcpStream::connect(addr),
        )
        .await
        .unwrap_or_else(|e| panic!("TestClient: cannot connect to {addr}: {e}"));
        let _ = tcp.set_nodelay(true);
        TestClient {
            conn: Some(LineConn::plain(tcp)),
            timeout: Duration::from_secs(10),
            peer: addr,
        }
    }

    /// Plain TCP from a chosen local address (any 127.0.0.0/8 address works on loopback),
    /// for `allow_from` and per-source tests.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Self {
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("create a socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .unwrap_or_else(|e| panic!("TestClient: cannot bind to {source}: {e}"));
        let tcp = within(
            Duration::from_secs(10),
            &format!("TCP connect to {addr} from {source}"),
            socket.connect(addr),
        )
        .await
        .unwrap_or_else(|e| panic!("TestClient: cannot connect to {addr} from {source}: {e}"));
        let _ = tcp.set_nodelay(true);
        TestClient {
            conn: Some(LineConn::plain(tcp)),
            timeout: Duration::from_secs(10),
            peer: addr,
        }
    }

    /// Implicit TLS, verifying the server as `localhost`.
    pub async fn connect_tls(addr: SocketAddr, client_config: Arc<rustls::ClientConfig>) -> Self {
        Self::connect_tls_named(addr, "localhost", client_config).await
    }

    pub async fn connect_tls_named(
        addr: SocketAddr,
        server_name: &str,
        client_config: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self::try_connect_tls_named(addr, server_name, client_config)
            .await
            .unwrap_or_else(|e| {
                panic!("TestClient: TLS handshake with {addr} as {server_name:?} failed: {e}")
            })
    }

    /// Like [`connect_tls_named`](Self::connect_tls_named) but returns the handshake error (for
    /// certificate tests).
    pub async fn try_connect_tls_named(
        addr: SocketAddr,
        server_name: &str,
        client_config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let mut client = Self::connect(addr).await;
        let conn = client.conn.take().expect("fresh connection");
        let what = format!("TLS handshake with {addr}");
        client.conn = Some(
            within(
                client.timeout,
                &what,
                conn.connect_tls(server_name, client_config),
            )
            .await?,
        );
        Ok(client)
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.conn_ref().is_tls()
    }

    fn conn_ref(&self) -> &LineConn {
        self.conn
            .as_ref()
            .expect("TestClient: connection lost during an earlier STARTTLS")
    }

    fn conn(&mut self) -> &mut LineConn {
        self.conn
            .as_mut()
            .expect("TestClient: connection lost during an earlier STARTTLS")
    }

    pub async fn send(&mut self, data: &[u8]) {
        let what = format!("sending {} bytes", data.len());
        let timeout = self.timeout;
        within(timeout, &what, self.conn().write_all(data))
            .await
            .unwrap_or_else(|e| panic!("TestClient: write to {} failed: {e}", self.peer));
    }

    /// Sends `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) {
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        self.send(&data).await;
    }

    /// One line including its CRLF; `None` if the server closed the connection cleanly.
    pub async fn try_read_line(&mut self) -> Option<Vec<u8>> {
        let timeout = self.timeout;
        let peer = self.peer;
        within(timeout, "a line", self.conn().read_line(MAX_LINE))
            .await
            .unwrap_or_else(|e| panic!("TestClient: reading a line from {peer} failed: {e}"))
    }

    /// One line including its CRLF; panics if the connection ends first.
    pub async fn read_line(&mut self) -> Vec<u8> {
        self.try_read_line().await.unwrap_or_else(|| {
            panic!(
                "TestClient: {} closed the connection while a line was expected",
                self.peer
            )
        })
    }

    /// One line as text, without its line end.
    pub async fn read_line_str(&mut self) -> String {
        String::from_utf8_lossy(trim_eol(&self.read_line().await)).into_owned()
    }

    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let timeout = self.timeout;
        let peer = self.peer;
        within(timeout, &format!("{n} bytes"), self.conn().read_exact(n))
            .await
            .unwrap_or_else(|e| panic!("TestClient: reading {n} bytes from {peer} failed: {e}"))
    }

    /// Reads a line and asserts it equals `expected`. If `expected` has no line end, CRLF is
    /// assumed.
    pub async fn expect(&mut self, expected: &[u8]) {
        let mut want = expected.to_vec();
        if !want.ends_with(b"\n") {
            want.extend_from_slice(b"\r\n");
        }
        let got = self.read_line().await;
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            panic!(
                "TestClient: unexpected line from {}\n  expected: \"{}\"\n  received: \"{}\"\n  first difference at byte {at}",
                self.peer,
                want.escape_ascii(),
                got.escape_ascii(),
            );
        }
    }

    /// Reads a line, asserts it starts with `prefix`, returns it (with its CRLF).
    pub async fn expect_prefix(&mut self, prefix: &[u8]) -> Vec<u8> {
        let got = self.read_line().await;
        if !got.starts_with(prefix) {
            panic!(
                "TestClient: unexpected line from {}\n  expected a line starting with: \"{}\"\n  received: \"{}\"",
                self.peer,
                prefix.escape_ascii(),
                got.escape_ascii(),
            );
        }
        got
    }

    /// IMAP: reads responses up to and including the one tagged `tag`. Each item is one
    /// response with its CRLF; a literal `{n}` inside a response is read exactly and kept in
    /// the same item, so `* 1 FETCH (BODY[] {5}\r\nhello)\r\n` is one item.
    pub async fn read_until_tagged(&mut self, tag: &str) -> Vec<Vec<u8>> {
        let mut prefix = tag.as_bytes().to_vec();
        prefix.push(b' ');
        let mut responses = Vec::new();
        loop {
            let mut item = self.read_line().await;
            while let Some(n) = trailing_literal(&item) {
                let data = self.read_exact(n).await;
                item.extend_from_slice(&data);
                let rest = self.read_line().await;
                item.extend_from_slice(&rest);
            }
            let done = item.starts_with(&prefix);
            responses.push(item);
            if done {
                return responses;
            }
        }
    }

    /// POP3: reads a dot-terminated multi-line block (after the `+OK` line) and returns it
    /// unstuffed, without the terminator.
    pub async fn read_dot_terminated(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await;
            if line == b".\r\n" {
                return body;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            body.extend_from_slice(line);
        }
    }

    /// SMTP: reads one (possibly multi-line) reply; returns its lines (with CRLF).
    pub async fn read_smtp_reply(&mut self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await;
            let last = line.len() < 4 || line[3] != b'-';
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// SMTP: reads one reply and asserts its code; returns the lines.
    pub async fn expect_smtp(&mut self, code: u16) -> Vec<Vec<u8>> {
        let lines = self.read_smtp_reply().await;
        let want = code.to_string();
        if !lines.iter().all(|l| l.starts_with(want.as_bytes())) {
            let shown: Vec<String> = lines.iter().map(|l| l.escape_ascii().to_string()).collect();
            panic!(
                "TestClient: expected an SMTP {code} reply from {}, received: {shown:?}",
                self.peer
            );
        }
        lines
    }

    /// Everything until the server closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let timeout = self.timeout;
        let peer = self.peer;
        within(timeout, "the end of the stream", self.conn().read_to_end())
            .await
            .unwrap_or_else(|e| panic!("TestClient: reading to the end from {peer} failed: {e}"))
    }

    /// Asserts the server closes the connection without sending anything more.
    pub async fn expect_eof(&mut self) {
        let rest = self.read_to_end().await;
        assert!(
            rest.is_empty(),
            "TestClient: expected the connection to close, received \"{}\"",
            rest.escape_ascii()
        );
    }

    /// Upgrades the connection to TLS in place (after the server's STARTTLS go-ahead). Panics
    /// if the server sent bytes after that reply and before the handshake.
    pub async fn starttls(&mut self, server_name: &str, client_config: Arc<rustls::ClientConfig>) {
        let conn = self
            .conn
            .take()
            .expect("TestClient: connection lost during an earlier STARTTLS");
        assert!(
            conn.buffered().is_empty(),
            "TestClient: server sent bytes before the TLS handshake: \"{}\"",
            conn.buffered().escape_ascii()
        );
        let what = format!("STARTTLS handshake with {}", self.peer);
        let conn = within(
            self.timeout,
            &what,
            conn.connect_tls(server_name, client_config),
        )
        .await
        .unwrap_or_else(|e| panic!("TestClient: {what} failed: {e}"));
        self.conn = Some(conn);
    }

    /// Half-closes the connection (sends FIN / TLS close_notify).
    pub async fn shutdown(&mut self) {
        let timeout = self.timeout;
        let _ = within(timeout, "shutdown", self.conn().shutdown()).await;
    }
}

async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("TestClient: timed out after {timeout:?} waiting for {what}"),
    }
}

/// The `n` of a line ending in `{n}\r\n` or `{n+}\r\n`.
pub fn trailing_literal(line: &[u8]) -> Option<usize> {
    literal_suffix(line).map(|(n, _)| n)
}
