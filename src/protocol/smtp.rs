//! SMTP submission front end before authentication (RFC 5321, RFC 4954 AUTH,
//! RFC 3207 STARTTLS, RFC 2920 PIPELINING, RFC 3030 CHUNKING).
//!
//! Sans-IO: the session driver appends client bytes to a buffer and calls
//! [`Frontend::step`] until it returns [`Action::NeedMore`]. Each step parses at
//! most one line (or skips one refused BDAT chunk) from the front of the
//! buffer, drains and wipes what it consumed, and says what to do. Bytes after
//! the line that yields [`Action::Login`] stay in the buffer (pipelining).
//!
//! Pipelined transaction commands sent before AUTH each get a `530`. RFC 2920
//! makes a client wait for the reply to DATA before sending the message, so
//! message content is not read as commands; should a broken client send it
//! anyway, every line is simply answered, nothing is executed. A refused BDAT
//! chunk is skipped by its announced size (RFC 3030 §2), never parsed.
//!
//! The upstream helpers ([`ehlo_reply`], [`parse_reply`], [`render_reply`]) are
//! pure functions the driver uses on the server's side of the dialogue.

use super::line::{
    Scan, Taken, TlsRefusal, discard, push_unique, scan_line, split_verb, take_line, take_tls_offer,
};
use super::sasl_dialogue::{self, Dialogue, Wording};
use super::{Credentials, Failure, one_line};

/// Longest line (without its line end) the front end accepts.
///
/// RFC 5321 §4.5.3.1.4 limits command lines to 512 octets, but RFC 4954 §4
/// allows 12288 octets for an AUTH command with initial response and for each
/// SASL response line; one 12 KiB limit covers both and bounds the buffer.
pub const MAX_LINE: usize = 12 * 1024;

/// What the driver does next.
#[derive(Debug)]
#[must_use]
pub enum Action {
    /// No complete command in the buffer: read more bytes, then step again.
    NeedMore,
    /// Write these bytes to the client, then step again.
    Reply(Vec<u8>),
    /// EHLO (`extended`) or HELO: greet upstream and answer the client with
    /// [`ehlo_reply`] (pass [`Frontend::offers_starttls`]), then step again.
    Ehlo { domain: String, extended: bool },
    /// Authenticate upstream; the driver writes the final reply itself. The
    /// front end stays greeted, so a failed AUTH can be retried.
    Login { credentials: Credentials },
    /// Only when STARTTLS is offered: write [`starttls_ok`], upgrade and
    /// discard buffered bytes (RFC 3207 §4.2). The client must greet again,
    /// and STARTTLS is not offered a second time.
    StartTls,
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
}

/// Where the dialogue is. The password is never stored here.
#[derive(Debug)]
enum State {
    /// Waiting for a command.
    Command,
    /// A refused BDAT chunk: skip this many octets, then reply 530.
    SkipChunk { remaining: u64 },
}

/// The pre-authentication SMTP dialogue with one client.
#[derive(Debug)]
pub struct Frontend {
    state: State,
    /// Takes the lines of an AUTH exchange before any command parsing.
    sasl: Dialogue,
    /// EHLO or HELO seen since the start (or since STARTTLS).
    greeted: bool,
    offer_starttls: bool,
}

/// RFC 4954 §4: `334` continuations, 501 for a failed or cancelled exchange.
const SASL_WORDING: Wording = Wording {
    challenge_prefix: "334 ",
    error_prefix: "501 5.5.2 ",
    cancelled: "501 5.7.0 Authentication cancelled",
    unsupported: "504 5.5.4 Unrecognized authentication type, use PLAIN or LOGIN",
};

impl Frontend {
    pub fn new(offer_starttls: bool) -> Self {
        Self {
            state: State::Command,
            sasl: Dialogue::new(&SASL_WORDING),
            greeted: false,
            offer_starttls,
        }
    }

    /// Whether STARTTLS is still on offer (false once used), for [`ehlo_reply`].
    pub fn offers_starttls(&self) -> bool {
        self.offer_starttls
    }

    /// Parses one command (or response line) from the front of `buf`.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> Action {
        if let State::SkipChunk { remaining } = self.state {
            return self.skip_chunk(buf, remaining);
        }
        match take_line(buf, MAX_LINE, |line| self.on_line(line)) {
            Taken::Incomplete => Action::NeedMore,
            Taken::TooLong => {
                self.state = State::Command;
                self.sasl.reset();
                Action::Close(
                    format!("500 5.5.2 Line too long (limit {MAX_LINE} octets)\r\n").into_bytes(),
                )
            }
            Taken::Line(action) => {
                match self.state {
                    // BDAT just announced a chunk: skip what is already here
                    // now, or a client waiting for the reply would stall.
                    State::SkipChunk { remaining } => self.skip_chunk(buf, remaining),
                    _ => action,
                }
            }
        }
    }

    fn skip_chunk(&mut self, buf: &mut Vec<u8>, remaining: u64) -> Action {
        let available = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let n = remaining.min(available);
        discard(buf, usize::try_from(n).unwrap_or(usize::MAX));
        let remaining = remaining - n;
        if remaining == 0 {
            self.state = State::Command;
            reply(AUTH_REQUIRED)
        } else {
            self.state = State::SkipChunk { remaining };
            Action::NeedMore
        }
    }

    /// Only called in `State::Command`: `step` skips a chunk without lines.
    fn on_line(&mut self, line: &[u8]) -> Action {
        match self.sasl.respond(line) {
            Some(step) => {
                step.into_action(Action::Reply, |credentials| Action::Login { credentials })
            }
            None => self.on_command(line),
        }
    }

    fn on_command(&mut self, line: &[u8]) -> Action {
        let (verb, arg) = split_verb(line);
        // Command names are ASCII and case-insensitive (RFC 5321 §2.4).
        match verb.to_ascii_uppercase().as_slice() {
            b"EHLO" => self.hello(arg, true),
            b"HELO" => self.hello(arg, false),
            b"AUTH" => self.auth(arg),
            b"STARTTLS" => self.starttls(arg),
            // Only after authentication.
            b"MAIL" | b"RCPT" | b"DATA" => reply(AUTH_REQUIRED),
            b"BDAT" => self.bdat(arg),
            b"QUIT" => Action::Close(b"221 2.0.0 Bye\r\n".to_vec()),
            b"NOOP" | b"RSET" => reply("250 2.0.0 OK"),
            b"HELP" => reply("214 2.0.0 Send EHLO, then AUTH PLAIN or AUTH LOGIN"),
            b"VRFY" => reply("252 2.5.2 Cannot VRFY user"),
            _ => reply("500 5.5.2 Command not recognized"),
        }
    }

    /// EHLO/HELO takes one domain or address literal (RFC 5321 §4.1.1.1);
    /// words after it are ignored. A new greeting resets the session.
    fn hello(&mut self, arg: &[u8], extended: bool) -> Action {
        let word = arg.split(u8::is_ascii_whitespace).find(|w| !w.is_empty());
        let verb = if extended { "EHLO" } else { "HELO" };
        match word.map(std::str::from_utf8) {
            Some(Ok(domain)) if !domain.chars().any(char::is_control) => {
                self.greeted = true;
                Action::Ehlo {
                    domain: domain.to_owned(),
                    extended,
                }
            }
            Some(_) => reply("501 5.5.4 Invalid domain"),
            None => Action::Reply(format!("501 5.5.4 Syntax: {verb} hostname\r\n").into_bytes()),
        }
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954 §4). AUTH is accepted
    /// after HELO too: old clients greet with HELO and still authenticate.
    fn auth(&mut self, arg: &[u8]) -> Action {
        if !self.greeted {
            return reply("503 5.5.1 Send EHLO first");
        }
        let Some((mechanism, initial)) = sasl_dialogue::auth_words(arg) else {
            return reply("501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        };
        let step = self.sasl.start(mechanism, initial);
        step.into_action(Action::Reply, |credentials| Action::Login { credentials })
    }

    fn starttls(&mut self, arg: &[u8]) -> Action {
        match take_tls_offer(&mut self.offer_starttls, arg) {
            Ok(()) => {
                // RFC 3207 §4.2: forget everything learnt before TLS.
                self.greeted = false;
                Action::StartTls
            }
            Err(TlsRefusal::NotOffered) => reply("502 5.5.1 STARTTLS not offered"),
            Err(TlsRefusal::Argument) => reply("501 5.5.4 Syntax: STARTTLS (no parameters)"),
        }
    }

    /// `BDAT size [LAST]`: the chunk follows the line whatever the reply, so
    /// it is skipped unread before the 530 (RFC 3030 §2).
    fn bdat(&mut self, arg: &[u8]) -> Action {
        let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let size = words.next().and_then(parse_size);
        let last = words.next();
        let valid_tail =
            last.is_none_or(|w| w.eq_ignore_ascii_case(b"LAST")) && words.next().is_none();
        match size {
            Some(size) if valid_tail => {
                // `step` carries on with the skip; this action is replaced.
                self.state = State::SkipChunk { remaining: size };
                Action::NeedMore
            }
            _ => reply("501 5.5.4 Syntax: BDAT size [LAST]"),
        }
    }
}

const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required";

/// A decimal chunk size; at most 19 digits so it always fits in a u64.
fn parse_size(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 19 || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// The reply that precedes the TLS handshake (RFC 3207 §4).
pub fn starttls_ok() -> Vec<u8> {
    b"220 2.0.0 Ready to start TLS\r\n".to_vec()
}

/// Renders a refused login: 535 5.7.8 (RFC 4954 §6) when the credentials
/// or the sign-in are the problem, 454 4.7.0 (temporary) when a retry later
/// can succeed.
pub fn failure_reply(failure: &Failure) -> Vec<u8> {
    failure.status_line([
        ("535 5.7.8", "Authentication credentials invalid"),
        ("535 5.7.8", "Sign-in needed"),
        ("454 4.7.0", "Temporary authentication failure"),
    ])
}

/// What the proxy offers in its EHLO reply besides the upstream's keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EhloOffer {
    /// STARTTLS, while the listener still offers it.
    pub starttls: bool,
    /// `AUTH PLAIN LOGIN`: not before TLS where a password would be refused
    /// without it (RFC 4954 §4: a server need not offer AUTH it would refuse).
    pub auth: bool,
    /// CHUNKING and BINARYMIME (RFC 3030): not on a fixed-account relay,
    /// whose filter reads DATA only.
    pub chunking: bool,
}

impl EhloOffer {
    /// A client-login listener: AUTH offered, CHUNKING passed on.
    pub fn login(starttls: bool) -> Self {
        EhloOffer {
            starttls,
            auth: true,
            chunking: true,
        }
    }
}

/// The client's answer to EHLO/HELO from the upstream's EHLO reply lines
/// (code and separator stripped; the first is the greeting text).
///
/// HELO gets the greeting alone. EHLO keeps the upstream's keywords in order
/// except: every AUTH line (also the old `AUTH=` form) becomes one
/// `AUTH PLAIN LOGIN` (added if missing) when `offer.auth`, and is dropped
/// otherwise; STARTTLS appears once if we offer it and never otherwise;
/// CHUNKING and BINARYMIME only with `offer.chunking`; `X-EXPS` (Exchange's
/// NTLM/GSSAPI offer, which Outlook would pick for "Secure Password
/// Authentication") is dropped.
pub fn ehlo_reply(upstream_lines: &[String], extended: bool, offer: EhloOffer) -> Vec<u8> {
    let greeting = upstream_lines
        .first()
        .map(|g| one_line(g).trim().to_owned())
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| "xoauth2-proxy".to_owned());
    if !extended {
        return render_reply(250, &[greeting.as_bytes()]);
    }
    let keywords = rewrite_ehlo_keywords(upstream_lines.get(1..).unwrap_or_default(), offer);
    let mut lines: Vec<&[u8]> = vec![greeting.as_bytes()];
    lines.extend(keywords.iter().map(String::as_bytes));
    render_reply(250, &lines)
}

const AUTH_LINE: &str = "AUTH PLAIN LOGIN";

fn rewrite_ehlo_keywords(upstream: &[String], offer: EhloOffer) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in upstream {
        let line = one_line(line).trim().to_owned();
        let keyword = line
            .split([' ', '='])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let kept = match keyword.as_str() {
            "" | "X-EXPS" => None,
            "AUTH" if offer.auth => Some(AUTH_LINE.to_owned()),
            "AUTH" => None,
            "STARTTLS" if offer.starttls => Some(keyword),
            "STARTTLS" => None,
            "CHUNKING" | "BINARYMIME" if !offer.chunking => None,
            _ => Some(line),
        };
        if let Some(kept) = kept {
            push_unique(&mut out, kept);
        }
    }
    if offer.auth {
        push_unique(&mut out, AUTH_LINE.to_owned());
    }
    if offer.starttls {
        push_unique(&mut out, "STARTTLS".to_owned());
    }
    out
}

/// Largest upstream reply (all lines together) [`parse_reply`] accepts.
///
/// An EHLO reply is a few hundred octets and error texts are one line; 64 KiB
/// is far above any real reply yet stops a broken or hostile upstream from
/// growing the driver's buffer without end.
pub const MAX_REPLY: usize = 64 * 1024;

/// One upstream reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// Text of each line after the code and separator, without line end.
    pub lines: Vec<Vec<u8>>,
}

impl SmtpReply {
    /// The lines as text (lossy), e.g. for [`ehlo_reply`] or a log line.
    pub fn text_lines(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

/// Why an upstream reply could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed SMTP reply line")]
    Malformed,
    #[error("SMTP reply lines carry different codes")]
    MixedCodes,
    #[error("SMTP reply longer than {MAX_REPLY} octets")]
    TooLong,
}

/// Parses one complete reply from the front of `buf`: `Ok(None)` until its
/// last line (`code SP text` or bare `code`) has arrived, then the reply and
/// the number of octets it used. Lines end in CRLF or a bare LF.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(SmtpReply, usize)>, ReplyError> {
    let mut code = None;
    let mut lines = Vec::new();
    let mut pos = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_REPLY {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let end = pos + lf + 1;
        if end > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        let line = rest.get(..lf).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (line_code, last, text) = parse_reply_line(line)?;
        if code.is_some_and(|c| c != line_code) {
            return Err(ReplyError::MixedCodes);
        }
        code = Some(line_code);
        lines.push(text.to_vec());
        pos = end;
        if last {
            return Ok(Some((
                SmtpReply {
                    code: line_code,
                    lines,
                },
                pos,
            )));
        }
    }
}

/// `(code, is_last, text)` of one reply line (RFC 5321 §4.2).
fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let (digits, rest) = match line {
        [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', rest @ ..] => ([*a, *b, *c], rest),
        _ => return Err(ReplyError::Malformed),
    };
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match rest {
        [] => Ok((code, true, &[])),
        [b' ', text @ ..] => Ok((code, true, text)),
        [b'-', text @ ..] => Ok((code, false, text)),
        _ => Err(ReplyError::Malformed),
    }
}

/// Renders a reply: `code-text` lines and a final `code text` (a bare `code`
/// when the last text is empty, as RFC 5321's grammar wants). CR and LF in a
/// text become spaces so a line can never be split. `code` must be 3 digits.
pub fn render_reply(code: u16, lines: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let count = lines.len();
    for (i, text) in lines.iter().enumerate() {
        let last = i + 1 == count;
        out.extend_from_slice(format!("{code:03}").as_bytes());
        if !last {
            out.push(b'-');
        } else if !text.is_empty() {
            out.push(b' ');
        }
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
    if count == 0 {
        out.extend_from_slice(format!("{code:03}\r\n").as_bytes());
    }
    out
}

fn reply(line: &str) -> Action {
    Action::Reply(format!("{line}\r\n").into_bytes())
}

/// A `MAIL FROM` at the front of the buffer, for a fixed-account relay
/// (which logs in upstream for its clients and so must see the first
/// transaction's sender before the front end refuses it unauthenticated).
#[derive(Debug, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse-path without angle brackets or source route (empty for
    /// `<>`); `None` when the line is not valid RFC 5321 syntax.
    pub sender: Option<String>,
    /// Octets of the line, line end included.
    pub consumed: usize,
}

/// Some when `buf` starts with a complete `MAIL FROM:` line.
pub fn leading_mail_from(buf: &[u8]) -> Option<MailFrom> {
    let Scan::Line { len, consumed } = scan_line(buf, MAX_LINE) else {
        return None;
    };
    let line = buf.get(..len)?;
    let rest = line
        .get(..10)
        .filter(|head| head.eq_ignore_ascii_case(b"MAIL FROM:"))
        .and_then(|_| line.get(10..))?;
    Some(MailFrom {
        sender: reverse_path(rest),
        consumed,
    })
}

/// `<address> [parameters]` (a space after the colon is tolerated, as most
/// servers do); the address must be printable ASCII or UTF-8 without spaces.
fn reverse_path(arg: &[u8]) -> Option<String> {
    let arg = arg.trim_ascii_start();
    let inner = arg.strip_prefix(b"<")?;
    let end = inner.iter().position(|&b| b == b'>')?;
    let path = std::str::from_utf8(inner.get(..end)?).ok()?;
    let after = inner.get(end + 1..)?;
    if !(after.is_empty() || after.starts_with(b" ")) {
        return None;
    }
    // RFC 5321 §4.1.2: an obsolete source route `@a,@b:` goes before the mailbox.
    let mailbox = match path.strip_prefix('@') {
        Some(routed) => routed.split_once(':')?.1,
        None => path,
    };
    let valid = mailbox.is_empty()
        || (mailbox.contains('@') && !mailbox.chars().any(|c| c.is_whitespace() || c.is_control()));
    valid.then(|| mailbox.to_owned())
}

pub mod bcc;
pub mod filter;
pub mod large;
pub mod submit;

#[cfg(test)]
#[path = "smtp_tests.rs"]
mod tests;
