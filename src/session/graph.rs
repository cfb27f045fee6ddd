//! An SMTP listener with `backend = "graph"`: the proxy is the SMTP server.
//! Before login it is the same front end as the relay's (EHLO, STARTTLS,
//! AUTH PLAIN/LOGIN through the gate, the fixed-account `MAIL FROM`), with
//! its own EHLO; after it, `protocol::smtp::submit` takes the transactions
//! and each message goes to Microsoft Graph's `sendMail` as MIME, with the
//! envelope recipients that its header does not name added to `Bcc`.
//!
//! A message over [`GRAPH_MAX_MESSAGE`] goes through a draft instead
//! (`upload.rs`): its largest attachments are cut out, and Graph adds
//! them to the draft before sending it.
//!
//! Nothing is sent twice: a request that may have reached Graph is never
//! repeated; if its answer did not come, the client hears `451` and the log
//! says the message may have gone.

use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

mod memory;
mod upload;

use super::driver::{Protocol, Session, Step, read_client, step_from, write_client};
use super::smtp::{first_sender, fixed_policy, ignore_auth};
use super::upstream_auth::{Outcome, UpstreamLogin};
use crate::auth::tokens::TokenError;
use crate::config::UpstreamTls;
use crate::escape::log_text;
use crate::protocol::Failure;
use crate::protocol::smtp::bcc::add_missing_bcc;
use crate::protocol::smtp::filter::Policy;
use crate::protocol::smtp::submit::{Envelope, Rules, Submission};
use crate::protocol::smtp::{
    Action, EhloOffer, Frontend, ehlo_reply, failure_reply, leading_mail_from, starttls_ok,
};
use crate::upstream::{Target, UpstreamError};
pub use memory::MessageMemory;
pub use upload::GRAPH_MAX_LARGE_MESSAGE;

/// The largest message sent in one request (`sendMail`); larger ones, up
/// to [`GRAPH_MAX_LARGE_MESSAGE`], go through a draft. Graph refuses a
/// request over 4 MB; the MIME travels base64-encoded (4 octets per 3),
/// so 3 MiB of message makes a 4 MiB body.
pub const GRAPH_MAX_MESSAGE: usize = 3 * 1024 * 1024;

/// How long one `sendMail` request may take: up to 4 MB upload on a slow
/// line, and Graph's own processing.
const GRAPH_SEND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a logged-in client may stay silent between commands (RFC 5321
/// §4.5.3.2.7: a server waits at least 5 minutes for the next command).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Longest Graph error code quoted to the client (codes are short words
/// such as `ErrorAccessDenied`).
const MAX_ERROR_CODE: usize = 64;

/// The "upstream" of a Graph listener: there is no connection to hold; the
/// login ends at the gate, and messages go out one request each.
pub(super) struct GraphBackend;

impl UpstreamLogin for GraphBackend {
    type Stream = tokio::io::DuplexStream;
    const REMOTE: bool = false;

    async fn connect(_target: &Target, _tls: UpstreamTls) -> Result<Self, UpstreamError> {
        Ok(GraphBackend)
    }

    async fn xoauth2(
        &mut self,
        _tag: &str,
        _user: &str,
        _token: &SecretString,
    ) -> Result<Outcome, UpstreamError> {
        Ok(Outcome::Accepted(
            b"235 2.7.0 Authentication successful\r\n".to_vec(),
        ))
    }

    fn failure(_tag: &str, failure: &Failure) -> Vec<u8> {
        failure_reply(failure)
    }

    fn into_parts(self) -> (Self::Stream, Vec<u8>) {
        (tokio::io::duplex(1).0, Vec::new())
    }
}

pub(super) struct GraphSmtp {
    frontend: Frontend,
    greeted: bool,
    fixed_account: Option<String>,
}

impl Protocol for GraphSmtp {
    type Upstream = GraphBackend;
    const GOODBYE: &'static [u8] = b"421 4.4.2 Timeout: no login in time\r\n";

    fn start(session: &Session<GraphBackend>) -> (Self, Vec<u8>) {
        let smtp = GraphSmtp {
            frontend: Frontend::new(session.offers_starttls()),
            greeted: false,
            fixed_account: session.listener.fixed_account.as_deref().map(str::to_owned),
        };
        (
            smtp,
            b"220 xoauth2-proxy ESMTP ready (Microsoft Graph)\r\n".to_vec(),
        )
    }

    async fn step(&mut self, session: &mut Session<GraphBackend>) -> Step {
        if let Some(account) = &self.fixed_account
            && let Some(mail) = leading_mail_from(&session.buf)
        {
            let policy = fixed_policy(&session.listener);
            let checked = first_sender(
                session.peer,
                account,
                &policy,
                self.greeted,
                mail.sender.as_deref(),
            );
            let refused = match checked {
                Err(reply) => Some(reply),
                Ok(_) => session.unattended(account).await.err(),
            };
            return match refused {
                // The MAIL FROM stays in the buffer for the transaction.
                None => Step::Relay {
                    account: account.clone(),
                    policy,
                },
                Some(reply) => {
                    session.buf.drain(..mail.consumed);
                    Step::Reply(reply)
                }
            };
        }
        step_from! {
            self.frontend.step(&mut session.buf),
            Action::StartTls => Step::StartTls(starttls_ok()),
            Action::Ehlo { extended, .. } => {
                self.greeted = true;
                let auth = self.fixed_account.is_some()
                    || session.listener.accepts_password(session.client.is_tls());
                let max = max_message(&session.ctx.graph_memory);
                Step::Reply(ehlo(max, extended, self.frontend.offers_starttls(), auth))
            }
            Action::Login { credentials } if self.fixed_account.is_some() => {
                Step::Reply(ignore_auth(session.peer, credentials))
            }
            Action::Login { credentials } => Step::untagged_login(credentials),
        }
    }

    fn tls_required(_tag: &str) -> Vec<u8> {
        super::smtp::tls_required()
    }

    fn after_tls(&mut self) {
        self.greeted = false;
    }

    async fn after_login(
        &mut self,
        session: &mut Session<GraphBackend>,
        account: String,
        policy: Option<Policy>,
    ) {
        submit(session, &account, policy).await;
    }
}

/// The largest message a Graph listener takes: Graph's (through a
/// draft), or all of `graph_memory_mib` when that is less.
fn max_message(memory: &MessageMemory) -> usize {
    GRAPH_MAX_LARGE_MESSAGE.min(memory.limit())
}

/// The EHLO (or HELO) reply: the real size limit, no CHUNKING (DATA only).
fn ehlo(max_message: usize, extended: bool, starttls: bool, auth: bool) -> Vec<u8> {
    let lines = [
        "xoauth2-proxy".to_owned(),
        format!("SIZE {max_message}"),
        "8BITMIME".to_owned(),
        "PIPELINING".to_owned(),
        "ENHANCEDSTATUSCODES".to_owned(),
    ];
    let offer = EhloOffer {
        starttls,
        auth,
        chunking: false,
    };
    ehlo_reply(&lines, extended, offer)
}

/// The transactions after login, until the client quits or goes silent.
async fn submit(session: &mut Session<GraphBackend>, account: &str, policy: Option<Policy>) {
    let ctx = session.ctx.clone();
    let max = max_message(&ctx.graph_memory);
    let rules = Rules {
        max_message: max,
        max_recipients: session.listener.recipient_cap(),
        senders: policy,
    };
    let mut machine = Submission::new(
        rules,
        ehlo(max, true, false, false),
        ehlo(max, false, false, false),
    );
    let peer = session.peer;
    let mut sent = 0u64;
    // The message in hand's share of `graph_memory_mib`.
    let mut reserved = memory::Reserved::new(&ctx.graph_memory);
    loop {
        let deadline = Instant::now() + IDLE_TIMEOUT;
        let step = machine.step(&mut session.buf);
        if !matches!(step, crate::protocol::smtp::submit::Step::Deliver(_))
            && !reserved.cover(machine.buffered())
        {
            tracing::warn!(%peer, %account, limit_mib = ctx.graph_memory.limit() >> 20,
                "graph_memory_mib reached: this message is dropped and its client told to try later");
            machine.shed();
        }
        let reply = match step {
            crate::protocol::smtp::submit::Step::NeedMore => {
                match read_client(&mut session.client, &mut session.buf, deadline).await {
                    Ok(super::driver::Read::Data) => continue,
                    Ok(super::driver::Read::Deadline) => {
                        let _ = write_client(
                            &mut session.client,
                            b"421 4.4.2 Idle too long, closing\r\n",
                            Instant::now() + Duration::from_secs(5),
                        )
                        .await;
                        break;
                    }
                    Ok(super::driver::Read::Closed) | Err(_) => break,
                }
            }
            crate::protocol::smtp::submit::Step::Reply(bytes) => bytes,
            crate::protocol::smtp::submit::Step::Close(bytes) => {
                let _ = write_client(&mut session.client, &bytes, deadline).await;
                let _ = session.client.shutdown().await;
                break;
            }
            crate::protocol::smtp::submit::Step::Deliver(envelope) => {
                let reply = deliver(session, account, envelope).await;
                // Graph has it (or refused it): its memory is free.
                reserved.release();
                if reply.starts_with(b"250") {
                    sent += 1;
                }
                reply
            }
        };
        if write_client(&mut session.client, &reply, deadline)
            .await
            .is_err()
        {
            break;
        }
    }
    tracing::info!(%peer, %account, messages_sent = sent, "session ended");
}

/// One message to Graph; the reply for the end of DATA.
async fn deliver(session: &Session<GraphBackend>, account: &str, envelope: Envelope) -> Vec<u8> {
    let peer = session.peer;
    let tokens = session.ctx.gate.tokens();
    let Some(config) = tokens.account_config(account) else {
        return b"451 4.3.0 The account is no longer configured\r\n".to_vec();
    };
    if !config.can_use_graph() {
        tracing::warn!(%peer, %account, "not a Microsoft 365 account: message not sent through Graph");
        return format!(
            "554 5.7.8 {account} is not a Microsoft 365 account: this listener sends through Microsoft Graph (message not sent)\r\n"
        )
        .into_bytes();
    }
    let mailbox = config.upstream_user().to_owned();
    let mime = add_missing_bcc(&envelope.message, &envelope.recipients);
    // The Bcc line counts: the request carries `mime`, not the message.
    let large = mime.len() > GRAPH_MAX_MESSAGE;
    // A draft's token is used until its `/send`, minutes later.
    let lasting = match large {
        true => upload::TOKEN_LASTING,
        false => Duration::ZERO,
    };
    let token = match tokens.graph_token(account, lasting).await {
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(%peer, %account, error = %e, "no Graph token: message not sent");
            return match e {
                TokenError::NeedsSignIn(_) => format!(
                    "535 5.7.8 {account} must sign in again before mail can be sent (message not sent)\r\n"
                )
                .into_bytes(),
                _ => b"451 4.7.0 No Microsoft Graph token now; try again later (message not sent; the proxy's log says why)\r\n".to_vec(),
            };
        }
    };
    if large {
        drop(envelope);
        let draft = upload::Draft {
            http: tokens.http().for_account(&config),
            user_url: format!(
                "{}/v1.0/users/{}",
                config.graph_url(),
                path_segment(&mailbox)
            ),
            token: &token,
            peer,
            account,
            mailbox: &mailbox,
        };
        return upload::send_large(&draft, mime, || tokens.graph_token_refused(account)).await;
    }
    let body = base64::engine::general_purpose::STANDARD.encode(&mime);
    let url = format!(
        "{}/v1.0/users/{}/sendMail",
        config.graph_url(),
        path_segment(&mailbox)
    );
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.expose_secret()),
        )
        .body(body.into_bytes());
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%peer, %account, error = %e, "cannot build the Graph request");
            return b"451 4.3.0 Cannot build the request to Microsoft Graph (message not sent)\r\n"
                .to_vec();
        }
    };
    let recipients = envelope.recipients.len();
    let octets = mime.len();
    let http = tokens.http().for_account(&config);
    match http.send_api(request, GRAPH_SEND_TIMEOUT).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let code = error_code(response.body());
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(|v| log_text(v).to_string());
            match status {
                202 => {
                    tracing::info!(%peer, %account, %mailbox, recipients, octets, "message sent through Microsoft Graph");
                    b"250 2.0.0 Message accepted by Microsoft Graph for delivery\r\n".to_vec()
                }
                _ => {
                    tracing::warn!(%peer, %account, %mailbox, status, graph_error = %code,
                        retry_after = retry_after.as_deref().unwrap_or("-"),
                        "Microsoft Graph refused the message");
                    if status == 401 {
                        tokens.graph_token_refused(account);
                    }
                    refusal(status, &code).into_bytes()
                }
            }
        }
        Err(e) if e.unsent => {
            tracing::warn!(%peer, %account, error = %e, "cannot reach Microsoft Graph: message not sent");
            b"451 4.4.1 Cannot reach Microsoft Graph now; try again later (message not sent)\r\n"
                .to_vec()
        }
        Err(e) => {
            tracing::warn!(%peer, %account, error = %e, recipients, octets,
                "no answer from Microsoft Graph after the message was sent: it MAY HAVE BEEN DELIVERED; \
                 the client is told to try later, so a copy may arrive twice");
            b"451 4.4.2 No answer from Microsoft Graph; the message may have been sent (check Sent Items before sending again)\r\n"
                .to_vec()
        }
    }
}

/// The SMTP reply for a Graph status other than 202 (`code`: Graph's
/// error code, already made safe).
fn refusal(status: u16, code: &str) -> String {
    let (reply, what) = match status {
        401 => ("535 5.7.8", "Microsoft Graph refused the account's token"),
        403 if code.to_ascii_lowercase().contains("sendas") => (
            "550 5.7.60",
            "Microsoft Graph refused the sender: the account may not send as this From address",
        ),
        403 => (
            "550 5.7.1",
            "Microsoft Graph refused to send for this account (the app needs Mail.Send, or Mail.Send.Shared for a shared mailbox)",
        ),
        413 => ("552 5.3.4", "Message too big for Microsoft Graph"),
        429 => (
            "451 4.4.5",
            "Microsoft Graph is throttling this mailbox; try again later",
        ),
        500..=599 => (
            "451 4.4.0",
            "Microsoft Graph is not available now; try again later",
        ),
        400 => ("554 5.6.0", "Microsoft Graph refused the message"),
        _ => ("554 5.0.0", "Microsoft Graph refused the message"),
    };
    format!("{reply} {what} (HTTP {status}, {code})\r\n")
}

/// Graph's `error.code` from an error body, reduced to letters, digits,
/// `.`, `_` and `-`, at most [`MAX_ERROR_CODE`] of them; `unknown` if none.
fn error_code(body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let safe: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_ERROR_CODE)
        .collect();
    if safe.is_empty() {
        "unknown".to_owned()
    } else {
        safe
    }
}

/// A mailbox address as one URL path segment (RFC 3986 unreserved
/// characters and `@` as they are, everything else percent-encoded).
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_statuses_map_to_smtp_replies() {
        let table = [
            (401, "InvalidAuthenticationToken", "535 5.7.8"),
            (403, "ErrorAccessDenied", "550 5.7.1"),
            (403, "ErrorSendAsDenied", "550 5.7.60"),
            (413, "unknown", "552 5.3.4"),
            (429, "ApplicationThrottled", "451 4.4.5"),
            (503, "unknown", "451 4.4.0"),
            (500, "unknown", "451 4.4.0"),
            (400, "ErrorMimeContentInvalid", "554 5.6.0"),
            (404, "ErrorInvalidUser", "554 5.0.0"),
        ];
        for (status, code, want) in table {
            let reply = refusal(status, code);
            assert!(reply.starts_with(want), "{status}: {reply}");
            assert!(reply.contains(code), "{reply}");
            assert!(reply.ends_with("\r\n") && reply.matches('\n').count() == 1);
        }
    }

    #[test]
    fn error_codes_are_bounded_and_escaped() {
        assert_eq!(
            error_code(br#"{"error":{"code":"ErrorAccessDenied","message":"x"}}"#),
            "ErrorAccessDenied"
        );
        assert_eq!(error_code(b"not json"), "unknown");
        assert_eq!(error_code(br#"{"error":{"code":"a\r\n250 ok"}}"#), "a250ok");
        let long = format!(r#"{{"error":{{"code":"{}"}}}}"#, "x".repeat(500));
        assert_eq!(error_code(long.as_bytes()).len(), MAX_ERROR_CODE);
    }

    #[test]
    fn a_mailbox_is_one_path_segment() {
        assert_eq!(path_segment("a.b@x.test"), "a.b@x.test");
        assert_eq!(path_segment("a+b/c?d#@x.test"), "a%2Bb%2Fc%3Fd%23@x.test");
    }

    #[test]
    fn the_size_limit_fits_graphs_request_limit_after_base64() {
        assert!(GRAPH_MAX_MESSAGE.div_ceil(3) * 4 <= 4 * 1024 * 1024);
    }
}
