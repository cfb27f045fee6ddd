//! The one session driver: implicit TLS and the upstream connection side by
//! side, the greeting, the pre-authentication loop around a protocol's front
//! end, STARTTLS, the TLS rule for passwords, the login and the relay. A
//! [`Protocol`] supplies only its words and its extra steps.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use zeroize::Zeroize;

use super::Context;
use super::client::ClientStream;
use super::upstream_auth::UpstreamLogin;
use crate::config::{ListenerConfig, LocalTls};
use crate::escape::log_text;
use crate::health::ListenerStats;
use crate::protocol::smtp::filter::{Filter, Policy};
use crate::sasl::Credentials;
use crate::upstream::Target;

/// Time to write the goodbye once the pre-authentication deadline passed.
const GOODBYE_GRACE: Duration = Duration::from_secs(5);

/// Why a password is refused before STARTTLS on a listener other machines reach.
pub(super) const TLS_REQUIRED: &str = "Passwords are accepted only over TLS on this listener";

/// What the driver does next, in the words every protocol shares.
pub(super) enum Step {
    /// No complete command yet: read more.
    NeedMore,
    /// Write these bytes, then step again.
    Reply(Vec<u8>),
    /// Write these bytes, then close.
    Close(Vec<u8>),
    /// Write this go-ahead, then upgrade the client connection to TLS.
    StartTls(Vec<u8>),
    /// A client login; `tag` is empty for protocols without tags.
    Login {
        tag: String,
        credentials: Credentials,
    },
    /// Already signed in upstream as `account` (SMTP's fixed account): relay
    /// now, the buffer included, every client byte through a filter that
    /// holds each transaction to the listener's `policy`.
    Relay { account: String, policy: Policy },
}

impl Step {
    /// A login in a protocol without tags.
    pub(super) fn untagged_login(credentials: Credentials) -> Step {
        Step::Login {
            tag: String::new(),
            credentials,
        }
    }
}

/// Matches a front end's `Action` into a [`Step`]: the variants every front
/// end has (`NeedMore`, `Reply`, `Close`) are said once here, the protocol's
/// own by the arms given after the action. `Action` and `Step` are the
/// caller's names, so each protocol matches its own front end's type.
macro_rules! step_from {
    ($action:expr, $($arms:tt)*) => {
        match $action {
            Action::NeedMore => Step::NeedMore,
            Action::Reply(bytes) => Step::Reply(bytes),
            Action::Close(bytes) => Step::Close(bytes),
            $($arms)*
        }
    };
}
pub(super) use step_from;

/// What one protocol adds to the driver.
pub(super) trait Protocol: Sized + Send {
    type Upstream: UpstreamLogin;
    /// Sent when the pre-authentication deadline passes.
    const GOODBYE: &'static [u8];
    /// The client buffer's initial capacity: one typical pre-login command.
    const BUFFER: usize = 512;

    /// The protocol's state and the greeting for the client, from the
    /// upstream's (when it answered) and the listener.
    fn start(session: &Session<Self::Upstream>) -> (Self, Vec<u8>);

    /// The next step from the client's buffer. May use the upstream before
    /// answering (SMTP's EHLO, the fixed-account MAIL FROM).
    fn step(&mut self, session: &mut Session<Self::Upstream>) -> impl Future<Output = Step> + Send;

    /// The reply refusing a password sent before TLS (under `tag`).
    fn tls_required(tag: &str) -> Vec<u8>;

    /// After the TLS handshake of a STARTTLS: what the client was offered
    /// before no longer holds (RFC 3501 §6.2.1, RFC 2595 §4, RFC 3207 §4.2).
    fn after_tls(&mut self);

    /// The name for an upstream EHLO when the login has to reconnect.
    fn hello(&self) -> &str {
        ""
    }

    /// After a login (or a fixed account's first `MAIL FROM`, with its
    /// `policy`): by default the relay to the upstream; a protocol that
    /// serves the client itself (the Graph backend) takes over here.
    fn after_login(
        &mut self,
        session: &mut Session<Self::Upstream>,
        account: String,
        policy: Option<Policy>,
    ) -> impl Future<Output = ()> + Send {
        async move { session.relay(&account, policy).await }
    }
}

/// One client connection before login, and the upstream connection held for it.
pub(super) struct Session<U> {
    pub(super) peer: SocketAddr,
    pub(super) listener: Arc<ListenerConfig>,
    pub(super) ctx: Arc<Context>,
    pub(super) target: Target,
    /// Every read, write and handshake before login ends by then.
    pub(super) deadline: Instant,
    pub(super) client: ClientStream,
    /// What the client sent and the front end has not consumed yet.
    pub(super) buf: Vec<u8>,
    /// `None` while the upstream is unreachable or was given up; the login
    /// connects again.
    pub(super) upstream: Option<U>,
    /// The listener's counters.
    pub(super) stats: Arc<ListenerStats>,
}

/// An accepted client connection and what it was accepted with.
pub(super) struct Connection {
    pub(super) client: ClientStream,
    pub(super) peer: SocketAddr,
    pub(super) listener: Arc<ListenerConfig>,
    pub(super) ctx: Arc<Context>,
    pub(super) stats: Arc<ListenerStats>,
}

/// Serves one client connection with protocol `P`, from accept to close.
pub(super) async fn serve<P: Protocol>(connection: Connection) {
    let Connection {
        mut client,
        peer,
        listener,
        ctx,
        stats,
    } = connection;
    let deadline = Instant::now() + ctx.preauth_timeout;
    let target = ctx.target(&listener);
    // The client's TLS handshake and the upstream connection overlap.
    let (handshake, connected) = tokio::join!(
        accept_implicit_tls(&mut client, &listener, &ctx, peer, deadline),
        P::Upstream::connect(&target, listener.upstream_tls_mode())
    );
    if P::Upstream::REMOTE {
        ctx.note_upstream(&target, &connected);
        if let Err(e) = &connected {
            stats.upstream_failed(super::failed_at(e));
        }
    }
    if !handshake {
        return;
    }
    let upstream = match connected {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(%peer, upstream = %target.addr(), error = %e, "upstream not reachable at connect");
            None
        }
    };
    let mut session = Session {
        peer,
        listener,
        ctx,
        target,
        deadline,
        client,
        buf: Vec::with_capacity(P::BUFFER),
        upstream,
        stats,
    };
    let (mut protocol, greeting) = P::start(&session);
    if session.write(&greeting).await.is_err() {
        return;
    }
    session.run(&mut protocol).await;
}

impl<U: UpstreamLogin> Session<U> {
    /// Whether this listener offers STARTTLS to its clients.
    pub(super) fn offers_starttls(&self) -> bool {
        self.listener.local_tls == LocalTls::Starttls
    }

    /// The pre-authentication loop; returns when the connection is done.
    async fn run<P: Protocol<Upstream = U>>(&mut self, protocol: &mut P) {
        loop {
            let written = match protocol.step(self).await {
                Step::NeedMore => {
                    match read_client(&mut self.client, &mut self.buf, self.deadline).await {
                        Ok(Read::Data) => continue,
                        Ok(Read::Closed) | Err(_) => return,
                        Ok(Read::Deadline) => {
                            tracing::info!(peer = %self.peer, "closing: no login before the pre-authentication deadline");
                            let grace = Instant::now() + GOODBYE_GRACE;
                            let _ = write_client(&mut self.client, P::GOODBYE, grace).await;
                            return;
                        }
                    }
                }
                Step::Reply(bytes) => self.write(&bytes).await,
                Step::Close(bytes) => {
                    let _ = self.write(&bytes).await;
                    let _ = self.client.shutdown().await;
                    return;
                }
                Step::StartTls(go_ahead) => {
                    if self.write(&go_ahead).await.is_err() {
                        return;
                    }
                    // Injection defence: nothing sent before the handshake counts.
                    self.buf.zeroize();
                    self.buf.clear();
                    if !upgrade(&mut self.client, &self.ctx, self.peer, self.deadline).await {
                        return;
                    }
                    protocol.after_tls();
                    continue;
                }
                Step::Login { tag, credentials } => {
                    if !self.listener.accepts_password(self.client.is_tls()) {
                        tracing::warn!(peer = %self.peer, user = %log_text(&credentials.username), "login refused: password without TLS on a network listener");
                        drop(credentials);
                        self.write(&P::tls_required(&tag)).await
                    } else {
                        match self.login(protocol.hello(), &tag, &credentials).await {
                            Ok((account, reply)) => {
                                // Logged in: the pre-authentication deadline
                                // no longer bounds the client.
                                if self.client.write_all(&reply).await.is_ok() {
                                    protocol.after_login(self, account, None).await;
                                }
                                return;
                            }
                            Err(reply) => self.write(&reply).await,
                        }
                    }
                }
                Step::Relay { account, policy } => {
                    protocol.after_login(self, account, Some(policy)).await;
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    }

    /// A write to the client before login, bounded by the deadline.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_client(&mut self.client, bytes, self.deadline).await
    }

    /// After a successful login: relay until either side closes, then log
    /// the totals. What the client sent ahead goes up first. With a
    /// `policy` (a fixed-account relay) the client's bytes go through
    /// `protocol::smtp::filter`; a client login gets the plain byte pipe.
    async fn relay(&mut self, account: &str, policy: Option<Policy>) {
        let Some(up) = self.upstream.take() else {
            return;
        };
        let peer = self.peer;
        let (mut upstream, upstream_pending) = up.into_parts();
        let started = std::time::Instant::now();
        let _open = self.stats.session();
        let bytes = &self.stats.bytes;
        let relayed = match policy {
            // Both relays count each batch as it is written.
            None => {
                crate::relay::relay(
                    &mut self.client,
                    &self.buf,
                    &mut upstream,
                    &upstream_pending,
                    account,
                    bytes,
                )
                .await
            }
            Some(policy) => {
                crate::relay::relay_filtered(
                    &mut self.client,
                    &self.buf,
                    &mut upstream,
                    &upstream_pending,
                    Filter::new(policy),
                    peer,
                    bytes,
                )
                .await
            }
        };
        let secs = started.elapsed().as_secs();
        match relayed {
            Ok(t) => {
                tracing::info!(%peer, %account, to_upstream = t.to_upstream, to_client = t.to_client,
                secs, "session ended")
            }
            Err(e) => tracing::info!(%peer, %account, error = %e, secs, "session ended"),
        }
    }
}

/// Before login every write is bounded by the same deadline as the reads:
/// a client that sends commands and never reads the answers cannot park a
/// session once the socket buffer is full.
pub(super) async fn write_client<C: AsyncWrite + Unpin + ?Sized>(
    client: &mut C,
    bytes: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    match tokio::time::timeout_at(deadline, client.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read before the pre-authentication deadline",
        )),
    }
}

/// The TLS handshake of an implicit-TLS listener (nothing to do for the
/// others). `false`: the connection is finished (logged here).
async fn accept_implicit_tls(
    client: &mut ClientStream,
    listener: &ListenerConfig,
    ctx: &Context,
    peer: SocketAddr,
    deadline: Instant,
) -> bool {
    if listener.local_tls != LocalTls::Implicit {
        return true;
    }
    upgrade(client, ctx, peer, deadline).await
}

/// Upgrades the client connection to TLS (implicit TLS, or after the
/// STARTTLS go-ahead). `false`: the handshake failed (logged here).
async fn upgrade(
    client: &mut ClientStream,
    ctx: &Context,
    peer: SocketAddr,
    deadline: Instant,
) -> bool {
    let Some(acceptor) = &ctx.local_tls else {
        tracing::error!(%peer, "local TLS is configured but no certificate was loaded");
        return false;
    };
    match client.start_tls(acceptor, deadline).await {
        Ok(()) => true,
        Err(e) => {
            // Most often the client does not trust the certificate yet.
            tracing::info!(%peer, error = %e, "TLS handshake with the client failed \
                (if the client does not trust the certificate: `xoauth2-proxy cert show`)");
            false
        }
    }
}

/// Outcome of waiting for client bytes before login.
pub(super) enum Read {
    Data,
    Closed,
    Deadline,
}

/// Appends what the client sent next, or says why nothing came.
pub(super) async fn read_client<C: AsyncRead + Unpin + ?Sized>(
    client: &mut C,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> std::io::Result<Read> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
        Err(_) => Ok(Read::Deadline),
        Ok(Ok(0)) => Ok(Read::Closed),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(Read::Data)
        }
        Ok(Err(e)) => Err(e),
    }
}
