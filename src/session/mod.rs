//! One client connection from accept to close: the I/O around a protocol
//! front end (`crate::protocol`), the login through accounts and tokens,
//! the upstream exchange, then the relay.

pub mod imap;
pub mod pop3;
pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::auth::accounts::{Accounts, LoginError};
use crate::auth::tokens::{TokenError, TokenManager};
use crate::config::ListenerConfig;
use crate::protocol::{Credentials, Failure};
use crate::upstream::{Target, UpstreamError};

/// Everything sessions share.
pub struct Context {
    pub accounts: Accounts,
    pub tokens: TokenManager,
    pub upstream_tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    pub preauth_timeout: Duration,
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

    /// Local checks, then a valid access token. The account's configured
    /// address is returned: it is the `user=` sent upstream.
    pub async fn token_for(
        &self,
        credentials: &Credentials,
    ) -> Result<(String, SecretString), Failure> {
        let account = self.accounts.verify(credentials).map_err(|e| {
            tracing::warn!(user = %credentials.username, reason = %e, "login refused locally");
            match e {
                LoginError::UnknownAccount(_) | LoginError::EmptyPassword => {
                    Failure::BadCredentials(e.to_string())
                }
            }
        })?;
        let username = account.username.clone();
        let token = self.tokens.access_token(&username).await.map_err(|e| {
            tracing::warn!(account = %username, reason = %e, "no access token");
            match e {
                TokenError::UnknownAccount(_) => Failure::BadCredentials(e.to_string()),
                TokenError::NeedsSignIn(m) => Failure::SignInNeeded(m),
                TokenError::Transient(m) => Failure::Unavailable(format!(
                    "cannot get a token from the sign-in service: {m}"
                )),
                TokenError::Configuration(m) => {
                    Failure::Unavailable(format!("proxy configuration problem: {m}"))
                }
            }
        })?;
        Ok((username, token))
    }
}

pub fn unavailable(what: &str, e: &UpstreamError) -> Failure {
    Failure::Unavailable(format!("{what}: {e}"))
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
