//! `xoauth2-proxy token ACCOUNT`: an access token from the running proxy for
//! another program (msmtp, mutt, mbsync, git send-email), so that program
//! shares the proxy's one refresh per account and its unlocked state instead
//! of refreshing the same refresh token on its own.
//!
//! Framing on the control socket, after the reload protocol's single word:
//! the client writes one line, a JSON object of at most
//! [`MAX_REQUEST_BYTES`],
//!
//! ```text
//! {"v":1,"op":"token","account":"…","password":"…"}
//! ```
//!
//! and the proxy answers one line, then closes:
//!
//! ```text
//! {"ok":true,"user":"…","token":"…"}
//! {"ok":false,"error":"refused","message":"…"}
//! ```
//!
//! `user` is the `user=` of XOAUTH2 (the account's `mailbox` when set);
//! `error` is one of [`Refusal`]. The password is checked by the proxy's
//! login gate exactly as a mail client's (throttle, failure counting), with
//! the local user at the other end (the socket's, or the pipe client
//! process's on Windows) as the source. Neither the password nor the
//! token is logged; the token goes only to the socket that asked.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// The version of this request; a proxy answers another one `bad_request`,
/// so a newer client never gets a misread answer.
pub const VERSION: u32 = 1;

/// The longest request line: an address (at most 320 bytes) and a password,
/// JSON-escaped up to six bytes per character, fit many times over; a
/// longer line is refused before it is parsed.
pub const MAX_REQUEST_BYTES: u64 = 8 * 1024;

/// The longest answer a client reads: access tokens are JWTs of a few
/// kilobytes (Entra's are 1.5–3 KB); the rest is a short message.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Token requests queued for the running proxy at once; the control socket
/// serves at most this many connections anyway.
pub const MAX_PENDING: usize = 16;

/// A token request, handed from the control socket to the running proxy.
pub struct TokenRequest {
    /// The account's address, as a mail client would log in with it.
    pub account: String,
    pub password: SecretString,
    /// Who is at the other end of the channel (the throttle's source).
    pub client: Option<super::Client>,
    pub reply: oneshot::Sender<TokenAnswer>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("account", &self.account)
            .field("password", &"<redacted>")
            .field("client", &self.client)
            .finish()
    }
}

/// What the running proxy answers a [`TokenRequest`].
pub enum TokenAnswer {
    /// A valid access token, and the `user=` to present it with.
    Granted { user: String, token: SecretString },
    /// Why not, with the text for the person running the command.
    Refused(Refusal, String),
}

/// Why no token was given, as the answer's `error` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Unknown account, empty or wrong password (counted as a failure).
    Refused,
    /// Too many failures: try again after the wait the message says.
    Throttled,
    /// Someone must sign in; the message says where.
    SignInNeeded,
    /// The token endpoint or the store is in the way; try again later.
    Unavailable,
    /// The request could not be read (or is of another version).
    BadRequest,
    /// The proxy is stopping.
    Stopping,
}

#[derive(Deserialize)]
struct WireRequest {
    v: u32,
    op: String,
    account: String,
    password: SecretString,
}

#[derive(Serialize)]
struct WireRequestOut<'a> {
    v: u32,
    op: &'a str,
    account: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct Granted<'a> {
    ok: bool,
    user: &'a str,
    token: &'a str,
}

#[derive(Serialize)]
struct RefusedOut<'a> {
    ok: bool,
    error: Refusal,
    message: &'a str,
}

#[derive(Deserialize)]
struct WireAnswer {
    ok: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default)]
    error: Option<Refusal>,
    #[serde(default)]
    message: Option<String>,
}

/// One JSON line, in a buffer wiped when dropped (it may hold a secret).
fn json_line(value: &impl Serialize) -> Zeroizing<Vec<u8>> {
    // Room for a token, so the buffer does not grow (leaving copies behind).
    let mut out = Zeroizing::new(Vec::with_capacity(8 * 1024));
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.clear();
        out.extend_from_slice(
            br#"{"ok":false,"error":"unavailable","message":"cannot write the answer"}"#,
        );
    }
    out.push(b'\n');
    out
}

fn refused(refusal: Refusal, message: &str) -> Zeroizing<Vec<u8>> {
    json_line(&RefusedOut {
        ok: false,
        error: refusal,
        message,
    })
}

/// The proxy's side: reads the request `line`, hands it to the running
/// proxy through `tokens` and returns the answer line.
pub(crate) async fn answer(
    line: &[u8],
    client: Option<super::Client>,
    tokens: &tokio::sync::mpsc::Sender<TokenRequest>,
) -> Zeroizing<Vec<u8>> {
    if line.len() as u64 > MAX_REQUEST_BYTES {
        return refused(
            Refusal::BadRequest,
            &format!("the request is longer than {MAX_REQUEST_BYTES} bytes"),
        );
    }
    if !line.ends_with(b"\n") {
        return refused(Refusal::BadRequest, "the request must end with a newline");
    }
    // serde_json's errors name a position, never the text read.
    let request: WireRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return refused(Refusal::BadRequest, &format!("unreadable request: {e}")),
    };
    if request.v != VERSION || request.op != "token" {
        return refused(
            Refusal::BadRequest,
            &format!(
                "this proxy answers version {VERSION} `token` requests; update the proxy or the command"
            ),
        );
    }
    let (reply, outcome) = oneshot::channel();
    let request = TokenRequest {
        account: request.account,
        password: request.password,
        client,
        reply,
    };
    if tokens.send(request).await.is_err() {
        return refused(Refusal::Stopping, "the proxy is stopping");
    }
    match outcome.await {
        Ok(TokenAnswer::Granted { user, token }) => json_line(&Granted {
            ok: true,
            user: &user,
            token: token.expose_secret(),
        }),
        Ok(TokenAnswer::Refused(refusal, message)) => refused(refusal, &message),
        Err(_) => refused(Refusal::Stopping, "the proxy is stopping"),
    }
}

/// A token from the running proxy, for `xoauth2-proxy token`.
pub struct Token {
    /// The `user=` of XOAUTH2.
    pub user: String,
    pub token: SecretString,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why `xoauth2-proxy token` got no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFailure {
    /// Nothing answers on the control socket.
    #[error("{0}")]
    NotRunning(String),
    /// The proxy refused, with its reason.
    #[error("{1}")]
    Refused(Refusal, String),
    /// The socket answered something else.
    #[error("{0}")]
    Protocol(String),
}

/// Builds the request line for `account` and `password`.
pub fn request_line(account: &str, password: &SecretString) -> Zeroizing<Vec<u8>> {
    json_line(&WireRequestOut {
        v: VERSION,
        op: "token",
        account,
        password: password.expose_secret(),
    })
}

/// Reads the proxy's answer line.
pub fn parse_answer(answer: &[u8]) -> Result<Token, TokenFailure> {
    let unexpected = || {
        TokenFailure::Protocol(
            "unexpected answer from the proxy: is it an older version without `token`? \
             Restart it with this version"
                .to_owned(),
        )
    };
    let answer: WireAnswer = serde_json::from_slice(answer).map_err(|_| unexpected())?;
    match answer {
        WireAnswer {
            ok: true,
            user: Some(user),
            token: Some(token),
            ..
        } => Ok(Token { user, token }),
        WireAnswer {
            ok: false,
            error: Some(refusal),
            message,
            ..
        } => Err(TokenFailure::Refused(
            refusal,
            message.unwrap_or_else(|| "refused".to_owned()),
        )),
        _ => Err(unexpected()),
    }
}

/// Asks the proxy that uses `state_dir` for a token of `account`.
#[cfg(any(unix, windows))]
pub async fn request_token(
    state_dir: &std::path::Path,
    account: &str,
    password: &SecretString,
) -> Result<Token, TokenFailure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = super::connect(state_dir).await.map_err(|e| {
        TokenFailure::NotRunning(format!(
            "{e}: is `xoauth2-proxy run` running with this configuration (or --state-dir), \
             or the service?"
        ))
    })?;
    let io = |e: std::io::Error| TokenFailure::Protocol(format!("the control channel failed: {e}"));
    stream
        .write_all(&request_line(account, password))
        .await
        .map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut answer = Zeroizing::new(Vec::new());
    (&mut stream)
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    if answer.first() != Some(&b'{') {
        return Err(TokenFailure::Protocol(
            "the proxy does not know `token`: it is an older version; restart it with this one"
                .to_owned(),
        ));
    }
    parse_answer(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(line: &[u8]) -> Result<WireRequest, serde_json::Error> {
        serde_json::from_slice(line)
    }

    #[test]
    fn a_request_line_reads_back_and_is_one_line() {
        let line = request_line("a@b.test", &SecretString::from("pa\"ss\nword"));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"\n"));
        let back = request(&line).expect("reads back");
        assert_eq!((back.v, back.op.as_str()), (VERSION, "token"));
        assert_eq!(back.account, "a@b.test");
        assert_eq!(back.password.expose_secret(), "pa\"ss\nword");
    }

    #[tokio::test]
    async fn answers_granted_refused_and_bad_requests() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let r: TokenRequest = r;
                let answer = if r.password.expose_secret() == "right" {
                    TokenAnswer::Granted {
                        user: r.account.clone(),
                        token: SecretString::from("tok"),
                    }
                } else {
                    TokenAnswer::Refused(Refusal::Refused, "wrong password".into())
                };
                let _ = r.reply.send(answer);
            }
        });
        let line = request_line("a@b.test", &SecretString::from("right"));
        let got = parse_answer(&answer(&line, Some(super::super::Client::Uid(1)), &tx).await)
            .expect("granted");
        assert_eq!(got.user, "a@b.test");
        assert_eq!(got.token.expose_secret(), "tok");

        let line = request_line("a@b.test", &SecretString::from("wrong"));
        let got = parse_answer(&answer(&line, Some(super::super::Client::Uid(1)), &tx).await);
        assert!(
            matches!(got, Err(TokenFailure::Refused(Refusal::Refused, ref m)) if m == "wrong password")
        );

        let bad: &[&[u8]] = &[
            b"{\"v\":1,\"op\":\"token\"", // no newline: cut at the cap
            b"{not json}\n",
            b"{\"v\":2,\"op\":\"token\",\"account\":\"a\",\"password\":\"p\"}\n",
            b"{\"v\":1,\"op\":\"other\",\"account\":\"a\",\"password\":\"p\"}\n",
        ];
        for line in bad {
            let got = parse_answer(&answer(line, None, &tx).await);
            assert!(
                matches!(got, Err(TokenFailure::Refused(Refusal::BadRequest, _))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn an_answer_never_shows_the_token_in_debug() {
        let t = Token {
            user: "u".into(),
            token: SecretString::from("secret-token"),
        };
        assert!(!format!("{t:?}").contains("secret-token"));
    }

    #[test]
    fn odd_answers_are_protocol_errors() {
        for answer in [&b"ok\n"[..], b"{\"ok\":true}\n", b"{\"ok\":false}\n"] {
            assert!(matches!(
                parse_answer(answer),
                Err(TokenFailure::Protocol(_))
            ));
        }
    }
}
