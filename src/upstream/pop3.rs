//! The upstream side of a POP3 session: greeting, STLS, CAPA, and
//! `AUTH XOAUTH2`.
//!
//! The XOAUTH2 response always goes after the server's `+` continuation:
//! POP3 has no capability that promises initial responses, and RFC 2449
//! limits command lines to 255 octets, which a bearer token exceeds.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{
    Answer, Dialect, LineConn, Target, UpstreamError, connect_tls, printable, tls_refused,
};
use crate::config::UpstreamTls;
use crate::protocol::pop3::{Reply, parse_reply};

/// A CAPA answer longer than this many lines is not a real server's.
const MAX_CAPA_LINES: usize = 64;

pub(crate) struct Pop3Upstream {
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
    fn conn(&mut self) -> &mut LineConn<TlsStream<TcpStream>> {
        &mut self.conn
    }

    fn judge_greeting(raw: &[u8]) -> Result<bool, UpstreamError> {
        greeting_text(raw).map(|_| true)
    }

    async fn start_tls(plain: &mut LineConn<TcpStream>) -> Result<(), UpstreamError> {
        plain.write_all(b"STLS\r\n").await?;
        let answer = plain.read_line().await?;
        match parse_reply(&answer) {
            Some(Reply::Ok(_)) => Ok(()),
            _ => Err(tls_refused("STLS", &answer)),
        }
    }

    /// The response always goes after the server's `+` (see the module's
    /// note on line lengths).
    fn auth_command(&self, _tag: &str, _response: &str) -> (Zeroizing<String>, bool) {
        (Zeroizing::new("AUTH XOAUTH2\r\n".to_owned()), false)
    }

    fn judge_answer(raw: &[u8], _tag: &str) -> Result<Option<Answer>, UpstreamError> {
        match parse_reply(raw) {
            Some(Reply::Continuation(data)) => Ok(Some(Answer::Continuation(data.to_vec()))),
            Some(Reply::Ok(_)) => Ok(Some(Answer::Accepted)),
            Some(Reply::Err(_)) => Ok(Some(Answer::Refused(None))),
            None => Err(UpstreamError::Protocol(printable(raw))),
        }
    }
}

pub(crate) async fn connect(
    target: &Target,
    mode: UpstreamTls,
) -> Result<Pop3Upstream, UpstreamError> {
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
    pub(crate) fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
