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

mod server;
use server::usable_capabilities;
pub use server::{
    ServerLine, Status, capabilities_in, parse_server_line, retag, rewrite_capabilities,
    rewrite_greeting, without_logins,
};

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
                Err(e @ sasl::SaslError::ControlInUser) => {
                    Action::Reply(tagged(&tag, &format!("BAD {}", username_error(&e))))
                }
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
/// The rule is `sasl::check_username`, shared by the three protocols.
fn check_username(username: &str) -> Result<(), &'static str> {
    sasl::check_username(username).map_err(|e| username_error(&e))
}

fn username_error(e: &sasl::SaslError) -> &'static str {
    match e {
        sasl::SaslError::EmptyUser => "The user name is empty",
        _ => "The user name contains control characters",
    }
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
mod tests;
