//! The upstream side of an IMAP session: greeting, STARTTLS, capabilities,
//! and `AUTHENTICATE XOAUTH2` under the client's own tag.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{
    Answer, Dialect, LineConn, Target, UpstreamError, connect_tls, printable, tls_refused,
};
use crate::config::UpstreamTls;
use crate::protocol::imap::{ServerLine, Status, capabilities_in, parse_server_line};

/// Tags the proxy uses for its own commands before the client logs in.
const STARTTLS_TAG: &str = "xp0";
const CAPABILITY_TAG: &str = "xp1";

pub(crate) struct ImapUpstream {
    conn: LineConn<TlsStream<TcpStream>>,
    /// The server's greeting line as received (CRLF included).
    pub greeting: Vec<u8>,
    /// The server's pre-authentication capabilities, after TLS.
    pub capabilities: Vec<String>,
}

fn is_ok_greeting(line: &[u8]) -> bool {
    matches!(parse_server_line(line), Some(ServerLine::Untagged(rest)) if starts_with_word(rest, b"OK"))
}

fn starts_with_word(rest: &[u8], word: &[u8]) -> bool {
    rest.len() >= word.len()
        && rest[..word.len()].eq_ignore_ascii_case(word)
        && rest
            .get(word.len())
            .is_none_or(|b| !b.is_ascii_alphanumeric())
}

impl Dialect for ImapUpstream {
    fn conn(&mut self) -> &mut LineConn<TlsStream<TcpStream>> {
        &mut self.conn
    }

    fn judge_greeting(raw: &[u8]) -> Result<bool, UpstreamError> {
        if is_ok_greeting(raw) {
            Ok(true)
        } else {
            Err(UpstreamError::Protocol(printable(raw)))
        }
    }

    async fn start_tls(plain: &mut LineConn<TcpStream>) -> Result<(), UpstreamError> {
        plain
            .write_all(format!("{STARTTLS_TAG} STARTTLS\r\n").as_bytes())
            .await?;
        let answer = read_tagged(plain, STARTTLS_TAG).await?;
        match parse_server_line(&answer) {
            Some(ServerLine::Tagged {
                status: Status::Ok, ..
            }) => Ok(()),
            _ => Err(tls_refused("STARTTLS", &answer)),
        }
    }

    /// `TAG AUTHENTICATE XOAUTH2`, with the initial response on the same
    /// line when the server has SASL-IR.
    fn auth_command(&self, tag: &str, response: &str) -> (Zeroizing<String>, bool) {
        if self.supports("SASL-IR") {
            let line = format!("{tag} AUTHENTICATE XOAUTH2 {response}\r\n");
            (Zeroizing::new(line), true)
        } else {
            let line = format!("{tag} AUTHENTICATE XOAUTH2\r\n");
            (Zeroizing::new(line), false)
        }
    }

    fn judge_answer(raw: &[u8], tag: &str) -> Result<Option<Answer>, UpstreamError> {
        Ok(Some(match parse_server_line(raw) {
            Some(ServerLine::Continuation(data)) => Answer::Continuation(data.to_vec()),
            Some(ServerLine::Untagged(_)) => Answer::Data,
            Some(ServerLine::Tagged { tag: t, status, .. }) if t == tag.as_bytes() => {
                match status {
                    Status::Ok => Answer::Accepted,
                    _ => Answer::Refused(None),
                }
            }
            _ => return Err(UpstreamError::Protocol(printable(raw))),
        }))
    }
}

pub(crate) async fn connect(
    target: &Target,
    mode: UpstreamTls,
) -> Result<ImapUpstream, UpstreamError> {
    let (mut conn, greeting) = connect_tls::<ImapUpstream>(target, mode).await?;
    // Capabilities announced in plaintext are void after STARTTLS (RFC 3501 6.2.1).
    let announced = match mode {
        UpstreamTls::Implicit => capabilities_in(&greeting),
        UpstreamTls::Starttls => None,
    };
    let capabilities = match announced {
        Some(caps) => caps,
        None => ask_capabilities(&mut conn).await?,
    };
    Ok(ImapUpstream {
        conn,
        greeting,
        capabilities,
    })
}

async fn ask_capabilities(
    conn: &mut LineConn<TlsStream<TcpStream>>,
) -> Result<Vec<String>, UpstreamError> {
    conn.write_all(format!("{CAPABILITY_TAG} CAPABILITY\r\n").as_bytes())
        .await?;
    let mut caps = Vec::new();
    loop {
        let line = conn.read_line().await?;
        match parse_server_line(&line) {
            Some(ServerLine::Untagged(_)) => {
                if let Some(found) = capabilities_in(&line) {
                    caps = found;
                }
            }
            Some(ServerLine::Tagged { tag, status, .. }) if tag == CAPABILITY_TAG.as_bytes() => {
                if status != Status::Ok {
                    return Err(UpstreamError::Protocol(printable(&line)));
                }
                return Ok(caps);
            }
            _ => return Err(UpstreamError::Protocol(printable(&line))),
        }
    }
}

async fn read_tagged<S>(conn: &mut LineConn<S>, tag: &str) -> Result<Vec<u8>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let line = conn.read_line().await?;
        match parse_server_line(&line) {
            Some(ServerLine::Untagged(_)) => continue,
            Some(ServerLine::Tagged { tag: t, .. }) if t == tag.as_bytes() => return Ok(line),
            _ => return Err(UpstreamError::Protocol(printable(&line))),
        }
    }
}

impl ImapUpstream {
    fn supports(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(capability))
    }

    /// The TLS stream and any bytes the server sent past its OK.
    pub(crate) fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
