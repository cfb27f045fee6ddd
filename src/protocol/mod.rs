//! Pre-authentication dialogues, one sans-IO module per protocol.
//!
//! Every front end is a state machine over a byte buffer: the session driver
//! (`crate::session`) reads client bytes into a `Vec<u8>`, calls `step`, and
//! carries out the returned action. Nothing in here touches a socket, so each
//! parser is table-tested and fuzzed on bytes alone. Every buffer is capped.

pub mod imap;
pub(crate) mod line;
pub mod pop3;
pub(crate) mod sasl_dialogue;
pub mod smtp;
#[cfg(test)]
pub(crate) mod test_random;

pub use crate::sasl::Credentials;

/// Why a login was refused before (or instead of) the upstream's own answer.
/// Each front end renders it in its protocol's words (see DESIGN.md's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Wrong local password, unknown account, empty password.
    /// IMAP `NO [AUTHENTICATIONFAILED]`, POP3 `-ERR [AUTH]`, SMTP `535 5.7.8`.
    BadCredentials(String),
    /// No tokens, or the refresh token was revoked: the user must sign in.
    /// Same codes as `BadCredentials`, the text says where to sign in.
    SignInNeeded(String),
    /// Token endpoint or upstream unreachable, or a transient error.
    /// IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`, SMTP `454 4.7.0`.
    Unavailable(String),
}

impl Failure {
    pub fn text(&self) -> &str {
        match self {
            Failure::BadCredentials(t) | Failure::SignInNeeded(t) | Failure::Unavailable(t) => t,
        }
    }

    /// The text for a one-line reply, trimmed; `default` when there is none,
    /// so a reply never ends in a bare status code.
    fn reply_text(&self, default: &str) -> String {
        let text = one_line(self.text());
        match text.trim() {
            "" => default.to_owned(),
            trimmed => trimmed.to_owned(),
        }
    }

    /// `status text` for the line-based protocols. `words` gives, for bad
    /// credentials, sign-in needed and unavailable in that order, the
    /// status that opens the line and the text when the failure has none.
    pub(crate) fn status_line(&self, words: [(&str, &str); 3]) -> Vec<u8> {
        let [bad, sign_in, unavailable] = words;
        let (status, default) = match self {
            Failure::BadCredentials(_) => bad,
            Failure::SignInNeeded(_) => sign_in,
            Failure::Unavailable(_) => unavailable,
        };
        format!("{status} {}\r\n", self.reply_text(default)).into_bytes()
    }
}

/// Strips CR and LF from text that goes into a one-line reply, so a message
/// built from outside input can never split a protocol line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}
