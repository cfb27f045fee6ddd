//! The sign-in of `xoauth2-proxy authorize --paste`, for machines that no
//! browser can answer (a server over SSH) in tenants whose Conditional
//! Access blocks the device code: the same authorization code request with
//! PKCE as the browser sign-in, opened in a browser on any machine. The
//! provider sends that browser to the redirect URI (nothing listens there,
//! so it shows an error page) with `code` and `state` in the address, and
//! the user pastes that whole address back here.
//!
//! [`read_line`] reads one pasted line (capped), [`parse`] takes it apart
//! (only an address at the redirect URI, every answer field at most once),
//! [`paste_sign_in`] checks the `state` and exchanges the code with the
//! verifier; the id_token check is [`finish_sign_in`]'s, as for every flow.

use std::future::Future;
use std::io::{BufRead, Read as _};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::authcode::{
    PendingSignIn, SIGN_IN_LIFETIME, callback_error, constant_time_eq, finish_sign_in,
};
use super::flows::FlowError;
use super::http::HttpClient;
use super::vault::StoredTokens;
use crate::config::AccountConfig;

/// The redirect URI of a paste sign-in whose account sets none: the one
/// the app registration has for the browser sign-in already (Entra: under
/// *Mobile and desktop applications*), so no new registration is needed.
pub const DEFAULT_REDIRECT_URI: &str = "http://localhost";
/// The longest pasted line taken, in bytes. Entra's authorization codes are
/// one to two kilobytes and the address around them (state, session_state,
/// client_info) adds a few hundred bytes; 16 KiB leaves room for any
/// provider and still bounds what a runaway paste (a whole page, a file
/// piped in by mistake) makes us hold.
pub const MAX_PASTE_BYTES: usize = 16 * 1024;
/// How many pastes a person at a terminal gets for one sign-in when a paste
/// is not an answer (a wrong copy, a stray line); the sign-in's code stays
/// valid meanwhile. A script gets one (its input will not get better).
pub const MAX_PASTE_ATTEMPTS: usize = 3;
/// The most characters of a pasted address's host and path shown back in
/// an error (the user's own text, escaped, never its query with the code).
const MAX_SHOWN: usize = 200;

/// Why a pasted line is not an answer to this sign-in. No variant carries
/// the line, the code or the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasteError {
    #[error(
        "the pasted line is longer than {MAX_PASTE_BYTES} bytes: paste only the address the \
         browser ended on"
    )]
    TooLong,
    #[error("the pasted line is not text (UTF-8): paste the address the browser ended on")]
    NotText,
    #[error(
        "nothing was pasted: paste the whole address the browser ended on (it starts with {expected})"
    )]
    Empty { expected: String },
    #[error(
        "the pasted line is not an address: copy the whole address from the browser's address \
         bar (it starts with {expected})"
    )]
    NotAnAddress { expected: String },
    #[error(
        "the pasted address goes to {got}, not to this sign-in's redirect address {expected}: \
         paste the address the browser ended on after the sign-in"
    )]
    Elsewhere { expected: String, got: String },
    #[error(
        "the pasted address carries `{0}` more than once: paste it exactly as the browser shows it"
    )]
    Repeated(&'static str),
    #[error(
        "the pasted address carries both a code and an error: paste it exactly as the browser \
         shows it"
    )]
    CodeAndError,
    #[error(
        "the pasted address carries no code: paste the address the browser ended on after the \
         sign-in (it contains ?code=…&state=…)"
    )]
    NoCode,
    #[error("the pasted address carries no state: paste the whole address, with its &state=…")]
    NoState,
    #[error("the input ended before the address the browser ended on was pasted")]
    Ended,
    #[error("cannot read the pasted address: {0}")]
    Read(String),
}

impl PasteError {
    /// Whether another paste may follow this one (the line was read whole).
    fn may_retry(&self) -> bool {
        !matches!(
            self,
            PasteError::TooLong | PasteError::Ended | PasteError::Read(_)
        )
    }
}

/// What a pasted address answers.
pub enum Answer {
    /// The provider's authorization code.
    Code(SecretString),
    /// The provider's refusal, in words ([`FlowError::Denied`]).
    Denied(FlowError),
}

/// A pasted address taken apart. `Debug` shows neither code nor state.
pub struct Pasted {
    pub state: String,
    pub answer: Answer,
}

impl std::fmt::Debug for Pasted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let answer = match &self.answer {
            Answer::Code(_) => "code <redacted>".to_owned(),
            Answer::Denied(e) => e.to_string(),
        };
        f.debug_struct("Pasted")
            .field("state", &"<redacted>")
            .field("answer", &answer)
            .finish()
    }
}

/// The parameters of an answer, each taken at most once (a second `code`
/// or `state` would make "which one" the reader's guess).
const ANSWER_FIELDS: [&str; 4] = ["code", "state", "error", "error_description"];

/// Takes a pasted line apart: it must be an address at `redirect` (scheme,
/// host, port and path alike; no user name) carrying `state` and either
/// `code` or `error` (with `error_description`), each once. Whitespace
/// around it (a copy often takes some) is ignored.
pub fn parse(line: &str, redirect: &reqwest::Url) -> Result<Pasted, PasteError> {
    let expected = redirect.as_str().to_owned();
    if line.len() > MAX_PASTE_BYTES {
        return Err(PasteError::TooLong);
    }
    let text = line.trim();
    if text.is_empty() {
        return Err(PasteError::Empty { expected });
    }
    let url = reqwest::Url::parse(text).map_err(|_| PasteError::NotAnAddress {
        expected: expected.clone(),
    })?;
    let same_place = url.scheme() == redirect.scheme()
        && url.host_str() == redirect.host_str()
        && url.port_or_known_default() == redirect.port_or_known_default()
        && url.path() == redirect.path()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_place {
        return Err(PasteError::Elsewhere {
            expected,
            got: place(&url),
        });
    }
    let mut fields: [Option<String>; 4] = Default::default();
    for (name, value) in url.query_pairs() {
        if let Some(i) = ANSWER_FIELDS.iter().position(|f| *f == name) {
            if fields[i].is_some() {
                return Err(PasteError::Repeated(ANSWER_FIELDS[i]));
            }
            fields[i] = Some(value.into_owned());
        }
    }
    let [code, state, error, description] = fields;
    let state = state.filter(|s| !s.is_empty()).ok_or(PasteError::NoState)?;
    let answer = match (code, error) {
        (Some(_), Some(_)) => return Err(PasteError::CodeAndError),
        (None, Some(error)) => {
            let mut params = std::collections::HashMap::from([("error".to_owned(), error)]);
            if let Some(d) = description {
                params.insert("error_description".to_owned(), d);
            }
            Answer::Denied(callback_error(&params).ok_or(PasteError::NoCode)?)
        }
        (Some(code), None) if !code.is_empty() => Answer::Code(SecretString::from(code)),
        _ => return Err(PasteError::NoCode),
    };
    Ok(Pasted { state, answer })
}

/// Where a pasted address goes, for an error: scheme, host, port and path
/// (never the query, which holds the code), escaped and cut short.
fn place(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    // A user name is shown (it makes the address another), a password never.
    if !url.username().is_empty() {
        shown.push_str(url.username());
        shown.push('@');
    }
    shown.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    let escaped = crate::escape::log_text(&shown).to_string();
    if escaped.chars().count() > MAX_SHOWN {
        escaped.chars().take(MAX_SHOWN).chain(['…']).collect()
    } else {
        escaped
    }
}

/// Reads one line (up to `\n`, which is dropped with a `\r` before it) of
/// at most [`MAX_PASTE_BYTES`]: never holds more than that and two bytes,
/// whatever arrives. The line is wiped from memory when dropped.
pub fn read_line(reader: &mut impl BufRead) -> Result<Zeroizing<String>, PasteError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(1024));
    let limit = MAX_PASTE_BYTES as u64 + 2;
    let n = reader
        .by_ref()
        .take(limit)
        .read_until(b'\n', &mut bytes)
        .map_err(|e| PasteError::Read(e.to_string()))?;
    if n == 0 {
        return Err(PasteError::Ended);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.len() > MAX_PASTE_BYTES {
        return Err(PasteError::TooLong);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| PasteError::NotText)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The person (or script) at the other end of a paste sign-in.
pub trait PastePrompt {
    /// Shows the sign-in address to open, and the redirect address the
    /// browser will end on (whose whole address is to be pasted back).
    fn show(&mut self, url: &str, redirect_uri: &str);
    /// The next pasted line ([`read_line`]'s rules).
    fn read(&mut self) -> impl Future<Output = Result<Zeroizing<String>, PasteError>> + Send;
    /// A paste that is no answer, with the pastes left: says why, and
    /// returns whether to ask again (a terminal) or give up (a script).
    fn refused(&mut self, why: &PasteError, left: usize) -> bool;
}

/// Signs `account` in with the paste: the authorize address (PKCE, state,
/// the account's `redirect_uri` or [`DEFAULT_REDIRECT_URI`]) goes to
/// `prompt`, the pasted answer must be at that redirect URI and carry this
/// sign-in's `state` (else [`FlowError::StateMismatch`], nothing asked of
/// the provider), and its code is exchanged with the verifier. Gives up
/// after [`MAX_PASTE_ATTEMPTS`] unusable pastes or [`SIGN_IN_LIFETIME`].
pub async fn paste_sign_in(
    account: &AccountConfig,
    http: &HttpClient,
    prompt: &mut impl PastePrompt,
) -> Result<StoredTokens, FlowError> {
    let redirect_uri = account
        .redirect_uri
        .as_deref()
        .unwrap_or(DEFAULT_REDIRECT_URI);
    let redirect = reqwest::Url::parse(redirect_uri)
        .map_err(|e| FlowError::Config(format!("the redirect URI is not a URL: {e}")))?;
    let (url, pending) = PendingSignIn::start(account, redirect_uri)?;
    let deadline = tokio::time::Instant::from_std(pending.created_at()) + SIGN_IN_LIFETIME;
    prompt.show(&url, redirect_uri);
    let mut attempt = 0;
    let pasted = loop {
        attempt += 1;
        let outcome = match tokio::time::timeout_at(deadline, prompt.read()).await {
            Err(_) => return Err(FlowError::TimedOut(SIGN_IN_LIFETIME)),
            Ok(read) => read.and_then(|line| parse(&line, &redirect)),
        };
        match outcome {
            Ok(pasted) => break pasted,
            Err(why) => {
                let left = MAX_PASTE_ATTEMPTS - attempt;
                if !(why.may_retry() && left > 0 && prompt.refused(&why, left)) {
                    return Err(FlowError::Paste(why));
                }
            }
        }
    };
    if !constant_time_eq(pending.state().as_bytes(), pasted.state.as_bytes()) {
        return Err(FlowError::StateMismatch);
    }
    match pasted.answer {
        Answer::Denied(refusal) => Err(refusal),
        Answer::Code(code) => {
            finish_sign_in(pending, account, http, &pasted.state, code.expose_secret()).await
        }
    }
}

#[cfg(test)]
#[path = "paste_tests.rs"]
mod tests;
