//! IMAP before login (RFC 3501 / RFC 9051, with RFC 7888 LITERAL+ and
//! RFC 4959 SASL-IR): the client's pre-authentication dialogue, the rewriting
//! of the upstream's capability list, and the few upstream lines the driver
//! has to understand.
//!
//! [`Frontend`] is sans-IO: the driver appends client bytes to a buffer and
//! calls [`Frontend::step`] until it says [`Action::NeedMore`]. Each step
//! re-frames the command at the front of the buffer from scratch; that is
//! cheap because everything is capped, and it makes the result independent of
//! how the bytes were split into reads.

use secrecy::SecretString;
use zeroize::{Zeroize, Zeroizing};

use super::{Credentials, Failure, one_line};
use crate::sasl::{self, LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE};

/// Longest command line accepted before login, CRLF included. A LOGIN or
/// AUTHENTICATE line with a long address and password fits many times over;
/// the cap bounds the memory an unauthenticated connection can hold.
pub const MAX_LINE: usize = 8 * 1024;

/// Largest literal accepted before login. Before login a literal can only be
/// a user name, a password or an ID value, none of which comes near this; a
/// bigger one is a confused or hostile client, not a login.
pub const MAX_LITERAL: usize = 8 * 1024;

/// Literal bytes one command may carry in total: LOGIN needs two literals at
/// most, and without a total a client could chain small literals forever.
const MAX_LITERALS_PER_COMMAND: usize = 2 * MAX_LITERAL;

/// The most the buffer holds when `step` answers [`Action::NeedMore`]:
/// the line bytes plus the literal bytes of one command. A driver can size
/// its reads by it; the fuzz test checks it.
pub const MAX_COMMAND: usize = MAX_LINE + MAX_LITERALS_PER_COMMAND;

const LITERAL_CONTINUATION: &[u8] = b"+ Ready for literal data\r\n";
const LOG_IN_FIRST: &str = "Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)";

/// What the driver does next.
#[derive(Debug)]
pub enum Action {
    /// The buffer holds no complete command: read more client bytes.
    NeedMore,
    /// Write these bytes to the client, then call `step` again.
    Reply(Vec<u8>),
    /// Authenticate upstream with these credentials; the driver writes the
    /// final tagged reply itself (see [`failure_reply`], [`retag`]).
    Login {
        tag: String,
        credentials: Credentials,
    },
    /// Write [`starttls_ok`], upgrade, and discard every buffered byte: bytes
    /// sent before the handshake must never be read as if they came over TLS.
    StartTls { tag: String },
    /// Write these bytes and close the connection.
    Close(Vec<u8>),
}

/// The pre-authentication state machine of one client connection.
#[derive(Debug)]
pub struct Frontend {
    capabilities: Vec<String>,
    offer_starttls: bool,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for a command. `continuations_sent` counts the synchronising
    /// literals of the command at the front of the buffer that were already
    /// answered with `+`, so that re-framing never sends one twice.
    Command { continuations_sent: usize },
    /// Inside AUTHENTICATE, waiting for the client's next base64 line.
    Authenticating { tag: String, exchange: Exchange },
    /// A `Close` was returned; nothing more is read.
    Closed,
}

#[derive(Debug)]
enum Exchange {
    Plain,
    LoginUsername,
    LoginPassword { username: String },
}

impl Frontend {
    /// `capabilities`: the already-rewritten pre-auth capability list (as
    /// from [`rewrite_capabilities`]).
    pub fn new(capabilities: Vec<String>, offer_starttls: bool) -> Self {
        Frontend {
            capabilities: usable_capabilities(capabilities, offer_starttls),
            offer_starttls,
            state: State::Command {
                continuations_sent: 0,
            },
        }
    }

    /// Replaces the capability list (after the driver reconnects upstream).
    /// STARTTLS is dropped from it once it can no longer be used.
    pub fn set_capabilities(&mut self, capabilities: Vec<String>) {
        self.capabilities = usable_capabilities(capabilities, self.offer_starttls);
    }

    /// Parses what it can from the front of `buf`, drains the bytes it
    /// consumed (wiping them first: they may hold a password), and returns one
    /// action. Bytes after a command that yields `Login` stay in `buf`. After
    /// a `Close` every further call answers `Close` with nothing to write.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> Action {
        let state = std::mem::replace(
            &mut self.state,
            State::Command {
                continuations_sent: 0,
            },
        );
        match state {
            State::Command { continuations_sent } => self.command_step(buf, continuations_sent),
            State::Authenticating { tag, exchange } => self.sasl_step(buf, tag, exchange),
            State::Closed => self.close(Vec::new()),
        }
    }

    fn command_step(&mut self, buf: &mut Vec<u8>, continuations_sent: usize) -> Action {
        match frame(buf) {
            Frame::Partial(None) => self.wait(continuations_sent),
            Frame::Partial(Some(wait)) if wait.index < continuations_sent => {
                self.wait(continuations_sent)
            }
            Frame::Partial(Some(wait)) => {
                match refuse_literal(&buf[..wait.line_end], wait.binary) {
                    Some(reply) => {
                        consume(buf, wait.line_end);
                        Action::Reply(reply)
                    }
                    None => {
                        self.state = State::Command {
                            continuations_sent: wait.index + 1,
                        };
                        Action::Reply(LITERAL_CONTINUATION.to_vec())
                    }
                }
            }
            Frame::Whole(len) => {
                let action = self.run_command(&buf[..len]);
                consume(buf, len);
                action
            }
            Frame::LineTooLong => self.close(
                format!("* BYE [TOOBIG] Command line too long (limit {MAX_LINE} bytes)\r\n")
                    .into_bytes(),
            ),
            Frame::LiteralTooBig {
                sync: true,
                line_end,
            } => {
                let reply = match Cursor::new(&buf[..line_end]).tag() {
                    Some(tag) => tagged(tag, &format!("BAD [TOOBIG] {}", literal_limit_text())),
                    None => format!("* BAD [TOOBIG] {}\r\n", literal_limit_text()).into_bytes(),
                };
                consume(buf, line_end);
                Action::Reply(reply)
            }
            Frame::LiteralTooBig { sync: false, .. } => {
                self.close(format!("* BYE [TOOBIG] {}\r\n", literal_limit_text()).into_bytes())
            }
        }
    }

    fn wait(&mut self, continuations_sent: usize) -> Action {
        self.state = State::Command { continuations_sent };
        Action::NeedMore
    }

    fn close(&mut self, bytes: Vec<u8>) -> Action {
        self.state = State::Closed;
        Action::Close(bytes)
    }

    fn run_command(&mut self, command: &[u8]) -> Action {
        let mut cur = Cursor::new(command);
        let Some(tag) = cur.tag() else {
            return Action::Reply(untagged_bad(command));
        };
        if command.contains(&0) {
            return Action::Reply(tagged(tag, "BAD NUL bytes are not allowed"));
        }
        match parse_command(&mut cur) {
            Ok(command) => self.execute(tag, command),
            Err(why) => Action::Reply(tagged(tag, &format!("BAD {why}"))),
        }
    }

    fn execute(&mut self, tag: &str, command: Command) -> Action {
        match command {
            Command::Capability => Action::Reply(
                format!(
                    "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                    self.capabilities.join(" ")
                )
                .into_bytes(),
            ),
            Command::Noop => Action::Reply(tagged(tag, "OK NOOP completed")),
            Command::Id => Action::Reply(
                format!("* ID (\"name\" \"xoauth2-proxy\")\r\n{tag} OK ID completed\r\n")
                    .into_bytes(),
            ),
            Command::Logout => self
                .close(format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n").into_bytes()),
            Command::StartTls if self.offer_starttls => {
                self.offer_starttls = false;
                self.capabilities
                    .retain(|c| !c.eq_ignore_ascii_case("STARTTLS"));
                Action::StartTls {
                    tag: tag.to_owned(),
                }
            }
            Command::StartTls => Action::Reply(tagged(tag, "BAD STARTTLS is not offered here")),
            Command::Login(credentials) => Action::Login {
                tag: tag.to_owned(),
                credentials,
            },
            Command::Authenticate { mechanism, initial } => {
                self.authenticate(tag.to_owned(), mechanism, initial)
            }
        }
    }

    fn authenticate(
        &mut self,
        tag: String,
        mechanism: Mechanism,
        initial: Option<Zeroizing<Vec<u8>>>,
    ) -> Action {
        let exchange = match mechanism {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Login => Exchange::LoginUsername,
            Mechanism::Other => {
                return Action::Reply(tagged(
                    &tag,
                    "NO [CANNOT] Unsupported mechanism; use PLAIN or LOGIN",
                ));
            }
        };
        match initial {
            Some(response) => self.sasl_response(tag, exchange, &response),
            None => self.challenge(tag, exchange),
        }
    }

    /// Sends the challenge that asks for the next response of `exchange`.
    fn challenge(&mut self, tag: String, exchange: Exchange) -> Action {
        let challenge = match &exchange {
            Exchange::Plain => "",
            Exchange::LoginUsername => LOGIN_USERNAME_CHALLENGE,
            Exchange::LoginPassword { .. } => LOGIN_PASSWORD_CHALLENGE,
        };
        self.state = State::Authenticating { tag, exchange };
        Action::Reply(format!("+ {challenge}\r\n").into_bytes())
    }

    fn sasl_step(&mut self, buf: &mut Vec<u8>, tag: String, exchange: Exchange) -> Action {
        let line_end = buf.iter().position(|&b| b == b'\n').map(|lf| lf + 1);
        let len = match line_end {
            Some(len) if len <= MAX_LINE => len,
            None if buf.len() < MAX_LINE => {
                self.state = State::Authenticating { tag, exchange };
                return Action::NeedMore;
            }
            _ => {
                return self.close(
                    format!("* BYE [TOOBIG] Response line too long (limit {MAX_LINE} bytes)\r\n")
                        .into_bytes(),
                );
            }
        };
        let line = trim_eol(&buf[..len]);
        let action = if line == b"*" {
            Action::Reply(tagged(&tag, "BAD AUTHENTICATE cancelled"))
        } else {
            self.sasl_response(tag, exchange, line)
        };
        consume(buf, len);
        action
    }

    /// Handles one base64 client response (initial or after a challenge).
    fn sasl_response(&mut self, tag: String, exchange: Exchange, response: &[u8]) -> Action {
        match exchange {
            Exchange::Plain => match sasl::decode_plain(response) {
                Ok(credentials) => match check_username(&credentials.username) {
                    Ok(()) => Action::Login { tag, credentials },
                    Err(why) => Action::Reply(tagged(&tag, &format!("BAD {why}"))),
                },
                Err(e) => Action::Reply(tagged(&tag, &format!("BAD Invalid PLAIN response: {e}"))),
            },
            Exchange::LoginUsername => match sasl::decode_login_part(response) {
                Ok(username) => match check_username(&username) {
                    Ok(()) => self.challenge(
                        tag,
                        Exchange::LoginPassword {
                            username: username.as_str().to_owned(),
                        },
                    ),
                    Err(why) => Action::Reply(tagged(&tag, &format!("BAD {why}"))),
                },
                Err(e) => Action::Reply(tagged(&tag, &format!("BAD Invalid user name: {e}"))),
            },
            Exchange::LoginPassword { username } => match sasl::decode_login_part(response) {
                Ok(password) => Action::Login {
                    tag,
                    credentials: Credentials {
                        username,
                        password: SecretString::from(String::from(password.as_str())),
                    },
                },
                Err(e) => Action::Reply(tagged(&tag, &format!("BAD Invalid password: {e}"))),
            },
        }
    }
}

/// Tagged refusal in IMAP words (DESIGN.md's table).
pub fn failure_reply(tag: &str, failure: &Failure) -> Vec<u8> {
    let (code, fallback) = match failure {
        Failure::BadCredentials(_) | Failure::SignInNeeded(_) => {
            ("AUTHENTICATIONFAILED", "Authentication failed")
        }
        Failure::Unavailable(_) => ("UNAVAILABLE", "Service temporarily unavailable"),
    };
    let text = one_line(failure.text());
    let text = if text.trim().is_empty() {
        fallback
    } else {
        text.as_str()
    };
    tagged(tag, &format!("NO [{code}] {text}"))
}

/// The tagged answer to STARTTLS, written just before the handshake.
pub fn starttls_ok(tag: &str) -> Vec<u8> {
    tagged(tag, "OK Begin TLS negotiation now")
}

/// Rewrites an upstream pre-auth capability list. The proxy owns everything
/// about logging in and about local TLS, so the upstream's AUTH= mechanisms,
/// LOGINDISABLED and STARTTLS are replaced by what the proxy itself accepts.
/// Order is kept (IMAP4rev1 first), duplicates and names that are not atoms
/// are dropped, comparisons ignore case.
pub fn rewrite_capabilities(upstream: &[String], offer_starttls: bool) -> Vec<String> {
    let mut out = vec!["IMAP4rev1".to_owned()];
    for name in upstream {
        let owned_by_proxy = starts_with_ignore_case(name.as_bytes(), b"AUTH=")
            || name.eq_ignore_ascii_case("LOGINDISABLED")
            || name.eq_ignore_ascii_case("STARTTLS");
        let seen = out.iter().any(|n| n.eq_ignore_ascii_case(name));
        if is_capability_name(name) && !owned_by_proxy && !seen {
            out.push(name.clone());
        }
    }
    out.push("AUTH=PLAIN".to_owned());
    out.push("AUTH=LOGIN".to_owned());
    if offer_starttls {
        out.push("STARTTLS".to_owned());
    }
    out
}

/// One server response line, split the way the driver needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerLine<'a> {
    /// What follows `* `.
    Untagged(&'a [u8]),
    /// What follows `+` and an optional space.
    Continuation(&'a [u8]),
    /// `text` is everything after the status word and its space, response
    /// codes included.
    Tagged {
        tag: &'a [u8],
        status: Status,
        text: &'a [u8],
    },
}

/// Status words of IMAP responses (BYE and PREAUTH only occur untagged, but
/// one enum keeps the driver simple).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}

impl Status {
    fn from_word(word: &[u8]) -> Option<Status> {
        const WORDS: [(&[u8], Status); 5] = [
            (b"OK", Status::Ok),
            (b"NO", Status::No),
            (b"BAD", Status::Bad),
            (b"BYE", Status::Bye),
            (b"PREAUTH", Status::PreAuth),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|&(_, status)| status)
    }
}

/// Parses a server response line (with or without its CRLF). `None` for
/// anything that is not a well-formed untagged, continuation or tagged line.
pub fn parse_server_line(line: &[u8]) -> Option<ServerLine<'_>> {
    parse_trimmed_server_line(trim_eol(line))
}

/// Like [`parse_server_line`] for a line whose CRLF is already gone, so that
/// the slices it returns are suffixes of exactly that line.
fn parse_trimmed_server_line(line: &[u8]) -> Option<ServerLine<'_>> {
    match line {
        [b'*', b' ', rest @ ..] => Some(ServerLine::Untagged(rest)),
        [b'+', rest @ ..] => Some(ServerLine::Continuation(
            rest.strip_prefix(b" ").unwrap_or(rest),
        )),
        _ => parse_tagged(line),
    }
}

fn parse_tagged(line: &[u8]) -> Option<ServerLine<'_>> {
    let (tag, rest) = split_word(line);
    if tag.is_empty() || !tag.iter().all(|&b| is_astring_char(b)) {
        return None;
    }
    let (word, text) = split_word(rest?);
    let status = Status::from_word(word)?;
    Some(ServerLine::Tagged {
        tag,
        status,
        text: text.unwrap_or_default(),
    })
}

/// Splits at the first space: the word before it, and what follows the space
/// if there is one.
fn split_word(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(sp) => (&bytes[..sp], bytes.get(sp + 1..)),
        None => (bytes, None),
    }
}

/// Capability names from `* CAPABILITY a b c`, or from a `[CAPABILITY a b c]`
/// response code at the start of the text of a status line (untagged OK,
/// PREAUTH, BYE or any tagged line), which is where RFC 3501 puts it.
pub fn capabilities_in(line: &[u8]) -> Option<Vec<String>> {
    let line = trim_eol(line);
    if let Some(ServerLine::Untagged(rest)) = parse_trimmed_server_line(line)
        && let Some(names) = strip_prefix_ignore_case(rest, b"CAPABILITY")
        && matches!(names.first(), None | Some(b' '))
    {
        return Some(capability_names(names));
    }
    let (start, end) = capability_code(line)?;
    Some(capability_names(&line[start..end]))
}

/// Rewrites the upstream greeting: a `[CAPABILITY ...]` code gets the given
/// (already rewritten) list; an `* OK` greeting without any response code
/// (Office 365's) gets one, because some clients read capabilities only from
/// the greeting; anything else is kept. Always ends in CRLF.
pub fn rewrite_greeting(line: &[u8], capabilities: &[String]) -> Vec<u8> {
    let line = trim_eol(line);
    let mut out = match capability_code(line) {
        Some((start, end)) => {
            let mut out = line[..start].to_vec();
            for name in capabilities.iter().filter(|n| is_capability_name(n)) {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
            }
            out.extend_from_slice(&line[end..]);
            out
        }
        None => with_capability_code(line, capabilities).unwrap_or_else(|| line.to_vec()),
    };
    out.extend_from_slice(b"\r\n");
    out
}

/// `* OK text` becomes `* OK [CAPABILITY ...] text`; `None` when the line is
/// not an untagged OK or already carries a response code.
fn with_capability_code(line: &[u8], capabilities: &[String]) -> Option<Vec<u8>> {
    let Some(ServerLine::Untagged(rest)) = parse_trimmed_server_line(line) else {
        return None;
    };
    let (word, text) = split_word(rest);
    if !word.eq_ignore_ascii_case(b"OK") || text.is_some_and(|t| t.starts_with(b"[")) {
        return None;
    }
    let mut out = b"* OK [CAPABILITY".to_vec();
    for name in capabilities.iter().filter(|n| is_capability_name(n)) {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b']');
    if let Some(text) = text {
        out.push(b' ');
        out.extend_from_slice(text);
    }
    Some(out)
}

/// Gives a tagged server line another tag, keeping the rest byte-exact.
/// Untagged and continuation lines come back unchanged.
pub fn retag(line: &[u8], tag: &str) -> Vec<u8> {
    match parse_server_line(line) {
        Some(ServerLine::Tagged { tag: old, .. }) => {
            let mut out = tag.as_bytes().to_vec();
            out.extend_from_slice(&line[old.len()..]);
            out
        }
        _ => line.to_vec(),
    }
}

/// The span of the names inside a `[CAPABILITY ...]` code of a line without
/// its CRLF: from just after the word CAPABILITY to just before the `]`.
fn capability_code(line: &[u8]) -> Option<(usize, usize)> {
    let text = match parse_trimmed_server_line(line)? {
        ServerLine::Untagged(rest) => {
            let (word, text) = split_word(rest);
            Status::from_word(word)?;
            text?
        }
        ServerLine::Tagged { text, .. } => text,
        ServerLine::Continuation(_) => return None,
    };
    let code = text.strip_prefix(b"[")?;
    let names = strip_prefix_ignore_case(code, b"CAPABILITY")?;
    if !matches!(names.first(), Some(b' ' | b']')) {
        return None;
    }
    let close = names.iter().position(|&b| b == b']')?;
    let start = line.len() - names.len();
    Some((start, start + close))
}

fn capability_names(names: &[u8]) -> Vec<String> {
    names
        .split(|&b| b == b' ')
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn usable_capabilities(capabilities: Vec<String>, offer_starttls: bool) -> Vec<String> {
    capabilities
        .into_iter()
        .filter(|c| {
            is_capability_name(c) && (offer_starttls || !c.eq_ignore_ascii_case("STARTTLS"))
        })
        .collect()
}

/// A capability is an atom; anything else could break the line it goes into.
fn is_capability_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_atom_char)
}

// ---------------------------------------------------------------------------
// Framing: where the command at the front of the buffer ends.

enum Frame {
    /// No complete command yet; `Some` when the buffer ends right after the
    /// header of a synchronising literal, which the client will not send
    /// until it sees a continuation.
    Partial(Option<LiteralWait>),
    /// A complete command fills `buf[..len]`.
    Whole(usize),
    LineTooLong,
    LiteralTooBig {
        sync: bool,
        line_end: usize,
    },
}

struct LiteralWait {
    /// Which synchronising literal of the command this is, counted from 0.
    index: usize,
    /// Where the line carrying the literal's header ends.
    line_end: usize,
    binary: bool,
}

struct LiteralHeader {
    size: usize,
    sync: bool,
    binary: bool,
}

/// Finds the extent of the first command: lines, each of which may end in a
/// literal header whose payload (skipped, never scanned) continues the
/// command. Line bytes and literal bytes are capped separately.
fn frame(buf: &[u8]) -> Frame {
    let mut pos = 0;
    let mut line_bytes = 0usize;
    let mut literal_bytes = 0usize;
    let mut sync_literals = 0usize;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return if line_bytes + rest.len() >= MAX_LINE {
                Frame::LineTooLong
            } else {
                Frame::Partial(None)
            };
        };
        line_bytes += lf + 1;
        if line_bytes > MAX_LINE {
            return Frame::LineTooLong;
        }
        let line_end = pos + lf + 1;
        let Some(header) = literal_header(trim_eol(&rest[..=lf])) else {
            return Frame::Whole(line_end);
        };
        literal_bytes = literal_bytes.saturating_add(header.size);
        if header.size > MAX_LITERAL || literal_bytes > MAX_LITERALS_PER_COMMAND {
            return Frame::LiteralTooBig {
                sync: header.sync,
                line_end,
            };
        }
        let index = sync_literals;
        if header.sync {
            sync_literals += 1;
        }
        let available = buf.len() - line_end;
        let waiting_for_continuation = header.sync && available == 0;
        if available < header.size || waiting_for_continuation {
            return Frame::Partial(waiting_for_continuation.then_some(LiteralWait {
                index,
                line_end,
                binary: header.binary,
            }));
        }
        pos = line_end + header.size;
    }
}

/// Recognises `{n}`, `{n+}`, `~{n}` or `~{n+}` at the end of a line, unless
/// the brace sits inside an unterminated quoted string.
fn literal_header(line: &[u8]) -> Option<LiteralHeader> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let inside = &body[open + 1..];
    let (digits, sync) = match inside.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (inside, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || ends_in_quote(&body[..open]) {
        return None;
    }
    Some(LiteralHeader {
        size: parse_number(digits),
        sync,
        binary: body[..open].ends_with(b"~"),
    })
}

/// Whether a line prefix ends inside a quoted string.
fn ends_in_quote(prefix: &[u8]) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for &b in prefix {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => quoted = !quoted,
            _ => {}
        }
    }
    quoted
}

/// Decimal digits to a number; too big saturates (and is then refused).
fn parse_number(digits: &[u8]) -> usize {
    digits.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    })
}

/// Sends no continuation for a literal the command cannot use anyway: the
/// client then skips the literal and reads our refusal instead.
fn refuse_literal(line: &[u8], binary: bool) -> Option<Vec<u8>> {
    let mut cur = Cursor::new(line);
    let Some(tag) = cur.tag() else {
        return Some(untagged_bad(line));
    };
    if binary {
        return Some(tagged(tag, "BAD literal8 is not accepted before login"));
    }
    let name = match command_name(&mut cur) {
        Ok(name) => name.to_ascii_uppercase(),
        Err(why) => return Some(tagged(tag, &format!("BAD {why}"))),
    };
    let why = match name.as_slice() {
        b"LOGIN" | b"ID" => return None,
        b"AUTHENTICATE" => "BAD AUTHENTICATE arguments cannot be literals".to_owned(),
        b"CAPABILITY" | b"NOOP" | b"LOGOUT" | b"STARTTLS" => {
            format!("BAD {} takes no arguments", String::from_utf8_lossy(&name))
        }
        _ => format!("BAD {LOG_IN_FIRST}"),
    };
    Some(tagged(tag, &why))
}

fn literal_limit_text() -> String {
    format!(
        "Literal too large (limit {MAX_LITERAL} bytes each, {MAX_LITERALS_PER_COMMAND} per command)"
    )
}

// ---------------------------------------------------------------------------
// Parsing a framed command.

enum Command {
    Capability,
    Noop,
    Id,
    Logout,
    StartTls,
    Login(Credentials),
    Authenticate {
        mechanism: Mechanism,
        initial: Option<Zeroizing<Vec<u8>>>,
    },
}

enum Mechanism {
    Plain,
    Login,
    Other,
}

/// Parses everything after the tag. Error texts never quote the input, so no
/// password can end up in a reply.
fn parse_command(cur: &mut Cursor<'_>) -> Result<Command, String> {
    let name = command_name(cur)?.to_ascii_uppercase();
    let command = match name.as_slice() {
        b"CAPABILITY" => Command::Capability,
        b"NOOP" => Command::Noop,
        b"LOGOUT" => Command::Logout,
        b"STARTTLS" => Command::StartTls,
        b"ID" => return parse_id(cur),
        b"LOGIN" => return parse_login(cur),
        b"AUTHENTICATE" => return parse_authenticate(cur),
        _ => return Err(LOG_IN_FIRST.to_owned()),
    };
    if cur.end().is_err() {
        let name = String::from_utf8_lossy(&name);
        return Err(format!("{name} takes no arguments"));
    }
    Ok(command)
}

fn command_name<'a>(cur: &mut Cursor<'a>) -> Result<&'a [u8], String> {
    let name = cur.take_while(is_atom_char);
    if name.is_empty() {
        return Err("Missing command".to_owned());
    }
    if !(cur.peek() == Some(b' ') || cur.at_line_end()) {
        return Err("Invalid command name".to_owned());
    }
    Ok(name)
}

fn parse_login(cur: &mut Cursor<'_>) -> Result<Command, String> {
    const SHAPE: &str = "LOGIN expects a user name and a password";
    if !cur.eat(b' ') {
        return Err(SHAPE.into());
    }
    let username = cur.astring()?;
    if !cur.eat(b' ') {
        return Err(SHAPE.into());
    }
    let password = cur.astring()?;
    cur.end().map_err(|()| SHAPE)?;
    let username =
        std::str::from_utf8(&username).map_err(|_| "The user name is not valid UTF-8")?;
    check_username(username)?;
    let password = std::str::from_utf8(&password).map_err(|_| "The password is not valid UTF-8")?;
    Ok(Command::Login(Credentials {
        username: username.to_owned(),
        password: SecretString::from(String::from(password)),
    }))
}

/// A user name goes into log lines and into the upstream XOAUTH2 string,
/// where a control character could forge a field.
fn check_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        return Err("The user name is empty");
    }
    if username.chars().any(char::is_control) {
        return Err("The user name contains control characters");
    }
    Ok(())
}

fn parse_authenticate(cur: &mut Cursor<'_>) -> Result<Command, String> {
    const SHAPE: &str = "AUTHENTICATE expects a mechanism and an optional initial response";
    if !cur.eat(b' ') {
        return Err(SHAPE.into());
    }
    let mechanism = cur.take_while(is_atom_char);
    if mechanism.is_empty() {
        return Err(SHAPE.into());
    }
    let initial = if cur.eat(b' ') {
        let response = cur.take_while(|b| b.is_ascii_graphic());
        if response.is_empty() {
            return Err(SHAPE.into());
        }
        Some(Zeroizing::new(response.to_vec()))
    } else {
        None
    };
    cur.end().map_err(|()| SHAPE)?;
    let mechanism = if mechanism.eq_ignore_ascii_case(b"PLAIN") {
        Mechanism::Plain
    } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
        Mechanism::Login
    } else {
        Mechanism::Other
    };
    Ok(Command::Authenticate { mechanism, initial })
}

/// RFC 2971: `ID NIL` or `ID (field value ...)`. The values are read only to
/// find the end of the command; nothing is kept.
fn parse_id(cur: &mut Cursor<'_>) -> Result<Command, String> {
    const SHAPE: &str = "ID expects a parenthesised list or NIL";
    if !cur.eat(b' ') {
        return Err(SHAPE.into());
    }
    if cur.eat(b'(') {
        if !cur.eat(b')') {
            loop {
                cur.astring()?;
                if cur.eat(b')') {
                    break;
                }
                if !cur.eat(b' ') {
                    return Err(SHAPE.into());
                }
            }
        }
    } else if !cur.take_while(is_atom_char).eq_ignore_ascii_case(b"NIL") {
        return Err(SHAPE.into());
    }
    cur.end().map_err(|()| SHAPE)?;
    Ok(Command::Id)
}

/// A read position in one framed command. Every access is checked; client
/// bytes can never make it panic.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.rest().first().copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn take_while(&mut self, accept: impl Fn(u8) -> bool) -> &'a [u8] {
        let rest = self.rest();
        let n = rest.iter().take_while(|&&b| accept(b)).count();
        self.pos += n;
        &rest[..n]
    }

    fn at_line_end(&self) -> bool {
        matches!(self.rest(), [b'\n', ..] | [b'\r', b'\n', ..])
    }

    /// The command must end here: an optional CR, a LF, nothing after.
    fn end(&mut self) -> Result<(), ()> {
        match self.rest() {
            b"\n" | b"\r\n" => {
                self.pos = self.bytes.len();
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// The tag and the space after it. `None` when the line does not start
    /// with a well-formed tag (the reply is then untagged).
    fn tag(&mut self) -> Option<&'a str> {
        let tag = self.take_while(is_tag_char);
        if tag.is_empty() || !(self.eat(b' ') || self.at_line_end()) {
            return None;
        }
        std::str::from_utf8(tag).ok()
    }

    /// An atom, a quoted string or a literal. Atoms also take 8-bit bytes:
    /// some clients send a UTF-8 password unquoted.
    fn astring(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        match self.rest() {
            [b'"', ..] => self.quoted(),
            [b'{', ..] => self.literal(),
            [b'~', b'{', ..] => Err("literal8 is not accepted before login".to_owned()),
            _ => {
                let atom = self.take_while(|b| is_astring_char(b) || b >= 0x80);
                if atom.is_empty() {
                    return Err("Expected an atom, a quoted string or a literal".to_owned());
                }
                Ok(Zeroizing::new(atom.to_vec()))
            }
        }
    }

    fn quoted(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        self.pos += 1;
        let mut out = Zeroizing::new(Vec::with_capacity(self.rest().len()));
        loop {
            match self.rest() {
                [b'"', ..] => {
                    self.pos += 1;
                    return Ok(out);
                }
                [b'\\', escaped @ (b'"' | b'\\'), ..] => {
                    out.push(*escaped);
                    self.pos += 2;
                }
                [b'\\', ..] => {
                    return Err(r#"Only \" and \\ may be escaped in a quoted string"#.to_owned());
                }
                [b'\r' | b'\n', ..] | [] => return Err("Unterminated quoted string".to_owned()),
                [byte, ..] => {
                    out.push(*byte);
                    self.pos += 1;
                }
            }
        }
    }

    /// `{n}` or `{n+}`, line end, then n bytes (framing made sure they are
    /// there, but this checks again rather than trusting it).
    fn literal(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        const SHAPE: &str = "Malformed literal";
        self.pos += 1;
        let digits = self.take_while(|b| b.is_ascii_digit());
        self.eat(b'+');
        if digits.is_empty() || !self.eat(b'}') {
            return Err(SHAPE.to_owned());
        }
        self.eat(b'\r');
        if !self.eat(b'\n') {
            return Err("A literal's size must end the line".to_owned());
        }
        let size = parse_number(digits);
        let payload = self
            .pos
            .checked_add(size)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(SHAPE)?;
        self.pos += size;
        Ok(Zeroizing::new(payload.to_vec()))
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

/// RFC 9051 ATOM-CHAR: printable ASCII except atom-specials.
fn is_atom_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

/// RFC 9051 tag: astring characters except `+`, which starts continuations.
fn is_tag_char(b: u8) -> bool {
    is_astring_char(b) && b != b'+'
}

/// Strips one LF and one CR before it; a bare LF is accepted for leniency.
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    strip_prefix_ignore_case(bytes, prefix).is_some()
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &bytes[prefix.len()..])
}

fn tagged(tag: &str, rest: &str) -> Vec<u8> {
    format!("{tag} {rest}\r\n").into_bytes()
}

fn untagged_bad(line: &[u8]) -> Vec<u8> {
    if trim_eol(line).is_empty() {
        b"* BAD Empty command line\r\n".to_vec()
    } else {
        b"* BAD Missing or invalid tag\r\n".to_vec()
    }
}

/// Drains consumed bytes after wiping them: they may hold a password, and
/// draining alone would leave copies in the vector's spare capacity.
fn consume(buf: &mut Vec<u8>, len: usize) {
    let len = len.min(buf.len());
    buf[..len].zeroize();
    buf.drain(..len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use secrecy::ExposeSecret;

    /// An action in comparable form; passwords are exposed here only.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Reply(String),
        Login {
            tag: String,
            user: String,
            pass: String,
        },
        StartTls(String),
        Close(String),
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn out(action: Action) -> Option<Out> {
        match action {
            Action::NeedMore => None,
            Action::Reply(b) => Some(Out::Reply(text(&b))),
            Action::Login { tag, credentials } => Some(Out::Login {
                tag,
                user: credentials.username.clone(),
                pass: credentials.password.expose_secret().to_owned(),
            }),
            Action::StartTls { tag } => Some(Out::StartTls(tag)),
            Action::Close(b) => Some(Out::Close(text(&b))),
        }
    }

    fn reply(s: &str) -> Out {
        Out::Reply(s.to_owned())
    }

    fn login(tag: &str, user: &str, pass: &str) -> Out {
        Out::Login {
            tag: tag.to_owned(),
            user: user.to_owned(),
            pass: pass.to_owned(),
        }
    }

    fn caps() -> Vec<String> {
        ["IMAP4rev1", "SASL-IR", "AUTH=PLAIN", "AUTH=LOGIN"]
            .map(String::from)
            .to_vec()
    }

    fn strings(names: &str) -> Vec<String> {
        names.split(' ').map(String::from).collect()
    }

    fn b64(raw: &[u8]) -> String {
        B64.encode(raw)
    }

    /// Steps until the front end wants more bytes or closes; Login and
    /// StartTls end a run so that a test can look at the buffer.
    fn drive(fe: &mut Frontend, buf: &mut Vec<u8>) -> Vec<Out> {
        let mut outs = Vec::new();
        for _ in 0..10_000 {
            let Some(o) = out(fe.step(buf)) else {
                return outs;
            };
            let done = !matches!(o, Out::Reply(_));
            outs.push(o);
            if done {
                return outs;
            }
        }
        panic!("step never settled");
    }

    /// Feeds `chunks` one after the other and steps through everything
    /// (past Login and StartTls, as a driver would after answering them).
    /// Returns the actions and what is left in the buffer.
    fn feed<'a>(
        fe: &mut Frontend,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<Out>, Vec<u8>) {
        let mut buf = Vec::new();
        let mut outs = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let run = drive(fe, &mut buf);
                let last = run.last().cloned();
                outs.extend(run);
                match last {
                    Some(Out::Close(_)) => return (outs, buf),
                    Some(Out::StartTls(_)) => buf.clear(),
                    Some(Out::Login { .. }) => {}
                    _ => break,
                }
            }
        }
        (outs, buf)
    }

    fn session(input: &[u8]) -> Vec<Out> {
        feed(&mut Frontend::new(caps(), false), [input]).0
    }

    fn without_literal_continuations(outs: Vec<Out>) -> Vec<Out> {
        let continuation = Out::Reply(text(LITERAL_CONTINUATION));
        outs.into_iter().filter(|o| *o != continuation).collect()
    }

    fn literal(payload: &[u8]) -> Vec<u8> {
        let mut out = format!("{{{}}}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out
    }

    fn join(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn login_forms() {
        let utf8_user = "jörg@contoso.com".as_bytes();
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (b"A1 LOGIN alice secret\r\n".to_vec(), "alice", "secret"),
            (b"A1 login alice@contoso.com s3cr3t!#&'\r\n".to_vec(), "alice@contoso.com", "s3cr3t!#&'"),
            (b"A1 LoGiN alice secret\n".to_vec(), "alice", "secret"),
            (br#"A1 LOGIN "alice@contoso.com" "pa ss\"wo\\rd""#.iter().chain(b"\r\n").copied().collect(), "alice@contoso.com", r#"pa ss"wo\rd"#),
            (b"A1 LOGIN \"al ice\" \"\"\r\n".to_vec(), "al ice", ""),
            (b"A1 LOGIN alice \"{5}\"\r\n".to_vec(), "alice", "{5}"),
            (b"A1 LOGIN ~alice p]w+\r\n".to_vec(), "~alice", "p]w+"),
            (b"A1 LOGIN {17}\r\nalice@contoso.com \"pw\"\r\n".to_vec(), "alice@contoso.com", "pw"),
            (b"A1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n".to_vec(), "alice", "secret"),
            (b"A1 LOGIN {5}\nalice {6}\nsecret\n".to_vec(), "alice", "secret"),
            (b"A1 LOGIN {5+}\r\nalice {7+}\r\nse cret\r\n".to_vec(), "alice", "se cret"),
            (b"A1 LOGIN {005}\r\nalice {6+}\r\nsecret\r\n".to_vec(), "alice", "secret"),
            (b"A1 LOGIN alice {8}\r\na\"b\r\nc d\r\n".to_vec(), "alice", "a\"b\r\nc d"),
            (b"A1 LOGIN alice {0}\r\n\r\n".to_vec(), "alice", ""),
            (b"A1 LOGIN \"alice\" {4}\r\n\\\"{}\r\n".to_vec(), "alice", "\\\"{}"),
            ("A1 LOGIN \"jörg@contoso.com\" \"pässwörd\"\r\n".as_bytes().to_vec(), "jörg@contoso.com", "pässwörd"),
            ("A1 LOGIN jörg pässwörd\r\n".as_bytes().to_vec(), "jörg", "pässwörd"),
            (join(&[b"A1 LOGIN ", &literal(utf8_user), b" ", &literal("p€ss 🔑".as_bytes()), b"\r\n"]), "jörg@contoso.com", "p€ss 🔑"),
            (b"x]y LOGIN alice secret\r\n".to_vec(), "alice", "secret"),
        ];
        for (input, user, pass) in cases {
            let tag = text(&input[..input.iter().position(|&b| b == b' ').unwrap()]);
            assert_eq!(
                session(&input),
                [login(&tag, user, pass)],
                "{}",
                text(&input)
            );
        }
    }

    #[test]
    fn login_refusals() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"A1 LOGIN\r\n",
                "A1 BAD LOGIN expects a user name and a password\r\n",
            ),
            (
                b"A1 LOGIN alice\r\n",
                "A1 BAD LOGIN expects a user name and a password\r\n",
            ),
            (
                b"A1 LOGIN alice secret extra\r\n",
                "A1 BAD LOGIN expects a user name and a password\r\n",
            ),
            (
                b"A1 LOGIN alice secret \r\n",
                "A1 BAD LOGIN expects a user name and a password\r\n",
            ),
            (
                b"A1 LOGIN  alice secret\r\n",
                "A1 BAD Expected an atom, a quoted string or a literal\r\n",
            ),
            (
                b"A1 LOGIN (alice) secret\r\n",
                "A1 BAD Expected an atom, a quoted string or a literal\r\n",
            ),
            (
                b"A1 LOGIN alice \"se\\cret\"\r\n",
                "A1 BAD Only \\\" and \\\\ may be escaped in a quoted string\r\n",
            ),
            (
                b"A1 LOGIN alice \"secret\r\n",
                "A1 BAD Unterminated quoted string\r\n",
            ),
            (
                b"A1 LOGIN alice \"sec\rret\"\r\n",
                "A1 BAD Unterminated quoted string\r\n",
            ),
            (
                b"A1 LOGIN \"\" secret\r\n",
                "A1 BAD The user name is empty\r\n",
            ),
            (
                b"A1 LOGIN {0}\r\n secret\r\n",
                "A1 BAD The user name is empty\r\n",
            ),
            (
                b"A1 LOGIN \"al\tice\" secret\r\n",
                "A1 BAD The user name contains control characters\r\n",
            ),
            (
                b"A1 LOGIN {7}\r\nal\r\nice secret\r\n",
                "A1 BAD The user name contains control characters\r\n",
            ),
            (
                b"A1 LOGIN {6}\r\nal\x01ice secret\r\n",
                "A1 BAD The user name contains control characters\r\n",
            ),
            (
                b"A1 LOGIN alice \"sec\0ret\"\r\n",
                "A1 BAD NUL bytes are not allowed\r\n",
            ),
            (
                b"A1 LOGIN alice {3}\r\na\0b\r\n",
                "A1 BAD NUL bytes are not allowed\r\n",
            ),
            (
                b"A1 LOGIN {3}\r\n\xff\xfe\xfd secret\r\n",
                "A1 BAD The user name is not valid UTF-8\r\n",
            ),
            (
                b"A1 LOGIN alice {2}\r\n\xc3\x28\r\n",
                "A1 BAD The password is not valid UTF-8\r\n",
            ),
            (
                b"A1 LOGIN alice \xff\r\n",
                "A1 BAD The password is not valid UTF-8\r\n",
            ),
            (
                b"A1 LOGIN ~{5}\r\n",
                "A1 BAD literal8 is not accepted before login\r\n",
            ),
            (
                b"A1 LOGIN alice ~{2+}\r\nab\r\n",
                "A1 BAD literal8 is not accepted before login\r\n",
            ),
            (
                b"A1 LOGIN {5}x\r\n",
                "A1 BAD A literal's size must end the line\r\n",
            ),
            (b"A1 LOGIN {}\r\n", "A1 BAD Malformed literal\r\n"),
            (b"A1 LOGIN {5+-}\r\n", "A1 BAD Malformed literal\r\n"),
            (
                b"A1 LOGIN alice{3}\r\nabc\r\n",
                "A1 BAD LOGIN expects a user name and a password\r\n",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(session(input), [reply(expected)], "{}", text(input));
        }
    }

    #[test]
    fn refusals_never_quote_the_password() {
        for input in [
            &b"A1 LOGIN alice \"hunter2\\q\"\r\n"[..],
            b"A1 LOGIN alice hunter2 extra\r\n",
            b"A1 LOGIN alice {8}\r\nhunter2\xff\r\n",
            b"A1 AUTHENTICATE PLAIN hunter2!!\r\n",
        ] {
            for o in session(input) {
                assert!(!format!("{o:?}").contains("hunter2"), "{o:?}");
            }
        }
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = b"A1 LOGIN alice hunter2\r\n".to_vec();
        let action = fe.step(&mut buf);
        assert!(matches!(action, Action::Login { .. }));
        assert!(!format!("{action:?}").contains("hunter2"));
        assert!(!format!("{fe:?}").contains("hunter2"));
        assert!(buf.is_empty());
    }

    #[test]
    fn synchronising_literals_get_one_continuation_each() {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = b"A1 LOGIN {5}\r\n".to_vec();
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply("+ Ready for literal data\r\n")]
        );
        assert!(matches!(fe.step(&mut buf), Action::NeedMore));
        buf.extend_from_slice(b"ali");
        assert!(drive(&mut fe, &mut buf).is_empty());
        buf.extend_from_slice(b"ce {6}\r\n");
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply("+ Ready for literal data\r\n")]
        );
        assert!(drive(&mut fe, &mut buf).is_empty());
        buf.extend_from_slice(b"secret\r\nA2 NOOP\r\n");
        assert_eq!(drive(&mut fe, &mut buf), [login("A1", "alice", "secret")]);
        assert_eq!(buf, b"A2 NOOP\r\n");
        // The count starts again for the next command.
        buf = b"A3 LOGIN {5}\r\n".to_vec();
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply("+ Ready for literal data\r\n")]
        );
    }

    #[test]
    fn non_synchronising_literals_get_no_continuation() {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = b"A1 LOGIN {5+}\r\n".to_vec();
        assert!(drive(&mut fe, &mut buf).is_empty());
        buf.extend_from_slice(b"alice {6+}\r\n");
        assert!(drive(&mut fe, &mut buf).is_empty());
        buf.extend_from_slice(b"secret\r\n");
        assert_eq!(drive(&mut fe, &mut buf), [login("A1", "alice", "secret")]);
    }

    #[test]
    fn literals_for_commands_that_cannot_use_them_are_refused_without_continuation() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"A1 APPEND INBOX {5000}\r\n",
                "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n",
            ),
            (
                b"A1 SELECT {5}\r\n",
                "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n",
            ),
            (b"A1 NOOP {5}\r\n", "A1 BAD NOOP takes no arguments\r\n"),
            (
                b"A1 capability {5}\r\n",
                "A1 BAD CAPABILITY takes no arguments\r\n",
            ),
            (
                b"A1 AUTHENTICATE PLAIN {5}\r\n",
                "A1 BAD AUTHENTICATE arguments cannot be literals\r\n",
            ),
            (b"A1 {5}\r\n", "A1 BAD Missing command\r\n"),
            (
                b"A1 LOGIN~{5}\r\n",
                "A1 BAD literal8 is not accepted before login\r\n",
            ),
            (b"{5}\r\n", "* BAD Missing or invalid tag\r\n"),
        ];
        for (input, expected) in cases {
            let mut fe = Frontend::new(caps(), false);
            let mut buf = input.to_vec();
            assert_eq!(
                drive(&mut fe, &mut buf),
                [reply(expected)],
                "{}",
                text(input)
            );
            assert!(buf.is_empty());
        }
        assert_eq!(
            session(b"A1 SELECT {5+}\r\nINBOX\r\nA2 NOOP\r\n"),
            [
                reply("A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n"),
                reply("A2 OK NOOP completed\r\n"),
            ]
        );
    }

    #[test]
    fn pipelined_bytes_stay_in_the_buffer() {
        let plain = b64(b"\0alice\0secret");
        let cases: Vec<(Vec<u8>, &[u8])> = vec![
            (
                b"A1 LOGIN alice secret\r\nA2 SELECT INBOX\r\n".to_vec(),
                b"A2 SELECT INBOX\r\n",
            ),
            (
                b"A1 LOGIN alice secret\r\nA2 APPEND INBOX {3+}\r\nabc\r\n".to_vec(),
                b"A2 APPEND INBOX {3+}\r\nabc\r\n",
            ),
            (b"A1 LOGIN {5+}\r\nalice secret\nA2 NO".to_vec(), b"A2 NO"),
            (
                format!("A1 AUTHENTICATE PLAIN {plain}\r\nA2 LIST \"\" *\r\n").into_bytes(),
                b"A2 LIST \"\" *\r\n",
            ),
            (
                format!("A1 AUTHENTICATE PLAIN\r\n{plain}\r\n\r\n").into_bytes(),
                b"\r\n",
            ),
            (
                b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nA2 NOOP\r\n".to_vec(),
                b"A2 NOOP\r\n",
            ),
        ];
        for (input, rest) in cases {
            let mut fe = Frontend::new(caps(), false);
            let mut buf = input.clone();
            let outs = drive(&mut fe, &mut buf);
            assert_eq!(
                outs.last(),
                Some(&login("A1", "alice", "secret")),
                "{}",
                text(&input)
            );
            assert_eq!(buf, rest, "{}", text(&input));
        }
    }

    #[test]
    fn simple_commands() {
        let log_in_first = "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n";
        let id = "* ID (\"name\" \"xoauth2-proxy\")\r\nA1 OK ID completed\r\n";
        let cases: &[(&[u8], &str)] = &[
            (
                b"A1 CAPABILITY\r\n",
                "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN\r\nA1 OK CAPABILITY completed\r\n",
            ),
            (
                b"A1 capability\n",
                "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN\r\nA1 OK CAPABILITY completed\r\n",
            ),
            (b"A1 NOOP\r\n", "A1 OK NOOP completed\r\n"),
            (b"A1 nOoP\r\n", "A1 OK NOOP completed\r\n"),
            (b"A1 ID NIL\r\n", id),
            (b"A1 id nil\r\n", id),
            (b"A1 ID ()\r\n", id),
            (
                b"A1 ID (\"name\" \"Thunderbird\" \"version\" \"115.3\")\r\n",
                id,
            ),
            (b"A1 ID (\"name\" NIL \"os\" {5+}\r\nLinux)\r\n", id),
            (
                b"A1 ID (\"name\" {11}\r\nOutlook) \"x \"vendor\" \"Microsoft\")\r\n",
                id,
            ),
            (b"A1 ID (\"name\" \"a\\\"b\")\r\n", id),
            (
                b"A1 ID\r\n",
                "A1 BAD ID expects a parenthesised list or NIL\r\n",
            ),
            (
                b"A1 ID (\"name\" \"x\"\r\n",
                "A1 BAD ID expects a parenthesised list or NIL\r\n",
            ),
            (
                b"A1 ID (\"name\"  \"x\")\r\n",
                "A1 BAD Expected an atom, a quoted string or a literal\r\n",
            ),
            (
                b"A1 ID NILL\r\n",
                "A1 BAD ID expects a parenthesised list or NIL\r\n",
            ),
            (
                b"A1 ID () x\r\n",
                "A1 BAD ID expects a parenthesised list or NIL\r\n",
            ),
            (b"A1 SELECT INBOX\r\n", log_in_first),
            (b"A1 examine INBOX\r\n", log_in_first),
            (b"A1 LIST \"\" *\r\n", log_in_first),
            (b"A1 ENABLE UTF8=ACCEPT\r\n", log_in_first),
            (b"A1 FROBNICATE\r\n", log_in_first),
            (b"A1 NOOP extra\r\n", "A1 BAD NOOP takes no arguments\r\n"),
            (
                b"A1 CAPABILITY \r\n",
                "A1 BAD CAPABILITY takes no arguments\r\n",
            ),
            (b"A1 LOGOUT now\r\n", "A1 BAD LOGOUT takes no arguments\r\n"),
            (
                b"A1 STARTTLS\r\n",
                "A1 BAD STARTTLS is not offered here\r\n",
            ),
            (b"A1\r\n", "A1 BAD Missing command\r\n"),
            (b"A1 \r\n", "A1 BAD Missing command\r\n"),
            (b"A1 \"NOOP\"\r\n", "A1 BAD Missing command\r\n"),
            (b"A1 NO\"OP\r\n", "A1 BAD Invalid command name\r\n"),
            (b"A1 NOOP\0\r\n", "A1 BAD NUL bytes are not allowed\r\n"),
        ];
        for (input, expected) in cases {
            assert_eq!(session(input), [reply(expected)], "{}", text(input));
        }
    }

    #[test]
    fn logout_closes() {
        assert_eq!(
            session(b"A1 LOGOUT\r\nA2 NOOP\r\n"),
            [Out::Close(
                "* BYE Logging out\r\nA1 OK LOGOUT completed\r\n".to_owned()
            )]
        );
        let mut fe = Frontend::new(caps(), false);
        let mut buf = b"A1 logout\r\n".to_vec();
        assert!(matches!(fe.step(&mut buf), Action::Close(_)));
        buf.extend_from_slice(b"A2 NOOP\r\n");
        assert!(matches!(fe.step(&mut buf), Action::Close(b) if b.is_empty()));
    }

    #[test]
    fn tags_are_echoed_exactly_and_bad_tags_get_untagged_replies() {
        for tag in [
            "A1",
            "a1",
            "0",
            "x]y",
            "tag.with-punct!#$&'",
            "~T",
            "A=1",
            "\u{7e}z",
        ] {
            let input = format!("{tag} NOOP\r\n");
            assert_eq!(
                session(input.as_bytes()),
                [reply(&format!("{tag} OK NOOP completed\r\n"))]
            );
        }
        let cases: &[(&[u8], &str)] = &[
            (b"\r\n", "* BAD Empty command line\r\n"),
            (b"\n", "* BAD Empty command line\r\n"),
            (b" NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"+A NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"A+ NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"(A NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"A% NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"A* NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"\"A\" NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"A\\1 NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"\xc3\xa91 NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"\0 NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"A1\tNOOP\r\n", "* BAD Missing or invalid tag\r\n"),
            (b"*\r\n", "* BAD Missing or invalid tag\r\n"),
        ];
        for (input, expected) in cases {
            assert_eq!(session(input), [reply(expected)], "{}", text(input));
        }
    }

    #[test]
    fn starttls_when_offered() {
        let mut fe = Frontend::new(rewrite_capabilities(&caps(), true), true);
        let (outs, _) = feed(&mut fe, [&b"A0 CAPABILITY\r\n"[..]]);
        assert_eq!(
            outs,
            [reply(
                "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN STARTTLS\r\nA0 OK CAPABILITY completed\r\n"
            )]
        );
        let mut buf = b"A1 starttls\r\nA2 LOGIN injected pw\r\n".to_vec();
        assert_eq!(drive(&mut fe, &mut buf), [Out::StartTls("A1".to_owned())]);
        assert_eq!(
            buf, b"A2 LOGIN injected pw\r\n",
            "the driver discards these"
        );
        assert_eq!(starttls_ok("A1"), b"A1 OK Begin TLS negotiation now\r\n");
        let (outs, _) = feed(&mut fe, [&b"A3 CAPABILITY\r\nA4 STARTTLS\r\n"[..]]);
        assert_eq!(
            outs,
            [
                reply(
                    "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN\r\nA3 OK CAPABILITY completed\r\n"
                ),
                reply("A4 BAD STARTTLS is not offered here\r\n"),
            ]
        );
    }

    #[test]
    fn capability_list_is_filtered_and_replaceable() {
        let mut fe = Frontend::new(strings("IMAP4rev1 STARTTLS AUTH=PLAIN"), false);
        fe.set_capabilities(vec![
            "IMAP4rev1".into(),
            "IDLE".into(),
            "BAD NAME".into(),
            "X\r\n".into(),
            "starttls".into(),
        ]);
        let (outs, _) = feed(&mut fe, [&b"A1 CAPABILITY\r\n"[..]]);
        assert_eq!(
            outs,
            [reply(
                "* CAPABILITY IMAP4rev1 IDLE\r\nA1 OK CAPABILITY completed\r\n"
            )]
        );
    }

    #[test]
    fn authenticate_plain() {
        let alice = b64(b"\0alice@contoso.com\0secret");
        let shared = b64(b"shared@contoso.com\0alice@contoso.com\0secret");
        let empty_pw = b64(b"\0alice\0");
        let control = b64(b"\0al\nice\0pw");
        let cases: Vec<(String, Vec<Out>)> = vec![
            (
                format!("A1 AUTHENTICATE PLAIN {alice}\r\n"),
                vec![login("A1", "alice@contoso.com", "secret")],
            ),
            (
                format!("a1 authenticate plain {alice}\n"),
                vec![login("a1", "alice@contoso.com", "secret")],
            ),
            (
                format!("A1 AUTHENTICATE PLAIN {shared}\r\n"),
                vec![login("A1", "shared@contoso.com", "secret")],
            ),
            (
                format!("A1 AUTHENTICATE PLAIN {empty_pw}\r\n"),
                vec![login("A1", "alice", "")],
            ),
            (
                format!("A1 AUTHENTICATE PLAIN\r\n{alice}\r\n"),
                vec![reply("+ \r\n"), login("A1", "alice@contoso.com", "secret")],
            ),
            (
                format!("A1 AUTHENTICATE PLAIN\r\n{alice}\n"),
                vec![reply("+ \r\n"), login("A1", "alice@contoso.com", "secret")],
            ),
            (
                "A1 AUTHENTICATE PLAIN =\r\n".to_owned(),
                vec![reply(
                    "A1 BAD Invalid PLAIN response: the PLAIN response must be authzid NUL authcid NUL password\r\n",
                )],
            ),
            (
                "A1 AUTHENTICATE PLAIN AGFsaWNl*\r\n".to_owned(),
                vec![reply(
                    "A1 BAD Invalid PLAIN response: the response is not valid base64\r\n",
                )],
            ),
            (
                "A1 AUTHENTICATE PLAIN\r\n%%%\r\nA2 NOOP\r\n".to_owned(),
                vec![
                    reply("+ \r\n"),
                    reply("A1 BAD Invalid PLAIN response: the response is not valid base64\r\n"),
                    reply("A2 OK NOOP completed\r\n"),
                ],
            ),
            (
                "A1 AUTHENTICATE PLAIN\r\n\r\n".to_owned(),
                vec![
                    reply("+ \r\n"),
                    reply(
                        "A1 BAD Invalid PLAIN response: the PLAIN response must be authzid NUL authcid NUL password\r\n",
                    ),
                ],
            ),
            (
                "A1 AUTHENTICATE PLAIN\r\n*\r\nA2 NOOP\r\n".to_owned(),
                vec![
                    reply("+ \r\n"),
                    reply("A1 BAD AUTHENTICATE cancelled\r\n"),
                    reply("A2 OK NOOP completed\r\n"),
                ],
            ),
            (
                format!("A1 AUTHENTICATE PLAIN {}\r\n", b64(b"\0\0pw")),
                vec![reply(
                    "A1 BAD Invalid PLAIN response: the user name is empty\r\n",
                )],
            ),
            (
                format!("A1 AUTHENTICATE PLAIN {control}\r\n"),
                vec![reply(
                    "A1 BAD The user name contains control characters\r\n",
                )],
            ),
            (
                "A1 AUTHENTICATE\r\n".to_owned(),
                vec![reply(
                    "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
                )],
            ),
            (
                "A1 AUTHENTICATE PLAIN a b\r\n".to_owned(),
                vec![reply(
                    "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
                )],
            ),
            (
                "A1 AUTHENTICATE PLAIN \r\n".to_owned(),
                vec![reply(
                    "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
                )],
            ),
            (
                "A1 AUTHENTICATE \"PLAIN\"\r\n".to_owned(),
                vec![reply(
                    "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
                )],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(session(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn authenticate_login() {
        let user = "+ VXNlcm5hbWU6\r\n";
        let pass = "+ UGFzc3dvcmQ6\r\n";
        let cases: Vec<(&[u8], Vec<Out>)> = vec![
            (
                b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n",
                vec![reply(user), reply(pass), login("A1", "alice", "secret")],
            ),
            (
                b"A1 authenticate login\nYWxpY2U=\nc2VjcmV0\n",
                vec![reply(user), reply(pass), login("A1", "alice", "secret")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\nc2VjcmV0\r\n",
                vec![reply(pass), login("A1", "alice", "secret")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\n=\r\n",
                vec![reply(pass), login("A1", "alice", "")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\n\r\n",
                vec![reply(pass), login("A1", "alice", "")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN =\r\n",
                vec![reply("A1 BAD The user name is empty\r\n")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN\r\n\r\n",
                vec![reply(user), reply("A1 BAD The user name is empty\r\n")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN\r\n*\r\n",
                vec![reply(user), reply("A1 BAD AUTHENTICATE cancelled\r\n")],
            ),
            (
                b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\n*\r\nA2 NOOP\r\n",
                vec![
                    reply(user),
                    reply(pass),
                    reply("A1 BAD AUTHENTICATE cancelled\r\n"),
                    reply("A2 OK NOOP completed\r\n"),
                ],
            ),
            (
                b"A1 AUTHENTICATE LOGIN !!!\r\n",
                vec![reply(
                    "A1 BAD Invalid user name: the response is not valid base64\r\n",
                )],
            ),
            (
                b"A1 AUTHENTICATE LOGIN\r\n/w==\r\n",
                vec![
                    reply(user),
                    reply("A1 BAD Invalid user name: the response is not valid UTF-8\r\n"),
                ],
            ),
            (
                b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\n!!!\r\nA2 NOOP\r\n",
                vec![
                    reply(pass),
                    reply("A1 BAD Invalid password: the response is not valid base64\r\n"),
                    reply("A2 OK NOOP completed\r\n"),
                ],
            ),
            (
                b"A1 AUTHENTICATE LOGIN YWwKaWNl\r\n",
                vec![reply(
                    "A1 BAD The user name contains control characters\r\n",
                )],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(session(input), expected, "{}", text(input));
        }
    }

    #[test]
    fn unsupported_mechanisms() {
        for input in [
            &b"A1 AUTHENTICATE XOAUTH2\r\n"[..],
            b"A1 AUTHENTICATE XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB4AQE=\r\n",
            b"A1 AUTHENTICATE OAUTHBEARER x\r\n",
            b"A1 AUTHENTICATE CRAM-MD5\r\n",
            b"A1 authenticate ntlm\r\n",
            b"A1 AUTHENTICATE GSSAPI\r\n",
            b"A1 AUTHENTICATE PLAINX\r\n",
        ] {
            assert_eq!(
                session(input),
                [reply(
                    "A1 NO [CANNOT] Unsupported mechanism; use PLAIN or LOGIN\r\n"
                )],
                "{}",
                text(input)
            );
        }
    }

    #[test]
    fn line_limit() {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = vec![b'a'; MAX_LINE - 1];
        assert!(drive(&mut fe, &mut buf).is_empty());
        buf.push(b'a');
        assert_eq!(
            drive(&mut fe, &mut buf),
            [Out::Close(
                "* BYE [TOOBIG] Command line too long (limit 8192 bytes)\r\n".to_owned()
            )]
        );

        let mut exact = b"A1 X ".to_vec();
        exact.resize(MAX_LINE - 2, b'a');
        exact.extend_from_slice(b"\r\n");
        assert_eq!(
            session(&exact),
            [reply(
                "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n"
            )]
        );
        exact.insert(5, b'a');
        assert!(matches!(session(&exact).as_slice(), [Out::Close(_)]));

        // Line bytes add up across the lines of one command.
        let mut chained = b"A1 ID (".to_vec();
        for _ in 0..1000 {
            chained.extend_from_slice(b"\"k\" {1+}\r\nv ");
        }
        assert!(matches!(session(&chained).as_slice(), [Out::Close(c)] if c.contains("TOOBIG")));

        let mut fe = Frontend::new(caps(), false);
        let mut buf = b"A1 AUTHENTICATE PLAIN\r\n".to_vec();
        assert_eq!(drive(&mut fe, &mut buf), [reply("+ \r\n")]);
        buf.resize(MAX_LINE, b'A');
        assert_eq!(
            drive(&mut fe, &mut buf),
            [Out::Close(
                "* BYE [TOOBIG] Response line too long (limit 8192 bytes)\r\n".to_owned()
            )]
        );
    }

    #[test]
    fn literal_limits() {
        let big = format!("{}", MAX_LITERAL + 1);
        let too_big =
            "BAD [TOOBIG] Literal too large (limit 8192 bytes each, 16384 per command)\r\n";
        let sync_cases = [
            format!("A1 LOGIN {{{big}}}\r\n"),
            format!("A1 LOGIN alice {{{big}}}\r\n"),
            "A1 LOGIN {99999999999999999999999999999}\r\n".to_owned(),
        ];
        for input in sync_cases {
            let mut fe = Frontend::new(caps(), false);
            let mut buf = input.clone().into_bytes();
            assert_eq!(
                drive(&mut fe, &mut buf),
                [reply(&format!("A1 {too_big}"))],
                "{input}"
            );
            assert!(buf.is_empty());
            buf.extend_from_slice(b"A2 NOOP\r\n");
            assert_eq!(
                drive(&mut fe, &mut buf),
                [reply("A2 OK NOOP completed\r\n")]
            );
        }
        assert_eq!(
            session(format!("+x {{{big}}}\r\n").as_bytes()),
            [reply(&format!("* {too_big}"))]
        );

        let close = Out::Close(
            "* BYE [TOOBIG] Literal too large (limit 8192 bytes each, 16384 per command)\r\n"
                .to_owned(),
        );
        assert_eq!(
            session(format!("A1 LOGIN {{{big}+}}\r\n").as_bytes()),
            std::slice::from_ref(&close)
        );
        assert_eq!(
            session(b"A1 LOGIN alice {18446744073709551616+}\r\n"),
            std::slice::from_ref(&close)
        );

        let max = "a".repeat(MAX_LITERAL);
        let fits = format!("A1 LOGIN {{{MAX_LITERAL}+}}\r\n{max} {{{MAX_LITERAL}+}}\r\n{max}\r\n");
        assert_eq!(session(fits.as_bytes()), [login("A1", &max, &max)]);
        let over_total = format!(
            "A1 ID (\"a\" {{{MAX_LITERAL}+}}\r\n{max} \"b\" {{{MAX_LITERAL}+}}\r\n{max} \"c\" {{1+}}\r\n"
        );
        assert_eq!(session(over_total.as_bytes()), [close]);

        let mut fe = Frontend::new(caps(), false);
        let mut buf = format!("A1 LOGIN {{{MAX_LITERAL}}}\r\n").into_bytes();
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply("+ Ready for literal data\r\n")]
        );
    }

    /// The main forms, split at every position and fed byte by byte, give the
    /// same actions as when fed at once (literal continuations aside: those
    /// are only due when the client is actually waiting).
    #[test]
    fn splitting_never_changes_the_result() {
        let plain = b64(b"\0alice@contoso.com\0secret");
        let inputs: Vec<Vec<u8>> = vec![
            b"A1 LOGIN alice@contoso.com secret\r\nA2 NOOP\r\n".to_vec(),
            b"A1 LOGIN \"alice\" \"se \\\"c\\\\ret\"\r\n".to_vec(),
            b"A1 LOGIN {17}\r\nalice@contoso.com {8}\r\nse\r\ncret\r\nA2 NOOP\r\n".to_vec(),
            b"A1 LOGIN {5+}\r\nalice {6+}\r\nsecret\nA2 SELECT INBOX\r\n".to_vec(),
            b"A1 LOGIN alice {0}\r\n\r\n".to_vec(),
            "A1 LOGIN \"jörg\" {10}\r\npässwörd\r\n".as_bytes().to_vec(),
            format!("A1 AUTHENTICATE PLAIN {plain}\r\nA2 NOOP\r\n").into_bytes(),
            format!("A1 AUTHENTICATE PLAIN\r\n{plain}\r\n").into_bytes(),
            b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n".to_vec(),
            b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\nc2VjcmV0\nA2 NOOP\n".to_vec(),
            b"A1 AUTHENTICATE PLAIN\r\n*\r\nA2 ID (\"name\" {3}\r\nfoo)\r\nA3 LOGOUT\r\n".to_vec(),
            b"A0 CAPABILITY\r\nA1 LOGIN x\"y z\r\nA2 LOGIN {9999}\r\nA3 NOOP\r\n".to_vec(),
        ];
        for input in inputs {
            let whole = feed(&mut Frontend::new(caps(), false), [&input[..]]);
            assert!(
                whole
                    .0
                    .iter()
                    .any(|o| !matches!(o, Out::Reply(r) if r.contains("BAD"))),
                "{whole:?}"
            );
            for at in 0..=input.len() {
                let (head, tail) = input.split_at(at);
                let (outs, rest) = feed(&mut Frontend::new(caps(), false), [head, tail]);
                assert_eq!(
                    (without_literal_continuations(outs), rest),
                    whole,
                    "split at {at}: {}",
                    text(&input)
                );
            }
            let (outs, rest) = feed(&mut Frontend::new(caps(), false), input.chunks(1));
            assert_eq!(
                (without_literal_continuations(outs), rest),
                whole,
                "{}",
                text(&input)
            );
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Every reply is ASCII lines ending in CRLF, with no stray CR or LF.
    fn assert_well_formed(bytes: &[u8]) {
        assert!(bytes.is_ascii(), "{}", text(bytes));
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let body = line
                .strip_suffix(b"\r\n")
                .unwrap_or_else(|| panic!("{}", text(bytes)));
            assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
        }
    }

    fn random_pieces(rng: &mut XorShift, pieces: &[&[u8]], long_runs: bool) -> Vec<u8> {
        let mut input = Vec::new();
        for _ in 0..rng.below(60) {
            match rng.below(10) {
                0 => input.push(rng.next() as u8),
                1 if long_runs => input.extend(std::iter::repeat_n(b'x', rng.below(3 * MAX_LINE))),
                _ => input.extend_from_slice(pieces[rng.below(pieces.len())]),
            }
        }
        input
    }

    /// A few commands built from the grammar, so that mutations of them
    /// reach the literal, quoting and SASL paths.
    fn well_formed_session(rng: &mut XorShift) -> Vec<u8> {
        let mut input = Vec::new();
        for _ in 0..1 + rng.below(4) {
            input.extend_from_slice([&b"A1"[..], b"a.2", b"x]y"][rng.below(3)]);
            match rng.below(8) {
                0..=2 => {
                    input.extend_from_slice(b" LOGIN ");
                    random_astring(rng, &mut input);
                    input.push(b' ');
                    random_astring(rng, &mut input);
                }
                3 => {
                    input.extend_from_slice(b" AUTHENTICATE PLAIN");
                    let plain = b64(b"\0alice\0pw");
                    if rng.below(2) == 0 {
                        input.push(b' ');
                    } else {
                        input.extend_from_slice(b"\r\n");
                    }
                    input.extend_from_slice(plain.as_bytes());
                }
                4 => input.extend_from_slice(b" AUTHENTICATE LOGIN\r\nYWxpY2U=\r\ncHc="),
                5 => {
                    input.extend_from_slice(b" ID (\"name\" ");
                    random_astring(rng, &mut input);
                    input.push(b')');
                }
                6 => input.extend_from_slice(
                    [
                        &b" CAPABILITY"[..],
                        b" NOOP",
                        b" STARTTLS",
                        b" SELECT INBOX",
                    ][rng.below(4)],
                ),
                _ => input.extend_from_slice(b" LOGOUT"),
            }
            input.extend_from_slice(if rng.below(4) == 0 { b"\n" } else { b"\r\n" });
        }
        input
    }

    fn random_astring(rng: &mut XorShift, out: &mut Vec<u8>) {
        let payload: Vec<u8> = (0..rng.below(12))
            .map(|_| b"ab \"\\\r\n{}\xc3\xa9"[rng.below(11)])
            .collect();
        match rng.below(4) {
            0 => out.extend_from_slice(b"alice@contoso.com"),
            1 => {
                out.push(b'"');
                for &b in &payload {
                    if matches!(b, b'"' | b'\\') {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            2 => out.extend(literal(&payload)),
            _ => {
                out.extend(format!("{{{}+}}\r\n", payload.len()).into_bytes());
                out.extend_from_slice(&payload);
            }
        }
    }

    #[test]
    fn pseudo_random_input_never_panics_or_grows_the_buffer() {
        const PIECES: &[&[u8]] = &[
            b"A1 ",
            b"a.2 ",
            b"* ",
            b"+ ",
            b"LOGIN ",
            b"login ",
            b"AUTHENTICATE ",
            b"PLAIN",
            b"LOGIN",
            b"XOAUTH2",
            b"ID ",
            b"NIL",
            b"(",
            b")",
            b"CAPABILITY",
            b"NOOP",
            b"STARTTLS",
            b"LOGOUT",
            b"SELECT ",
            b"\"",
            b"\\",
            b"\\\"",
            b" ",
            b"\r\n",
            b"\n",
            b"\r",
            b"{",
            b"}",
            b"{3}\r\n",
            b"{0}\r\n",
            b"{5+}\r\n",
            b"~{2}\r\n",
            b"{8192}\r\n",
            b"{9000+}\r\n",
            b"{99999}\r\n",
            b"*\r\n",
            b"=",
            b"AGFsaWNlAHB3",
            b"YWxpY2U=",
            b"\0",
            b"\xff",
            b"\xc3\xa9",
            b"alice",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut logins, mut closes, mut replies) = (0, 0, 0);
        for case in 0..4000 {
            let mut input = if rng.below(3) == 0 {
                random_pieces(&mut rng, PIECES, case % 50 == 0)
            } else {
                well_formed_session(&mut rng)
            };
            for _ in 0..rng.below(3) {
                if !input.is_empty() {
                    let at = rng.below(input.len());
                    input[at] = rng.next() as u8;
                }
            }
            let mut fe = Frontend::new(caps(), rng.below(2) == 0);
            let mut buf = Vec::new();
            let mut pos = 0;
            'feed: while pos < input.len() {
                let take = 1 + rng.below(64.min(input.len() - pos));
                buf.extend_from_slice(&input[pos..pos + take]);
                pos += take;
                for _ in 0..10_000 {
                    match fe.step(&mut buf) {
                        Action::NeedMore => {
                            assert!(
                                buf.len() <= MAX_COMMAND,
                                "case {case}: {} bytes buffered",
                                buf.len()
                            );
                            continue 'feed;
                        }
                        Action::Reply(bytes) => {
                            assert_well_formed(&bytes);
                            replies += 1;
                        }
                        Action::Close(bytes) => {
                            assert_well_formed(&bytes);
                            closes += 1;
                            break 'feed;
                        }
                        Action::StartTls { tag } => {
                            assert!(!tag.is_empty());
                            buf.clear();
                        }
                        Action::Login { tag, credentials } => {
                            assert!(!tag.is_empty());
                            assert!(!credentials.username.is_empty());
                            logins += 1;
                        }
                    }
                }
                panic!("case {case}: step never settled");
            }
        }
        // The generator must reach deep states, not only refusals.
        assert!(
            logins > 500 && closes > 200 && replies > 3000,
            "{logins} {closes} {replies}"
        );
    }

    #[test]
    fn rewriting_capabilities() {
        let office365 = strings(
            "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
        );
        let dovecot = strings(
            "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER",
        );
        let cases: Vec<(Vec<String>, bool, &str)> = vec![
            (
                office365.clone(),
                false,
                "IMAP4rev1 IMAP4 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN",
            ),
            (
                office365,
                true,
                "IMAP4rev1 IMAP4 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN STARTTLS",
            ),
            (
                dovecot,
                false,
                "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN",
            ),
            (vec![], false, "IMAP4rev1 AUTH=PLAIN AUTH=LOGIN"),
            (
                strings(
                    "IDLE imap4rev1 auth=plain StartTLS logindisabled idle Idle IMAP4rev2 AUTH=NTLM",
                ),
                true,
                "IMAP4rev1 IDLE IMAP4rev2 AUTH=PLAIN AUTH=LOGIN STARTTLS",
            ),
            (
                vec![
                    "".into(),
                    "A B".into(),
                    "X]".into(),
                    "Y\r\n".into(),
                    "Z(".into(),
                    "ÜBER".into(),
                    "OK".into(),
                ],
                false,
                "IMAP4rev1 OK AUTH=PLAIN AUTH=LOGIN",
            ),
        ];
        for (upstream, starttls, expected) in cases {
            assert_eq!(
                rewrite_capabilities(&upstream, starttls).join(" "),
                expected,
                "{upstream:?}"
            );
        }
    }

    #[test]
    fn greetings() {
        let dovecot = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER] Dovecot (Debian) ready.\r\n";
        let upstream = capabilities_in(dovecot).unwrap();
        assert_eq!(
            upstream.join(" "),
            "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER"
        );
        let rewritten = rewrite_capabilities(&upstream, false);
        assert_eq!(
            text(&rewrite_greeting(dovecot, &rewritten)),
            "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n"
        );
        let short = strings("IMAP4rev1 AUTH=PLAIN");
        let cases: &[(&[u8], &str)] = &[
            (
                b"* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADAA]",
                "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADAA]\r\n",
            ),
            (
                b"* OK ready\r\n",
                "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
            ),
            (
                b"* OK ready\n",
                "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
            ),
            (b"* OK\r\n", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN]\r\n"),
            (b"* OK [ALERT] hi\r\n", "* OK [ALERT] hi\r\n"),
            (b"* BYE going away\r\n", "* BYE going away\r\n"),
            (
                b"* ok [capability IMAP4rev1 X] hi\r\n",
                "* ok [capability IMAP4rev1 AUTH=PLAIN] hi\r\n",
            ),
            (
                b"* OK [CAPABILITY] hi",
                "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n",
            ),
            (
                b"* PREAUTH [CAPABILITY IMAP4rev2] logged in\r\n",
                "* PREAUTH [CAPABILITY IMAP4rev1 AUTH=PLAIN] logged in\r\n",
            ),
            (
                b"* OK [CAPABILITYX Y] hi\r\n",
                "* OK [CAPABILITYX Y] hi\r\n",
            ),
            (
                b"* OK [CAPABILITY IMAP4rev1 hi\r\n",
                "* OK [CAPABILITY IMAP4rev1 hi\r\n",
            ),
            (
                b"* OK hi [CAPABILITY IMAP4rev1]\r\n",
                "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi [CAPABILITY IMAP4rev1]\r\n",
            ),
            (b"", "\r\n"),
        ];
        for (line, expected) in cases {
            assert_eq!(
                text(&rewrite_greeting(line, &short)),
                *expected,
                "{}",
                text(line)
            );
        }
    }

    #[test]
    fn capabilities_in_lines() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                b"* CAPABILITY IMAP4rev1 IDLE AUTH=XOAUTH2\r\n",
                Some("IMAP4rev1 IDLE AUTH=XOAUTH2"),
            ),
            (b"* capability IMAP4rev1  IDLE", Some("IMAP4rev1 IDLE")),
            (b"* CAPABILITY\r\n", Some("")),
            (
                b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n",
                Some("IMAP4rev1 LITERAL+"),
            ),
            (
                b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
                Some("IMAP4rev1"),
            ),
            (
                b"A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
                Some("IMAP4rev1 IDLE"),
            ),
            (b"A1 NO [CAPABILITY X] no\r\n", Some("X")),
            (b"* OK ready\r\n", None),
            (b"* CAPABILITYX\r\n", None),
            (b"* OK [CAPABILITYX] y\r\n", None),
            (b"* OK [CAPABILITY X\r\n", None),
            (b"A1 OK done [CAPABILITY X]\r\n", None),
            (b"+ [CAPABILITY X]\r\n", None),
            (b"* FOO [CAPABILITY X]\r\n", None),
            (b"", None),
            (b"*", None),
        ];
        for (line, expected) in cases {
            assert_eq!(
                capabilities_in(line).map(|c| c.join(" ")).as_deref(),
                *expected,
                "{}",
                text(line)
            );
        }
    }

    #[test]
    fn server_lines() {
        use ServerLine::*;
        let cases: &[(&[u8], Option<ServerLine<'_>>)] = &[
            (
                b"A1 OK AUTHENTICATE completed.\r\n",
                Some(Tagged {
                    tag: b"A1",
                    status: Status::Ok,
                    text: b"AUTHENTICATE completed.",
                }),
            ),
            (
                b"a1 ok [CAPABILITY IMAP4rev1] done",
                Some(Tagged {
                    tag: b"a1",
                    status: Status::Ok,
                    text: b"[CAPABILITY IMAP4rev1] done",
                }),
            ),
            (
                b"A1 NO AUTHENTICATE failed.\r\n",
                Some(Tagged {
                    tag: b"A1",
                    status: Status::No,
                    text: b"AUTHENTICATE failed.",
                }),
            ),
            (
                b"A1 BAD User is authenticated but not connected.\n",
                Some(Tagged {
                    tag: b"A1",
                    status: Status::Bad,
                    text: b"User is authenticated but not connected.",
                }),
            ),
            (
                b"A1 OK\r\n",
                Some(Tagged {
                    tag: b"A1",
                    status: Status::Ok,
                    text: b"",
                }),
            ),
            (
                b"x]y PREAUTH hi",
                Some(Tagged {
                    tag: b"x]y",
                    status: Status::PreAuth,
                    text: b"hi",
                }),
            ),
            (
                b"* BYE Connection closed\r\n",
                Some(Untagged(b"BYE Connection closed")),
            ),
            (
                b"* OK The Microsoft Exchange IMAP4 service is ready.\r\n",
                Some(Untagged(
                    b"OK The Microsoft Exchange IMAP4 service is ready.",
                )),
            ),
            (b"+ \r\n", Some(Continuation(b""))),
            (b"+\r\n", Some(Continuation(b""))),
            (
                b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n",
                Some(Continuation(b"eyJzdGF0dXMiOiI0MDEifQ==")),
            ),
            (b"+eyJ9\r\n", Some(Continuation(b"eyJ9"))),
            (b"A1 MAYBE x\r\n", None),
            (b"A1\r\n", None),
            (b"A1  OK x\r\n", None),
            (b"(A OK x\r\n", None),
            (b"*\r\n", None),
            (b"*BYE\r\n", None),
            (b"", None),
            (b"\r\n", None),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_server_line(line), *expected, "{}", text(line));
        }
    }

    #[test]
    fn retagging() {
        let cases: &[(&[u8], &str, &[u8])] = &[
            (
                b"U7 OK [CAPABILITY IMAP4rev1 IDLE] AUTHENTICATE completed.\r\n",
                "A1",
                b"A1 OK [CAPABILITY IMAP4rev1 IDLE] AUTHENTICATE completed.\r\n",
            ),
            (
                b"U7 NO AUTHENTICATE failed.\r\n",
                "a.b",
                b"a.b NO AUTHENTICATE failed.\r\n",
            ),
            (b"U7 bad \xff\xfe text\n", "T", b"T bad \xff\xfe text\n"),
            (b"LONGERTAG OK x", "A", b"A OK x"),
            (b"* BYE bye\r\n", "A1", b"* BYE bye\r\n"),
            (b"+ \r\n", "A1", b"+ \r\n"),
            (b"garbage\r\n", "A1", b"garbage\r\n"),
        ];
        for (line, tag, expected) in cases {
            assert_eq!(retag(line, tag), *expected, "{}", text(line));
        }
    }

    #[test]
    fn failure_replies() {
        let cases = [
            (
                Failure::BadCredentials("Wrong password".into()),
                "A1 NO [AUTHENTICATIONFAILED] Wrong password\r\n",
            ),
            (
                Failure::SignInNeeded("Sign in at http://127.0.0.1:8080/".into()),
                "A1 NO [AUTHENTICATIONFAILED] Sign in at http://127.0.0.1:8080/\r\n",
            ),
            (
                Failure::Unavailable("Try again\r\nA2 OK injected".into()),
                "A1 NO [UNAVAILABLE] Try again  A2 OK injected\r\n",
            ),
            (
                Failure::BadCredentials(String::new()),
                "A1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n",
            ),
            (
                Failure::Unavailable("\n".into()),
                "A1 NO [UNAVAILABLE] Service temporarily unavailable\r\n",
            ),
        ];
        for (failure, expected) in cases {
            assert_eq!(
                text(&failure_reply("A1", &failure)),
                expected,
                "{failure:?}"
            );
        }
    }
}
