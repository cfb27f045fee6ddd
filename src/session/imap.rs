//! IMAP for the session driver: the upstream greeting and capabilities
//! rewritten (LOGINDISABLED where a password would be refused), tagged
//! replies.

use super::driver::{Protocol, Session, Step, TLS_REQUIRED, step_from};
use crate::protocol::imap::{
    Action, Frontend, rewrite_capabilities, rewrite_greeting, starttls_ok, without_logins,
};
use crate::upstream::imap::ImapUpstream;

/// Offered when the upstream cannot be reached at connect time, so the
/// client still gets to LOGIN and hear why in words.
const FALLBACK_CAPABILITIES: &[&str] = &["IMAP4rev1", "SASL-IR", "LITERAL+", "ID"];

pub(super) struct Imap {
    frontend: Frontend,
    /// What the client is offered once it has TLS (no LOGINDISABLED).
    capabilities_after_tls: Vec<String>,
}

impl Imap {
    /// The upstream's capabilities (the fallback's when it is unreachable)
    /// as offered to a client that has TLS.
    fn capabilities_after_tls(session: &Session<ImapUpstream>) -> Vec<String> {
        let offer_starttls = session.offers_starttls();
        match &session.upstream {
            Some(u) => rewrite_capabilities(&u.capabilities, offer_starttls),
            None => {
                let fallback: Vec<String> = FALLBACK_CAPABILITIES
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                rewrite_capabilities(&fallback, offer_starttls)
            }
        }
    }
}

impl Protocol for Imap {
    type Upstream = ImapUpstream;
    const GOODBYE: &'static [u8] = b"* BYE Autologout: no login in time\r\n";
    // Room for a LOGIN with literals or an ID with its parameter list.
    const BUFFER: usize = 1024;

    fn start(session: &Session<ImapUpstream>) -> (Self, Vec<u8>) {
        let capabilities_after_tls = Imap::capabilities_after_tls(session);
        let capabilities = if session.listener.accepts_password(session.client.is_tls()) {
            capabilities_after_tls.clone()
        } else {
            without_logins(&capabilities_after_tls)
        };
        let greeting = match &session.upstream {
            Some(u) => rewrite_greeting(&u.greeting, &capabilities),
            None => format!(
                "* OK [CAPABILITY {}] xoauth2-proxy ready\r\n",
                capabilities.join(" ")
            )
            .into_bytes(),
        };
        let imap = Imap {
            frontend: Frontend::new(capabilities, session.offers_starttls()),
            capabilities_after_tls,
        };
        (imap, greeting)
    }

    async fn step(&mut self, session: &mut Session<ImapUpstream>) -> Step {
        step_from! {
            self.frontend.step(&mut session.buf),
            Action::StartTls { tag } => Step::StartTls(starttls_ok(&tag)),
            Action::Login { tag, credentials } => Step::Login { tag, credentials },
        }
    }

    fn tls_required(tag: &str) -> Vec<u8> {
        format!("{tag} NO [PRIVACYREQUIRED] {TLS_REQUIRED}: use STARTTLS first\r\n").into_bytes()
    }

    fn after_tls(&mut self) {
        self.frontend
            .set_capabilities(self.capabilities_after_tls.clone());
    }
}
