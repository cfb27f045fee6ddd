//! The client side of `AUTH PLAIN` and `AUTH LOGIN` for the line-based front
//! ends (POP3 RFC 5034, SMTP RFC 4954): the mechanism choice, the
//! continuation lines, cancellation with `*`, and the decoding into
//! [`Credentials`]. The dialogue is the same in both protocols; only the
//! words around it differ, so each front end passes its [`Wording`].

use secrecy::SecretString;

use super::Credentials;
use crate::sasl::{
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE, SaslError, check_username,
    decode_login_part, decode_plain,
};

/// How one protocol words the dialogue. Every text is a whole reply line
/// without its CRLF, except the prefixes.
#[derive(Debug)]
pub(crate) struct Wording {
    /// Goes before a base64 challenge (`+ ` in POP3, `334 ` in SMTP).
    pub challenge_prefix: &'static str,
    /// Goes before a [`SaslError`] text.
    pub error_prefix: &'static str,
    /// The answer to a `*` response.
    pub cancelled: &'static str,
    /// The answer to a mechanism other than PLAIN or LOGIN.
    pub unsupported: &'static str,
}

/// What the front end does with one step of the dialogue.
#[derive(Debug)]
pub(crate) enum Step {
    /// Write this to the client.
    Reply(Vec<u8>),
    /// The exchange is complete.
    Login(Credentials),
}

impl Step {
    /// Into the front end's own action type, which has both variants.
    pub(crate) fn into_action<A>(
        self,
        reply: impl FnOnce(Vec<u8>) -> A,
        login: impl FnOnce(Credentials) -> A,
    ) -> A {
        match self {
            Step::Reply(bytes) => reply(bytes),
            Step::Login(credentials) => login(credentials),
        }
    }
}

/// `mechanism [initial-response]`, the words after `AUTH`; `None` when
/// there are none or more than two.
pub(crate) fn auth_words(arg: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
    match (words.next(), words.next(), words.next()) {
        (Some(mechanism), initial, None) => Some((mechanism, initial)),
        _ => None,
    }
}

/// An exchange waiting for the client's next line. The password is never
/// held here: it goes from the line straight into a `Login`.
#[derive(Debug)]
enum Pending {
    /// `AUTH PLAIN` without an initial response: the next line is the message.
    PlainResponse,
    /// `AUTH LOGIN`: the next line is the base64 user name.
    LoginUsername,
    /// `AUTH LOGIN`: the next line is the base64 password.
    LoginPassword { username: String },
}

/// One front end's SASL exchange: idle, or waiting for a continuation line.
/// It sits beside the front end's own state so a line can go to it first.
#[derive(Debug)]
pub(crate) struct Dialogue {
    wording: &'static Wording,
    pending: Option<Pending>,
}

impl Dialogue {
    pub(crate) fn new(wording: &'static Wording) -> Self {
        Dialogue {
            wording,
            pending: None,
        }
    }

    /// Forgets an exchange in progress (the connection is being closed).
    pub(crate) fn reset(&mut self) {
        self.pending = None;
    }

    /// Starts PLAIN or LOGIN, with or without an initial response.
    pub(crate) fn start(&mut self, mechanism: &[u8], initial: Option<&[u8]>) -> Step {
        if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            match initial {
                Some(ir) => self.plain(ir),
                // An empty challenge: the prefix alone, its trailing space kept.
                None => self.challenge("", Pending::PlainResponse),
            }
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            match initial {
                // Outlook sends the user name on the AUTH line.
                Some(ir) => self.login_username(ir),
                None => self.challenge(LOGIN_USERNAME_CHALLENGE, Pending::LoginUsername),
            }
        } else {
            line(self.wording.unsupported)
        }
    }

    /// The step for a continuation line, or `None` when no exchange is
    /// waiting for one (the line is a command). `*` cancels the exchange;
    /// anything else is a base64 response.
    pub(crate) fn respond(&mut self, response: &[u8]) -> Option<Step> {
        let pending = self.pending.take()?;
        if response.trim_ascii() == b"*" {
            return Some(line(self.wording.cancelled));
        }
        Some(match pending {
            Pending::PlainResponse => self.plain(response),
            Pending::LoginUsername => self.login_username(response),
            Pending::LoginPassword { username } => self.login_password(username, response),
        })
    }

    fn plain(&self, response: &[u8]) -> Step {
        match decode_plain(response) {
            Ok(credentials) => Step::Login(credentials),
            Err(e) => self.error(&e),
        }
    }

    fn login_username(&mut self, response: &[u8]) -> Step {
        match decode_login_part(response) {
            Ok(name) => match check_username(&name) {
                Err(e) => self.error(&e),
                Ok(()) => self.challenge(
                    LOGIN_PASSWORD_CHALLENGE,
                    Pending::LoginPassword {
                        username: name.as_str().to_owned(),
                    },
                ),
            },
            Err(e) => self.error(&e),
        }
    }

    fn login_password(&self, username: String, response: &[u8]) -> Step {
        match decode_login_part(response) {
            Ok(mut password) => Step::Login(Credentials {
                username,
                // Moves the decoded text into the secret without a copy.
                password: SecretString::from(std::mem::take(&mut *password)),
            }),
            Err(e) => self.error(&e),
        }
    }

    fn challenge(&mut self, base64: &str, then: Pending) -> Step {
        self.pending = Some(then);
        Step::Reply(format!("{}{base64}\r\n", self.wording.challenge_prefix).into_bytes())
    }

    /// SaslError texts describe the shape of the response, never its content.
    fn error(&self, error: &SaslError) -> Step {
        Step::Reply(format!("{}{error}\r\n", self.wording.error_prefix).into_bytes())
    }
}

fn line(text: &str) -> Step {
    Step::Reply(format!("{text}\r\n").into_bytes())
}
