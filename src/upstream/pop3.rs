//! The upstream side of a POP3 session: greeting, STLS, CAPA, and
//! `AUTH XOAUTH2`.
//!
//! The XOAUTH2 response always goes after the server's `+` continuation:
//! POP3 has no capability that promises initial responses, and RFC 2449
//! limits command lines to 255 octets, which a bearer token exceeds.

use std::time::Instant;

use secrecy::SecretString;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{LineConn, Target, UpstreamError};
use crate::config::UpstreamTls;
use crate::protocol::pop3::{Reply, parse_reply};
use crate::sasl::{ErrorChallenge, decode_error_challenge, xoauth2_response};

/// A CAPA answer longer than this many lines is not a real server's.
const MAX_CAPA_LINES: usize = 64;

pub struct Pop3Upstream {
    conn: LineConn<TlsStream<TcpStream>>,
    /// The text after `+OK` in the server's greeting.
    pub greeting_text: Vec<u8>,
    /// The server's CAPA lines (without the terminating `.`), after TLS.
    pub capa: Vec<String>,
    pub connected_at: Instant,
}

pub enum AuthOutcome {
    /// The server's `+OK` line, for the client.
    Accepted { reply: Vec<u8> },
    /// The server's `-ERR` line, and its error challenge if it sent one.
    Refused {
        reply: Vec<u8>,
        challenge: Option<ErrorChallenge>,
    },
}

fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end().to_owned()
}

fn greeting_text(line: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    match parse_reply(line) {
        Some(Reply::Ok(text)) => Ok(text.to_vec()),
        _ => Err(UpstreamError::Protocol(printable(line))),
    }
}

pub async fn connect(target: &Target, mode: UpstreamTls) -> Result<Pop3Upstream, UpstreamError> {
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
            greeting_text(&greeting)?;
            plain.write_all(b"STLS\r\n").await?;
            let answer = plain.read_line().await?;
            if !matches!(parse_reply(&answer), Some(Reply::Ok(_))) {
                return Err(UpstreamError::Protocol(format!(
                    "STLS refused: {}",
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
    let greeting_text = greeting_text(&greeting)?;
    let capa = ask_capa(&mut conn).await?;
    Ok(Pop3Upstream {
        conn,
        greeting_text,
        capa,
        connected_at: Instant::now(),
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
        let response = xoauth2_response(user, token);
        self.conn.write_all(b"AUTH XOAUTH2\r\n").await?;
        let mut sent_response = false;
        let mut challenge = None;
        loop {
            let line = self.conn.read_line().await?;
            match parse_reply(&line) {
                Some(Reply::Continuation(data)) => {
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
                Some(Reply::Ok(_)) => return Ok(AuthOutcome::Accepted { reply: line }),
                Some(Reply::Err(_)) => {
                    return Ok(AuthOutcome::Refused {
                        reply: line,
                        challenge,
                    });
                }
                None => return Err(UpstreamError::Protocol(printable(&line))),
            }
        }
    }

    pub fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
