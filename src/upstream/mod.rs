//! The connection to the real mail server: TCP, TLS (implicit or after the
//! protocol's STARTTLS), and line-at-a-time reading for the few exchanges
//! before authentication. The protocol dialogues are in the submodules.

pub mod imap;
pub mod pop3;
pub mod smtp;

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
use crate::sasl::{ErrorChallenge, decode_error_challenge, xoauth2_response};

/// The longest server line the proxy reads before authentication. Greetings,
/// capability lists and EHLO lines are far shorter; an error challenge is a
/// few hundred bytes. Anything longer is a broken or hostile server.
pub const MAX_SERVER_LINE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
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
}

/// Where and how to reach one upstream.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Arc<ClientConfig>,
    pub timeout: Duration,
}

impl Target {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub async fn tcp(&self) -> Result<TcpStream, UpstreamError> {
        let addr = self.addr();
        let stream = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(addr.clone()))?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
        // Small interactive commands (IMAP IDLE DONE, SMTP replies) must not
        // wait for Nagle; bulk transfers are unaffected.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    pub async fn tls(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, UpstreamError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|e| UpstreamError::Tls {
            host: self.host.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let connector = TlsConnector::from(self.tls.clone());
        tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::Timeout(self.addr()))?
            .map_err(|source| UpstreamError::Tls {
                host: self.host.clone(),
                source,
            })
    }
}

/// A stream with a read buffer, for reading server lines before the relay.
pub struct LineConn<S> {
    pub stream: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineConn<S> {
    pub fn new(stream: S, timeout: Duration) -> Self {
        LineConn {
            stream,
            buf: Vec::with_capacity(1024),
            timeout,
        }
    }

    /// The next line, CRLF (or LF) included.
    pub async fn read_line(&mut self) -> Result<Vec<u8>, UpstreamError> {
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

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
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
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        n
    }

    /// The stream and the bytes read past the last consumed line.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }
}

/// How the upstream answered the proxy's XOAUTH2, in every dialect.
pub enum AuthOutcome {
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

/// The steps of connecting that differ between the dialects; the order
/// (TCP, TLS now or after the dialect's STARTTLS, greeting) is
/// [`connect_tls`]'s.
pub(crate) trait Dialect {
    /// Reads the server's greeting and refuses one that is not a welcome.
    /// `Ok`: the greeting as received.
    fn read_greeting<S: AsyncRead + AsyncWrite + Unpin + Send>(
        conn: &mut LineConn<S>,
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send;

    /// Asks a plaintext connection, past its greeting, for TLS; `Ok` once
    /// the server said to go ahead.
    fn start_tls(
        conn: &mut LineConn<TcpStream>,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send;
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
            let greeting = D::read_greeting(&mut conn).await?;
            Ok((conn, greeting))
        }
        UpstreamTls::Starttls => {
            let mut plain = LineConn::new(tcp, target.timeout);
            let greeting = D::read_greeting(&mut plain).await?;
            D::start_tls(&mut plain).await?;
            plain.discard_buffered();
            let (tcp, _) = plain.into_parts();
            let conn = LineConn::new(target.tls(tcp).await?, target.timeout);
            Ok((conn, greeting))
        }
    }
}

/// The proxy's side of an XOAUTH2 exchange after the AUTH command: the first
/// continuation asks for the response (unless it went with the command), a
/// later one is an error challenge, answered with an empty line so the
/// server ends the exchange with its refusal.
pub(crate) struct Xoauth2 {
    response: Zeroizing<String>,
    sent: bool,
    /// The error challenge, once the server sent one.
    pub(crate) challenge: Option<ErrorChallenge>,
}

impl Xoauth2 {
    /// `sent`: the response goes on the command line (an initial response).
    pub(crate) fn new(user: &str, token: &SecretString, sent: bool) -> Self {
        Xoauth2 {
            response: xoauth2_response(user, token),
            sent,
            challenge: None,
        }
    }

    /// The base64 response, for an initial response on the command line.
    pub(crate) fn response(&self) -> &str {
        self.response.as_str()
    }

    /// Answers one continuation carrying `data`.
    pub(crate) async fn on_continuation<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut LineConn<S>,
        data: &[u8],
    ) -> Result<(), UpstreamError> {
        if self.sent {
            self.challenge = decode_error_challenge(data).or(Some(ErrorChallenge::default()));
            conn.write_all(b"\r\n").await
        } else {
            let line = Zeroizing::new(format!("{}\r\n", self.response.as_str()));
            self.sent = true;
            conn.write_all(line.as_bytes()).await
        }
    }

    /// The outcome for a refusal `reply`, with the challenge seen before it.
    pub(crate) fn refused(self, reply: Vec<u8>, code: Option<u16>) -> AuthOutcome {
        AuthOutcome::Refused {
            reply,
            code,
            challenge: self.challenge,
        }
    }
}

/// A server line for an error message or a log line.
pub(crate) fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end().to_owned()
}
