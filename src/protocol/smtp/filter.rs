//! The fixed-account relay's filter: what a device on the LAN sends after
//! the proxy signed in as the fixed account, read the way the mail server
//! will read it.
//!
//! A login relay is a byte pipe: the client authenticated as its own
//! mailbox. A fixed-account relay sends as the account for whoever may
//! connect, so every transaction is held to the listener's rules, not just
//! the first: each `MAIL FROM` is checked against `allowed_senders`, each
//! message takes at most `max_recipients` recipients, and only the commands
//! a device needs go up (`AUTH`, `STARTTLS`, `BDAT` and unknown verbs are
//! answered here). Message text is normalized as Postfix's
//! `smtpd_forbid_bare_newline = normalize` does, and for bare CR as well: a
//! bare LF or a bare CR ends a line and goes up as CRLF, and only
//! `<CRLF>.<CRLF>` ends the message. The server then sees exactly the lines
//! and the end of message the filter saw, so no `<LF>.<LF>` or `<CR>.<CR>`
//! can end a message early upstream and start an unchecked transaction
//! inside it (SMTP smuggling). Dot-stuffing passes as sent; a lone dot
//! ended by a bare line end is content, and goes up stuffed (`..`).
//!
//! Sans-IO: the relay feeds client bytes to [`Filter::from_client`] and
//! server bytes to [`Filter::from_server`]; both append to an [`Output`]
//! what goes to each side. Server replies go to the client as the server
//! sent them (the reply to a later `EHLO` loses CHUNKING, BINARYMIME),
//! interleaved in order with the filter's own replies: a reply of the
//! filter waits until the server has answered every command sent before it.
//! After `DATA` the filter reads nothing more from the client until the
//! server's reply says whether message text follows (`354`) or not.

use std::collections::VecDeque;

use super::{EhloOffer, MAX_REPLY, ehlo_reply, parse_reply, parse_reply_line, reverse_path};
use crate::protocol::line::{Scan, scan_line, split_verb};

/// Longest command line after the first `MAIL FROM`. RFC 5321 §4.5.3.1.4
/// allows 512 octets and each ESMTP extension adds room for its parameters
/// (SIZE, BODY, SMTPUTF8, DSN's ENVID and ORCPT); Postfix's
/// `line_length_limit` is 2048 for the same reason. A longer line closes
/// the connection (its end cannot be trusted to start a command).
pub const MAX_COMMAND_LINE: usize = 2048;

/// Client bytes the filter holds unread (a pipelined group waiting for the
/// reply to its `DATA`, an unfinished line): a group of commands is a few
/// hundred octets (RFC 2920 ends a group at DATA), so 64 KiB is plenty, and
/// the relay stops reading the client beyond it.
pub const MAX_HELD: usize = 64 * 1024;

/// What the filter wants written.
#[derive(Debug, Default)]
pub struct Output {
    /// Commands and message text for the server.
    pub to_server: Vec<u8>,
    /// Server replies and the filter's own, in order.
    pub to_client: Vec<u8>,
    /// What the relay should log.
    pub events: Vec<Event>,
}

/// Something the relay logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `MAIL FROM` outside `allowed_senders` was refused (the address as
    /// sent, for a log field: escape it).
    SenderRefused(String),
    /// A `RCPT TO` beyond the recipient cap was refused.
    TooManyRecipients,
}

/// The listener's rules for every transaction.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `allowed_senders`, compared without regard to ASCII case.
    pub allowed_senders: Vec<String>,
    /// Recipients per message.
    pub max_recipients: usize,
}

impl Policy {
    pub fn allows(&self, sender: &str) -> bool {
        self.allowed_senders
            .iter()
            .any(|a| a.eq_ignore_ascii_case(sender))
    }
}

/// The reply to a `MAIL FROM` whose sender the relay does not take.
pub fn sender_refused(sender: &str) -> Vec<u8> {
    format!(
        "550 5.7.1 Sender <{}> is not allowed on this relay\r\n",
        super::one_line(sender)
    )
    .into_bytes()
}

/// Why the filter gave up on the server's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the mail server sent a line that is not an SMTP reply")]
    MalformedReply,
    #[error("the mail server sent a reply line longer than {MAX_REPLY} octets")]
    ReplyTooLong,
}

/// Where the client's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Commands.
    Command,
    /// `DATA` went up: nothing is read until the server answers it.
    AwaitData,
    /// Message text, at this point of a line.
    Data(Text),
    /// A refused `BDAT` chunk: skip this many octets, then reply.
    SkipChunk(u64),
    /// `QUIT` went up, or the filter closes: nothing more is read.
    Done,
}

/// Where message text is, for the line ends and the end of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Mid,
    /// After a CR (a CRLF if an LF follows, else a bare CR).
    Cr,
    /// A dot at the start of a line (held back).
    Dot,
    /// A dot, then a CR at the start of a line (held back).
    DotCr,
}

/// A reply the client is owed, in the order of its commands.
#[derive(Debug)]
enum Owed {
    /// The server's reply to a command that went up.
    Server(Answers),
    /// The filter's own reply, sent once everything before it was.
    Local(Vec<u8>),
}

/// What a server reply answers, when that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    Other,
    /// `DATA`: 354 means message text follows.
    Data,
    /// `EHLO`: its keywords are rewritten.
    Ehlo,
}

/// The transaction the client has open, as far as the filter let it go up.
#[derive(Debug, Default, Clone, Copy)]
struct Transaction {
    sender: bool,
    recipients: usize,
}

/// The client→server filter of one fixed-account relay.
#[derive(Debug)]
pub struct Filter {
    policy: Policy,
    mode: Mode,
    /// Client bytes not read yet (at most about [`MAX_HELD`]).
    held: Vec<u8>,
    transaction: Transaction,
    owed: VecDeque<Owed>,
    /// The server's unfinished line.
    server_line: Vec<u8>,
    /// The lines of an EHLO reply, kept until its last line for the rewrite.
    ehlo: Vec<u8>,
    /// The client connection is to be closed once `to_client` is written.
    close: bool,
}

impl Filter {
    pub fn new(policy: Policy) -> Self {
        Filter {
            policy,
            mode: Mode::Command,
            held: Vec::new(),
            transaction: Transaction::default(),
            owed: VecDeque::new(),
            server_line: Vec::new(),
            ehlo: Vec::new(),
            close: false,
        }
    }

    /// Whether the relay should read more client bytes now.
    pub fn wants_client(&self) -> bool {
        self.held.len() < MAX_HELD && self.mode != Mode::Done
    }

    /// Whether the filter ended the session: close the client connection
    /// once `to_client` is written.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Bytes from the client.
    pub fn from_client(&mut self, bytes: &[u8], out: &mut Output) {
        if self.held.is_empty()
            && let Mode::Data(text) = self.mode
        {
            // The common case, a message streaming through: no copy aside.
            let used = self.text(text, bytes, out);
            self.held
                .extend_from_slice(bytes.get(used..).unwrap_or_default());
        } else {
            self.held.extend_from_slice(bytes);
        }
        self.run(out);
    }

    /// Bytes from the server. They go to the client as they are, once per
    /// complete line; a reply's last line settles what the client is owed.
    pub fn from_server(&mut self, bytes: &[u8], out: &mut Output) -> Result<(), FilterError> {
        self.server_line.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(lf) = self
            .server_line
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let end = start + lf + 1;
            let line = self.server_line.get(start..end).unwrap_or_default();
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let (code, last, _) =
                parse_reply_line(text).map_err(|_| FilterError::MalformedReply)?;
            if let Some(Owed::Server(Answers::Ehlo)) = self.owed.front() {
                if self.ehlo.len() + line.len() > MAX_REPLY {
                    return Err(FilterError::ReplyTooLong);
                }
                self.ehlo.extend_from_slice(line);
            } else {
                out.to_client.extend_from_slice(line);
            }
            start = end;
            if last {
                self.settle(code, out);
            }
        }
        self.server_line.drain(..start);
        if self.server_line.len() > MAX_REPLY {
            return Err(FilterError::ReplyTooLong);
        }
        Ok(())
    }

    /// A complete server reply with `code`: the command it answers is
    /// settled, the filter's replies after it go out, and reading resumes
    /// if it waited for this reply.
    fn settle(&mut self, code: u16, out: &mut Output) {
        match self.owed.pop_front() {
            Some(Owed::Server(Answers::Data)) if code == 354 => {
                // The message text ends the transaction, accepted or not.
                self.transaction = Transaction::default();
                self.mode = Mode::Data(Text::LineStart);
            }
            // DATA refused: the transaction stays as the server has it.
            Some(Owed::Server(Answers::Data)) => self.mode = Mode::Command,
            Some(Owed::Server(Answers::Ehlo)) => {
                let ehlo = std::mem::take(&mut self.ehlo);
                out.to_client.extend(relay_ehlo(&ehlo, code));
            }
            Some(Owed::Server(Answers::Other)) => {}
            // An unsolicited reply (a 421 before the server closes): passed on.
            None => {}
            Some(local @ Owed::Local(_)) => self.owed.push_front(local),
        }
        while let Some(Owed::Local(_)) = self.owed.front() {
            if let Some(Owed::Local(reply)) = self.owed.pop_front() {
                out.to_client.extend(reply);
            }
        }
        self.run(out);
    }

    /// Reads what it can of the held client bytes.
    fn run(&mut self, out: &mut Output) {
        loop {
            match self.mode {
                Mode::AwaitData => return,
                Mode::Done => {
                    self.held.clear();
                    return;
                }
                Mode::Data(text) => {
                    let held = std::mem::take(&mut self.held);
                    let used = self.text(text, &held, out);
                    self.held = held;
                    self.held.drain(..used);
                    if matches!(self.mode, Mode::Data(_)) {
                        return;
                    }
                }
                Mode::SkipChunk(remaining) => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.held.len());
                    self.held.drain(..n);
                    let remaining = remaining - n as u64;
                    if remaining > 0 {
                        self.mode = Mode::SkipChunk(remaining);
                        return;
                    }
                    self.mode = Mode::Command;
                    self.local(
                        b"502 5.5.1 BDAT is not offered on this relay, use DATA\r\n".to_vec(),
                        out,
                    );
                }
                Mode::Command => match scan_line(&self.held, MAX_COMMAND_LINE) {
                    Scan::Incomplete => return,
                    Scan::TooLong => {
                        self.held.clear();
                        self.local(
                            format!(
                                "500 5.5.2 Line too long (limit {MAX_COMMAND_LINE} octets)\r\n"
                            )
                            .into_bytes(),
                            out,
                        );
                        self.mode = Mode::Done;
                        self.close = true;
                        return;
                    }
                    Scan::Line { len, consumed } => {
                        let line = self.held.get(..len).unwrap_or_default().to_vec();
                        self.held.drain(..consumed);
                        self.command(&line, out);
                    }
                },
            }
        }
    }

    /// One command line (without its line end).
    fn command(&mut self, line: &[u8], out: &mut Output) {
        if line.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
            return self.local_line(
                "500 5.5.2 Control characters are not allowed in commands",
                out,
            );
        }
        let (verb, arg) = split_verb(line);
        match verb.to_ascii_uppercase().as_slice() {
            b"MAIL" => self.mail(line, arg, out),
            b"RCPT" => self.rcpt(line, out),
            b"DATA" if !self.transaction.sender => {
                self.local_line("503 5.5.1 Need MAIL command", out)
            }
            b"DATA" if self.transaction.recipients == 0 => {
                self.local_line("503 5.5.1 Need RCPT command", out)
            }
            b"DATA" => {
                self.forward(line, Answers::Data, out);
                self.mode = Mode::AwaitData;
            }
            b"BDAT" => self.bdat(arg, out),
            b"RSET" | b"HELO" => {
                self.transaction = Transaction::default();
                self.forward(line, Answers::Other, out);
            }
            b"EHLO" => {
                self.transaction = Transaction::default();
                self.forward(line, Answers::Ehlo, out);
            }
            b"NOOP" | b"HELP" | b"VRFY" => self.forward(line, Answers::Other, out),
            b"QUIT" => {
                self.forward(line, Answers::Other, out);
                self.mode = Mode::Done;
            }
            b"AUTH" => self.local_line("503 5.5.1 Already authenticated", out),
            b"STARTTLS" => self.local_line(
                "503 5.5.1 STARTTLS must come before the first MAIL FROM",
                out,
            ),
            _ => self.local_line("500 5.5.2 Command not recognized", out),
        }
    }

    fn mail(&mut self, line: &[u8], arg: &[u8], out: &mut Output) {
        if self.transaction.sender {
            return self.local_line("503 5.5.1 Sender already specified", out);
        }
        let sender = arg
            .get(..5)
            .filter(|head| head.eq_ignore_ascii_case(b"FROM:"))
            .and_then(|_| reverse_path(arg.get(5..).unwrap_or_default()));
        match sender {
            None => self.local_line("501 5.5.4 Syntax: MAIL FROM:<address>", out),
            Some(sender) if !self.policy.allows(&sender) => {
                self.local(sender_refused(&sender), out);
                out.events.push(Event::SenderRefused(sender));
            }
            Some(_) => {
                self.transaction = Transaction {
                    sender: true,
                    recipients: 0,
                };
                self.forward(line, Answers::Other, out);
            }
        }
    }

    fn rcpt(&mut self, line: &[u8], out: &mut Output) {
        if !self.transaction.sender {
            return self.local_line("503 5.5.1 Need MAIL command", out);
        }
        if self.transaction.recipients >= self.policy.max_recipients {
            out.events.push(Event::TooManyRecipients);
            let max = self.policy.max_recipients;
            return self.local(
                format!("452 4.5.3 Too many recipients (at most {max} per message)\r\n")
                    .into_bytes(),
                out,
            );
        }
        self.transaction.recipients += 1;
        self.forward(line, Answers::Other, out);
    }

    /// `BDAT size [LAST]`: not offered, but the chunk follows whatever the
    /// reply (RFC 3030 §2), so it is skipped unread before the refusal. A
    /// size that cannot be read leaves no way to find the next command.
    fn bdat(&mut self, arg: &[u8], out: &mut Output) {
        let size = arg
            .split(|&b| b == b' ')
            .find(|w| !w.is_empty())
            .and_then(super::parse_size);
        match size {
            Some(size) => {
                self.mode = Mode::SkipChunk(size);
            }
            None => {
                self.local_line("501 5.5.4 Syntax: BDAT size [LAST]", out);
                self.mode = Mode::Done;
                self.close = true;
            }
        }
    }

    /// Sends a command up, with a CRLF whatever line end the client used.
    fn forward(&mut self, line: &[u8], answers: Answers, out: &mut Output) {
        out.to_server.extend_from_slice(line);
        out.to_server.extend_from_slice(b"\r\n");
        self.owed.push_back(Owed::Server(answers));
    }

    fn local_line(&mut self, text: &str, out: &mut Output) {
        self.local(format!("{text}\r\n").into_bytes(), out);
    }

    /// The filter's own reply, after every reply owed before it.
    fn local(&mut self, reply: Vec<u8>, out: &mut Output) {
        if self.owed.is_empty() {
            out.to_client.extend(reply);
        } else {
            self.owed.push_back(Owed::Local(reply));
        }
    }

    /// Message text from `input`, normalized into `to_server`. Returns the
    /// octets used: all of them, or up to the end of the message, after
    /// which the filter reads commands again.
    fn text(&mut self, mut state: Text, input: &[u8], out: &mut Output) -> usize {
        let to = &mut out.to_server;
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            i += 1;
            state = match (state, b) {
                (Text::Mid, _) => {
                    // The bulk of a message: copy up to the next line end.
                    let rest = input.get(i - 1..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(rest.len());
                    to.extend_from_slice(rest.get(..run).unwrap_or_default());
                    i += run;
                    match rest.get(run) {
                        Some(b'\r') => Text::Cr,
                        Some(_) => {
                            to.extend_from_slice(b"\r\n");
                            Text::LineStart
                        }
                        None => {
                            i -= 1;
                            Text::Mid
                        }
                    }
                }
                (Text::LineStart, b'.') => Text::Dot,
                (Text::LineStart, b'\r') => Text::Cr,
                (Text::LineStart | Text::Cr, b'\n') => {
                    to.extend_from_slice(b"\r\n");
                    Text::LineStart
                }
                (Text::LineStart, _) => {
                    to.push(b);
                    Text::Mid
                }
                (Text::Cr, _) => {
                    // A bare CR ends the line; `b` starts the next one.
                    to.extend_from_slice(b"\r\n");
                    i -= 1;
                    Text::LineStart
                }
                (Text::Dot, b'\r') => Text::DotCr,
                (Text::Dot, b'\n') => {
                    // A lone dot ended by a bare LF is text, not the end.
                    to.extend_from_slice(b"..\r\n");
                    Text::LineStart
                }
                (Text::Dot, _) => {
                    to.push(b'.');
                    i -= 1;
                    Text::Mid
                }
                (Text::DotCr, b'\n') => {
                    to.extend_from_slice(b".\r\n");
                    self.owed.push_back(Owed::Server(Answers::Other));
                    self.mode = Mode::Command;
                    return i;
                }
                (Text::DotCr, _) => {
                    // A lone dot ended by a bare CR is text, not the end.
                    to.extend_from_slice(b"..\r\n");
                    i -= 1;
                    Text::LineStart
                }
            };
        }
        self.mode = Mode::Data(state);
        i
    }
}

/// The reply to an `EHLO` after the first `MAIL FROM`: as before it, without
/// CHUNKING (the filter reads DATA only). A refusal passes as it came.
fn relay_ehlo(raw: &[u8], code: u16) -> Vec<u8> {
    match parse_reply(raw) {
        Ok(Some((reply, _))) if code == 250 => ehlo_reply(
            &reply.text_lines(),
            true,
            EhloOffer {
                starttls: false,
                auth: true,
                chunking: false,
            },
        ),
        _ => raw.to_vec(),
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
