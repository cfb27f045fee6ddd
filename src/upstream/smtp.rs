//! The upstream side of an SMTP submission session: greeting, EHLO,
//! STARTTLS (port 587), EHLO again with the client's name, and
//! `AUTH XOAUTH2` with the initial response (RFC 4954 allows 12288 octets).

use std::time::Instant;

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use super::{LineConn, Target, UpstreamError};
use crate::config::UpstreamTls;
use crate::protocol::smtp::{MAX_REPLY, SmtpReply, parse_reply};
use crate::sasl::{ErrorChallenge, decode_error_challenge, xoauth2_response};

/// The name the proxy gives in its own EHLO before STARTTLS; the client's
/// own name is used for the EHLO that counts, after TLS.
const PROXY_EHLO_NAME: &str = "localhost";

pub struct SmtpUpstream {
    conn: LineConn<TlsStream<TcpStream>>,
    /// The server's greeting reply as received.
    pub greeting: Vec<u8>,
    pub connected_at: Instant,
}

pub enum AuthOutcome {
    /// The server's 235 reply, for the client.
    Accepted { reply: Vec<u8> },
    /// The server's refusal (4xx/5xx) as received, and its error challenge if any.
    Refused {
        reply: Vec<u8>,
        code: u16,
        challenge: Option<ErrorChallenge>,
    },
}

fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end().to_owned()
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

pub async fn connect(target: &Target, mode: UpstreamTls) -> Result<SmtpUpstream, UpstreamError> {
    let tcp = target.tcp().await?;
    let (conn, greeting) = match mode {
        UpstreamTls::Implicit => {
            let mut conn = LineConn::new(target.tls(tcp).await?, target.timeout);
            let (greeting, reply) = read_reply(&mut conn).await?;
            expect(220, &greeting, &reply)?;
            (conn, greeting)
        }
        UpstreamTls::Starttls => {
            let mut plain = LineConn::new(tcp, target.timeout);
            let (greeting, reply) = read_reply(&mut plain).await?;
            expect(220, &greeting, &reply)?;
            plain
                .write_all(format!("EHLO {PROXY_EHLO_NAME}\r\n").as_bytes())
                .await?;
            let (raw, reply) = read_reply(&mut plain).await?;
            expect(250, &raw, &reply)?;
            plain.write_all(b"STARTTLS\r\n").await?;
            let (raw, reply) = read_reply(&mut plain).await?;
            expect(220, &raw, &reply)?;
            plain.discard_buffered();
            let (tcp, _) = plain.into_parts();
            (
                LineConn::new(target.tls(tcp).await?, target.timeout),
                greeting,
            )
        }
    };
    Ok(SmtpUpstream {
        conn,
        greeting,
        connected_at: Instant::now(),
    })
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
        let response = xoauth2_response(user, token);
        let line = Zeroizing::new(format!("AUTH XOAUTH2 {}\r\n", response.as_str()));
        self.conn.write_all(line.as_bytes()).await?;
        let mut challenge = None;
        loop {
            let (raw, reply) = read_reply(&mut self.conn).await?;
            match reply.code {
                235 => return Ok(AuthOutcome::Accepted { reply: raw }),
                334 => {
                    let data = reply.lines.first().map(Vec::as_slice).unwrap_or_default();
                    challenge = decode_error_challenge(data).or(Some(ErrorChallenge::default()));
                    self.conn.write_all(b"\r\n").await?;
                }
                code => {
                    return Ok(AuthOutcome::Refused {
                        reply: raw,
                        code,
                        challenge,
                    });
                }
            }
        }
    }

    pub fn into_parts(self) -> (TlsStream<TcpStream>, Vec<u8>) {
        self.conn.into_parts()
    }
}
