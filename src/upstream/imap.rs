//! The upstream side of an IMAP session: greeting, STARTTLS, capabilities,
//! and `AUTHENTICATE XOAUTH2` under the client's own tag.

use std::time::Instant;

use secrecy::SecretString;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{LineConn, Target, UpstreamError};
use crate::config::UpstreamTls;
use crate::protocol::imap::{ServerLine, Status, capabilities_in, parse_server_line};
use crate::sasl::{ErrorChallenge, decode_error_challenge, xoauth2_response};

/// Tags the proxy uses for its own commands before the client logs in.
const STARTTLS_TAG: &str = "xp0";
const CAPABILITY_TAG: &str = "xp1";

pub struct ImapUpstream {
    conn: LineConn<TlsStream<TcpStream>>,
    /// The server's greeting line as received (CRLF included).
    pub greeting: Vec<u8>,
    /// The server's pre-authentication capabilities, after TLS.
    pub capabilities: Vec<String>,
    pub connected_at: Instant,
}

/// How the upstream answered the proxy's AUTHENTICATE.
pub enum AuthOutcome {
    /// Everything the server sent up to and including its tagged OK, for the
    /// client (the OK is under the client's tag already).
    Accepted { reply: Vec<u8> },
    /// The server's tagged NO/BAD line, and its error challenge if it sent one.
    Refused {
        reply: Vec<u8>,
        challenge: Option<ErrorChallenge>,
    },
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

fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end().to_owned()
}

pub async fn connect(target: &Target, mode: UpstreamTls) -> Result<ImapUpstream, UpstreamError> {
    let tcp = target.tcp().await?;
    let (mut conn, greeting) = match mode {
        UpstreamTls::Implicit => {
            let mut conn = LineConn::new(target.tls(tcp).await?, target.timeout);
            let greeting = conn.read_line().await?;
            (conn, greeting)
        }
        UpstreamTls::Starttls => {
            let mut plain = LineConn::new(tcp, target.timeout);
            let greeting = plain.read_line().await?;
            if !is_ok_greeting(&greeting) {
                return Err(UpstreamError::Protocol(printable(&greeting)));
            }
            plain
                .write_all(format!("{STARTTLS_TAG} STARTTLS\r\n").as_bytes())
                .await?;
            let answer = read_tagged(&mut plain, STARTTLS_TAG).await?;
            if !matches!(
                parse_server_line(&answer),
                Some(ServerLine::Tagged {
                    status: Status::Ok,
                    ..
                })
            ) {
                return Err(UpstreamError::Protocol(format!(
                    "STARTTLS refused: {}",
                    printable(&answer)
                )));
            }
            plain.discard_buffered();
            let (tcp, _) = plain.into_parts();
            (
                LineConn::new(target.tls(tcp).await?, target.timeout),
                greeting,
            )
        }
    };
    if !is_ok_greeting(&greeting) {
        return Err(UpstreamError::Protocol(printable(&greeting)));
    }
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
        connected_at: Instant::now(),
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
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
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

    /// `TAG AUTHENTICATE XOAUTH2`, with the initial response on the same line
    /// when the server has SASL-IR, after its continuation otherwise. An error
    /// challenge is answered with an empty line so the server ends the
    /// exchange with its tagged NO.
    pub async fn authenticate(
        &mut self,
        tag: &str,
        user: &str,
        token: &SecretString,
    ) -> Result<AuthOutcome, UpstreamError> {
        let response = xoauth2_response(user, token);
        if self.supports("SASL-IR") {
            let line = Zeroizing::new(format!(
                "{tag} AUTHENTICATE XOAUTH2 {}\r\n",
                response.as_str()
            ));
            self.conn.write_all(line.as_bytes()).await?;
        } else {
            self.conn
                .write_all(format!("{tag} AUTHENTICATE XOAUTH2\r\n").as_bytes())
                .await?;
        }
        let mut sent_response = self.supports("SASL-IR");
        let mut challenge = None;
        let mut reply = Vec::new();
        loop {
            let line = self.conn.read_line().await?;
            match parse_server_line(&line) {
                Some(ServerLine::Continuation(data)) => {
                    if sent_response {
                        challenge =
                            decode_error_challenge(data).or(Some(ErrorChallenge::default()));
                        self.conn.write_all(b"\r\n").await?;
                    } else {
                        let line = Zeroizing::new(format!("{}\r\n", response.as_str()));
                        self.conn.write_all(line.as_bytes()).await?;
                        sent_response = true;
                    }
                }
                Some(ServerLine::Untagged(_)) => reply.extend_from_slice(&line),
                Some(ServerLine::Tagged { tag: t, status, .. }) if t == tag.as_bytes() => {
                    reply.extend_from_slice(&line);
                    return Ok(match status {
                        Status::Ok => AuthOutcome::Accepted { reply },
                        _ => AuthOutcome::Refused {
                            reply: line,
                            challenge,
                        },
                    });
                }
                _ => return Err(UpstreamError::Protocol(printable(&line))),
            }
        }
    }

    /// The TLS stream and any bytes the server sent past its OK.
    pub fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
