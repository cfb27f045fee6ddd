//! The upstream side of an SMTP submission session: greeting, EHLO,
//! STARTTLS (port 587), EHLO again with the client's name, and
//! `AUTH XOAUTH2` with the initial response (RFC 4954 allows 12288 octets).

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{
    AuthOutcome, Dialect, LineConn, Target, UpstreamError, Xoauth2, connect_tls, printable,
};
use crate::config::UpstreamTls;
use crate::protocol::smtp::{MAX_REPLY, SmtpReply, parse_reply};

/// The name the proxy gives in its own EHLO before STARTTLS; the client's
/// own name is used for the EHLO that counts, after TLS.
const PROXY_EHLO_NAME: &str = "localhost";

pub struct SmtpUpstream {
    conn: LineConn<TlsStream<TcpStream>>,
    /// The server's greeting reply as received.
    pub greeting: Vec<u8>,
}

/// Reads one complete (possibly multi-line) reply: the raw bytes and the parse.
async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut LineConn<S>,
) -> Result<(Vec<u8>, SmtpReply), UpstreamError> {
    let mut raw = Vec::new();
    loop {
        let line = conn.read_line().await?;
        raw.extend_from_slice(&line);
        if raw.len() > MAX_REPLY {
            return Err(UpstreamError::Protocol("reply too long".into()));
        }
        match parse_reply(&raw) {
            Ok(Some((reply, _))) => return Ok((raw, reply)),
            Ok(None) => continue,
            Err(e) => return Err(UpstreamError::Protocol(format!("{e}: {}", printable(&raw)))),
        }
    }
}

impl Dialect for SmtpUpstream {
    async fn read_greeting<S: AsyncRead + AsyncWrite + Unpin + Send>(
        conn: &mut LineConn<S>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let (greeting, reply) = read_reply(conn).await?;
        expect(220, &greeting, &reply)?;
        Ok(greeting)
    }

    async fn start_tls(plain: &mut LineConn<TcpStream>) -> Result<(), UpstreamError> {
        plain
            .write_all(format!("EHLO {PROXY_EHLO_NAME}\r\n").as_bytes())
            .await?;
        let (raw, reply) = read_reply(plain).await?;
        expect(250, &raw, &reply)?;
        plain.write_all(b"STARTTLS\r\n").await?;
        let (raw, reply) = read_reply(plain).await?;
        expect(220, &raw, &reply)
    }
}

pub async fn connect(target: &Target, mode: UpstreamTls) -> Result<SmtpUpstream, UpstreamError> {
    let (conn, greeting) = connect_tls::<SmtpUpstream>(target, mode).await?;
    Ok(SmtpUpstream { conn, greeting })
}

fn expect(code: u16, raw: &[u8], reply: &SmtpReply) -> Result<(), UpstreamError> {
    if reply.code == code {
        Ok(())
    } else {
        Err(UpstreamError::Protocol(printable(raw)))
    }
}

impl SmtpUpstream {
    /// EHLO with the client's name; the reply's text lines (greeting first).
    pub async fn ehlo(&mut self, domain: &str) -> Result<Vec<String>, UpstreamError> {
        self.conn
            .write_all(format!("EHLO {domain}\r\n").as_bytes())
            .await?;
        let (raw, reply) = read_reply(&mut self.conn).await?;
        expect(250, &raw, &reply)?;
        Ok(reply.text_lines())
    }

    pub async fn authenticate(
        &mut self,
        user: &str,
        token: &SecretString,
    ) -> Result<AuthOutcome, UpstreamError> {
        // RFC 4954 allows the initial response on the AUTH line, so the
        // first 334 can only be an error challenge.
        let mut exchange = Xoauth2::new(user, token, true);
        let line = Zeroizing::new(format!("AUTH XOAUTH2 {}\r\n", exchange.response()));
        self.conn.write_all(line.as_bytes()).await?;
        loop {
            let (raw, reply) = read_reply(&mut self.conn).await?;
            match reply.code {
                235 => return Ok(AuthOutcome::Accepted { reply: raw }),
                334 => {
                    let data = reply.lines.first().map(Vec::as_slice).unwrap_or_default();
                    exchange.on_continuation(&mut self.conn, data).await?;
                }
                code => return Ok(exchange.refused(raw, Some(code))),
            }
        }
    }

    pub fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
