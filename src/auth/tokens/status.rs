//! What the local page shows of each account: read from its token state
//! (one short lock), and from the disk when nothing is in memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::machine::{TokenHealth, TokenState};
use super::state::AccountTokens;
use super::{TokenManager, blocking};
use crate::auth::vault::Entry;
use crate::config::Flow;

/// Where an account stands, for the local page and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountState {
    /// No usable tokens: someone must sign in.
    NeedsSignIn,
    /// Signed in; the sealed tokens open at the first client login with the
    /// local password chosen at the sign-in.
    Locked,
    /// Signed in (a `password_hash` account); no access token fetched yet.
    Ready,
    /// In use: the access token's life left, if one is cached.
    Active { expires_in: Option<Duration> },
    /// App-only access (client credentials): no sign-in, tokens in memory.
    AppOnly { expires_in: Option<Duration> },
    /// `@domain`: each address signs in on its own.
    CatchAll,
    /// The token file cannot be read (the reason).
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    pub username: String,
    pub flow: Flow,
    pub state: AccountState,
    /// The last token request's failure, with the reason the endpoint gave.
    pub last_error: Option<String>,
    /// While backing off after transient failures: when the next try goes out.
    pub retry_in: Option<Duration>,
}

impl TokenManager {
    /// each of their addresses used in this process), by address.
    pub async fn status(&self) -> Vec<AccountStatus> {
        let mut rows: Vec<AccountStatus> = self
            .accounts
            .catch_alls()
            .iter()
            .map(|a| AccountStatus {
                username: a.username.clone(),
                flow: a.flow,
                state: AccountState::CatchAll,
                last_error: None,
                retry_in: None,
            })
            .collect();
        for account in self.all() {
            rows.push(self.status_of(&account).await);
        }
        rows.sort_by(|a, b| a.username.cmp(&b.username));
        rows
    }

    /// Each account's token health as its state says it (one short lock
    /// per account, no disk): what `notify` turns into events.
    pub fn health(&self) -> Vec<(String, TokenHealth)> {
        let mut rows: Vec<_> = self
            .all()
            .iter()
            .map(|a| (a.config.username.clone(), a.lock().health()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    async fn status_of(&self, account: &Arc<AccountTokens>) -> AccountStatus {
        let username = account.config.username.clone();
        let (last_error, retry_in, expires_in) = {
            let state = account.lock();
            let expires_in = state.access().map(|a| a.left());
            let last_error = state.error().map(|e| match (&*state, expires_in) {
                (TokenState::SignInNeeded { .. }, Some(left)) if !left.is_zero() => format!(
                    "{e}; the current access token works for {} more minutes: sign in again \
                     before then",
                    left.as_secs().div_ceil(60)
                ),
                _ => e.to_string(),
            });
            let retry_in = state
                .retry_at()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .filter(|d| !d.is_zero());
            (last_error, retry_in, expires_in)
        };
        let state = if account.config.flow == Flow::ClientCredentials {
            AccountState::AppOnly { expires_in }
        } else if expires_in.is_some() || account.current_key().is_some() {
            AccountState::Active { expires_in }
        } else {
            let store = self.store.clone();
            let name = username.clone();
            match blocking(move || store.load_entry(&name)).await {
                Ok(Ok(None)) => AccountState::NeedsSignIn,
                Ok(Ok(Some(Entry::Unsealed(t)))) if t.refresh_token.is_none() => {
                    AccountState::NeedsSignIn
                }
                // Stored without a password by an older version: refused at login.
                Ok(Ok(Some(Entry::Unsealed(_)))) if account.sealed => AccountState::NeedsSignIn,
                Ok(Ok(Some(_))) if account.sealed => AccountState::Locked,
                Ok(Ok(Some(_))) => AccountState::Ready,
                Ok(Err(e)) => AccountState::Unreadable(e.to_string()),
                Err(e) => AccountState::Unreadable(e.to_string()),
            }
        };
        AccountStatus {
            username,
            flow: account.config.flow,
            state,
            last_error,
            retry_in,
        }
    }
}
