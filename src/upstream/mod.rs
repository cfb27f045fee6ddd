//! The connection to the real mail server: TCP, TLS (implicit or after the
//! protocol's STARTTLS), and line-at-a-time reading for the few exchanges
//! before authentication. The protocol dialogues are in the submodules.

pub(crate) mod imap;
pub(crate) mod pop3;
pub(crate) mod smtp;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use crate::config::UpstreamTls;
use crate::net::proxy::{self, ConnectError, ProxyError, Route};
use crate::sasl::{ErrorChallenge, decode_error_challenge, xoauth2_response};

/// The longest server line the proxy reads before authentication. Greetings,
/// capability lists and EHLO lines are far shorter; an error challenge is a
/// few hundred bytes. Anything longer is a broken or hostile server.
pub(crate) const MAX_SERVER_LINE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: io::Error },
    #[error("TLS with {host} failed: {cause}")]
    Tls { host: String, cause: io::Error },
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("connection to the server failed: {0}")]
    Io(#[from] io::Error),
    #[error("the server sent a line longer than {MAX_SERVER_LINE} bytes")]
    LineTooLong,
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("{0}")]
    Proxy(#[from] ProxyError),
}

/// Where and how to reach one upstream.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Arc<ClientConfig>,
    pub timeout: Duration,
    /// Direct, or through which proxy (`upstream_proxy`).
    pub route: Route,
}

impl Target {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub async fn tcp(&self) -> Result<TcpStream, UpstreamError> {
        let addr = self.addr();
        // The timeout covers the proxy hop, when there is one.
        let stream = tokio::time::timeout(
            self.timeout,
            proxy::connect(&self.route, &self.host, self.port),
        )
        .await
        .map_err(|_| match &self.route {
            Route::Direct => UpstreamError::Timeout(addr.clone()),
            Route::Via(proxy) => {
                UpstreamError::Timeout(format!("{addr} (through the proxy {proxy})"))
            }
        })?
        .map_err(|e| match e {
            ConnectError::Direct(cause) => UpstreamError::Connect { addr, cause },
            ConnectError::Proxy(e) => UpstreamError::Proxy(e),
        })?;
        // Small interactive commands (IMAP IDLE DONE, SMTP replies) must not
        // wait for Nagle; bulk transfers are unaffected.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    pub async fn tls(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, UpstreamError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|e| UpstreamError::Tls {
            host: self.host.clone(),
            cause: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let connector = TlsConnector::from(self.tls.clone());
        tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::Timeout(self.addr()))?
            .map_err(|cause| UpstreamError::Tls {
                host: self.host.clone(),
                cause,
            })
    }
}

/// A stream with a read buffer, for reading server lines before the relay.
pub(crate) struct LineConn<S> {
    pub stream: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineConn<S> {
    pub(crate) fn new(stream: S, timeout: Duration) -> Self {
        LineConn {
            stream,
            buf: Vec::with_capacity(1024),
            timeout,
        }
    }

    /// The next line, CRLF (or LF) included.
    pub(crate) async fn read_line(&mut self) -> Result<Vec<u8>, UpstreamError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(line);
            }
            if self.buf.len() >= MAX_SERVER_LINE {
                return Err(UpstreamError::LineTooLong);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), UpstreamError> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
            .await
            .map_err(|_| UpstreamError::Timeout("the server".into()))??;
        if n == 0 {
            return Err(UpstreamError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| UpstreamError::Timeout("the server".into()))??;
        Ok(())
    }

    /// Drops whatever was read but not consumed. Called before a TLS
    /// upgrade: bytes that arrived in plaintext ahead of the handshake could
    /// have been injected by anyone on the path.
    pub(crate) fn discard_buffered(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        n
    }

    /// The stream and the bytes read past the last consumed line.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }
}

/// How the upstream answered the proxy's XOAUTH2, in every dialect.
pub(crate) enum AuthOutcome {
    /// Everything the server sent up to and including its success reply, for
    /// the client (IMAP: already under the client's tag).
    Accepted { reply: Vec<u8> },
    /// The server's refusal as received, its reply code where the protocol
    /// has one (SMTP), and its error challenge if it sent one.
    Refused {
        reply: Vec<u8>,
        code: Option<u16>,
        challenge: Option<ErrorChallenge>,
    },
}

/// What one server answer means while XOAUTH2 is under way.
pub(crate) enum Answer {
    /// A continuation, with its (base64) data.
    Continuation(Vec<u8>),
    /// Data ahead of the final answer (IMAP's untagged lines), kept for
    /// the client.
    Data,
    Accepted,
    /// With the reply code where the protocol has one (SMTP).
    Refused(Option<u16>),
}

/// What differs between the dialects up to and through XOAUTH2; the order
/// of things is [`connect_tls`]'s and [`authenticate`]'s.
pub(crate) trait Dialect {
    /// Judges the greeting read so far (whole lines): `Ok(true)` when it is
    /// a complete welcome, `Ok(false)` when more lines belong to it.
    fn judge_greeting(raw: &[u8]) -> Result<bool, UpstreamError>;

    /// Asks a plaintext connection, past its greeting, for TLS; `Ok` once
    /// the server said to go ahead.
    fn start_tls(
        conn: &mut LineConn<TcpStream>,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send;

    /// The connection after [`connect_tls`].
    fn conn(&mut self) -> &mut LineConn<TlsStream<TcpStream>>;

    /// The command that starts XOAUTH2 under `tag` (where the protocol has
    /// tags), and whether it carries `response` as an initial response.
    fn auth_command(&self, tag: &str, response: &str) -> (Zeroizing<String>, bool);

    /// Judges an answer during XOAUTH2 read so far (whole lines, the
    /// client's `tag` where the protocol has tags): `None` while more lines
    /// belong to it. An answer that fits no meaning is an error.
    fn judge_answer(raw: &[u8], tag: &str) -> Result<Option<Answer>, UpstreamError>;
}

/// A TLS connection to `target` past the server's greeting (checked by
/// `D`), and that greeting as received (the plaintext one after STARTTLS,
/// since the server does not greet again).
pub(crate) async fn connect_tls<D: Dialect>(
    target: &Target,
    mode: UpstreamTls,
) -> Result<(LineConn<TlsStream<TcpStream>>, Vec<u8>), UpstreamError> {
    let tcp = target.tcp().await?;
    match mode {
        UpstreamTls::Implicit => {
            let mut conn = LineConn::new(target.tls(tcp).await?, target.timeout);
            let greeting = read_greeting::<D, _>(&mut conn).await?;
            Ok((conn, greeting))
        }
        UpstreamTls::Starttls => {
            let mut plain = LineConn::new(tcp, target.timeout);
            let greeting = read_greeting::<D, _>(&mut plain).await?;
            D::start_tls(&mut plain).await?;
            plain.discard_buffered();
            let (tcp, _) = plain.into_parts();
            let conn = LineConn::new(target.tls(tcp).await?, target.timeout);
            Ok((conn, greeting))
        }
    }
}

/// The server's greeting as received, once `D` finds it complete.
async fn read_greeting<D: Dialect, S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut LineConn<S>,
) -> Result<Vec<u8>, UpstreamError> {
    let mut raw = conn.read_line().await?;
    while !D::judge_greeting(&raw)? {
        raw.extend_from_slice(&conn.read_line().await?);
    }
    Ok(raw)
}

/// XOAUTH2 for `user` (under the client's `tag` in IMAP). The first
/// continuation asks for the response, unless it went with the command; a
/// later one is an error challenge, answered with an empty line so the
/// server ends the exchange with its refusal.
pub(crate) async fn authenticate<D: Dialect>(
    upstream: &mut D,
    tag: &str,
    user: &str,
    token: &SecretString,
) -> Result<AuthOutcome, UpstreamError> {
    let response = xoauth2_response(user, token);
    let (command, mut sent) = upstream.auth_command(tag, response.as_str());
    let conn = upstream.conn();
    conn.write_all(command.as_bytes()).await?;
    let mut challenge = None;
    let mut reply = Vec::new();
    loop {
        let mut raw = conn.read_line().await?;
        let answer = loop {
            match D::judge_answer(&raw, tag)? {
                Some(answer) => break answer,
                None => raw.extend_from_slice(&conn.read_line().await?),
            }
        };
        match answer {
            Answer::Continuation(data) if sent => {
                challenge = decode_error_challenge(&data).or(Some(ErrorChallenge::default()));
                conn.write_all(b"\r\n").await?;
            }
            Answer::Continuation(_) => {
                let line = Zeroizing::new(format!("{}\r\n", response.as_str()));
                conn.write_all(line.as_bytes()).await?;
                sent = true;
            }
            Answer::Data => reply.extend_from_slice(&raw),
            Answer::Accepted => {
                reply.extend_from_slice(&raw);
                return Ok(AuthOutcome::Accepted { reply });
            }
            // Only the final line: untagged data before a refusal is not
            // the client's business.
            Answer::Refused(code) => {
                return Ok(AuthOutcome::Refused {
                    reply: raw,
                    code,
                    challenge,
                });
            }
        }
    }
}

/// The error for a server that would not start TLS.
pub(crate) fn tls_refused(command: &str, answer: &[u8]) -> UpstreamError {
    UpstreamError::Protocol(format!("{command} refused: {}", printable(answer)))
}

/// A server line for an error message or a log line.
pub(crate) fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end().to_owned()
}
