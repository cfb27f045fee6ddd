//! SMTP submission for the session driver: the upstream's greeting, EHLO
//! answered from the upstream's own EHLO after its STARTTLS (rewritten),
//! AUTH PLAIN/LOGIN as client logins. On a fixed-account listener no client
//! login is needed: the first allowed `MAIL FROM` signs the proxy in as that
//! account and starts the relay, whose filter (`protocol::smtp::filter`)
//! holds every later transaction to the same `allowed_senders`.

use super::driver::{Protocol, Session, Step, TLS_REQUIRED, step_from};
use crate::escape::log_text;
use crate::protocol::Failure;
use crate::protocol::smtp::filter::{Policy, sender_refused};
use crate::protocol::smtp::{
    Action, EhloOffer, Frontend, ehlo_reply, failure_reply, leading_mail_from, starttls_ok,
};
use crate::upstream::smtp::SmtpUpstream;

/// EHLO keywords offered when the upstream cannot be reached; AUTH is added
/// by the rewrite.
const FALLBACK_EHLO: &[&str] = &["xoauth2-proxy", "ENHANCEDSTATUSCODES"];
/// The EHLO name used upstream when a reconnect happens before the client
/// has given one (cannot happen with a well-behaved client).
const DEFAULT_EHLO_NAME: &str = "localhost";
/// The answer to a client's AUTH on a fixed-account listener.
const AUTH_IGNORED: &[u8] = b"235 2.7.0 Authentication not needed here; accepted\r\n";

pub(super) struct Smtp {
    frontend: Frontend,
    /// The client's EHLO/HELO name since the start or the last STARTTLS.
    client_name: Option<String>,
    /// The listener's `fixed_account`: the account every relay signs in as.
    fixed_account: Option<String>,
}

impl Protocol for Smtp {
    type Upstream = SmtpUpstream;
    const GOODBYE: &'static [u8] = b"421 4.4.2 Timeout: no login in time\r\n";

    fn start(session: &Session<SmtpUpstream>) -> (Self, Vec<u8>) {
        let greeting = match &session.upstream {
            Some(u) => u.greeting.clone(),
            None => b"220 xoauth2-proxy ESMTP ready\r\n".to_vec(),
        };
        let smtp = Smtp {
            frontend: Frontend::new(session.offers_starttls()),
            client_name: None,
            fixed_account: session.listener.fixed_account.as_deref().map(str::to_owned),
        };
        (smtp, greeting)
    }

    async fn step(&mut self, session: &mut Session<SmtpUpstream>) -> Step {
        if let Some(account) = &self.fixed_account
            && let Some(mail) = leading_mail_from(&session.buf)
        {
            let policy = fixed_policy(&session.listener);
            return match self
                .start_relay(session, account, &policy, mail.sender.as_deref())
                .await
            {
                // The MAIL FROM line is still in the buffer: it goes up
                // first, through the filter like every later command.
                Ok(()) => Step::Relay {
                    account: account.clone(),
                    policy,
                },
                Err(reply) => {
                    session.buf.drain(..mail.consumed);
                    Step::Reply(reply)
                }
            };
        }
        step_from! {
            self.frontend.step(&mut session.buf),
            Action::StartTls => Step::StartTls(starttls_ok()),
            Action::Ehlo { domain, extended } => {
                Step::Reply(self.ehlo(session, domain, extended).await)
            }
            Action::Login { credentials } if self.fixed_account.is_some() => {
                Step::Reply(ignore_auth(session.peer, credentials))
            }
            Action::Login { credentials } => Step::untagged_login(credentials),
        }
    }

    fn tls_required(_tag: &str) -> Vec<u8> {
        tls_required()
    }

    fn after_tls(&mut self) {
        // The client greets again (RFC 3207 §4.2).
        self.client_name = None;
    }

    fn hello(&self) -> &str {
        self.client_name.as_deref().unwrap_or(DEFAULT_EHLO_NAME)
    }
}

impl Smtp {
    /// The upstream's EHLO keywords (or the fallback when it is gone),
    /// rewritten for the client.
    async fn ehlo(
        &mut self,
        session: &mut Session<SmtpUpstream>,
        domain: String,
        extended: bool,
    ) -> Vec<u8> {
        let lines = match session.upstream.as_mut() {
            Some(up) => match up.ehlo(&domain).await {
                Ok(lines) => Some(lines),
                Err(e) => {
                    tracing::warn!(peer = %session.peer, error = %e, "upstream EHLO failed");
                    session.upstream = None;
                    None
                }
            },
            None => None,
        };
        let lines = lines.unwrap_or_else(|| FALLBACK_EHLO.iter().map(|s| s.to_string()).collect());
        self.client_name = Some(domain);
        let offer = EhloOffer {
            starttls: self.frontend.offers_starttls(),
            // A fixed-account listener takes no password (AUTH is answered
            // and ignored); elsewhere AUTH is offered once a password
            // would be taken.
            auth: self.fixed_account.is_some()
                || session.listener.accepts_password(session.client.is_tls()),
            // The fixed-account relay's filter reads DATA, not BDAT chunks.
            chunking: self.fixed_account.is_none(),
        };
        ehlo_reply(&lines, extended, offer)
    }

    /// A fixed-account listener's first transaction: the sender is checked
    /// against `allowed_senders`, then the proxy signs in upstream as the
    /// account. `Ok`: signed in, relay now. `Err`: the reply to the MAIL
    /// FROM; the session stays where it was.
    async fn start_relay(
        &self,
        session: &mut Session<SmtpUpstream>,
        account: &str,
        policy: &Policy,
        sender: Option<&str>,
    ) -> Result<(), Vec<u8>> {
        first_sender(
            session.peer,
            account,
            policy,
            self.client_name.is_some(),
            sender,
        )?;
        let ehlo_name = self.client_name.as_deref().unwrap_or(DEFAULT_EHLO_NAME);
        let grant = session.unattended(account).await?;
        match session.authenticate(ehlo_name, "", &grant).await {
            Ok(_reply) => Ok(()),
            // A 535 would read as "your password is wrong" to a client that
            // sent none: say it is the relay's sign-in that failed.
            Err(reply) => Err(failure_reply(&Failure::Unavailable(format!(
                "the mail server refused the relay's sign-in as {account}: {}",
                String::from_utf8_lossy(&reply).trim_end()
            )))),
        }
    }
}

/// A fixed-account listener's rules for every transaction: its
/// `allowed_senders` and recipient cap (for the relay and Graph alike).
pub(super) fn fixed_policy(listener: &crate::config::ListenerConfig) -> Policy {
    Policy {
        allowed_senders: (listener.allowed_senders.iter())
            .map(|a| a.to_string())
            .collect(),
        max_recipients: listener.recipient_cap(),
    }
}

/// The checks of a fixed-account listener's first `MAIL FROM` before
/// anything is done as `account`: EHLO first, a sender, an allowed one.
/// `Err`: the reply to the MAIL FROM.
pub(super) fn first_sender<'a>(
    peer: std::net::SocketAddr,
    account: &str,
    policy: &Policy,
    greeted: bool,
    sender: Option<&'a str>,
) -> Result<&'a str, Vec<u8>> {
    if !greeted {
        return Err(b"503 5.5.1 Send EHLO first\r\n".to_vec());
    }
    let Some(sender) = sender else {
        return Err(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n".to_vec());
    };
    if !policy.allows(sender) {
        tracing::warn!(%peer, sender = %log_text(sender), %account,
            "MAIL FROM refused: not in allowed_senders");
        return Err(sender_refused(sender));
    }
    Ok(sender)
}

/// A client's AUTH on a fixed-account listener: accepted and ignored.
/// Devices configured with a login keep working; the proxy sends as the
/// fixed account whatever they send.
pub(super) fn ignore_auth(
    peer: std::net::SocketAddr,
    credentials: crate::sasl::Credentials,
) -> Vec<u8> {
    tracing::info!(%peer, user = %log_text(&credentials.username),
        "client AUTH on a fixed-account listener: accepted and ignored");
    drop(credentials);
    AUTH_IGNORED.to_vec()
}

/// The reply to AUTH before STARTTLS where TLS is required.
pub(super) fn tls_required() -> Vec<u8> {
    format!("538 5.7.11 {TLS_REQUIRED}: use STARTTLS first\r\n").into_bytes()
}
