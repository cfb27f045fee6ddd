//! The upstream side of a POP3 session: greeting, STLS, CAPA, and
//! `AUTH XOAUTH2`.
//!
//! The XOAUTH2 response always goes after the server's `+` continuation:
//! POP3 has no capability that promises initial responses, and RFC 2449
//! limits command lines to 255 octets, which a bearer token exceeds.

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    AuthOutcome, Dialect, LineConn, Target, UpstreamError, Xoauth2, connect_tls, printable,
};
use crate::config::UpstreamTls;
use crate::protocol::pop3::{Reply, parse_reply};

/// A CAPA answer longer than this many lines is not a real server's.
const MAX_CAPA_LINES: usize = 64;

pub struct Pop3Upstream {
    conn: LineConn<TlsStream<TcpStream>>,
    /// The text after `+OK` in the server's greeting.
    pub greeting_text: Vec<u8>,
    /// The server's CAPA lines (without the terminating `.`), after TLS.
    pub capa: Vec<String>,
}

fn greeting_text(line: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    match parse_reply(line) {
        Some(Reply::Ok(text)) => Ok(text.to_vec()),
        _ => Err(UpstreamError::Protocol(printable(line))),
    }
}

impl Dialect for Pop3Upstream {
    async fn read_greeting<S: AsyncRead + AsyncWrite + Unpin + Send>(
        conn: &mut LineConn<S>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let greeting = conn.read_line().await?;
        greeting_text(&greeting)?;
        Ok(greeting)
    }

    async fn start_tls(plain: &mut LineConn<TcpStream>) -> Result<(), UpstreamError> {
        plain.write_all(b"STLS\r\n").await?;
        let answer = plain.read_line().await?;
        if !matches!(parse_reply(&answer), Some(Reply::Ok(_))) {
            return Err(UpstreamError::Protocol(format!(
                "STLS refused: {}",
                printable(&answer)
            )));
        }
        Ok(())
    }
}

pub async fn connect(target: &Target, mode: UpstreamTls) -> Result<Pop3Upstream, UpstreamError> {
    let (mut conn, greeting) = connect_tls::<Pop3Upstream>(target, mode).await?;
    let greeting_text = greeting_text(&greeting)?;
    let capa = ask_capa(&mut conn).await?;
    Ok(Pop3Upstream {
        conn,
        greeting_text,
        capa,
    })
}

/// CAPA lines, or none when the server does not know CAPA (RFC 2449 is optional).
async fn ask_capa(conn: &mut LineConn<TlsStream<TcpStream>>) -> Result<Vec<String>, UpstreamError> {
    conn.write_all(b"CAPA\r\n").await?;
    let first = conn.read_line().await?;
    match parse_reply(&first) {
        Some(Reply::Ok(_)) => {}
        Some(Reply::Err(_)) => return Ok(Vec::new()),
        _ => return Err(UpstreamError::Protocol(printable(&first))),
    }
    let mut capa = Vec::new();
    loop {
        let line = conn.read_line().await?;
        let text = printable(&line);
        if text == "." {
            return Ok(capa);
        }
        if capa.len() >= MAX_CAPA_LINES {
            return Err(UpstreamError::Protocol("CAPA answer too long".into()));
        }
        capa.push(text.strip_prefix('.').unwrap_or(&text).to_owned());
    }
}

impl Pop3Upstream {
    pub async fn authenticate(
        &mut self,
        user: &str,
        token: &SecretString,
    ) -> Result<AuthOutcome, UpstreamError> {
        let mut exchange = Xoauth2::new(user, token, false);
        self.conn.write_all(b"AUTH XOAUTH2\r\n").await?;
        loop {
            let line = self.conn.read_line().await?;
            match parse_reply(&line) {
                Some(Reply::Continuation(data)) => {
                    exchange.on_continuation(&mut self.conn, data).await?;
                }
                Some(Reply::Ok(_)) => return Ok(AuthOutcome::Accepted { reply: line }),
                Some(Reply::Err(_)) => return Ok(exchange.refused(line, None)),
                None => return Err(UpstreamError::Protocol(printable(&line))),
            }
        }
    }

    pub fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
