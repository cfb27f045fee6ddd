//! The connection to the real mail server: TCP, TLS (implicit or after the
//! protocol's STARTTLS), and line-at-a-time reading for the few exchanges
//! before authentication. The protocol dialogues are in the submodules.

pub mod imap;
pub mod pop3;
pub mod smtp;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

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

    /// Reads exactly `n` more bytes, for the few places a server sends a
    /// counted block before authentication.
    pub async fn read_exact_bytes(&mut self, n: usize) -> Result<Vec<u8>, UpstreamError> {
        while self.buf.len() < n {
            if n > MAX_SERVER_LINE {
                return Err(UpstreamError::LineTooLong);
            }
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
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
