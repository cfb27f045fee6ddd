//! The upstream half of a login, shared by the three protocols: connect
//! (again, if the pre-login connection was lost), send XOAUTH2, and turn
//! the outcome into what the client is told.

use std::future::Future;

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::driver::Session;
use crate::auth::gate::{Grant, Origin};
use crate::config::UpstreamTls;
use crate::escape::log_text;
use crate::health::LoginOutcome;
use crate::protocol::Failure;
use crate::sasl::{Credentials, ErrorChallenge};
use crate::upstream::{self, AuthOutcome, Target, UpstreamError, imap, pop3, smtp};

/// How an XOAUTH2 exchange ended, protocol-neutral.
pub(crate) enum Outcome {
    /// The server's success reply, for the client.
    Accepted(Vec<u8>),
    /// The server's refusal, as received (the client sees it unchanged).
    /// `token_refused`: the server rejected the token itself (not a policy
    /// or a limit), so the next login must not present it again.
    Refused {
        reply: Vec<u8>,
        challenge: Option<ErrorChallenge>,
        token_refused: bool,
    },
}

/// One protocol's upstream connection, as the session needs it.
pub(crate) trait UpstreamLogin: Sized + Send {
    /// What the relay copies to and from once the login succeeded.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;

    /// Connects, reads the greeting and what the client is offered from it
    /// (SMTP: before any EHLO, which waits for the client's own).
    fn connect(
        target: &Target,
        tls: UpstreamTls,
    ) -> impl Future<Output = Result<Self, UpstreamError>> + Send;

    /// Connects and gets to where XOAUTH2 can be sent (SMTP: EHLO as `hello`).
    fn open(
        target: &Target,
        tls: UpstreamTls,
        _hello: &str,
    ) -> impl Future<Output = Result<Self, UpstreamError>> + Send {
        Self::connect(target, tls)
    }

    /// Sends XOAUTH2 for `user` (under `tag` where the protocol has tags).
    fn xoauth2(
        &mut self,
        tag: &str,
        user: &str,
        token: &SecretString,
    ) -> impl Future<Output = Result<Outcome, UpstreamError>> + Send;

    /// The client's reply for a failure decided here (under `tag`).
    fn failure(tag: &str, failure: &Failure) -> Vec<u8>;

    /// The stream for the relay, and the bytes the server sent ahead.
    fn into_parts(self) -> (Self::Stream, Vec<u8>);

    /// Whether the connection is given up after a refusal (POP3 servers may
    /// close it), so the next try starts on a fresh one.
    const FRESH_AFTER_REFUSAL: bool = false;

    /// Whether XOAUTH2's `user=` is the signed-in account even when it
    /// opens a shared `mailbox`: Office 365's SMTP AUTH refuses
    /// `user=<shared mailbox>` (`535 5.7.3`); the delegate signs in as
    /// itself and sends as the shared address (Send As) in `MAIL FROM` and
    /// `From:`. IMAP and POP3 open the shared mailbox by its `user=`.
    const USER_IS_THE_DELEGATE: bool = false;

    /// Whether this is a server the listener connects to (its health is
    /// recorded for the page); not for the Graph backend, which has none.
    const REMOTE: bool = true;
}

impl<U: UpstreamLogin> Session<U> {
    /// A client login: the gate (counted by outcome in the listener's stats), then
    /// [`Session::authenticate`]. `Ok` carries the account's address and the
    /// server's success reply.
    pub(super) async fn login(
        &mut self,
        hello: &str,
        tag: &str,
        credentials: &Credentials,
    ) -> Result<(String, Vec<u8>), Vec<u8>> {
        let origin = Origin {
            peer: self.peer,
            local: self.client.local_addr(),
        };
        let grant = match self.ctx.gate.login(credentials, origin).await {
            Ok(grant) => grant,
            Err(e) => {
                self.stats.login(super::counted_as(&e));
                return Err(U::failure(tag, &self.ctx.failure(credentials, e)));
            }
        };
        let reply = self.authenticate(hello, tag, &grant).await?;
        Ok((grant.address().to_owned(), reply))
    }

    /// A fixed account's grant for a client that sent no password, its
    /// refusal counted like a client login's. The gate logged why; the
    /// client hears only that it failed.
    pub(super) async fn unattended(&self, account: &str) -> Result<Grant, Vec<u8>> {
        self.ctx.gate.unattended(account).await.map_err(|e| {
            self.stats.login(super::counted_as(&e));
            U::failure(
                "",
                &Failure::Unavailable(format!(
                    "the proxy cannot sign in as {account} now; its log says why"
                )),
            )
        })
    }

    /// XOAUTH2 upstream with `grant`'s user and token, reconnecting once when
    /// the connection held since the greeting turns out dead (the server may
    /// drop an idle pre-login connection while the user types). `Ok`: the
    /// server's success reply; `Err`: the reply for the client, after which
    /// the session stays in its login state.
    pub(super) async fn authenticate(
        &mut self,
        hello: &str,
        tag: &str,
        grant: &Grant,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let (ctx, target, peer, stats) = (&self.ctx, &self.target, self.peer, &self.stats);
        let tls = self.listener.upstream_tls_mode();
        let upstream = &mut self.upstream;
        let user = match U::USER_IS_THE_DELEGATE {
            true => grant.address(),
            false => grant.upstream_user(),
        };
        loop {
            let fresh = upstream.is_none();
            let up = match upstream {
                Some(up) => up,
                None => match U::open(target, tls, hello).await.inspect_err(|e| {
                    ctx.upstream_health
                        .record(&target.addr(), Err(e as &dyn std::fmt::Display));
                    if U::REMOTE {
                        stats.upstream_failed(super::failed_at(e));
                    }
                }) {
                    Ok(u) => upstream.insert(u),
                    Err(e) => {
                        tracing::warn!(%peer, upstream = %target.addr(), error = %e, "upstream not reachable");
                        stats.login(LoginOutcome::unavailable);
                        return Err(U::failure(
                            tag,
                            &Failure::Unavailable(super::UPSTREAM_UNREACHABLE.to_owned()),
                        ));
                    }
                },
            };
            let outcome = up.xoauth2(tag, user, &grant.token).await;
            if U::REMOTE {
                ctx.note_upstream(target, &outcome);
            }
            match outcome {
                Ok(Outcome::Accepted(reply)) => {
                    tracing::info!(%peer, account = %user, "logged in upstream");
                    stats.login(LoginOutcome::ok);
                    return Ok(reply);
                }
                Ok(Outcome::Refused {
                    reply,
                    challenge,
                    token_refused,
                }) => {
                    tracing::warn!(%peer, account = %user, server = %log_text(String::from_utf8_lossy(&reply).trim_end()),
                    challenge = ?challenge, "upstream refused the token");
                    stats.login(LoginOutcome::upstream_refused);
                    if token_refused {
                        ctx.gate.token_refused(grant);
                    }
                    if U::FRESH_AFTER_REFUSAL {
                        *upstream = None;
                    }
                    return Err(reply);
                }
                Err(e) => {
                    *upstream = None;
                    if fresh {
                        tracing::warn!(%peer, account = %user, error = %e, "upstream failed during authentication");
                        stats.login(LoginOutcome::unavailable);
                        return Err(U::failure(
                            tag,
                            &Failure::Unavailable(super::UPSTREAM_FAILED.to_owned()),
                        ));
                    }
                    // The connection held since the greeting was dead: once more
                    // on a fresh one.
                }
            }
        }
    }
}

/// IMAP and POP3 have no code that tells a refused token from a policy or
/// a limit: any refusal counts as the token's.
fn any_refusal_is_the_token(outcome: AuthOutcome) -> Outcome {
    match outcome {
        AuthOutcome::Accepted { reply } => Outcome::Accepted(reply),
        AuthOutcome::Refused {
            reply, challenge, ..
        } => Outcome::Refused {
            reply,
            challenge,
            token_refused: true,
        },
    }
}

impl UpstreamLogin for imap::ImapUpstream {
    type Stream = TlsStream<TcpStream>;

    fn connect(
        target: &Target,
        tls: UpstreamTls,
    ) -> impl Future<Output = Result<Self, UpstreamError>> + Send {
        imap::connect(target, tls)
    }

    async fn xoauth2(
        &mut self,
        tag: &str,
        user: &str,
        token: &SecretString,
    ) -> Result<Outcome, UpstreamError> {
        upstream::authenticate(self, tag, user, token)
            .await
            .map(any_refusal_is_the_token)
    }

    fn failure(tag: &str, failure: &Failure) -> Vec<u8> {
        crate::protocol::imap::failure_reply(tag, failure)
    }

    fn into_parts(self) -> (Self::Stream, Vec<u8>) {
        imap::ImapUpstream::into_parts(self)
    }
}

impl UpstreamLogin for pop3::Pop3Upstream {
    const FRESH_AFTER_REFUSAL: bool = true;

    type Stream = TlsStream<TcpStream>;

    fn connect(
        target: &Target,
        tls: UpstreamTls,
    ) -> impl Future<Output = Result<Self, UpstreamError>> + Send {
        pop3::connect(target, tls)
    }

    async fn xoauth2(
        &mut self,
        tag: &str,
        user: &str,
        token: &SecretString,
    ) -> Result<Outcome, UpstreamError> {
        upstream::authenticate(self, tag, user, token)
            .await
            .map(any_refusal_is_the_token)
    }

    fn failure(_tag: &str, failure: &Failure) -> Vec<u8> {
        crate::protocol::pop3::failure_reply(failure)
    }

    fn into_parts(self) -> (Self::Stream, Vec<u8>) {
        pop3::Pop3Upstream::into_parts(self)
    }
}

impl UpstreamLogin for smtp::SmtpUpstream {
    type Stream = TlsStream<TcpStream>;
    const USER_IS_THE_DELEGATE: bool = true;

    fn connect(
        target: &Target,
        tls: UpstreamTls,
    ) -> impl Future<Output = Result<Self, UpstreamError>> + Send {
        smtp::connect(target, tls)
    }

    async fn open(target: &Target, tls: UpstreamTls, hello: &str) -> Result<Self, UpstreamError> {
        let mut up = smtp::connect(target, tls).await?;
        up.ehlo(hello).await?;
        Ok(up)
    }

    async fn xoauth2(
        &mut self,
        tag: &str,
        user: &str,
        token: &SecretString,
    ) -> Result<Outcome, UpstreamError> {
        let outcome = upstream::authenticate(self, tag, user, token).await?;
        Ok(match outcome {
            AuthOutcome::Accepted { reply } => Outcome::Accepted(reply),
            AuthOutcome::Refused {
                reply,
                code,
                challenge,
            } => {
                let auth_disabled = reply.windows(7).any(|w| w == b"5.7.139");
                if auth_disabled {
                    tracing::warn!(account = %user, "SMTP AUTH is disabled for this mailbox or tenant: an admin can enable it with \
                        `Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled $false`");
                } else if code == Some(432) {
                    tracing::warn!(account = %user, "Office 365 allows 3 concurrent SMTP connections per mailbox; the client opened more");
                }
                Outcome::Refused {
                    reply,
                    challenge,
                    token_refused: code == Some(535) && !auth_disabled,
                }
            }
        })
    }

    fn failure(_tag: &str, failure: &Failure) -> Vec<u8> {
        crate::protocol::smtp::failure_reply(failure)
    }

    fn into_parts(self) -> (Self::Stream, Vec<u8>) {
        smtp::SmtpUpstream::into_parts(self)
    }
}
