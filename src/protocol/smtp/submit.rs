//! The SMTP server side of a listener that delivers messages itself (the
//! Graph backend), after the client logged in or a fixed account took the
//! connection: MAIL, RCPT, DATA, RSET, NOOP, QUIT, EHLO/HELO.
//!
//! Sans-IO like [`super::Frontend`]: the session appends client bytes to a
//! buffer and calls [`Submission::step`] until it returns
//! [`Step::NeedMore`]. A complete message comes out as [`Step::Deliver`]
//! with its envelope; the session delivers it and writes the reply itself
//! (RFC 2920: the reply to the end of DATA is the one a pipelining client
//! waits for, so nothing after it is read until then).
//!
//! Message text (RFC 5321 §4.5.2): the text ends at the line `.` with CRLF;
//! a leading dot of any other line is removed (dot-unstuffing); everything
//! else is kept byte for byte, line ends and 8-bit octets included. A line
//! `.` ended by a bare LF is content (as the relay filter treats it). A
//! message over the limit is read to its end and refused with `552 5.3.4`.

use super::filter::{MAX_COMMAND_LINE, Policy, sender_refused};
use super::{one_line, reverse_path};
use crate::protocol::line::{Taken, discard, split_verb, take_line};

/// Message text the machine holds back while waiting for a line end: a line
/// longer than this is taken in pieces (it still counts towards the size
/// limit), so a client without line ends cannot grow the buffer.
pub const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// What the session does next.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Read more client bytes, then step again.
    NeedMore,
    /// Write these bytes, then step again.
    Reply(Vec<u8>),
    /// Write these bytes, then close.
    Close(Vec<u8>),
    /// A complete message: deliver it, write the outcome's reply, then step
    /// again. The transaction is already reset.
    Deliver(Envelope),
}

/// One message with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The `MAIL FROM` address; empty for the null sender `<>`.
    pub sender: String,
    /// The `RCPT TO` addresses, in order, without duplicates.
    pub recipients: Vec<String>,
    /// The message, dot-unstuffed, byte for byte as the client sent it.
    pub message: Vec<u8>,
}

/// The listener's rules for each transaction.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Largest message (after dot-unstuffing), as offered in `SIZE`.
    pub max_message: usize,
    /// Recipients per message (`RCPT` beyond it: `452 4.5.3`).
    pub max_recipients: usize,
    /// A fixed-account listener's `allowed_senders`; `None` after a client
    /// login (the mailbox sending is the one that logged in).
    pub senders: Option<Policy>,
}

#[derive(Debug)]
enum State {
    Command,
    /// Message text; `overflow` once it passed the limit (then it is read
    /// and dropped), or `shed` when the session had no memory left for it;
    /// `mid_line` when the last octets taken ended no line.
    Data {
        overflow: bool,
        shed: bool,
        mid_line: bool,
    },
}

/// The transaction dialogue with one client.
#[derive(Debug)]
pub struct Submission {
    rules: Rules,
    state: State,
    /// `None` until `MAIL FROM`.
    sender: Option<String>,
    recipients: Vec<String>,
    message: Vec<u8>,
    /// The replies to EHLO and HELO (the session renders them).
    ehlo: Vec<u8>,
    helo: Vec<u8>,
}

impl Submission {
    pub fn new(rules: Rules, ehlo: Vec<u8>, helo: Vec<u8>) -> Submission {
        Submission {
            rules,
            state: State::Command,
            sender: None,
            recipients: Vec::new(),
            message: Vec::new(),
            ehlo,
            helo,
        }
    }

    /// Parses one command, or as much message text as is there.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> Step {
        if let State::Data { .. } = self.state {
            return self.data(buf);
        }
        match take_line(buf, MAX_COMMAND_LINE, |line| self.command(line)) {
            Taken::Incomplete => Step::NeedMore,
            Taken::TooLong => Step::Close(
                format!("500 5.5.2 Line too long (limit {MAX_COMMAND_LINE} octets)\r\n")
                    .into_bytes(),
            ),
            Taken::Line(step) => step,
        }
    }

    /// Octets of message text held now (the session reserves memory for
    /// them).
    pub fn buffered(&self) -> usize {
        self.message.len()
    }

    /// The message being received is dropped, and the rest of it read and
    /// dropped too: the session has no memory left for it. Its end gets
    /// `452 4.3.1` (try later) instead of a delivery.
    pub fn shed(&mut self) {
        if let State::Data { mid_line, .. } = self.state {
            self.message = Vec::new();
            self.state = State::Data {
                overflow: true,
                shed: true,
                mid_line,
            };
        }
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
        self.message = Vec::new();
    }

    fn command(&mut self, line: &[u8]) -> Step {
        let (verb, arg) = split_verb(line);
        match verb.to_ascii_uppercase().as_slice() {
            b"EHLO" | b"HELO" if arg.trim_ascii().is_empty() => {
                reply("501 5.5.4 Syntax: EHLO hostname")
            }
            b"EHLO" => {
                self.reset();
                Step::Reply(self.ehlo.clone())
            }
            b"HELO" => {
                self.reset();
                Step::Reply(self.helo.clone())
            }
            b"MAIL" => self.mail(arg),
            b"RCPT" => self.rcpt(arg),
            b"DATA" => self.start_data(arg),
            b"RSET" => {
                self.reset();
                reply("250 2.0.0 OK")
            }
            b"NOOP" => reply("250 2.0.0 OK"),
            b"QUIT" => Step::Close(b"221 2.0.0 Bye\r\n".to_vec()),
            b"AUTH" => reply("503 5.5.1 Already authenticated"),
            b"STARTTLS" => reply("503 5.5.1 STARTTLS is not possible now"),
            b"BDAT" => reply("502 5.5.1 CHUNKING is not offered here: use DATA"),
            b"HELP" => reply("214 2.0.0 MAIL, RCPT, DATA, RSET, NOOP, QUIT"),
            b"VRFY" => reply("252 2.5.2 Cannot VRFY user"),
            _ => reply("500 5.5.2 Command not recognized"),
        }
    }

    /// `MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME]` (RFC 5321 §4.1.1.2,
    /// RFC 1870, RFC 6152).
    fn mail(&mut self, arg: &[u8]) -> Step {
        if self.sender.is_some() {
            return reply("503 5.5.1 Sender already given (RSET first)");
        }
        let Some(rest) = strip_keyword(arg, b"FROM:") else {
            return reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let Some(sender) = reverse_path(rest) else {
            return reply("501 5.1.7 Syntax: MAIL FROM:<address>");
        };
        for param in params(rest) {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.to_ascii_uppercase(), Some(v)),
                None => (param.to_ascii_uppercase(), None),
            };
            match (name.as_str(), value) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.rules.max_message as u64 => {
                        return Step::Reply(too_big(self.rules.max_message));
                    }
                    Ok(_) => {}
                    Err(_) => return reply("501 5.5.4 Syntax: SIZE=octets"),
                },
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                _ => {
                    return Step::Reply(
                        format!(
                            "555 5.5.4 MAIL parameter {} not recognized\r\n",
                            one_line(&name)
                        )
                        .into_bytes(),
                    );
                }
            }
        }
        if let Some(policy) = &self.rules.senders
            && !policy.allows(&sender)
        {
            return Step::Reply(sender_refused(&sender));
        }
        self.sender = Some(sender);
        reply("250 2.1.0 Sender OK")
    }

    /// `RCPT TO:<address>` (RFC 5321 §4.1.1.3); no parameters are offered.
    fn rcpt(&mut self, arg: &[u8]) -> Step {
        if self.sender.is_none() {
            return reply("503 5.5.1 MAIL FROM first");
        }
        let Some(rest) = strip_keyword(arg, b"TO:") else {
            return reply("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        let recipient = match reverse_path(rest) {
            Some(r) if !r.is_empty() => r,
            _ => return reply("501 5.1.3 Syntax: RCPT TO:<address>"),
        };
        if params(rest).next().is_some() {
            return reply("555 5.5.4 RCPT parameters are not offered here");
        }
        if self
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&recipient))
        {
            return reply("250 2.1.5 Recipient OK");
        }
        if self.recipients.len() >= self.rules.max_recipients {
            return Step::Reply(
                format!(
                    "452 4.5.3 Too many recipients (at most {} per message)\r\n",
                    self.rules.max_recipients
                )
                .into_bytes(),
            );
        }
        self.recipients.push(recipient);
        reply("250 2.1.5 Recipient OK")
    }

    fn start_data(&mut self, arg: &[u8]) -> Step {
        if !arg.trim_ascii().is_empty() {
            return reply("501 5.5.4 Syntax: DATA (no parameters)");
        }
        if self.sender.is_none() {
            return reply("503 5.5.1 MAIL FROM first");
        }
        if self.recipients.is_empty() {
            return reply("554 5.5.1 No valid recipients");
        }
        self.state = State::Data {
            overflow: false,
            shed: false,
            mid_line: false,
        };
        reply("354 End data with <CR><LF>.<CR><LF>")
    }

    /// Message text: whole lines, or a piece of a line past
    /// [`MAX_PARTIAL_LINE`].
    fn data(&mut self, buf: &mut Vec<u8>) -> Step {
        let State::Data {
            mut overflow,
            shed,
            mut mid_line,
        } = self.state
        else {
            return Step::NeedMore;
        };
        let step = loop {
            let (taken, ends_line) = match buf.iter().position(|&b| b == b'\n') {
                Some(lf) => (lf + 1, true),
                None if buf.len() >= MAX_PARTIAL_LINE => (buf.len(), false),
                None => break Step::NeedMore,
            };
            let piece = buf.get(..taken).unwrap_or_default();
            if !mid_line && piece == b".\r\n" {
                discard(buf, taken);
                break self.finish(overflow, shed);
            }
            // Dot-unstuffing: a leading dot of a line is dropped, except
            // for a lone dot ended by a bare LF (content, not an end).
            let content = match piece {
                [b'.', rest @ ..] if !mid_line && rest != b"\n" => rest,
                _ => piece,
            };
            if overflow || self.message.len() + content.len() > self.rules.max_message {
                overflow = true;
                self.message = Vec::new();
            } else {
                self.message.extend_from_slice(content);
            }
            mid_line = !ends_line;
            discard(buf, taken);
        };
        if let State::Data { .. } = self.state {
            self.state = State::Data {
                overflow,
                shed,
                mid_line,
            };
        }
        step
    }

    fn finish(&mut self, overflow: bool, shed: bool) -> Step {
        self.state = State::Command;
        let envelope = Envelope {
            sender: self.sender.take().unwrap_or_default(),
            recipients: std::mem::take(&mut self.recipients),
            message: std::mem::take(&mut self.message),
        };
        if shed {
            return reply(
                "452 4.3.1 Too many large messages at once here; message not sent, try again later",
            );
        }
        if overflow {
            return Step::Reply(too_big(self.rules.max_message));
        }
        Step::Deliver(envelope)
    }
}

/// `552 5.3.4` for a message over the limit (RFC 1870 §6, RFC 3463).
pub fn too_big(max: usize) -> Vec<u8> {
    format!(
        "552 5.3.4 Message too big: this proxy sends through Microsoft Graph, which takes at most {max} octets per message\r\n"
    )
    .into_bytes()
}

fn reply(line: &str) -> Step {
    Step::Reply(format!("{line}\r\n").into_bytes())
}

/// `FROM:` / `TO:` at the start of a command's argument, ASCII case
/// ignored; what follows it.
fn strip_keyword<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| arg.get(keyword.len()..))
        .flatten()
}

/// The ESMTP parameters after the `<path>` of MAIL or RCPT.
fn params(rest: &[u8]) -> impl Iterator<Item = String> + '_ {
    let after = rest
        .iter()
        .position(|&b| b == b'>')
        .and_then(|end| rest.get(end + 1..))
        .unwrap_or_default();
    after
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
}

#[cfg(test)]
#[path = "submit_tests.rs"]
mod tests;
