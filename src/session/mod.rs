//! One client connection from accept to close: the I/O around a protocol
//! front end (`crate::protocol`), the login through accounts and tokens,
//! the upstream exchange, then the relay.

pub mod imap;

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
    pub async fn token_for(&self, credentials: &Credentials) -> Result<(String, SecretString), Failure> {
        let account = self.accounts.verify(credentials).map_err(|e| {
            tracing::warn!(user = %credentials.username, reason = %e, "login refused locally");
            match e {
                LoginError::UnknownAccount(_) | LoginError::EmptyPassword => Failure::BadCredentials(e.to_string()),
            }
        })?;
        let username = account.username.clone();
        let token = self.tokens.access_token(&username).await.map_err(|e| {
            tracing::warn!(account = %username, reason = %e, "no access token");
            match e {
                TokenError::UnknownAccount(_) => Failure::BadCredentials(e.to_string()),
                TokenError::NeedsSignIn(m) => Failure::SignInNeeded(m),
                TokenError::Transient(m) => {
                    Failure::Unavailable(format!("cannot get a token from the sign-in service: {m}"))
                }
                TokenError::Configuration(m) => Failure::Unavailable(format!("proxy configuration problem: {m}")),
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
