//! One client connection from accept to close: the I/O around a protocol
//! front end (`crate::protocol`), the login through accounts and tokens,
//! the upstream exchange, then the relay.

pub mod client;
pub mod imap;
pub mod pop3;
pub mod smtp;
pub mod upstream_auth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::auth::gate::{Gate, Grant, LoginError};
use crate::config::{ListenerConfig, LocalTls};
use crate::protocol::Failure;
use crate::sasl::Credentials;
use crate::upstream::{Target, UpstreamError};
use client::ClientStream;

/// Everything sessions share.
pub struct Context {
    /// Accounts, passwords and tokens: every login passes here.
    pub gate: Gate,
    pub upstream_tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
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
}

impl Context {
    pub fn target(&self, listener: &ListenerConfig) -> Target {
        let (host, port) = listener
            .upstream_host_port()
            .expect("validated by config::validate");
        Target {
            host: host.to_owned(),
            port,
            tls: self.upstream_tls.clone(),
            timeout: self.connect_timeout,
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
        peer: SocketAddr,
    ) -> Result<Grant, Failure> {
        self.gate
            .login(credentials, peer)
            .await
            .map_err(|e| self.failure(e))
    }

    /// The protocol-neutral reply for a refusal of the gate.
    pub fn failure(&self, e: LoginError) -> Failure {
        match e {
            LoginError::Refused(m) => Failure::BadCredentials(m),
            LoginError::SignInNeeded(m) => Failure::SignInNeeded(match self.sign_in_page.get() {
                Some(page) => format!("{m}; or sign in at {page}"),
                None => m,
            }),
            e @ LoginError::Throttled(_) => Failure::Unavailable(e.to_string()),
            LoginError::Unavailable(m) => Failure::Unavailable(m),
        }
    }
}

pub fn unavailable(what: &str, e: &UpstreamError) -> Failure {
    Failure::Unavailable(format!("{what}: {e}"))
}

/// Time to write the goodbye once the pre-authentication deadline passed.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(5);

/// Why a password is refused before STARTTLS on a listener other machines reach.
pub const TLS_REQUIRED: &str = "Passwords are accepted only over TLS on this listener";

/// Before login every write is bounded by the same deadline as the reads:
/// a client that sends commands and never reads the answers cannot park a
/// session once the socket buffer is full.
pub async fn write_client<C: AsyncWrite + Unpin + ?Sized>(
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
pub async fn accept_implicit_tls(
    client: &mut ClientStream,
    listener: &ListenerConfig,
    ctx: &Context,
    peer: std::net::SocketAddr,
    deadline: Instant,
) -> bool {
    if listener.local_tls != LocalTls::Implicit {
        return true;
    }
    upgrade(client, ctx, peer, deadline).await
}

/// Upgrades the client connection to TLS (implicit TLS, or after the
/// STARTTLS go-ahead). `false`: the handshake failed (logged here).
pub async fn upgrade(
    client: &mut ClientStream,
    ctx: &Context,
    peer: std::net::SocketAddr,
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
pub enum Read {
    Data,
    Closed,
    Deadline,
}

/// Appends what the client sent next, or says why nothing came.
pub async fn read_client<C: AsyncRead + Unpin + ?Sized>(
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

/// After a successful login: relay until either side closes, then log the totals.
pub async fn relay_and_log<C, U>(
    client: &mut C,
    client_pending: &[u8],
    upstream: &mut U,
    upstream_pending: &[u8],
    account: &str,
    peer: std::net::SocketAddr,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = std::time::Instant::now();
    match crate::relay::relay(client, client_pending, upstream, upstream_pending, account).await {
        Ok(t) => {
            tracing::info!(%peer, %account, to_upstream = t.to_upstream, to_client = t.to_client,
            secs = started.elapsed().as_secs(), "session ended")
        }
        Err(e) => {
            tracing::info!(%peer, %account, error = %e, secs = started.elapsed().as_secs(), "session ended")
        }
    }
}
