//! One client connection from accept to close: the I/O around a protocol
//! front end (`crate::protocol`), the login through accounts and tokens,
//! the upstream exchange, then the relay.

pub mod client;
mod driver;
pub mod graph;
mod imap;
mod pop3;
mod smtp;
mod upstream_auth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use secrecy::ExposeSecret as _;

use crate::auth::gate::{Gate, Grant, LoginError, Origin};
use crate::config::{Backend, ListenerConfig, Protocol};
use crate::health::{ListenerStats, LoginOutcome, UpstreamStage};
use crate::protocol::Failure;
use crate::sasl::Credentials;
use crate::upstream::{Target, UpstreamError};
use client::ClientStream;

/// What a client is told for a wrong password or an unknown account (one
/// text for both: which addresses are accounts is nobody else's business).
pub(crate) const REFUSED: &str = "Wrong user name or password";
/// What a client is told for an empty password (from what it sent).
pub(crate) const EMPTY_PASSWORD: &str =
    "The password is empty: enter a password in the mail client";
/// What a client is told when the token endpoint, the token store or the
/// configuration is in the way; the log says which.
pub(crate) const UNAVAILABLE: &str = "No token for this account now: the token endpoint or the \
     proxy's setup is in the way; try again later (the proxy's log says why)";
/// What a client is told when the mail server cannot be reached.
pub(crate) const UPSTREAM_UNREACHABLE: &str =
    "cannot reach the mail server now; try again later (the proxy's log says why)";
/// What a client is told when the mail server failed during the login.
pub(crate) const UPSTREAM_FAILED: &str =
    "the mail server failed during login; try again (the proxy's log says why)";

/// Serves one client connection with its listener's protocol, from accept
/// to close.
/// `stats`: the listener's counters (logins, sessions, bytes, upstream failures).
pub(crate) async fn serve(
    client: ClientStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    ctx: Arc<Context>,
    stats: Arc<ListenerStats>,
) {
    let connection = driver::Connection {
        client,
        peer,
        listener,
        ctx,
        stats,
    };
    match connection.listener.protocol {
        Protocol::Imap => driver::serve::<imap::Imap>(connection).await,
        Protocol::Pop3 => driver::serve::<pop3::Pop3>(connection).await,
        Protocol::Smtp if connection.listener.backend == Backend::Graph => {
            driver::serve::<graph::GraphSmtp>(connection).await
        }
        Protocol::Smtp => driver::serve::<smtp::Smtp>(connection).await,
    }
}

/// Where reaching the upstream failed, for the listener's counters.
fn failed_at(e: &UpstreamError) -> UpstreamStage {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::Timeout(_) | UpstreamError::Proxy(_) => {
            UpstreamStage::connect
        }
        UpstreamError::Tls { .. } => UpstreamStage::tls,
        UpstreamError::Closed
        | UpstreamError::Io(_)
        | UpstreamError::LineTooLong
        | UpstreamError::Protocol(_) => UpstreamStage::greeting,
    }
}

/// How a refusal of the gate is counted.
fn counted_as(e: &LoginError) -> LoginOutcome {
    match e {
        LoginError::Refused(_) => LoginOutcome::wrong_password,
        LoginError::Throttled(_) => LoginOutcome::throttled,
        LoginError::SignInNeeded(_) => LoginOutcome::sign_in_needed,
        LoginError::Unavailable(_) => LoginOutcome::unavailable,
    }
}

/// Everything sessions share.
pub struct Context {
    /// Accounts, passwords and tokens: every login passes here.
    pub gate: Gate,
    pub upstream_tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    /// `[proxy] upstream_proxy` and `no_proxy`; a listener may set its own.
    pub proxy: crate::net::proxy::ProxyPolicy,
    pub preauth_timeout: Duration,
    /// The TLS acceptor of `local_tls` listeners (none when no listener has TLS).
    pub local_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The local sign-in page's address (`http://localhost:8089/`), once it
    /// is bound: named in the error a client gets for an account that needs
    /// a sign-in.
    pub sign_in_page: std::sync::OnceLock<String>,
    /// How each upstream answered last (for the sign-in page); shared
    /// across reloads.
    pub upstream_health: Arc<crate::health::UpstreamHealth>,
    /// What the notifier said lately (for the page); shared across reloads.
    pub notices: Arc<crate::health::Notices>,
    /// `graph_memory_mib`: message text the Graph listeners hold at once;
    /// shared across reloads (a reload sets its bound).
    pub graph_memory: Arc<graph::MessageMemory>,
}

impl Context {
    pub fn target(&self, listener: &ListenerConfig) -> Target {
        // Validated present, except on a Graph listener, whose backend
        // never connects.
        let (host, port) = listener.upstream_host_port().unwrap_or(("", 0));
        Target {
            host: host.to_owned(),
            port,
            tls: self.upstream_tls.clone(),
            timeout: self.connect_timeout,
            route: self
                .proxy
                .route_with(listener.upstream_proxy.as_ref(), host),
        }
    }

    /// Remembers how `target` answered (a connection, or an exchange on one).
    pub fn note_upstream<T>(&self, target: &Target, outcome: &Result<T, UpstreamError>) {
        let outcome = match outcome {
            Ok(_) => Ok(()),
            Err(e) => Err(e as &dyn std::fmt::Display),
        };
        self.upstream_health.record(&target.addr(), outcome);
    }

    /// A client login through the gate, its refusal in the words of
    /// DESIGN.md's table (a sign-in hint names the local page).
    pub async fn login(
        &self,
        credentials: &Credentials,
        origin: impl Into<Origin>,
    ) -> Result<Grant, Failure> {
        self.gate
            .login(credentials, origin)
            .await
            .map_err(|e| self.failure(credentials, e))
    }

    /// The protocol-neutral reply for a refusal of the gate. The client
    /// gets one of a few fixed texts, never the gate's own: that one may
    /// carry a file path, an I/O error or what a token endpoint said, and
    /// it is in the log already (the gate logs every refusal with it).
    pub fn failure(&self, credentials: &Credentials, e: LoginError) -> Failure {
        let username = credentials.username.as_str();
        match e {
            LoginError::Refused(_) if credentials.password.expose_secret().is_empty() => {
                Failure::BadCredentials(EMPTY_PASSWORD.to_owned())
            }
            LoginError::Refused(_) => Failure::BadCredentials(format!(
                "{REFUSED} for {}",
                crate::protocol::one_line(username)
            )),
            LoginError::SignInNeeded(_) => {
                let user = crate::protocol::one_line(&username.to_ascii_lowercase());
                let page = match self.sign_in_page.get() {
                    Some(page) => format!("sign in at {page} or run"),
                    None => "run".to_owned(),
                };
                Failure::SignInNeeded(format!(
                    "{user} must sign in (again): its sign-in is missing, has expired or was \
                     revoked, or its stored tokens cannot be used; {page} \
                     `xoauth2-proxy authorize {user}`"
                ))
            }
            // Not judged: the temporary reply (NO [UNAVAILABLE], -ERR
            // [SYS/TEMP], 454 4.7.0), so a client retries rather than
            // asking its user for a new password. It says only how long to
            // wait, from the throttle's own figure.
            e @ LoginError::Throttled(_) => Failure::Unavailable(e.to_string()),
            LoginError::Unavailable(_) => Failure::Unavailable(UNAVAILABLE.to_owned()),
        }
    }
}
