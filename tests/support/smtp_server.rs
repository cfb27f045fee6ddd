//! A fake Office-365-like SMTP submission server (port 587 style: STARTTLS, then
//! `AUTH LOGIN XOAUTH2`) that only accepts SASL XOAUTH2.

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpStream;

use super::conn::{
    AbortOnDrop, LineConn, ServerLog, check_xoauth2, decode_xoauth2, spawn_accept_loop, trim_eol,
};
use super::pki::TestPki;
use super::token_server::TokenState;

const MAX_LINE: usize = 64 * 1024;
const MAX_DATA_LINE: usize = 4 * 1024 * 1024;
const MAX_CHUNK: usize = 256 * 1024 * 1024;
const HOST: &str = "fake.office365.test";

pub const GREETING: &str = "220 fake.office365.test Microsoft ESMTP MAIL Service ready";
pub const AUTH_OK: &str = "235 2.7.0 Authentication successful";
pub const AUTH_FAILED: &str = "535 5.7.3 Authentication unsuccessful";
pub const NOT_AUTHENTICATED: &str = "530 5.7.57 Client not authenticated to send mail";
pub const TENANT_DISABLED: &str =
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";
pub const THREAD_LIMIT: &str = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";

/// What the server answers to a complete XOAUTH2 exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SmtpAuthReply {
    /// 235 for a valid token, 535 5.7.3 otherwise.
    #[default]
    Normal,
    /// Always `535 5.7.139 … SmtpClientAuthentication is disabled for the Tenant.`
    TenantDisabled,
    /// Always `432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded`.
    ThreadLimit,
}

#[derive(Clone, Debug)]
pub struct SmtpOpts {
    /// The only `user=` accepted in XOAUTH2.
    pub user: String,
    pub auth_reply: SmtpAuthReply,
    /// Send a Dovecot/Google-style `334 <base64 JSON>` error challenge before refusing a bad
    /// token (Office 365 answers 535 at once).
    pub error_challenge: bool,
    /// TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
    /// Plaintext sent in the same write as the `220` to STARTTLS, as a
    /// man in the middle would inject it; a correct client discards it.
    pub inject_after_starttls: Option<Vec<u8>>,
}

impl Default for SmtpOpts {
    fn default() -> Self {
        SmtpOpts {
            user: super::USER.to_owned(),
            auth_reply: SmtpAuthReply::Normal,
            error_challenge: false,
            implicit_tls: false,
            inject_after_starttls: None,
        }
    }
}

/// A message the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The reverse path without angle brackets (empty for `<>`).
    pub from: String,
    pub to: Vec<String>,
    /// DATA: the bytes between 354 and the final `.`, unstuffed. BDAT: the chunks joined.
    pub body: Vec<u8>,
    /// Received with BDAT rather than DATA.
    pub bdat: bool,
}

pub struct SmtpState {
    log: Arc<ServerLog>,
    received: Mutex<Vec<ReceivedMail>>,
}

impl Deref for SmtpState {
    type Target = ServerLog;

    fn deref(&self) -> &ServerLog {
        &self.log
    }
}

impl SmtpState {
    /// Bodies of accepted messages, in order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        lock(&self.received)
            .iter()
            .map(|m| m.body.clone())
            .collect()
    }

    /// Accepted messages with their envelopes.
    pub fn received(&self) -> Vec<ReceivedMail> {
        lock(&self.received).clone()
    }

    /// Removes and returns the first accepted message with `rcpt` among its recipients, so a
    /// long run (`examples/soak.rs`) does not keep every message.
    pub fn take_received_to(&self, rcpt: &str) -> Option<ReceivedMail> {
        let mut received = lock(&self.received);
        let i = received
            .iter()
            .position(|m| m.to.iter().any(|t| t == rcpt))?;
        Some(received.remove(i))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct FakeSmtpServer {
    pub addr: SocketAddr,
    pub state: Arc<SmtpState>,
    _accept: AbortOnDrop,
}

impl FakeSmtpServer {
    pub async fn start(pki: &TestPki, tokens: Arc<TokenState>, opts: SmtpOpts) -> Self {
        Self::start_with_config(pki.server_config.clone(), tokens, opts).await
    }

    pub async fn start_with_config(
        tls_config: Arc<rustls::ServerConfig>,
        tokens: Arc<TokenState>,
        opts: SmtpOpts,
    ) -> Self {
        let state = Arc::new(SmtpState {
            log: Arc::new(ServerLog::default()),
            received: Mutex::new(Vec::new()),
        });
        let opts = Arc::new(opts);
        let st = state.clone();
        let (addr, accept) = spawn_accept_loop("FakeSmtpServer", move |tcp| {
            let session = Session {
                opts: opts.clone(),
                state: st.clone(),
                tokens: tokens.clone(),
                tls_config: tls_config.clone(),
                greeted: false,
                authenticated: false,
                from: None,
                to: Vec::new(),
                chunks: None,
                queued: 0,
            };
            async move {
                let _guard = session.state.log.open_connection();
                let _ = session.run(tcp).await;
            }
        })
        .await;
        FakeSmtpServer {
            addr,
            state,
            _accept: accept,
        }
    }
}

struct Session {
    opts: Arc<SmtpOpts>,
    state: Arc<SmtpState>,
    tokens: Arc<TokenState>,
    tls_config: Arc<rustls::ServerConfig>,
    greeted: bool,
    authenticated: bool,
    from: Option<String>,
    to: Vec<String>,
    /// BDAT chunks received so far in this transaction.
    chunks: Option<Vec<u8>>,
    queued: usize,
}

enum Next {
    Continue,
    StartTls,
    Close,
}

impl Session {
    async fn run(mut self, tcp: TcpStream) -> io::Result<()> {
        let mut conn = LineConn::plain(tcp);
        if self.opts.implicit_tls {
            conn = conn.accept_tls(self.tls_config.clone()).await?;
        }
        conn.write_all(format!("{GREETING}\r\n").as_bytes()).await?;
        loop {
            let line = match conn.read_line(MAX_LINE).await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    conn.write_all(b"500 5.5.6 Line too long\r\n").await?;
                    break;
                }
                Err(e) => return Err(e),
            };
            self.state.log.record_command(self.authenticated, &line);
            match self.handle(&mut conn, &line).await? {
                Next::Continue => {}
                Next::StartTls => {
                    conn = conn.accept_tls(self.tls_config.clone()).await?;
                    self.greeted = false;
                    self.reset();
                }
                Next::Close => break,
            }
        }
        let _ = conn.shutdown().await;
        Ok(())
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
        self.chunks = None;
    }

    fn ehlo(&self, tls: bool) -> String {
        let mut exts = vec!["SIZE 157286400", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES"];
        exts.push(if tls {
            "AUTH LOGIN XOAUTH2"
        } else {
            "STARTTLS"
        });
        exts.extend(["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"]);
        let mut reply = format!("250-{HOST} Hello [127.0.0.1]\r\n");
        for (i, ext) in exts.iter().enumerate() {
            let sep = if i + 1 == exts.len() { ' ' } else { '-' };
            reply.push_str(&format!("250{sep}{ext}\r\n"));
        }
        reply
    }

    async fn handle(&mut self, conn: &mut LineConn, line: &[u8]) -> io::Result<Next> {
        let text = String::from_utf8_lossy(trim_eol(line)).into_owned();
        let (verb, args) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let verb = verb.to_ascii_uppercase();
        let args = args.trim();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" if args.is_empty() => "501 5.5.4 Invalid domain name\r\n".into(),
            "EHLO" => {
                self.greeted = true;
                self.reset();
                self.ehlo(conn.is_tls())
            }
            "HELO" => {
                self.greeted = true;
                self.reset();
                format!("250 {HOST} Hello [127.0.0.1]\r\n")
            }
            "STARTTLS" if conn.is_tls() => "503 5.5.1 TLS already active\r\n".into(),
            "STARTTLS" => {
                let mut reply = b"220 2.0.0 SMTP server ready\r\n".to_vec();
                if let Some(injected) = &self.opts.inject_after_starttls {
                    reply.extend_from_slice(injected);
                }
                conn.write_all(&reply).await?;
                return Ok(Next::StartTls);
            }
            "QUIT" => {
                conn.write_all(b"221 2.0.0 Service closing transmission channel\r\n")
                    .await?;
                return Ok(Next::Close);
            }
            "NOOP" => "250 2.0.0 OK\r\n".into(),
            "RSET" => {
                self.reset();
                "250 2.0.0 Resetting\r\n".into()
            }
            "AUTH" if !conn.is_tls() => format!("{NOT_AUTHENTICATED}\r\n"),
            "AUTH" if !self.greeted => "503 5.5.2 Send hello first\r\n".into(),
            "AUTH" if self.authenticated => "503 5.5.1 Bad sequence of commands\r\n".into(),
            "AUTH" => self.auth(conn, args).await?,
            "BDAT" => return self.bdat(conn, args).await,
            "MAIL" | "RCPT" | "DATA" if !self.authenticated => format!("{NOT_AUTHENTICATED}\r\n"),
            "MAIL" if self.from.is_some() => "503 5.5.1 Sender already specified\r\n".into(),
            "MAIL" => match path_arg(args, "FROM:") {
                Some(from) => {
                    self.from = Some(from);
                    "250 2.1.0 Sender OK\r\n".into()
                }
                None => "501 5.5.4 Invalid arguments\r\n".into(),
            },
            "RCPT" if self.from.is_none() => "503 5.5.1 Need MAIL command\r\n".into(),
            "RCPT" => match path_arg(args, "TO:") {
                Some(to) => {
                    self.to.push(to);
                    "250 2.1.5 Recipient OK\r\n".into()
                }
                None => "501 5.5.4 Invalid arguments\r\n".into(),
            },
            "DATA" if self.to.is_empty() || self.chunks.is_some() => {
                "503 5.5.1 Bad sequence of commands\r\n".into()
            }
            "DATA" => {
                conn.write_all(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
                    .await?;
                let body = read_data(conn).await?;
                self.queue(body, false)
            }
            _ => "500 5.3.3 Unrecognized command\r\n".into(),
        };
        conn.write_all(reply.as_bytes()).await?;
        Ok(Next::Continue)
    }

    fn queue(&mut self, body: Vec<u8>, bdat: bool) -> String {
        let mail = ReceivedMail {
            from: self.from.take().unwrap_or_default(),
            to: std::mem::take(&mut self.to),
            body,
            bdat,
        };
        lock(&self.state.received).push(mail);
        self.reset();
        self.queued += 1;
        format!(
            "250 2.6.0 <{}@{HOST}> [InternalId={}] Queued mail for delivery\r\n",
            self.queued, self.queued
        )
    }

    async fn bdat(&mut self, conn: &mut LineConn, args: &str) -> io::Result<Next> {
        let mut words = args.split_whitespace();
        let size = words.next().and_then(|s| s.parse::<usize>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                conn.write_all(b"501 5.5.4 Invalid arguments\r\n").await?;
                return Ok(Next::Close);
            }
        };
        let Some(size) = size.filter(|&s| s <= MAX_CHUNK) else {
            // The chunk length is unknown, so the stream cannot be followed any further.
            conn.write_all(b"501 5.5.4 Invalid arguments\r\n").await?;
            return Ok(Next::Close);
        };
        let chunk = conn.read_exact(size).await?;
        let reply = if !self.authenticated {
            format!("{NOT_AUTHENTICATED}\r\n")
        } else if self.to.is_empty() {
            "503 5.5.1 Bad sequence of commands\r\n".into()
        } else {
            let body = self.chunks.get_or_insert_with(Vec::new);
            body.extend_from_slice(&chunk);
            if last {
                let body = self.chunks.take().unwrap_or_default();
                self.queue(body, true)
            } else {
                format!("250 2.0.0 {size} bytes received\r\n")
            }
        };
        conn.write_all(reply.as_bytes()).await?;
        Ok(Next::Continue)
    }

    async fn auth(&mut self, conn: &mut LineConn, args: &str) -> io::Result<String> {
        let mut words = args.split_whitespace();
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        match mechanism.as_str() {
            "XOAUTH2" => {}
            "LOGIN" => {
                // Basic authentication is off: go through the dialogue, then refuse.
                if initial.is_none() {
                    conn.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                    if read_sasl_line(conn).await? == b"*" {
                        return Ok("501 5.0.0 Authentication canceled\r\n".into());
                    }
                }
                conn.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                if read_sasl_line(conn).await? == b"*" {
                    return Ok("501 5.0.0 Authentication canceled\r\n".into());
                }
                return Ok("535 5.7.139 Authentication unsuccessful, basic authentication is disabled.\r\n".into());
            }
            "" => return Ok("501 5.5.4 Invalid arguments\r\n".into()),
            _ => return Ok("504 5.7.4 Unrecognized authentication type\r\n".into()),
        }
        let response = match initial {
            Some(ir) if ir == "=" => Vec::new(),
            Some(ir) => ir.into_bytes(),
            None => {
                conn.write_all(b"334 \r\n").await?;
                read_sasl_line(conn).await?
            }
        };
        if response == b"*" {
            return Ok("501 5.0.0 Authentication canceled\r\n".into());
        }
        match self.opts.auth_reply {
            SmtpAuthReply::TenantDisabled => {
                self.state
                    .log
                    .record_auth_attempt(decode_xoauth2(&response));
                return Ok(format!("{TENANT_DISABLED}\r\n"));
            }
            SmtpAuthReply::ThreadLimit => {
                self.state
                    .log
                    .record_auth_attempt(decode_xoauth2(&response));
                return Ok(format!("{THREAD_LIMIT}\r\n"));
            }
            SmtpAuthReply::Normal => {}
        }
        if check_xoauth2(&self.state.log, &self.tokens, &self.opts.user, &response) {
            self.authenticated = true;
            return Ok(format!("{AUTH_OK}\r\n"));
        }
        if self.opts.error_challenge {
            conn.write_all(format!("334 {}\r\n", super::error_challenge_b64()).as_bytes())
                .await?;
            read_sasl_line(conn).await?;
        }
        Ok(format!("{AUTH_FAILED}\r\n"))
    }
}

async fn read_sasl_line(conn: &mut LineConn) -> io::Result<Vec<u8>> {
    match conn.read_line(MAX_LINE).await? {
        Some(line) => Ok(trim_eol(&line).to_vec()),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Reads DATA up to the `.` line, removing dot-stuffing.
async fn read_data(conn: &mut LineConn) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(line) = conn.read_line(MAX_DATA_LINE).await? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        if line == b".\r\n" {
            return Ok(body);
        }
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
    }
}

/// `FROM:<a@b> SIZE=1` → `a@b`.
fn path_arg(args: &str, keyword: &str) -> Option<String> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}
