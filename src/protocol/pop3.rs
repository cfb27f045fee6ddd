//! POP3 front end before authentication (RFC 1939, RFC 2449 CAPA, RFC 5034
//! SASL, RFC 2595 STLS, RFC 3206 response codes).
//!
//! Sans-IO: the session driver appends client bytes to a buffer and calls
//! [`Frontend::step`] until it returns [`Action::NeedMore`]. Each step parses at
//! most one line from the front of the buffer, drains (and wipes) what it
//! consumed, and says what to do. Bytes after the line that yields
//! [`Action::Login`] stay in the buffer so a pipelining client loses nothing.
//!
//! The upstream helpers ([`rewrite_capa`], [`parse_reply`], [`greeting`]) are
//! pure functions the driver uses on the server's side of the dialogue.

use secrecy::SecretString;
use zeroize::Zeroize;

use super::{Credentials, Failure, one_line};
use crate::sasl::{
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE, SaslError, decode_login_part, decode_plain,
};

/// Longest line (without its line end) the front end accepts.
///
/// RFC 1939 and RFC 2449 allow 255-octet commands, but a base64 SASL response
/// (RFC 5034) for a long address and password can be longer; 8 KiB holds any
/// real credentials and still keeps a hostile client's buffer small.
pub const MAX_LINE: usize = 8 * 1024;

/// What the driver does next.
#[derive(Debug)]
#[must_use]
pub enum Action {
    /// No complete line in the buffer: read more bytes, then step again.
    NeedMore,
    /// Write these bytes to the client, then step again.
    Reply(Vec<u8>),
    /// Authenticate upstream; the driver writes the final reply itself.
    /// The front end is back at the start, so a failed login can be retried
    /// (with `USER` again for USER/PASS).
    Login { credentials: Credentials },
    /// Only when STLS is offered: write [`starttls_ok`], upgrade the
    /// connection and discard any buffered bytes (RFC 2595 §4 injection
    /// defence). STLS is not offered a second time.
    StartTls,
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
}

/// Where the dialogue is. The password is never stored here: it goes straight
/// from the buffer into the [`Credentials`] of a `Login`.
#[derive(Debug)]
enum State {
    /// Waiting for a command.
    Authorization,
    /// `USER` accepted; RFC 1939 expects `PASS` (or `QUIT`) next.
    UserGiven { username: String },
    /// `AUTH PLAIN` without an initial response: the next line is the message.
    PlainResponse,
    /// `AUTH LOGIN`: the next line is the base64 user name.
    LoginUsername,
    /// `AUTH LOGIN`: the next line is the base64 password.
    LoginPassword { username: String },
}

/// The pre-authentication POP3 dialogue with one client.
#[derive(Debug)]
pub struct Frontend {
    state: State,
    capa: Vec<String>,
    offer_stls: bool,
}

impl Frontend {
    /// `capa` is the already rewritten capability list (see [`rewrite_capa`]),
    /// without the terminating `.` line.
    pub fn new(capa: Vec<String>, offer_stls: bool) -> Self {
        Self {
            state: State::Authorization,
            capa,
            offer_stls,
        }
    }

    /// Replaces the capability list, e.g. after STLS when the upstream's list
    /// is rewritten without STLS.
    pub fn set_capa(&mut self, capa: Vec<String>) {
        self.capa = capa;
    }

    /// Whether STLS is still on offer (false once it has been used), so the
    /// driver can rewrite the capabilities to match.
    pub fn offers_stls(&self) -> bool {
        self.offer_stls
    }

    /// Parses one line from the front of `buf` and says what to do.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> Action {
        match scan_line(buf) {
            Scan::Incomplete => Action::NeedMore,
            Scan::TooLong => {
                discard(buf, buf.len());
                self.state = State::Authorization;
                Action::Close(
                    format!("-ERR Line too long (limit {MAX_LINE} octets)\r\n").into_bytes(),
                )
            }
            Scan::Line { len, consumed } => {
                let line = buf.get(..len).unwrap_or_default();
                let action = self.on_line(line);
                discard(buf, consumed);
                action
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Action {
        match std::mem::replace(&mut self.state, State::Authorization) {
            State::Authorization => self.on_command(line, None),
            State::UserGiven { username } => self.on_command(line, Some(username)),
            State::PlainResponse => sasl_response(line, plain_login),
            State::LoginUsername => sasl_response(line, |r| self.login_username(r)),
            State::LoginPassword { username } => {
                sasl_response(line, |r| login_password(username, r))
            }
        }
    }

    /// `pending_user` is the name from a preceding `USER`; any command other
    /// than `PASS` forgets it (RFC 1939 allows only `PASS` or `QUIT` there).
    fn on_command(&mut self, line: &[u8], pending_user: Option<String>) -> Action {
        let (verb, arg) = split_verb(line);
        match Verb::parse(verb) {
            Verb::Capa => Action::Reply(self.capa_reply()),
            Verb::User => self.user(arg),
            Verb::Pass => match pending_user {
                Some(username) => pass_login(username, arg),
                None => reply("-ERR USER first"),
            },
            Verb::Auth => self.auth(arg),
            Verb::Apop => reply("-ERR APOP is not supported, use USER/PASS or AUTH PLAIN"),
            Verb::Quit => Action::Close(b"+OK Bye\r\n".to_vec()),
            Verb::Stls => self.stls(arg),
            Verb::Transaction => reply("-ERR Log in first"),
            Verb::Empty => reply("-ERR Empty command"),
            Verb::Unknown => reply("-ERR Unknown command"),
        }
    }

    fn capa_reply(&self) -> Vec<u8> {
        let mut out = b"+OK Capability list follows\r\n".to_vec();
        for line in &self.capa {
            push_multiline(&mut out, &one_line(line));
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    fn user(&mut self, arg: &[u8]) -> Action {
        let name = arg.trim_ascii();
        if name.is_empty() {
            return reply("-ERR Missing user name");
        }
        match std::str::from_utf8(name) {
            Ok(name) => {
                self.state = State::UserGiven {
                    username: name.to_owned(),
                };
                reply("+OK Send PASS")
            }
            Err(_) => reply("-ERR User name is not valid UTF-8"),
        }
    }

    /// `AUTH` lists the mechanisms (a common extension of RFC 5034); with a
    /// mechanism it starts PLAIN or LOGIN, with or without initial response.
    fn auth(&mut self, arg: &[u8]) -> Action {
        let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
            return if arg.trim_ascii().is_empty() {
                Action::Reply(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n".to_vec())
            } else {
                reply("-ERR Syntax: AUTH mechanism [initial-response]")
            };
        };
        if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            match initial {
                Some(ir) => plain_login(ir),
                None => {
                    self.state = State::PlainResponse;
                    reply("+ ")
                }
            }
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            match initial {
                Some(ir) => self.login_username(ir),
                None => {
                    self.state = State::LoginUsername;
                    challenge(LOGIN_USERNAME_CHALLENGE)
                }
            }
        } else {
            reply("-ERR Unsupported mechanism, use PLAIN or LOGIN")
        }
    }

    fn login_username(&mut self, response: &[u8]) -> Action {
        match decode_login_part(response) {
            Ok(name) if name.is_empty() => sasl_error(&SaslError::EmptyUser),
            Ok(name) => {
                self.state = State::LoginPassword {
                    username: name.as_str().to_owned(),
                };
                challenge(LOGIN_PASSWORD_CHALLENGE)
            }
            Err(e) => sasl_error(&e),
        }
    }

    fn stls(&mut self, arg: &[u8]) -> Action {
        if !self.offer_stls {
            reply("-ERR STLS not offered")
        } else if !arg.trim_ascii().is_empty() {
            reply("-ERR STLS takes no argument")
        } else {
            self.offer_stls = false;
            Action::StartTls
        }
    }
}

/// The reply that precedes the TLS handshake (RFC 2595 §4).
pub fn starttls_ok() -> Vec<u8> {
    b"+OK Begin TLS negotiation\r\n".to_vec()
}

/// Renders a refused login with the RFC 3206 response code that tells the
/// client whether retrying with another password can help.
pub fn failure_reply(failure: &Failure) -> Vec<u8> {
    let (code, default) = match failure {
        Failure::BadCredentials(_) => ("AUTH", "Authentication failed"),
        Failure::SignInNeeded(_) => ("AUTH", "Sign-in needed"),
        Failure::Unavailable(_) => ("SYS/TEMP", "Service temporarily unavailable"),
    };
    let text = one_line(failure.text());
    let text = if text.trim().is_empty() {
        default
    } else {
        text.trim()
    };
    format!("-ERR [{code}] {text}\r\n").into_bytes()
}

/// Rewrites the upstream's CAPA lines for the client: SASL becomes
/// `SASL PLAIN LOGIN` (the client never sees XOAUTH2 or OAUTHBEARER), `USER`
/// is present, `STLS` is present only when we offer it. `RESP-CODES` and
/// `AUTH-RESP-CODE` are added because [`failure_reply`] sends such codes.
/// Order is kept, duplicates and lines that could break the list are dropped.
pub fn rewrite_capa(upstream: &[String], offer_stls: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in upstream {
        let line = one_line(line).trim().to_owned();
        if line.is_empty() || line.starts_with('.') {
            continue;
        }
        let keyword = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let kept = match keyword.as_str() {
            "SASL" => Some(SASL_LINE.to_owned()),
            "STLS" if !offer_stls => None,
            "STLS" | "USER" => Some(keyword),
            _ if names_oauth(&line) => None,
            _ => Some(line),
        };
        if let Some(kept) = kept {
            push_unique(&mut out, kept);
        }
    }
    for required in ["USER", SASL_LINE, "RESP-CODES", "AUTH-RESP-CODE"] {
        push_unique(&mut out, required.to_owned());
    }
    if offer_stls {
        push_unique(&mut out, "STLS".to_owned());
    }
    out
}

const SASL_LINE: &str = "SASL PLAIN LOGIN";

/// A line that names an OAuth mechanism outside the SASL line (a server
/// extension we cannot know) would tempt a client to use a mechanism the
/// proxy does not offer.
fn names_oauth(line: &str) -> bool {
    line.split([' ', '='])
        .any(|w| w.eq_ignore_ascii_case("XOAUTH2") || w.eq_ignore_ascii_case("OAUTHBEARER"))
}

/// Capability lines compare case-insensitively (RFC 2449 §6).
fn push_unique(out: &mut Vec<String>, line: String) {
    if !out.iter().any(|l| l.eq_ignore_ascii_case(&line)) {
        out.push(line);
    }
}

/// The client's greeting built from the upstream's `+OK` text, without an
/// APOP timestamp (`<...@...>`, RFC 1939 §7): its presence makes some clients
/// (fetchmail) try APOP, which the proxy cannot do.
pub fn greeting(upstream_text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(upstream_text);
    let text = one_line(&text);
    let text = strip_apop_timestamp(&text);
    let text = if text.is_empty() { "POP3 ready" } else { &text };
    format!("+OK {text}\r\n").into_bytes()
}

fn strip_apop_timestamp(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let (before, from_open) = rest.split_at(open);
        match from_open.find('>') {
            Some(close) if from_open.get(..close).is_some_and(|t| t.contains('@')) => {
                out.push_str(before.trim_end());
                rest = from_open.get(close + 1..).unwrap_or_default();
            }
            _ => {
                out.push_str(before);
                out.push('<');
                rest = from_open.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// One upstream status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+OK [text]`: the text.
    Ok(&'a [u8]),
    /// `-ERR [text]`: the text.
    Err(&'a [u8]),
    /// `+ [data]`: a SASL challenge (RFC 5034), possibly empty.
    Continuation(&'a [u8]),
}

/// Parses one upstream status line (with or without its line end). `None`
/// when it is not a POP3 status line.
pub fn parse_reply(line: &[u8]) -> Option<Reply<'_>> {
    let line = strip_line_end(line);
    if let Some(text) = after_indicator(line, b"+OK") {
        Some(Reply::Ok(text))
    } else if let Some(text) = after_indicator(line, b"-ERR") {
        Some(Reply::Err(text))
    } else {
        after_indicator(line, b"+").map(Reply::Continuation)
    }
}

/// The text after a status indicator, which must be followed by a space or
/// end the line (`+OKAY` is not `+OK`).
fn after_indicator<'a>(line: &'a [u8], indicator: &[u8]) -> Option<&'a [u8]> {
    let head = line.get(..indicator.len())?;
    if !head.eq_ignore_ascii_case(indicator) {
        return None;
    }
    match line.get(indicator.len()..)? {
        [] => Some(&[]),
        [b' ', text @ ..] => Some(text),
        _ => None,
    }
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

// ---- commands ----------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Capa,
    User,
    Pass,
    Auth,
    Apop,
    Quit,
    Stls,
    /// Valid only after login (RFC 1939 TRANSACTION state).
    Transaction,
    Empty,
    Unknown,
}

impl Verb {
    const TABLE: &[(&str, Verb)] = &[
        ("CAPA", Verb::Capa),
        ("USER", Verb::User),
        ("PASS", Verb::Pass),
        ("AUTH", Verb::Auth),
        ("APOP", Verb::Apop),
        ("QUIT", Verb::Quit),
        ("STLS", Verb::Stls),
        ("STAT", Verb::Transaction),
        ("LIST", Verb::Transaction),
        ("RETR", Verb::Transaction),
        ("DELE", Verb::Transaction),
        ("NOOP", Verb::Transaction),
        ("RSET", Verb::Transaction),
        ("TOP", Verb::Transaction),
        ("UIDL", Verb::Transaction),
        ("LAST", Verb::Transaction),
        ("UTF8", Verb::Transaction),
    ];

    fn parse(word: &[u8]) -> Verb {
        if word.is_empty() {
            return Verb::Empty;
        }
        Self::TABLE
            .iter()
            .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(word))
            .map_or(Verb::Unknown, |&(_, verb)| verb)
    }
}

/// Splits `VERB rest` at the first space. The rest is kept verbatim because
/// a `PASS` argument is everything after exactly one space.
fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => (
            line.get(..space).unwrap_or_default(),
            line.get(space + 1..).unwrap_or_default(),
        ),
        None => (line, &[]),
    }
}

// ---- logins ----------------------------------------------------------------

fn pass_login(username: String, password: &[u8]) -> Action {
    match std::str::from_utf8(password) {
        Ok(password) => Action::Login {
            credentials: Credentials {
                username,
                password: SecretString::from(password.to_owned()),
            },
        },
        Err(_) => reply("-ERR Password is not valid UTF-8"),
    }
}

fn plain_login(response: &[u8]) -> Action {
    match decode_plain(response) {
        Ok(credentials) => Action::Login { credentials },
        Err(e) => sasl_error(&e),
    }
}

fn login_password(username: String, response: &[u8]) -> Action {
    match decode_login_part(response) {
        Ok(mut password) => Action::Login {
            credentials: Credentials {
                username,
                // Moves the decoded text into the secret without a copy.
                password: SecretString::from(std::mem::take(&mut *password)),
            },
        },
        Err(e) => sasl_error(&e),
    }
}

/// A line inside a SASL exchange: `*` cancels it (RFC 5034 §4), anything else
/// is a base64 response handed to `on_response`.
fn sasl_response(line: &[u8], on_response: impl FnOnce(&[u8]) -> Action) -> Action {
    if line.trim_ascii() == b"*" {
        reply("-ERR Authentication cancelled")
    } else {
        on_response(line)
    }
}

/// SaslError texts describe the shape of the response, never its content.
fn sasl_error(error: &SaslError) -> Action {
    Action::Reply(format!("-ERR {error}\r\n").into_bytes())
}

fn challenge(base64: &str) -> Action {
    Action::Reply(format!("+ {base64}\r\n").into_bytes())
}

fn reply(line: &str) -> Action {
    Action::Reply(format!("{line}\r\n").into_bytes())
}

/// Appends one line of a multi-line response, dot-stuffed (RFC 1939 §3).
fn push_multiline(out: &mut Vec<u8>, line: &str) {
    if line.starts_with('.') {
        out.push(b'.');
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

// ---- line framing ------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Incomplete,
    TooLong,
    /// `len` octets of content, `consumed` including the line end.
    Line {
        len: usize,
        consumed: usize,
    },
}

/// Finds the first line; CRLF or a bare LF ends it. Looks no further than
/// `MAX_LINE + 2` octets, so a flood without line ends costs no rescans.
fn scan_line(buf: &[u8]) -> Scan {
    match buf.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') {
        Some(lf) => {
            let len = if lf > 0 && buf.get(lf - 1) == Some(&b'\r') {
                lf - 1
            } else {
                lf
            };
            if len > MAX_LINE {
                Scan::TooLong
            } else {
                Scan::Line {
                    len,
                    consumed: lf + 1,
                }
            }
        }
        None if buf.len() > MAX_LINE + 1 => Scan::TooLong,
        None => Scan::Incomplete,
    }
}

/// Wipes and removes the first `n` octets: a consumed line may have carried
/// a password, and `drain` alone would leave it in the spare capacity.
fn discard(buf: &mut Vec<u8>, n: usize) {
    let n = n.min(buf.len());
    if let Some(head) = buf.get_mut(..n) {
        head.zeroize();
    }
    buf.drain(..n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use secrecy::ExposeSecret;

    /// A comparable view of an action; the password is exposed only here.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum A {
        NeedMore,
        Reply(String),
        Login(String, String),
        StartTls,
        Close(String),
    }

    fn view(action: Action) -> A {
        match action {
            Action::NeedMore => A::NeedMore,
            Action::Reply(b) => A::Reply(String::from_utf8(b).unwrap()),
            Action::Login { credentials } => A::Login(
                credentials.username,
                credentials.password.expose_secret().to_owned(),
            ),
            Action::StartTls => A::StartTls,
            Action::Close(b) => A::Close(String::from_utf8(b).unwrap()),
        }
    }

    fn r(s: &str) -> A {
        A::Reply(s.to_owned())
    }

    fn login(u: &str, p: &str) -> A {
        A::Login(u.to_owned(), p.to_owned())
    }

    fn b64(s: &[u8]) -> String {
        B64.encode(s)
    }

    fn frontend(offer_stls: bool) -> Frontend {
        Frontend::new(vec!["USER".into(), "SASL PLAIN LOGIN".into()], offer_stls)
    }

    /// Steps until NeedMore or Close, returning every action but NeedMore.
    fn run(fe: &mut Frontend, buf: &mut Vec<u8>) -> Vec<A> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match view(fe.step(buf)) {
                A::NeedMore => return out,
                a @ A::Close(_) => {
                    out.push(a);
                    return out;
                }
                a => out.push(a),
            }
        }
        panic!("step did not settle");
    }

    fn dialogue(offer_stls: bool, input: &str) -> Vec<A> {
        run(&mut frontend(offer_stls), &mut input.as_bytes().to_vec())
    }

    #[test]
    fn dialogue_table() {
        let plain = b64(b"\0alice@contoso.com\0pa ss");
        let user = b64(b"alice@contoso.com");
        let pass = b64(b"s3cret");
        let cases: Vec<(&str, bool, String, Vec<A>)> = vec![
            (
                "capa",
                false,
                "CAPA\r\n".into(),
                vec![r(
                    "+OK Capability list follows\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n",
                )],
            ),
            (
                "user pass",
                false,
                "USER alice@contoso.com\r\nPASS s3cret\r\n".into(),
                vec![r("+OK Send PASS\r\n"), login("alice@contoso.com", "s3cret")],
            ),
            (
                "pass keeps spaces",
                false,
                "user bob\npass  two words \r\n".into(),
                vec![r("+OK Send PASS\r\n"), login("bob", " two words ")],
            ),
            (
                "empty password still logs in",
                false,
                "USER bob\r\nPASS\r\n".into(),
                vec![r("+OK Send PASS\r\n"), login("bob", "")],
            ),
            (
                "empty password after space",
                false,
                "USER bob\r\nPASS \r\n".into(),
                vec![r("+OK Send PASS\r\n"), login("bob", "")],
            ),
            (
                "pass without user",
                false,
                "PASS x\r\n".into(),
                vec![r("-ERR USER first\r\n")],
            ),
            (
                "retry needs user again",
                false,
                "USER a\r\nPASS x\r\nPASS y\r\n".into(),
                vec![
                    r("+OK Send PASS\r\n"),
                    login("a", "x"),
                    r("-ERR USER first\r\n"),
                ],
            ),
            (
                "other command forgets user",
                false,
                "USER a\r\nSTAT\r\nPASS y\r\n".into(),
                vec![
                    r("+OK Send PASS\r\n"),
                    r("-ERR Log in first\r\n"),
                    r("-ERR USER first\r\n"),
                ],
            ),
            (
                "user again replaces",
                false,
                "USER a\r\nUSER b\r\nPASS y\r\n".into(),
                vec![
                    r("+OK Send PASS\r\n"),
                    r("+OK Send PASS\r\n"),
                    login("b", "y"),
                ],
            ),
            (
                "user without name",
                false,
                "USER\r\nUSER  \r\n".into(),
                vec![
                    r("-ERR Missing user name\r\n"),
                    r("-ERR Missing user name\r\n"),
                ],
            ),
            (
                "auth lists mechanisms",
                false,
                "AUTH\r\n".into(),
                vec![r("+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")],
            ),
            (
                "auth plain ir",
                false,
                format!("AUTH PLAIN {plain}\r\n"),
                vec![login("alice@contoso.com", "pa ss")],
            ),
            (
                "auth plain lower case",
                false,
                format!("auth plain {plain}\r\n"),
                vec![login("alice@contoso.com", "pa ss")],
            ),
            (
                "auth plain challenge",
                false,
                format!("AUTH PLAIN\r\n{plain}\r\n"),
                vec![r("+ \r\n"), login("alice@contoso.com", "pa ss")],
            ),
            (
                "auth plain empty ir",
                false,
                "AUTH PLAIN =\r\n".into(),
                vec![r(
                    "-ERR the PLAIN response must be authzid NUL authcid NUL password\r\n",
                )],
            ),
            (
                "auth plain bad base64",
                false,
                "AUTH PLAIN\r\n!!!\r\n".into(),
                vec![r("+ \r\n"), r("-ERR the response is not valid base64\r\n")],
            ),
            (
                "auth plain empty user",
                false,
                format!("AUTH PLAIN {}\r\n", b64(b"\0\0pw")),
                vec![r("-ERR the user name is empty\r\n")],
            ),
            (
                "auth plain cancelled",
                false,
                "AUTH PLAIN\r\n*\r\nCAPA\r\n".into(),
                vec![
                    r("+ \r\n"),
                    r("-ERR Authentication cancelled\r\n"),
                    r("+OK Capability list follows\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"),
                ],
            ),
            (
                "auth login",
                false,
                format!("AUTH LOGIN\r\n{user}\r\n{pass}\r\n"),
                vec![
                    r("+ VXNlcm5hbWU6\r\n"),
                    r("+ UGFzc3dvcmQ6\r\n"),
                    login("alice@contoso.com", "s3cret"),
                ],
            ),
            (
                "auth login ir",
                false,
                format!("AUTH LOGIN {user}\r\n{pass}\r\n"),
                vec![
                    r("+ UGFzc3dvcmQ6\r\n"),
                    login("alice@contoso.com", "s3cret"),
                ],
            ),
            (
                "auth login empty password",
                false,
                format!("AUTH LOGIN {user}\r\n=\r\n"),
                vec![r("+ UGFzc3dvcmQ6\r\n"), login("alice@contoso.com", "")],
            ),
            (
                "auth login cancel at password",
                false,
                format!("AUTH LOGIN\r\n{user}\r\n*\r\n"),
                vec![
                    r("+ VXNlcm5hbWU6\r\n"),
                    r("+ UGFzc3dvcmQ6\r\n"),
                    r("-ERR Authentication cancelled\r\n"),
                ],
            ),
            (
                "auth login bad user",
                false,
                "AUTH LOGIN\r\n%%%\r\n".into(),
                vec![
                    r("+ VXNlcm5hbWU6\r\n"),
                    r("-ERR the response is not valid base64\r\n"),
                ],
            ),
            (
                "auth login empty user",
                false,
                "AUTH LOGIN =\r\n".into(),
                vec![r("-ERR the user name is empty\r\n")],
            ),
            (
                "auth login non-utf8 password",
                false,
                format!("AUTH LOGIN {user}\r\n{}\r\n", b64(b"\xff\xfe")),
                vec![
                    r("+ UGFzc3dvcmQ6\r\n"),
                    r("-ERR the response is not valid UTF-8\r\n"),
                ],
            ),
            (
                "xoauth2 refused",
                false,
                "AUTH XOAUTH2\r\nAUTH NTLM\r\nAUTH OAUTHBEARER abc\r\n".into(),
                vec![
                    r("-ERR Unsupported mechanism, use PLAIN or LOGIN\r\n"),
                    r("-ERR Unsupported mechanism, use PLAIN or LOGIN\r\n"),
                    r("-ERR Unsupported mechanism, use PLAIN or LOGIN\r\n"),
                ],
            ),
            (
                "auth extra words",
                false,
                "AUTH PLAIN a b\r\n".into(),
                vec![r("-ERR Syntax: AUTH mechanism [initial-response]\r\n")],
            ),
            (
                "apop",
                false,
                "APOP alice 0123456789abcdef\r\n".into(),
                vec![r(
                    "-ERR APOP is not supported, use USER/PASS or AUTH PLAIN\r\n",
                )],
            ),
            (
                "quit",
                false,
                "QUIT\r\nCAPA\r\n".into(),
                vec![A::Close("+OK Bye\r\n".into())],
            ),
            (
                "stls not offered",
                false,
                "STLS\r\n".into(),
                vec![r("-ERR STLS not offered\r\n")],
            ),
            ("stls offered", true, "stls\r\n".into(), vec![A::StartTls]),
            (
                "stls only once",
                true,
                "STLS\r\nSTLS\r\n".into(),
                vec![A::StartTls, r("-ERR STLS not offered\r\n")],
            ),
            (
                "stls with argument",
                true,
                "STLS now\r\n".into(),
                vec![r("-ERR STLS takes no argument\r\n")],
            ),
            (
                "transaction commands",
                false,
                "STAT\r\nLIST\r\nRETR 1\r\nNOOP\r\nUIDL\r\nTOP 1 0\r\n".into(),
                vec![r("-ERR Log in first\r\n"); 6],
            ),
            (
                "unknown and empty",
                false,
                "XYZZY\r\n\r\n \r\n".into(),
                vec![
                    r("-ERR Unknown command\r\n"),
                    r("-ERR Empty command\r\n"),
                    r("-ERR Empty command\r\n"),
                ],
            ),
            (
                "verb needs exact word",
                false,
                "CAPAX\r\nQUITE\r\n".into(),
                vec![r("-ERR Unknown command\r\n"), r("-ERR Unknown command\r\n")],
            ),
            (
                "nul in password passes through",
                false,
                "USER a\r\nPASS \u{0}\r\n".into(),
                vec![r("+OK Send PASS\r\n"), login("a", "\u{0}")],
            ),
            ("incomplete", false, "USER a".into(), vec![]),
        ];
        for (name, offer, input, expected) in cases {
            assert_eq!(dialogue(offer, &input), expected, "{name}");
        }
    }

    #[test]
    fn non_utf8_credentials() {
        let mut fe = frontend(false);
        let mut buf = b"USER a\xff\r\nUSER a\r\nPASS \xc3\x28\r\n".to_vec();
        assert_eq!(
            run(&mut fe, &mut buf),
            vec![
                r("-ERR User name is not valid UTF-8\r\n"),
                r("+OK Send PASS\r\n"),
                r("-ERR Password is not valid UTF-8\r\n"),
            ]
        );
    }

    #[test]
    fn pipelined_bytes_stay_after_login() {
        let plain = b64(b"\0alice\0pw");
        let cases: Vec<(String, &[u8])> = vec![
            (
                format!("AUTH PLAIN {plain}\r\nSTAT\r\nLIST\r\n"),
                b"STAT\r\nLIST\r\n",
            ),
            ("USER alice\r\nPASS pw\r\nRETR 1\r\n".into(), b"RETR 1\r\n"),
            (format!("AUTH PLAIN\r\n{plain}\nUIDL"), b"UIDL"),
        ];
        for (input, rest) in cases {
            let mut fe = frontend(false);
            let mut buf = input.into_bytes();
            loop {
                match view(fe.step(&mut buf)) {
                    A::Login(u, p) => {
                        assert_eq!((u.as_str(), p.as_str()), ("alice", "pw"));
                        break;
                    }
                    A::Reply(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(buf, rest);
        }
    }

    #[test]
    fn too_long_lines_close() {
        let expected = A::Close(format!("-ERR Line too long (limit {MAX_LINE} octets)\r\n"));
        // Without a line end: closes as soon as the limit is passed.
        let mut fe = frontend(false);
        let mut buf = vec![b'A'; MAX_LINE + 1];
        assert_eq!(view(fe.step(&mut buf)), A::NeedMore, "CR may still come");
        buf.push(b'A');
        assert_eq!(view(fe.step(&mut buf)), expected);
        assert!(buf.is_empty());
        // With a line end, one octet over the limit.
        let mut buf = vec![b'A'; MAX_LINE + 1];
        buf.extend_from_slice(b"\r\n");
        assert_eq!(view(frontend(false).step(&mut buf)), expected);
        // Exactly at the limit is fine, CRLF or bare LF.
        for end in [&b"\r\n"[..], b"\n"] {
            let mut buf = vec![b'A'; MAX_LINE];
            buf.extend_from_slice(end);
            assert_eq!(
                view(frontend(false).step(&mut buf)),
                r("-ERR Unknown command\r\n")
            );
            assert!(buf.is_empty());
        }
        // A long SASL response inside the limit decodes.
        let long_pw = "p".repeat(4000);
        let ir = b64(format!("\0alice\0{long_pw}").as_bytes());
        let mut buf = format!("AUTH PLAIN {ir}\r\n").into_bytes();
        assert_eq!(
            view(frontend(false).step(&mut buf)),
            login("alice", &long_pw)
        );
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let plain = b64(b"\0alice\0pw");
        let user = b64(b"alice");
        let pass = b64(b"pw");
        let inputs = [
            "CAPA\r\nUSER alice\r\nPASS pw\r\n".to_owned(),
            format!("AUTH PLAIN {plain}\r\n"),
            format!("AUTH PLAIN\r\n{plain}\r\n"),
            format!("AUTH LOGIN\r\n{user}\r\n{pass}\r\n"),
            format!("AUTH LOGIN {user}\n{pass}\n"),
            "AUTH\r\nAUTH XOAUTH2\r\nAPOP a b\r\nSTAT\r\nSTLS\r\nQUIT\r\n".to_owned(),
        ];
        for input in inputs {
            for offer in [false, true] {
                let whole = dialogue(offer, &input);
                let mut fe = frontend(offer);
                let mut buf = Vec::new();
                let mut bytewise = Vec::new();
                for &b in input.as_bytes() {
                    buf.push(b);
                    bytewise.extend(run(&mut fe, &mut buf));
                    if matches!(bytewise.last(), Some(A::Close(_))) {
                        break;
                    }
                }
                assert_eq!(bytewise, whole, "{input:?}");
            }
        }
    }

    #[test]
    fn password_not_in_debug() {
        let mut buf = b"USER alice\r\nPASS hunter2\r\n".to_vec();
        let mut fe = frontend(false);
        let _ = fe.step(&mut buf);
        let action = fe.step(&mut buf);
        let debug = format!("{action:?} {fe:?}");
        assert!(debug.contains("alice"));
        assert!(!debug.contains("hunter2"), "{debug}");
        let mut buf = format!("AUTH LOGIN {}\r\n", b64(b"alice")).into_bytes();
        let _ = fe.step(&mut buf);
        let mut buf = format!("{}\r\n", b64(b"hunter2")).into_bytes();
        let action = fe.step(&mut buf);
        assert!(!format!("{action:?} {fe:?}").contains("hunter2"));
    }

    #[test]
    fn failure_replies() {
        let cases = [
            (
                Failure::BadCredentials("Wrong password".into()),
                "-ERR [AUTH] Wrong password\r\n",
            ),
            (
                Failure::SignInNeeded("Sign in at http://127.0.0.1:8080/\r\nX".into()),
                "-ERR [AUTH] Sign in at http://127.0.0.1:8080/  X\r\n",
            ),
            (
                Failure::Unavailable("Cannot reach outlook.office365.com".into()),
                "-ERR [SYS/TEMP] Cannot reach outlook.office365.com\r\n",
            ),
            (
                Failure::Unavailable(String::new()),
                "-ERR [SYS/TEMP] Service temporarily unavailable\r\n",
            ),
        ];
        for (failure, expected) in cases {
            assert_eq!(
                String::from_utf8(failure_reply(&failure)).unwrap(),
                expected
            );
        }
        assert_eq!(starttls_ok(), b"+OK Begin TLS negotiation\r\n");
    }

    fn strings(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn capa_rewrite_table() {
        let dovecot = strings(&[
            "CAPA",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "PIPELINING",
            "AUTH-RESP-CODE",
            "STLS",
            "USER",
            "SASL XOAUTH2 OAUTHBEARER",
        ]);
        let office365 = strings(&["TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER"]);
        let cases: Vec<(&str, Vec<String>, bool, Vec<String>)> = vec![
            (
                "dovecot, no stls",
                dovecot.clone(),
                false,
                strings(&[
                    "CAPA",
                    "TOP",
                    "UIDL",
                    "RESP-CODES",
                    "PIPELINING",
                    "AUTH-RESP-CODE",
                    "USER",
                    "SASL PLAIN LOGIN",
                ]),
            ),
            (
                "dovecot, stls",
                dovecot,
                true,
                strings(&[
                    "CAPA",
                    "TOP",
                    "UIDL",
                    "RESP-CODES",
                    "PIPELINING",
                    "AUTH-RESP-CODE",
                    "STLS",
                    "USER",
                    "SASL PLAIN LOGIN",
                ]),
            ),
            (
                "office 365",
                office365,
                false,
                strings(&[
                    "TOP",
                    "UIDL",
                    "SASL PLAIN LOGIN",
                    "USER",
                    "RESP-CODES",
                    "AUTH-RESP-CODE",
                ]),
            ),
            (
                "empty upstream, stls added",
                vec![],
                true,
                strings(&[
                    "USER",
                    "SASL PLAIN LOGIN",
                    "RESP-CODES",
                    "AUTH-RESP-CODE",
                    "STLS",
                ]),
            ),
            (
                "hostile and duplicate lines",
                strings(&[
                    "top",
                    "TOP",
                    "",
                    ".",
                    "..x",
                    "SASL GSSAPI",
                    "sasl XOAUTH2",
                    "X-OAUTH XOAUTH2",
                    "IMPLEMENTATION evil\r\n.\r\n",
                    "stls",
                    "user",
                ]),
                false,
                strings(&[
                    "top",
                    "SASL PLAIN LOGIN",
                    "IMPLEMENTATION evil  .",
                    "USER",
                    "RESP-CODES",
                    "AUTH-RESP-CODE",
                ]),
            ),
        ];
        for (name, upstream, offer, expected) in cases {
            assert_eq!(rewrite_capa(&upstream, offer), expected, "{name}");
        }
    }

    #[test]
    fn capa_reply_is_dot_stuffed() {
        let mut fe = Frontend::new(strings(&[".hidden", "A\r\nB"]), false);
        let mut buf = b"CAPA\r\n".to_vec();
        assert_eq!(
            view(fe.step(&mut buf)),
            r("+OK Capability list follows\r\n..hidden\r\nA  B\r\n.\r\n")
        );
        fe.set_capa(strings(&["USER"]));
        let mut buf = b"CAPA\r\n".to_vec();
        assert_eq!(
            view(fe.step(&mut buf)),
            r("+OK Capability list follows\r\nUSER\r\n.\r\n")
        );
    }

    #[test]
    fn greeting_hides_apop_timestamp() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"Dovecot ready. <1896.697170952@dbc.mtview.ca.us>",
                "+OK Dovecot ready.\r\n",
            ),
            (
                b"The Microsoft Exchange POP3 service is ready. [QQBNADMA]",
                "+OK The Microsoft Exchange POP3 service is ready. [QQBNADMA]\r\n",
            ),
            (b"a <b> c", "+OK a <b> c\r\n"),
            (b"", "+OK POP3 ready\r\n"),
            (b"x <y@z\r\n", "+OK x <y@z\r\n"),
        ];
        for (upstream, expected) in cases {
            assert_eq!(String::from_utf8(greeting(upstream)).unwrap(), expected);
        }
    }

    #[test]
    fn reply_parsing() {
        let cases: [(&[u8], Option<Reply<'_>>); 13] = [
            (
                b"+OK User successfully authenticated.\r\n",
                Some(Reply::Ok(b"User successfully authenticated.")),
            ),
            (b"+OK", Some(Reply::Ok(b""))),
            (b"+ok fine\n", Some(Reply::Ok(b"fine"))),
            (
                b"-ERR Authentication failure: unknown user name or bad password.\r\n",
                Some(Reply::Err(
                    b"Authentication failure: unknown user name or bad password.",
                )),
            ),
            (b"-ERR", Some(Reply::Err(b""))),
            (
                b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n",
                Some(Reply::Continuation(b"eyJzdGF0dXMiOiI0MDEifQ==")),
            ),
            (b"+\r\n", Some(Reply::Continuation(b""))),
            (b"+ ", Some(Reply::Continuation(b""))),
            (b"+OKAY", None),
            (b"-ERROR", None),
            (b"", None),
            (b"* OK imap", None),
            (b"+x", None),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_reply(line),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn scan_line_edges() {
        assert_eq!(scan_line(b""), Scan::Incomplete);
        assert_eq!(
            scan_line(b"\n"),
            Scan::Line {
                len: 0,
                consumed: 1
            }
        );
        assert_eq!(
            scan_line(b"\r\n"),
            Scan::Line {
                len: 0,
                consumed: 2
            }
        );
        assert_eq!(scan_line(b"\r"), Scan::Incomplete);
        assert_eq!(
            scan_line(b"a\rb\n"),
            Scan::Line {
                len: 3,
                consumed: 4
            }
        );
    }

    /// xorshift64: a deterministic generator without extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// Pieces that steer random input into every state, mixed with noise.
    const FRAGMENTS: &[&[u8]] = &[
        b"USER ",
        b"PASS ",
        b"AUTH ",
        b"PLAIN",
        b"LOGIN",
        b"XOAUTH2",
        b"CAPA",
        b"STLS",
        b"APOP",
        b"QUIT",
        b"*",
        b"=",
        b" ",
        b"\r\n",
        b"\n",
        b"\r",
        b"AGFsaWNlAHB3",
        b"YWxpY2U=",
        b"\xff",
        b"\0",
        b".",
    ];

    fn random_input(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(24) {
            match rng.below(10) {
                0..=5 => out.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]),
                6..=8 => out.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                _ => out.extend(std::iter::repeat_n(b'x', rng.below(2 * MAX_LINE))),
            }
        }
        out
    }

    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..4000 {
            let input = random_input(&mut rng);
            let mut fe = Frontend::new(strings(&["USER"]), rng.below(2) == 0);
            let mut buf = Vec::new();
            let mut rest = input.as_slice();
            'feed: while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
                rest = tail;
                buf.extend_from_slice(chunk);
                for _ in 0..=buf.len() {
                    match fe.step(&mut buf) {
                        Action::NeedMore => {
                            assert!(buf.len() <= MAX_LINE + 1, "{}", buf.len());
                            continue 'feed;
                        }
                        Action::Close(_) => break 'feed,
                        _ => {}
                    }
                }
                panic!("step did not reach NeedMore");
            }
        }
    }
}
