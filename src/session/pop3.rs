//! POP3 for the session driver: greeting and CAPA from the upstream
//! (rewritten), USER/PASS and AUTH PLAIN/LOGIN as client logins.

use super::driver::{Protocol, Session, Step, TLS_REQUIRED, step_from};
use crate::protocol::pop3::{
    Action, Frontend, greeting, rewrite_capa, starttls_ok, without_logins,
};
use crate::upstream::pop3::Pop3Upstream;

/// Offered when the upstream cannot be reached at connect time.
const FALLBACK_CAPA: &[&str] = &["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"];

pub(super) struct Pop3 {
    frontend: Frontend,
    /// The upstream's CAPA as received, rewritten again after STLS.
    upstream_capa: Vec<String>,
}

impl Protocol for Pop3 {
    type Upstream = Pop3Upstream;
    const GOODBYE: &'static [u8] = b"-ERR Timeout: no login in time\r\n";

    fn start(session: &Session<Pop3Upstream>) -> (Self, Vec<u8>) {
        let offer_stls = session.offers_starttls();
        let (hello, upstream_capa) = match &session.upstream {
            Some(u) => (greeting(&u.greeting_text), u.capa.clone()),
            None => (
                greeting(b"xoauth2-proxy ready"),
                FALLBACK_CAPA.iter().map(|s| s.to_string()).collect(),
            ),
        };
        let mut capa = rewrite_capa(&upstream_capa, offer_stls);
        if !session.listener.accepts_password(session.client.is_tls()) {
            capa = without_logins(&capa);
        }
        let pop3 = Pop3 {
            frontend: Frontend::new(capa, offer_stls),
            upstream_capa,
        };
        (pop3, hello)
    }

    async fn step(&mut self, session: &mut Session<Pop3Upstream>) -> Step {
        step_from! {
            self.frontend.step(&mut session.buf),
            Action::StartTls => Step::StartTls(starttls_ok()),
            Action::Login { credentials } => Step::untagged_login(credentials),
        }
    }

    fn tls_required(_tag: &str) -> Vec<u8> {
        format!("-ERR [SYS/PERM] {TLS_REQUIRED}: use STLS first\r\n").into_bytes()
    }

    fn after_tls(&mut self) {
        let capa = rewrite_capa(&self.upstream_capa, self.frontend.offers_stls());
        self.frontend.set_capa(capa);
    }
}
