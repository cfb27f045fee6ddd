//! Access tokens per account: cached in memory, refreshed with the
//! refresh-token grant when less than a margin is left, one refresh in flight
//! per account (the others wait for it and share its outcome), and a rotated
//! refresh token on disk before the access token that came with it is used.
//!
//! Delegated accounts (no `password_hash`) keep their tokens sealed with a
//! key derived from the local password chosen at sign-in
//! ([`crate::auth::signin`]); they are never stored unsealed. The first
//! login of an account in this process runs the KDF (on a blocking thread)
//! and opens the seal; it keeps the key, to re-seal rotated refresh tokens, and
//! a keyed digest of the password, so every later login is one HMAC.
//!
//! The module's parts: `machine` is the token lifecycle of an account as
//! one enum and its one transition function, `state` one account's record
//! (its configuration, unlock and token state), `unlock` the password check
//! that opens sealed tokens, `refresh` the decision at each request for a
//! token (cache, wait, backoff, start a flight), `flight` the flight itself
//! (disk, exchange, outcome) in its own task, `exchange` the token endpoint
//! request and the write of its result, `background` the renewal ahead of
//! expiry, `status` what the page shows, `counts` the refresh outcomes
//! `metrics` serves.

mod background;
mod counts;
mod exchange;
mod flight;
mod graph;
mod machine;
mod refresh;
mod shared;
mod state;
mod status;
#[cfg(test)]
mod tests;
mod unlock;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;

use super::by_address::{ByAddress, Lookup};
use super::http::HttpClient;
use super::password::{KdfParams, PasswordDigest};
use super::vault::{StoreError, TokenStore};
use crate::config::AccountConfig;

pub use super::flows::LIFETIME_WITHOUT_EXPIRY;
pub use background::{BACKGROUND_CHECK_EVERY, BACKGROUND_JITTER, BACKGROUND_LEAD, background_due};
pub use counts::{RefreshFigures, RefreshOutcome};
pub use graph::graph_scopes;
use machine::Event;
pub use machine::TokenHealth;
pub use refresh::{
    BACKOFF_BASE, BACKOFF_JITTER, BACKOFF_MAX, LOGIN_PROBE_EVERY, RETRY_AFTER_MAX, STILL_USABLE,
    backoff_delay,
};
pub use shared::{LEASE_POLL, LEASE_WAIT, REFRESH_LEASE_TTL, SHARED_CHECK_EVERY};
use state::AccountTokens;
pub use status::{AccountState, AccountStatus};

/// What a name is to the proxy before its password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// An account, by the name its failed logins count under: its address,
    /// or a catch-all's name when the catch-all's one `password_hash` is
    /// what a login tries.
    Account(String),
    /// No account: unknown, or a catch-all address without tokens. The
    /// error says which.
    NotAnAccount(TokenError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no account {0} is configured in the proxy")]
    UnknownAccount(String),
    /// No tokens, or the refresh token expired or was revoked.
    #[error("{0}")]
    NeedsSignIn(String),
    /// Network, timeouts, 429, 5xx: keep the tokens, try again later.
    #[error("{0}")]
    Transient(String),
    /// The endpoint refused the app itself (client id, secret, scopes), or
    /// the token store cannot be used.
    #[error("{0}")]
    Configuration(String),
    /// The local password does not open the account's sealed tokens.
    #[error("wrong password for {0}")]
    WrongPassword(String),
}

pub struct TokenManager {
    /// Per account (and catch-all address) state.
    accounts: ByAddress<AccountTokens>,
    http: HttpClient,
    store: Arc<TokenStore>,
    margin: Duration,
    /// Token requests sent (shared with the flights, which send them).
    refreshes: Arc<std::sync::atomic::AtomicU64>,
    kdf: KdfParams,
    kdf_runs: std::sync::atomic::AtomicU64,
    digest: PasswordDigest,
    /// Refreshes whose exchange or write is still running.
    in_flight: Arc<tokio::sync::watch::Sender<usize>>,
    /// Microsoft Graph tokens (`backend = "graph"` listeners).
    graph: graph::GraphTokens,
    /// The shared token store's last failure (`shared.rs`), for the page.
    store_problem: parking_lot::Mutex<Option<String>>,
}

/// Counts a refresh task as in flight until it is dropped.
struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl InFlight {
    fn new(counter: &Arc<tokio::sync::watch::Sender<usize>>) -> InFlight {
        counter.send_modify(|n| *n += 1);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl TokenManager {
    /// Seals with the production KDF parameters ([`KdfParams::CURRENT`]).
    pub fn new(
        accounts: &[AccountConfig],
        http: HttpClient,
        store: Arc<TokenStore>,
        margin: Duration,
    ) -> TokenManager {
        Self::with_kdf(accounts, http, store, margin, KdfParams::CURRENT)
    }

    /// Seals new and re-sealed entries with `kdf` (tests pass cheap ones).
    pub fn with_kdf(
        accounts: &[AccountConfig],
        http: HttpClient,
        store: Arc<TokenStore>,
        margin: Duration,
        kdf: KdfParams,
    ) -> TokenManager {
        TokenManager {
            accounts: ByAddress::new(accounts, AccountTokens::new),
            http,
            store,
            margin,
            refreshes: Default::default(),
            kdf,
            kdf_runs: Default::default(),
            digest: PasswordDigest::new(),
            in_flight: Arc::new(tokio::sync::watch::channel(0).0),
            graph: Default::default(),
            store_problem: Default::default(),
        }
    }

    /// After a reload: keeps `old`'s state (unlock and token state) for
    /// every account whose settings did not change, so clients of
    /// unchanged accounts log in without a KDF run or a token request,
    /// and their Graph tokens with them.
    pub fn carry_over(mut self, old: &TokenManager) -> TokenManager {
        self.digest = old.digest.clone();
        self.accounts.carry_over(&old.accounts, |a| &a.config);
        let accounts = &self.accounts;
        // Carried over: the very same entry in both.
        let kept = |name: &str| match (accounts.get(name), old.accounts.get(name)) {
            (Some(now), Some(before)) => Arc::ptr_eq(&now, &before),
            _ => false,
        };
        self.graph.carry_over(&old.graph, kept);
        self
    }

    /// Waits up to `limit` for refreshes in flight to finish (their rotated
    /// refresh tokens written). `false`: some were still running.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let mut in_flight = self.in_flight.subscribe();
        tokio::time::timeout(limit, in_flight.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// How many times this process ran the password KDF (for the benchmark and tests).
    pub fn kdf_runs(&self) -> u64 {
        self.kdf_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The mail server refused the access token of `username` (revoked, or
    /// its sessions invalidated): drop it, so the next login refreshes
    /// instead of presenting it again. The refresh token and the unlock are
    /// kept, and other accounts (even ones sharing its mailbox) are untouched.
    pub fn discard_access_token(&self, username: &str) {
        if let Some(account) = self.accounts.exact(username) {
            let mut state = account.lock();
            account.step(&mut state, Event::Discard);
        }
    }

    /// The `user=` XOAUTH2 sends for `username` (its `mailbox`, if set).
    pub fn upstream_user(&self, username: &str) -> String {
        self.account(username)
            .map(|a| a.config.upstream_user().to_owned())
            .unwrap_or_else(|_| username.to_owned())
    }

    /// Moves the cached access token's expiry `by` earlier: to the proxy,
    /// what a jump of the wall clock (a laptop waking from sleep) looks like.
    /// For tests.
    #[doc(hidden)]
    pub fn age_access_token(&self, username: &str, by: Duration) {
        if let Ok(account) = self.account(username)
            && let Some(access) = account.lock().access_mut()
        {
            access.expires_at = access.expires_at.checked_sub(by).unwrap_or(UNIX_EPOCH);
            access.cached_at = access.cached_at.checked_sub(by).unwrap_or(access.cached_at);
        }
    }

    /// The entry of `username`: its own account, or a catch-all address
    /// that earned one (see [`TokenManager::standing`]).
    fn account(&self, username: &str) -> Result<Arc<AccountTokens>, TokenError> {
        match self.accounts.lookup(username) {
            Lookup::Found(account) => Ok(account),
            Lookup::Candidate(_) => Err(not_signed_in(&username.to_lowercase())),
            Lookup::Unknown => Err(TokenError::UnknownAccount(username.to_owned())),
        }
    }

    /// Where `username` stands before any password is checked, for the
    /// throttle: an account, or a name that is none. A catch-all address
    /// earns its entry here when tokens for it are on disk (written by
    /// `authorize` or a sign-in, perhaps by another process); any other
    /// address under a catch-all gets none, so probing addresses takes no
    /// memory and crowds out no one.
    pub async fn standing(&self, username: &str) -> Standing {
        let catch_all = match self.accounts.lookup(username) {
            Lookup::Found(account) => {
                return Standing::Account(account.config.username.to_lowercase());
            }
            Lookup::Unknown => {
                return Standing::NotAnAccount(TokenError::UnknownAccount(username.to_owned()));
            }
            Lookup::Candidate(catch_all) => catch_all,
        };
        if catch_all.password_hash.is_some() {
            // One password for every address: a guess tries the catch-all's.
            return Standing::Account(catch_all.username.to_lowercase());
        }
        let address = username.to_lowercase();
        let store = self.store.clone();
        let name = address.clone();
        match blocking(move || store.load_entry(&name)).await {
            Ok(Ok(None)) => Standing::NotAnAccount(not_signed_in(&address)),
            // Tokens, or a file that cannot be read: the login says which.
            Ok(Ok(Some(_)) | Err(_)) => {
                self.accounts.admit(&address, AccountTokens::new);
                Standing::Account(address)
            }
            Err(e) => Standing::NotAnAccount(e),
        }
    }

    /// Catch-all addresses with an entry (for tests: probing makes none).
    pub fn catch_all_addresses(&self) -> usize {
        self.accounts.known_addresses()
    }

    /// The settings of `username` (an address under a catch-all gets the
    /// catch-all's, with its own address). A fixed account named in the
    /// configuration under a catch-all with a `password_hash` gets its entry
    /// here: the administrator named it, not a client.
    pub fn account_config(&self, username: &str) -> Option<AccountConfig> {
        match self.accounts.lookup(username) {
            Lookup::Found(account) => Some(account.config.clone()),
            Lookup::Candidate(catch_all) if catch_all.password_hash.is_some() => self
                .accounts
                .admit(username, AccountTokens::new)
                .map(|a| a.config.clone()),
            Lookup::Candidate(catch_all) => Some(catch_all.for_address(&username.to_lowercase())),
            Lookup::Unknown => None,
        }
    }

    /// A sign-in outside the login path (the local page) stored new tokens
    /// for `username`, sealed under the password chosen with it: forget the
    /// old unlock and token state, so the next client login opens the new
    /// entry with that password. A flight in progress ends first (its write
    /// finds the entry replaced and leaves it). A catch-all address earns
    /// its entry by this.
    pub async fn signed_in(&self, username: &str) {
        if let Some(account) = self.accounts.admit(username, AccountTokens::new) {
            account
                .when_idle(|state| {
                    account.forget_unlock();
                    account.step(state, Event::Relock);
                })
                .await;
        }
    }

    /// The KDF parameters new seals get (for sign-ins that seal new tokens).
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    /// The token store, for sign-ins that write new tokens.
    pub fn store(&self) -> &Arc<TokenStore> {
        &self.store
    }

    /// The HTTP client for token endpoints (timeouts and roots set).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Every account with an entry: configured ones and catch-all addresses seen.
    fn all(&self) -> Vec<Arc<AccountTokens>> {
        self.accounts.all()
    }

    /// A client login: the password must match `password_hash`, or open
    /// the sealed tokens; then a
    /// valid access token, refreshed when needed.
    pub async fn login(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<SecretString, TokenError> {
        let (account, earns) = match self.accounts.lookup(username) {
            Lookup::Found(account) => (account, false),
            // Under a catch-all with a `password_hash`, the right password
            // earns the address its entry; a wrong one leaves nothing behind.
            Lookup::Candidate(catch_all) if catch_all.password_hash.is_some() => (
                AccountTokens::new(catch_all.for_address(&username.to_lowercase())),
                true,
            ),
            Lookup::Candidate(_) => return Err(not_signed_in(&username.to_lowercase())),
            Lookup::Unknown => return Err(TokenError::UnknownAccount(username.to_owned())),
        };
        let key = self.unlock(&account, password).await?;
        let account = match earns {
            true => {
                let made = account.clone();
                self.accounts
                    .admit(username, move |_| made)
                    .unwrap_or(account)
            }
            false => account,
        };
        self.token(&account, key).await
    }

    /// A valid access token for `username` without a password: for a
    /// delegated account only once a client login unlocked it in this process.
    pub async fn access_token(&self, username: &str) -> Result<SecretString, TokenError> {
        if self.account(username).is_err() {
            // A fixed account under a catch-all with a `password_hash`.
            self.account_config(username);
        }
        let account = self.account(username)?;
        let key = match (account.sealed, account.current_key()) {
            (false, _) => None,
            (true, Some(key)) => Some(key),
            (true, None) => {
                return Err(TokenError::NeedsSignIn(format!(
                    "the tokens of {username} are sealed; they open at the next login with its password"
                )));
            }
        };
        self.token(&account, key).await
    }
}

/// Runs file and KDF work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TokenError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| TokenError::Transient(format!("token store task failed: {e}")))
}

fn not_signed_in(username: &str) -> TokenError {
    TokenError::NeedsSignIn(format!(
        "{username} has not been signed in yet: run `xoauth2-proxy authorize {username}`"
    ))
}

fn replaced(username: &str) -> TokenError {
    TokenError::NeedsSignIn(format!(
        "the stored tokens of {username} were replaced or removed since the last login; log in again"
    ))
}

/// A token file that cannot be used: a damaged one needs a new sign-in, the
/// others (permissions, a newer format) are the installation's to fix.
fn store_error(username: &str, e: StoreError) -> TokenError {
    match e {
        StoreError::Corrupt { .. } => TokenError::NeedsSignIn(format!(
            "{e}: run `xoauth2-proxy authorize {username}` to sign in again"
        )),
        // The shared store is down: the tokens in hand serve, the refresh
        // waits (a rotated token is never redeemed without a place to go).
        e @ (StoreError::Unreachable(_) | StoreError::LockLost) => {
            TokenError::Transient(e.to_string())
        }
        e => TokenError::Configuration(format!("cannot read the token store: {e}")),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
