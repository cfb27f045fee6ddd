//! A fake IMAP server that only accepts SASL XOAUTH2, shaped after Office 365 (and Dovecot for
//! the greeting with capabilities and the error challenge).

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpStream;

use super::conn::{
    AbortOnDrop, LineConn, ServerLog, check_xoauth2, literal_suffix, spawn_accept_loop, trim_eol,
};
use super::pki::TestPki;
use super::token_server::TokenState;

const MAX_LINE: usize = 64 * 1024;
const MAX_LITERAL: usize = 256 * 1024 * 1024;

const PRE_AUTH_CAPS: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";
/// Capabilities in the tagged OK of a successful AUTHENTICATE.
pub const POST_AUTH_CAPS: &str =
    "IMAP4 IMAP4rev1 UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";
pub const OFFICE_GREETING: &str = "* OK The Microsoft Exchange IMAP4 service is ready.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (port 993).
    Implicit,
    /// Plain text until STARTTLS; STARTTLS and LOGINDISABLED advertised before it.
    StartTls,
}

#[derive(Clone, Debug)]
pub struct ImapOpts {
    pub tls: Tls,
    /// Dovecot-style `* OK [CAPABILITY …] Dovecot (Debian) ready.` instead of Office 365's
    /// `* OK The Microsoft Exchange IMAP4 service is ready.`
    pub greeting_capabilities: bool,
    /// Advertise and accept SASL-IR (an initial response on the AUTHENTICATE line).
    pub sasl_ir: bool,
    /// The only `user=` accepted in XOAUTH2.
    pub user: String,
    /// The mailbox's initial messages (message 1 first).
    pub messages: Vec<Vec<u8>>,
    /// OK to AUTHENTICATE, then `BAD User is authenticated but not connected.` and `* BYE` to
    /// the next command (Office 365 when the token's user may not open the mailbox).
    pub ok_then_not_connected: bool,
}

impl Default for ImapOpts {
    fn default() -> Self {
        ImapOpts {
            tls: Tls::Implicit,
            greeting_capabilities: false,
            sasl_ir: true,
            user: super::USER.to_owned(),
            messages: Vec::new(),
            ok_then_not_connected: false,
        }
    }
}

pub struct ImapState {
    log: Arc<ServerLog>,
    mailbox: Mutex<Vec<Vec<u8>>>,
    appended: Mutex<Vec<(String, Vec<u8>)>>,
}

impl Deref for ImapState {
    type Target = ServerLog;

    fn deref(&self) -> &ServerLog {
        &self.log
    }
}

impl ImapState {
    /// Message bodies received by APPEND, in order.
    pub fn appended(&self) -> Vec<Vec<u8>> {
        lock(&self.appended)
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// (mailbox name as sent, message) for each APPEND.
    pub fn appended_to(&self) -> Vec<(String, Vec<u8>)> {
        lock(&self.appended).clone()
    }

    /// The current mailbox: the initial messages followed by appended ones.
    pub fn mailbox(&self) -> Vec<Vec<u8>> {
        lock(&self.mailbox).clone()
    }

    /// Removes and returns the message of the first APPEND to `mailbox_name` still recorded,
    /// and takes it out of the mailbox too (the last message equal to it), so a long run
    /// (`examples/soak.rs`) does not keep every appended message. The initial messages keep
    /// their numbers as long as nothing equal to them is appended.
    pub fn take_appended_to(&self, mailbox_name: &str) -> Option<Vec<u8>> {
        let message = {
            let mut appended = lock(&self.appended);
            let i = appended.iter().position(|(name, _)| name == mailbox_name)?;
            appended.remove(i).1
        };
        let mut mailbox = lock(&self.mailbox);
        if let Some(j) = mailbox.iter().rposition(|m| *m == message) {
            mailbox.remove(j);
        }
        Some(message)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct FakeImapServer {
    pub addr: SocketAddr,
    pub state: Arc<ImapState>,
    _accept: AbortOnDrop,
}

impl FakeImapServer {
    pub async fn start(pki: &TestPki, tokens: Arc<TokenState>, opts: ImapOpts) -> Self {
        Self::start_with_config(pki.server_config.clone(), tokens, opts).await
    }

    /// With another TLS configuration (e.g. [`TestPki::server_config_for`] for a certificate
    /// with the wrong name).
    pub async fn start_with_config(
        tls_config: Arc<rustls::ServerConfig>,
        tokens: Arc<TokenState>,
        opts: ImapOpts,
    ) -> Self {
        let state = Arc::new(ImapState {
            log: Arc::new(ServerLog::default()),
            mailbox: Mutex::new(opts.messages.clone()),
            appended: Mutex::new(Vec::new()),
        });
        let opts = Arc::new(opts);
        let st = state.clone();
        let (addr, accept) = spawn_accept_loop("FakeImapServer", move |tcp| {
            let session = Session {
                opts: opts.clone(),
                state: st.clone(),
                tokens: tokens.clone(),
                tls_config: tls_config.clone(),
                authenticated: false,
                selected: false,
                not_connected_trap: false,
            };
            async move {
                let _guard = session.state.log.open_connection();
                let _ = session.run(tcp).await;
            }
        })
        .await;
        FakeImapServer {
            addr,
            state,
            _accept: accept,
        }
    }
}

struct Session {
    opts: Arc<ImapOpts>,
    state: Arc<ImapState>,
    tokens: Arc<TokenState>,
    tls_config: Arc<rustls::ServerConfig>,
    authenticated: bool,
    selected: bool,
    not_connected_trap: bool,
}

/// A command with its literals read; `text` has the literal markers but not the literal data.
struct Command {
    text: String,
    literals: Vec<Vec<u8>>,
}

enum Next {
    Continue,
    StartTls,
    Close,
}

impl Session {
    async fn run(mut self, tcp: TcpStream) -> io::Result<()> {
        let mut conn = LineConn::plain(tcp);
        if self.opts.tls == Tls::Implicit {
            conn = conn.accept_tls(self.tls_config.clone()).await?;
        }
        let greeting = if self.opts.greeting_capabilities {
            format!(
                "* OK [CAPABILITY {}] Dovecot (Debian) ready.\r\n",
                self.capabilities(&conn)
            )
        } else {
            format!("{OFFICE_GREETING}\r\n")
        };
        conn.write_all(greeting.as_bytes()).await?;
        loop {
            let cmd = match self.read_command(&mut conn).await {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    conn.write_all(format!("* BAD {e}\r\n* BYE Too long.\r\n").as_bytes())
                        .await?;
                    break;
                }
                Err(e) => return Err(e),
            };
            match self.handle(&mut conn, cmd).await? {
                Next::Continue => {}
                Next::StartTls => conn = conn.accept_tls(self.tls_config.clone()).await?,
                Next::Close => break,
            }
        }
        let _ = conn.shutdown().await;
        Ok(())
    }

    fn capabilities(&self, conn: &LineConn) -> String {
        let mut caps = PRE_AUTH_CAPS.to_owned();
        if !self.opts.sasl_ir {
            caps = caps.replace(" SASL-IR", "");
        }
        if self.opts.tls == Tls::StartTls && !conn.is_tls() {
            caps.push_str(" STARTTLS LOGINDISABLED");
        }
        caps
    }

    /// Reads a command line and any literals it announces (answering `+` to synchronizing
    /// ones). Records the line in the log.
    async fn read_command(&self, conn: &mut LineConn) -> io::Result<Option<Command>> {
        let mut text = Vec::new();
        let mut literals = Vec::new();
        loop {
            let Some(line) = conn.read_line(MAX_LINE).await? else {
                return if text.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            };
            let part = trim_eol(&line);
            text.extend_from_slice(part);
            let Some((n, non_sync)) = literal_suffix(part) else {
                break;
            };
            if n > MAX_LITERAL {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "literal too large",
                ));
            }
            if !non_sync {
                conn.write_all(b"+ Ready for additional command text.\r\n")
                    .await?;
            }
            literals.push(conn.read_exact(n).await?);
        }
        self.state.log.record_command(self.authenticated, &text);
        Ok(Some(Command {
            text: String::from_utf8_lossy(&text).into_owned(),
            literals,
        }))
    }

    async fn handle(&mut self, conn: &mut LineConn, cmd: Command) -> io::Result<Next> {
        let mut words = cmd.text.splitn(3, ' ');
        let tag = words.next().unwrap_or_default().to_owned();
        let name = words.next().unwrap_or_default().to_ascii_uppercase();
        let args = words.next().unwrap_or_default().to_owned();
        if tag.is_empty() || name.is_empty() {
            conn.write_all(b"* BAD Command Error. 10\r\n").await?;
            return Ok(Next::Continue);
        }
        if self.not_connected_trap {
            let reply = format!(
                "{tag} BAD User is authenticated but not connected.\r\n* BYE Connection is closed. 13\r\n"
            );
            conn.write_all(reply.as_bytes()).await?;
            return Ok(Next::Close);
        }
        let reply = match name.as_str() {
            "CAPABILITY" => {
                let caps = if self.authenticated {
                    POST_AUTH_CAPS.to_owned()
                } else {
                    self.capabilities(conn)
                };
                format!("* CAPABILITY {caps}\r\n{tag} OK CAPABILITY completed.\r\n")
            }
            "NOOP" => format!("{tag} OK NOOP completed.\r\n"),
            "ID" => format!("* ID (\"name\" \"fake-imap\")\r\n{tag} OK ID completed.\r\n"),
            "LOGOUT" => {
                let reply = format!(
                    "* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n{tag} OK LOGOUT completed.\r\n"
                );
                conn.write_all(reply.as_bytes()).await?;
                return Ok(Next::Close);
            }
            "STARTTLS" if self.opts.tls == Tls::StartTls && !conn.is_tls() => {
                conn.write_all(format!("{tag} OK Begin TLS negotiation now.\r\n").as_bytes())
                    .await?;
                return Ok(Next::StartTls);
            }
            "LOGIN" if !self.authenticated => {
                format!("{tag} NO [ALERT] Unsupported authentication mechanism.\r\n")
            }
            "AUTHENTICATE" if !self.authenticated => self.authenticate(conn, &tag, &args).await?,
            _ if !self.authenticated => format!("{tag} BAD Command received in Invalid state.\r\n"),
            "SELECT" | "EXAMINE" => {
                self.selected = true;
                let n = lock(&self.state.mailbox).len();
                let access = if name == "SELECT" {
                    "READ-WRITE"
                } else {
                    "READ-ONLY"
                };
                format!(
                    "* {n} EXISTS\r\n* 0 RECENT\r\n\
                     * FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent)\r\n\
                     * OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent)] Permanent flags\r\n\
                     * OK [UIDVALIDITY 14] UIDVALIDITY value\r\n\
                     * OK [UIDNEXT {}] The next unique identifier value\r\n\
                     {tag} OK [{access}] {name} completed.\r\n",
                    n + 1
                )
            }
            "UNSELECT" | "CLOSE" => {
                self.selected = false;
                format!("{tag} OK {name} completed.\r\n")
            }
            "NAMESPACE" => {
                format!("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n{tag} OK NAMESPACE completed.\r\n")
            }
            "LIST" => format!(
                "* LIST (\\HasNoChildren) \"/\" INBOX\r\n* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"\r\n\
                 {tag} OK LIST completed.\r\n"
            ),
            "IDLE" => {
                conn.write_all(b"+ IDLE accepted, awaiting DONE command.\r\n")
                    .await?;
                let Some(line) = conn.read_line(MAX_LINE).await? else {
                    return Ok(Next::Close);
                };
                if trim_eol(&line).eq_ignore_ascii_case(b"DONE") {
                    format!("{tag} OK IDLE completed.\r\n")
                } else {
                    format!("{tag} BAD Expected DONE.\r\n")
                }
            }
            "FETCH" => {
                let reply = self.fetch(&tag, &args);
                conn.write_all(&reply).await?;
                return Ok(Next::Continue);
            }
            "APPEND" => self.append(&tag, &args, cmd.literals),
            _ => format!("{tag} BAD Command Error. 12\r\n"),
        };
        conn.write_all(reply.as_bytes()).await?;
        Ok(Next::Continue)
    }

    async fn authenticate(
        &mut self,
        conn: &mut LineConn,
        tag: &str,
        args: &str,
    ) -> io::Result<String> {
        let mut words = args.split(' ');
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        if words.next().is_some() {
            return Ok(format!("{tag} BAD Command Argument Error. 11\r\n"));
        }
        if self.opts.tls == Tls::StartTls && !conn.is_tls() {
            return Ok(format!(
                "{tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
            ));
        }
        if initial.is_some() && !self.opts.sasl_ir {
            return Ok(format!("{tag} BAD Command Argument Error. 11\r\n"));
        }
        if mechanism != "XOAUTH2" && mechanism != "PLAIN" {
            return Ok(format!(
                "{tag} NO The specified authentication mechanism is not supported.\r\n"
            ));
        }
        let response = match initial {
            Some(ir) if ir == "=" => Vec::new(),
            Some(ir) => ir.into_bytes(),
            None => {
                conn.write_all(b"+ \r\n").await?;
                match conn.read_line(MAX_LINE).await? {
                    Some(line) => trim_eol(&line).to_vec(),
                    None => return Err(io::ErrorKind::UnexpectedEof.into()),
                }
            }
        };
        if response == b"*" {
            return Ok(format!("{tag} BAD AUTHENTICATE aborted.\r\n"));
        }
        if mechanism == "PLAIN" {
            // Basic authentication is switched off.
            return Ok(format!("{tag} NO AUTHENTICATE failed.\r\n"));
        }
        if check_xoauth2(&self.state.log, &self.tokens, &self.opts.user, &response) {
            self.authenticated = true;
            self.not_connected_trap = self.opts.ok_then_not_connected;
            return Ok(format!(
                "{tag} OK [CAPABILITY {POST_AUTH_CAPS}] Logged in\r\n"
            ));
        }
        conn.write_all(format!("+ {}\r\n", super::error_challenge_b64()).as_bytes())
            .await?;
        if conn.read_line(MAX_LINE).await?.is_none() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(format!(
            "{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        ))
    }

    fn fetch(&self, tag: &str, args: &str) -> Vec<u8> {
        if !self.selected {
            return format!("{tag} BAD Command received in Invalid state.\r\n").into_bytes();
        }
        let mailbox = lock(&self.state.mailbox);
        let (set, items) = args.split_once(' ').unwrap_or((args, ""));
        let Some(numbers) = parse_sequence_set(set, mailbox.len()) else {
            return format!("{tag} BAD The specified message set is invalid.\r\n").into_bytes();
        };
        let items = items
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .to_ascii_uppercase();
        let items: Vec<&str> = items.split_whitespace().collect();
        if items.is_empty() {
            return format!("{tag} BAD Command Argument Error. 11\r\n").into_bytes();
        }
        let size: usize = numbers.iter().map(|&n| mailbox[n - 1].len() + 64).sum();
        let mut out = Vec::with_capacity(size + 64);
        for n in numbers {
            let msg = &mailbox[n - 1];
            out.extend_from_slice(format!("* {n} FETCH (").as_bytes());
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                match *item {
                    "UID" => out.extend_from_slice(format!("UID {n}").as_bytes()),
                    "FLAGS" => out.extend_from_slice(b"FLAGS ()"),
                    "RFC822.SIZE" => {
                        out.extend_from_slice(format!("RFC822.SIZE {}", msg.len()).as_bytes())
                    }
                    "BODY[]" | "BODY.PEEK[]" | "RFC822" => {
                        let label = if *item == "RFC822" {
                            "RFC822"
                        } else {
                            "BODY[]"
                        };
                        out.extend_from_slice(format!("{label} {{{}}}\r\n", msg.len()).as_bytes());
                        out.extend_from_slice(msg);
                    }
                    other => {
                        return format!("{tag} BAD Unsupported FETCH item {other}\r\n")
                            .into_bytes();
                    }
                }
            }
            out.extend_from_slice(b")\r\n");
        }
        out.extend_from_slice(format!("{tag} OK FETCH completed.\r\n").as_bytes());
        out
    }

    fn append(&self, tag: &str, args: &str, mut literals: Vec<Vec<u8>>) -> String {
        if literals.len() != 1 {
            return format!("{tag} BAD Command Argument Error. 11\r\n");
        }
        let message = literals.remove(0);
        let mailbox_name = first_astring(args);
        let uid = {
            let mut mailbox = lock(&self.state.mailbox);
            mailbox.push(message.clone());
            mailbox.len()
        };
        lock(&self.state.appended).push((mailbox_name, message));
        format!("{tag} OK [APPENDUID 14 {uid}] APPEND completed.\r\n")
    }
}

/// `n`, `n:m`, `n:*`, `*` and comma lists, against a mailbox of `count` messages.
fn parse_sequence_set(set: &str, count: usize) -> Option<Vec<usize>> {
    let num = |s: &str| -> Option<usize> {
        if s == "*" {
            Some(count)
        } else {
            s.parse().ok()
        }
    };
    let mut out = Vec::new();
    for part in set.split(',') {
        let (a, b) = match part.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        let (lo, hi) = (a.min(b), a.max(b));
        if lo == 0 || hi > count {
            return None;
        }
        out.extend(lo..=hi);
    }
    Some(out)
}

/// The first IMAP astring of `args`: a quoted string (with `\\` escapes) or an atom.
fn first_astring(args: &str) -> String {
    let Some(quoted) = args.strip_prefix('"') else {
        return args.split(' ').next().unwrap_or_default().to_owned();
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}
