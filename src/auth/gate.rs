//! The login gate: the one place that decides whether a client login may
//! go upstream, and with which token. Who the client is (its local user on
//! loopback) and what it names (an account, or no account), then the
//! throttle, the local password and the access token, in that order;
//! sessions only turn a [`LoginError`] into their protocol's reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::accounts::Accounts;
use super::throttle::{Source, Subject};
use super::tokens::{Standing, TokenError, TokenManager};
use crate::config::AccountConfig;
use crate::escape::log_text;
use crate::sasl::Credentials;

/// A login that passed every local check: the account itself and a valid
/// access token for it.
pub struct Grant {
    pub account: Arc<AccountConfig>,
    pub token: SecretString,
}

impl Grant {
    /// The `user=` to send upstream: the account's `mailbox` (a shared
    /// mailbox) when set, else its address.
    pub fn upstream_user(&self) -> &str {
        self.account.upstream_user()
    }

    /// The account's address (under a catch-all, the address itself).
    pub fn address(&self) -> &str {
        &self.account.username
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("account", &self.account.username)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where a login comes from: the client's address and, when known, the
/// proxy's address it reached (with both, the OS can say which local user
/// owns a loopback client's socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl From<SocketAddr> for Origin {
    fn from(peer: SocketAddr) -> Origin {
        Origin { peer, local: None }
    }
}

/// Why the gate refused a login; each maps to one row of DESIGN.md's table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Judged and refused: unknown account, empty or wrong password.
    #[error("{0}")]
    Refused(String),
    /// Not judged: too many failures; try again after the wait.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// No usable tokens: someone must sign in (the text says how).
    #[error("{0}")]
    SignInNeeded(String),
    /// The token endpoint, the store or the configuration is in the way.
    #[error("{0}")]
    Unavailable(String),
}

/// Accounts and their tokens, behind one entry point.
pub struct Gate {
    accounts: Accounts,
    tokens: TokenManager,
}

impl Gate {
    pub fn new(accounts: Accounts, tokens: TokenManager) -> Gate {
        Gate { accounts, tokens }
    }

    /// After a reload: keeps what `old` knew of every account whose settings
    /// did not change (verified passwords, unlocks, cached tokens) and the
    /// throttle's counters.
    pub fn carry_over(self, old: &Gate) -> Gate {
        Gate {
            accounts: self.accounts.carry_over(&old.accounts),
            tokens: self.tokens.carry_over(&old.tokens),
        }
    }

    /// The token side, for the page, the background refresher and shutdown.
    pub fn tokens(&self) -> &TokenManager {
        &self.tokens
    }

    /// The account side (lookups, the `password_hash` checks, the throttle).
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// A client login from `origin`: throttled per source and account
    /// (the attempt is counted as it is admitted), then the account, its
    /// password and a valid access token.
    pub async fn login(
        &self,
        credentials: &Credentials,
        origin: impl Into<Origin>,
    ) -> Result<Grant, LoginError> {
        let Origin { peer, local } = origin.into();
        let source = self.accounts.throttle.source(peer, local).await;
        self.login_counted(credentials, source, Some(peer)).await
    }

    /// A login from a known `source` that is not a mail client's connection
    /// (`xoauth2-proxy token` over the control socket, by its local user):
    /// the same throttle, failure counting and checks as [`Gate::login`].
    pub async fn login_from(
        &self,
        credentials: &Credentials,
        source: Source,
    ) -> Result<Grant, LoginError> {
        self.login_counted(credentials, source, None).await
    }

    async fn login_counted(
        &self,
        credentials: &Credentials,
        source: Source,
        peer: Option<SocketAddr>,
    ) -> Result<Grant, LoginError> {
        let throttle = &self.accounts.throttle;
        let peer = peer.map(tracing::field::display);
        let user = log_text(&credentials.username);
        let (subject, no_account) = match self.tokens.standing(&credentials.username).await {
            Standing::Account(name) => (Subject::Account(name), None),
            Standing::NotAnAccount(e) => (Subject::NotAnAccount, Some(e)),
        };
        let attempt = match throttle.admit(source.clone(), subject).await {
            Ok(attempt) => attempt,
            Err(wait) => {
                tracing::warn!(peer, %source, %user,
                    "login refused: too many failures from this source for this name");
                return Err(LoginError::Throttled(wait));
            }
        };
        if let Some(e) = no_account {
            // Counted against the source, never against an account.
            attempt.failed();
            tracing::warn!(peer, %source, %user, reason = %log_text(&e.to_string()), "login refused locally");
            return Err(match e {
                TokenError::UnknownAccount(name) => LoginError::Refused(
                    super::accounts::LoginError::UnknownAccount(name).to_string(),
                ),
                e => token_error(e),
            });
        }
        let result = self.judge(credentials).await;
        match &result {
            Ok(_) => attempt.succeeded(),
            Err(LoginError::Refused(_)) => attempt.failed(),
            // Not judged (no tokens, endpoint down): released when dropped.
            Err(_) => {}
        }
        result
    }

    async fn judge(&self, credentials: &Credentials) -> Result<Grant, LoginError> {
        let user = log_text(&credentials.username);
        let account = self.accounts.lookup(credentials).map_err(|e| {
            tracing::warn!(%user, reason = %log_text(&e.to_string()), "login refused locally");
            LoginError::Refused(e.to_string())
        })?;
        let token = self
            .tokens
            .login(&account.username, &credentials.password)
            .await
            .map_err(|e| {
                if let TokenError::WrongPassword(_) = e {
                    tracing::warn!(%user, reason = %log_text(&e.to_string()), "login refused locally");
                } else {
                    tracing::warn!(account = %account.username, reason = %e, "no access token");
                }
                token_error(e)
            })?;
        Ok(Grant { account, token })
    }

    /// A token for an account that logs in without a client password (a
    /// fixed-account SMTP relay): a `password_hash` or app-only account, or
    /// a delegated one already unlocked in this process.
    pub async fn unattended(&self, address: &str) -> Result<Grant, LoginError> {
        let account = self
            .tokens
            .account_config(address)
            .map(Arc::new)
            .ok_or_else(|| {
                LoginError::Unavailable(format!("{address} is not an account of this proxy"))
            })?;
        let token = self.tokens.access_token(address).await.map_err(|e| {
            tracing::warn!(account = %address, reason = %e, "no access token for the fixed account");
            token_error(e)
        })?;
        Ok(Grant { account, token })
    }

    /// The mail server refused `grant`'s token: drop it from that account
    /// only (others that share its mailbox keep theirs), so the next login
    /// refreshes instead of presenting it again.
    pub fn token_refused(&self, grant: &Grant) {
        self.tokens.discard_access_token(grant.address());
    }
}

fn token_error(e: TokenError) -> LoginError {
    match e {
        TokenError::UnknownAccount(_) | TokenError::WrongPassword(_) => {
            LoginError::Refused(e.to_string())
        }
        TokenError::NeedsSignIn(m) => LoginError::SignInNeeded(m),
        TokenError::Transient(m) => {
            LoginError::Unavailable(format!("cannot get a token from the sign-in service: {m}"))
        }
        TokenError::Configuration(m) => {
            LoginError::Unavailable(format!("proxy configuration problem: {m}"))
        }
    }
}
