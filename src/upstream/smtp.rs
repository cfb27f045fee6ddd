//! The upstream side of an SMTP submission session: greeting, EHLO,
//! STARTTLS (port 587), EHLO again with the client's name, and
//! `AUTH XOAUTH2` with the initial response (RFC 4954 allows 12288 octets).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{Answer, Dialect, LineConn, Target, UpstreamError, connect_tls, printable};
use crate::config::UpstreamTls;
use crate::protocol::smtp::{MAX_REPLY, SmtpReply, parse_reply};

/// The name the proxy gives in its own EHLO before STARTTLS; the client's
/// own name is used for the EHLO that counts, after TLS.
const PROXY_EHLO_NAME: &str = "localhost";

pub(crate) struct SmtpUpstream {
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
        raw.extend_from_slice(&conn.read_line().await?);
        if let Some(reply) = judge_reply(&raw)? {
            return Ok((raw, reply));
        }
    }
}

/// The reply in `raw` (whole lines), or `None` while its last line is
/// still to come.
fn judge_reply(raw: &[u8]) -> Result<Option<SmtpReply>, UpstreamError> {
    if raw.len() > MAX_REPLY {
        return Err(UpstreamError::Protocol("reply too long".into()));
    }
    match parse_reply(raw) {
        Ok(reply) => Ok(reply.map(|(reply, _)| reply)),
        Err(e) => Err(UpstreamError::Protocol(format!("{e}: {}", printable(raw)))),
    }
}

impl Dialect for SmtpUpstream {
    fn conn(&mut self) -> &mut LineConn<TlsStream<TcpStream>> {
        &mut self.conn
    }

    fn judge_greeting(raw: &[u8]) -> Result<bool, UpstreamError> {
        match judge_reply(raw)? {
            Some(reply) => expect(220, raw, &reply).map(|()| true),
            None => Ok(false),
        }
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

    /// RFC 4954 allows the initial response on the AUTH line, so a 334 can
    /// only be an error challenge.
    fn auth_command(&self, _tag: &str, response: &str) -> (Zeroizing<String>, bool) {
        (Zeroizing::new(format!("AUTH XOAUTH2 {response}\r\n")), true)
    }

    fn judge_answer(raw: &[u8], _tag: &str) -> Result<Option<Answer>, UpstreamError> {
        let Some(reply) = judge_reply(raw)? else {
            return Ok(None);
        };
        Ok(Some(match reply.code {
            235 => Answer::Accepted,
            334 => Answer::Continuation(reply.lines.into_iter().next().unwrap_or_default()),
            code => Answer::Refused(Some(code)),
        }))
    }
}

pub(crate) async fn connect(
    target: &Target,
    mode: UpstreamTls,
) -> Result<SmtpUpstream, UpstreamError> {
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
    pub(crate) async fn ehlo(&mut self, domain: &str) -> Result<Vec<String>, UpstreamError> {
        self.conn
            .write_all(format!("EHLO {domain}\r\n").as_bytes())
            .await?;
        let (raw, reply) = read_reply(&mut self.conn).await?;
        expect(250, &raw, &reply)?;
        Ok(reply.text_lines())
    }

    pub(crate) fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
