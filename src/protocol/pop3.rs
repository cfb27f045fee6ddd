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

use super::line::{Taken, TlsRefusal, push_unique, split_verb, take_line, take_tls_offer};
use super::sasl_dialogue::{self, Dialogue, Wording};
use super::{Credentials, Failure, one_line};
use crate::sasl::check_username;

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
}

/// The pre-authentication POP3 dialogue with one client.
#[derive(Debug)]
pub struct Frontend {
    state: State,
    /// Takes the lines of an AUTH exchange before `state` sees them.
    sasl: Dialogue,
    capa: Vec<String>,
    offer_stls: bool,
}

impl Frontend {
    /// `capa` is the already rewritten capability list (see [`rewrite_capa`]),
    /// without the terminating `.` line.
    pub fn new(capa: Vec<String>, offer_stls: bool) -> Self {
        Self {
            state: State::Authorization,
            sasl: Dialogue::new(&SASL_WORDING),
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
        match take_line(buf, MAX_LINE, |line| self.on_line(line)) {
            Taken::Incomplete => Action::NeedMore,
            Taken::TooLong => {
                self.state = State::Authorization;
                self.sasl.reset();
                Action::Close(
                    format!("-ERR Line too long (limit {MAX_LINE} octets)\r\n").into_bytes(),
                )
            }
            Taken::Line(action) => action,
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Action {
        if let Some(step) = self.sasl.respond(line) {
            return step.into_action(Action::Reply, |credentials| Action::Login { credentials });
        }
        match std::mem::replace(&mut self.state, State::Authorization) {
            State::Authorization => self.on_command(line, None),
            State::UserGiven { username } => self.on_command(line, Some(username)),
        }
    }

    /// `pending_user` is the name from a preceding `USER`; any command other
    /// than `PASS` forgets it (RFC 1939 allows only `PASS` or `QUIT` there).
    fn on_command(&mut self, line: &[u8], pending_user: Option<String>) -> Action {
        let (verb, arg) = split_verb(line);
        // Command names are ASCII and case-insensitive (RFC 1939 §3).
        match verb.to_ascii_uppercase().as_slice() {
            b"CAPA" => Action::Reply(self.capa_reply()),
            b"USER" => self.user(arg),
            b"PASS" => match pending_user {
                Some(username) => pass_login(username, arg),
                None => reply("-ERR USER first"),
            },
            b"AUTH" => self.auth(arg),
            b"APOP" => reply("-ERR APOP is not supported, use USER/PASS or AUTH PLAIN"),
            b"QUIT" => Action::Close(b"+OK Bye\r\n".to_vec()),
            b"STLS" => self.stls(arg),
            // Valid only after login (RFC 1939 TRANSACTION state).
            b"STAT" | b"LIST" | b"RETR" | b"DELE" | b"NOOP" | b"RSET" | b"TOP" | b"UIDL"
            | b"LAST" | b"UTF8" => reply("-ERR Log in first"),
            b"" => reply("-ERR Empty command"),
            _ => reply("-ERR Unknown command"),
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

    fn stls(&mut self, arg: &[u8]) -> Action {
        match take_tls_offer(&mut self.offer_stls, arg) {
            Ok(()) => Action::StartTls,
            Err(TlsRefusal::NotOffered) => reply("-ERR STLS not offered"),
            Err(TlsRefusal::Argument) => reply("-ERR STLS takes no argument"),
        }
    }

    fn user(&mut self, arg: &[u8]) -> Action {
        let name = arg.trim_ascii();
        if name.is_empty() {
            return reply("-ERR Missing user name");
        }
        match std::str::from_utf8(name) {
            Ok(name) => match check_username(name) {
                Ok(()) => {
                    self.state = State::UserGiven {
                        username: name.to_owned(),
                    };
                    reply("+OK Send PASS")
                }
                Err(e) => Action::Reply(format!("-ERR {e}\r\n").into_bytes()),
            },
            Err(_) => reply("-ERR User name is not valid UTF-8"),
        }
    }

    /// `AUTH` lists the mechanisms (a common extension of RFC 5034); with a
    /// mechanism it starts PLAIN or LOGIN, with or without initial response.
    fn auth(&mut self, arg: &[u8]) -> Action {
        let Some((mechanism, initial)) = sasl_dialogue::auth_words(arg) else {
            return if !arg.trim_ascii().is_empty() {
                reply("-ERR Syntax: AUTH mechanism [initial-response]")
            } else if self.capa.iter().any(|l| l.eq_ignore_ascii_case(SASL_LINE)) {
                Action::Reply(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n".to_vec())
            } else {
                // Nothing is offered before STLS: the list is empty.
                Action::Reply(b"+OK\r\n.\r\n".to_vec())
            };
        };
        let step = self.sasl.start(mechanism, initial);
        step.into_action(Action::Reply, |credentials| Action::Login { credentials })
    }
}

/// Renders a refused login with the RFC 3206 response code that tells the
/// client whether retrying with another password can help.
pub fn failure_reply(failure: &Failure) -> Vec<u8> {
    failure.status_line([
        ("-ERR [AUTH]", "Authentication failed"),
        ("-ERR [AUTH]", "Sign-in needed"),
        ("-ERR [SYS/TEMP]", "Service temporarily unavailable"),
    ])
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

/// The capabilities offered before STLS where a password in the clear would
/// be refused: no `USER` and no `SASL` line (RFC 2449 §6.3, §6.8 list what
/// the server accepts now), so a client goes to STLS instead of sending its
/// password first. After STLS [`rewrite_capa`]'s list applies again.
pub fn without_logins(capa: &[String]) -> Vec<String> {
    capa.iter()
        .filter(|line| !is_login_line(line))
        .cloned()
        .collect()
}

fn is_login_line(line: &str) -> bool {
    let keyword = line.split(' ').next().unwrap_or_default();
    keyword.eq_ignore_ascii_case("USER") || keyword.eq_ignore_ascii_case("SASL")
}

/// A line that names an OAuth mechanism outside the SASL line (a server
/// extension we cannot know) would tempt a client to use a mechanism the
/// proxy does not offer.
fn names_oauth(line: &str) -> bool {
    line.split([' ', '='])
        .any(|w| w.eq_ignore_ascii_case("XOAUTH2") || w.eq_ignore_ascii_case("OAUTHBEARER"))
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

/// The reply that precedes the TLS handshake (RFC 2595 §4).
pub fn starttls_ok() -> Vec<u8> {
    b"+OK Begin TLS negotiation\r\n".to_vec()
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

fn reply(line: &str) -> Action {
    Action::Reply(format!("{line}\r\n").into_bytes())
}

/// RFC 5034 §4: `+` continuations, `-ERR` for a failed or cancelled exchange.
const SASL_WORDING: Wording = Wording {
    challenge_prefix: "+ ",
    error_prefix: "-ERR ",
    cancelled: "-ERR Authentication cancelled",
    unsupported: "-ERR Unsupported mechanism, use PLAIN or LOGIN",
};

/// Appends one line of a multi-line response, dot-stuffed (RFC 1939 §3).
fn push_multiline(out: &mut Vec<u8>, line: &str) {
    if line.starts_with('.') {
        out.push(b'.');
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "pop3_tests.rs"]
mod tests;
