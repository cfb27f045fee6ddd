//! Access tokens per account: cached in memory, refreshed with the
//! refresh-token grant when less than a margin is left, one refresh in flight
//! per account (the others wait for it and share its outcome), and a rotated
//! refresh token on disk before the access token that came with it is used.
//!
//! Delegated accounts (no `password_hash`) keep their tokens sealed with a
//! key derived from the local password ([`TokenManager::login`]). The first
//! login of an account in this process runs the KDF (on a blocking thread)
//! and opens the seal, or binds the password when the entry is still pending
//! from `authorize`; it keeps the key, to re-seal rotated refresh tokens, and
//! a keyed digest of the password, so every later login is one HMAC.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::BasicErrorResponseType;
use oauth2::{RefreshToken, RequestTokenError, TokenResponse};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::by_address::ByAddress;
use super::http::{HttpClient, HttpError};
use super::password::{KdfParams, PasswordDigest, SealKey, Tag, random_salt};
use super::provider::{Endpoints, endpoints};
use super::vault::{Entry, OpenError, StoreError, StoredTokens, TokenStore};
use crate::config::{AccountConfig, Flow};

/// Assumed lifetime of an access token whose response had no `expires_in`.
/// Short, so a wrong guess costs an early refresh rather than a failed login.
pub const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(10 * 60);
/// How often the background refresher looks at the wall clock, at most. A
/// monotonic sleep does not count the time a machine was suspended, so the
/// sleep is short and the expiry it compares with is wall-clock time: after
/// a laptop wakes, the first check comes within this and refreshes what
/// expired meanwhile, before a client logs in.
pub const BACKGROUND_CHECK_EVERY: Duration = Duration::from_secs(15);
/// The background refresher renews an unlocked account's access token when
/// less than the refresh margin plus this fraction of it is left (ahead of
/// the on-demand refresh at the margin, so a login rarely waits for one)...
pub const BACKGROUND_LEAD: f64 = 0.5;
/// ...plus a random part of up to this fraction of the margin, so accounts
/// signed in together do not refresh together.
pub const BACKGROUND_JITTER: f64 = 0.25;

/// Whether the background refresher should renew a token with `left` of
/// its life (wall clock), given the refresh margin and `jitter` in `[0, 1]`.
pub fn background_due(left: Duration, margin: Duration, jitter: f64) -> bool {
    left <= margin + margin.mul_f64(BACKGROUND_LEAD + BACKGROUND_JITTER * jitter.clamp(0.0, 1.0))
}

/// The pause between background checks: a quarter of the margin, between
/// 250 ms and [`BACKGROUND_CHECK_EVERY`].
fn background_interval(margin: Duration) -> Duration {
    (margin / 4).clamp(Duration::from_millis(250), BACKGROUND_CHECK_EVERY)
}

/// The wait after the first transient failure (network, timeout, 429, 5xx)
/// of an account's refresh; it doubles with each failure in a row. Logins
/// during the wait are answered locally instead of each hammering an
/// endpoint that is down.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// The longest wait between two tries, however many failed in a row.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Up to this fraction of the wait is added at random, so accounts (and
/// proxies) that failed together do not all come back at the same moment.
/// Jitter only lengthens: a `Retry-After` is never undercut.
pub const BACKOFF_JITTER: f64 = 0.2;
/// A `Retry-After` longer than this is capped: a bogus header must not keep
/// an account from its mail for days.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60 * 60);
/// While the endpoint cannot be reached, an access token with at least this
/// much life left is still handed out (it is past the refresh margin, not
/// expired).
pub const STILL_USABLE: Duration = Duration::from_secs(30);

/// The wait before the next refresh after `failures` transient failures in a
/// row (1 for the first), given the endpoint's `Retry-After` and `jitter` in
/// `[0, 1]`: `BACKOFF_BASE · 2^(failures−1)`, at most [`BACKOFF_MAX`], at
/// least the `Retry-After` (capped at [`RETRY_AFTER_MAX`]), then lengthened
/// by up to [`BACKOFF_JITTER`].
pub fn backoff_delay(failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let exponential = BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX);
    let asked = retry_after.map_or(Duration::ZERO, |r| r.min(RETRY_AFTER_MAX));
    let wait = exponential.max(asked);
    wait + wait.mul_f64(BACKOFF_JITTER * jitter.clamp(0.0, 1.0))
}

/// A uniform draw from `[0, 1]` for the jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    super::password::fill_random(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// Where an account stands, for the local page and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountState {
    /// No usable tokens: someone must sign in.
    NeedsSignIn,
    /// Signed in; the sealed tokens open at the first client login with the
    /// local password (which that login binds, after a new sign-in).
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

struct Access {
    token: SecretString,
    expires_at: SystemTime,
    /// When it was cached (monotonic), so a token whose whole life is inside
    /// the margin is not renewed in the background at every check.
    cached_at: Instant,
}

#[derive(Default)]
struct RefreshState {
    /// Loaded from disk on first use; `None` after loading means no sign-in yet.
    refresh_token: Option<SecretString>,
    loaded: bool,
    /// The outcome of the last refresh, if it failed: callers that were
    /// waiting for that refresh share it.
    last_failure: Option<TokenError>,
    /// Transient failures in a row, and when the next try may go out.
    transient_failures: u32,
    retry_at: Option<Instant>,
}

/// A delegated account whose password was verified in this process.
struct Unlocked {
    tag: Tag,
    key: Arc<SealKey>,
}

struct AccountTokens {
    config: AccountConfig,
    endpoints: Endpoints,
    /// Tokens sealed with the local password (no `password_hash` configured).
    sealed: bool,
    cached: RwLock<Option<Access>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    unlocked: RwLock<Option<Unlocked>>,
    /// One KDF run per account at a time: the others wait and then take the fast path.
    unlocking: tokio::sync::Mutex<()>,
    /// Refreshes finished (either way), so a caller that waited for one
    /// can tell it happened meanwhile and share its outcome.
    refreshes_done: std::sync::atomic::AtomicU64,
}

impl AccountTokens {
    fn new(config: AccountConfig) -> Arc<AccountTokens> {
        Arc::new(AccountTokens {
            endpoints: endpoints(&config),
            sealed: config.password_hash.is_none(),
            config,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            unlocked: RwLock::new(None),
            unlocking: tokio::sync::Mutex::new(()),
            refreshes_done: Default::default(),
        })
    }

    /// The fast path: `Some(key)` for the password this account was unlocked
    /// with, `WrongPassword` for another, `None` while still locked.
    fn check_unlocked(
        &self,
        digest: &PasswordDigest,
        password: &SecretString,
    ) -> Result<Option<Arc<SealKey>>, TokenError> {
        let unlocked = self.unlocked.read().unwrap_or_else(|p| p.into_inner());
        match unlocked.as_ref() {
            None => Ok(None),
            Some(u) if digest.matches(password.expose_secret().as_bytes(), &u.tag) => {
                Ok(Some(u.key.clone()))
            }
            Some(_) => Err(TokenError::WrongPassword(self.config.username.clone())),
        }
    }

    fn current_key(&self) -> Option<Arc<SealKey>> {
        let unlocked = self.unlocked.read().unwrap_or_else(|p| p.into_inner());
        unlocked.as_ref().map(|u| u.key.clone())
    }

    fn set_unlocked(&self, tag: Tag, key: Arc<SealKey>) {
        *self.unlocked.write().unwrap_or_else(|p| p.into_inner()) = Some(Unlocked { tag, key });
    }

    /// Forgets the password and the cached access token: the next login reads
    /// the disk again (after `forget`, a new sign-in, or a revoked grant).
    fn relock(&self) {
        *self.unlocked.write().unwrap_or_else(|p| p.into_inner()) = None;
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn fresh(&self, margin: Duration) -> Option<SecretString> {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        let access = cached.as_ref()?;
        let left = access.expires_at.duration_since(SystemTime::now()).ok()?;
        (left > margin).then(|| access.token.clone())
    }

    fn set_cached(&self, token: SecretString, expires_at: SystemTime) {
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(Access {
            token,
            expires_at,
            cached_at: Instant::now(),
        });
    }

    /// For the background refresher: the wall-clock life left of the cached
    /// access token and how long ago it was cached; `None` when nothing is
    /// cached (never used in this process, locked again, or given up on).
    fn cached_life(&self) -> Option<(Duration, Duration)> {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        let access = cached.as_ref()?;
        let left = access
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some((left, access.cached_at.elapsed()))
    }
}

pub struct TokenManager {
    /// Per account (and catch-all address) state.
    accounts: ByAddress<AccountTokens>,
    http: HttpClient,
    store: Arc<TokenStore>,
    margin: Duration,
    refreshes: std::sync::atomic::AtomicU64,
    kdf: KdfParams,
    kdf_runs: std::sync::atomic::AtomicU64,
    digest: PasswordDigest,
    /// Refreshes whose exchange or write is still running.
    in_flight: Arc<tokio::sync::watch::Sender<usize>>,
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

/// The outcome of one refresh-token exchange, already on disk.
struct Refreshed {
    access: SecretString,
    lifetime: Duration,
    refresh_token: SecretString,
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
        }
    }

    /// After a reload: keeps `old`'s state (unlock, cached token, refresh
    /// state) for every account whose settings did not change, so clients
    /// of unchanged accounts log in without a KDF run or a token request.
    pub fn carry_over(mut self, old: &TokenManager) -> TokenManager {
        self.digest = old.digest.clone();
        self.accounts.carry_over(&old.accounts, |a| &a.config);
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

    /// Renews the access tokens of accounts in use before they expire, until
    /// `shutdown` turns true (a refresh already sent finishes in its own
    /// task; `wait_idle` waits for it). In use: a delegated account unlocked
    /// by a client login in this process, or a `password_hash` account that
    /// has served a login. Expiry is wall-clock time, so after a suspend the
    /// first check refreshes what expired meanwhile.
    pub async fn keep_fresh(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = background_interval(self.margin);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                _ = self.refresh_due(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One background pass over the accounts.
    async fn refresh_due(&self, interval: Duration) {
        for account in self.all() {
            let Some((left, age)) = account.cached_life() else {
                continue;
            };
            // A token whose whole life is inside the window would otherwise
            // be renewed at every check.
            if age < interval * 4 || !background_due(left, self.margin, jitter()) {
                continue;
            }
            let key = match (account.sealed, account.current_key()) {
                (false, _) => None,
                (true, Some(key)) => Some(key),
                (true, None) => continue,
            };
            let username = &account.config.username;
            tracing::debug!(account = %username, left_secs = left.as_secs(), "background refresh");
            match self
                .token_within(&account, key, left + Duration::from_secs(1))
                .await
            {
                Ok(_) | Err(TokenError::Transient(_)) => {}
                Err(e) => {
                    // Needs a sign-in or a configuration change: stop trying
                    // until a client logs in again.
                    tracing::warn!(account = %username, error = %e, "background refresh failed");
                    *account.cached.write().unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
        }
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
            *account.cached.write().unwrap_or_else(|p| p.into_inner()) = None;
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
            && let Some(access) = account
                .cached
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
        {
            access.expires_at = access.expires_at.checked_sub(by).unwrap_or(UNIX_EPOCH);
            access.cached_at = access.cached_at.checked_sub(by).unwrap_or(access.cached_at);
        }
    }

    /// How many refresh requests this process has sent (for status and tests).
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The account of `username`: its own, or the entry of the address under
    /// its domain's catch-all (made on first use).
    fn account(&self, username: &str) -> Result<Arc<AccountTokens>, TokenError> {
        self.accounts
            .get(username, AccountTokens::new)
            .ok_or_else(|| TokenError::UnknownAccount(username.to_owned()))
    }

    /// What the local page shows: every account (catch-alls as one row, plus
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

    /// The state of one account (an address under a catch-all included).
    pub async fn account_status(&self, username: &str) -> Result<AccountStatus, TokenError> {
        let account = self.account(username)?;
        Ok(self.status_of(&account).await)
    }

    async fn status_of(&self, account: &Arc<AccountTokens>) -> AccountStatus {
        let username = account.config.username.clone();
        // A refresh in flight holds the lock: show no error rather than wait for it.
        let (last_error, retry_in) = match account.refresh.try_lock() {
            Ok(state) => (
                state.last_failure.as_ref().map(|e| e.to_string()),
                state
                    .retry_at
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .filter(|d| !d.is_zero()),
            ),
            Err(_) => (None, None),
        };
        let expires_in = account.cached_life().map(|(left, _)| left);
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

    /// The settings of `username` (an address under a catch-all gets the
    /// catch-all's, with its own address).
    pub fn account_config(&self, username: &str) -> Option<AccountConfig> {
        self.account(username).ok().map(|a| a.config.clone())
    }

    /// A sign-in outside the login path (the local page) stored new tokens
    /// for `username`: forget the old unlock, cached token and refresh state,
    /// so the next client login binds its password to the new tokens.
    pub async fn signed_in(&self, username: &str) {
        if let Ok(account) = self.account(username) {
            let mut state = account.refresh.lock().await;
            account.relock();
            *state = RefreshState::default();
        }
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

    /// A client login: for a delegated account the password must open (or,
    /// on the first login after a sign-in, binds) the sealed tokens; then a
    /// valid access token, refreshed when needed. Accounts with
    /// `password_hash` are checked by `Accounts` before this is called.
    pub async fn login(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<SecretString, TokenError> {
        let account = self.account(username)?;
        let key = if account.sealed {
            Some(self.unlock(&account, password).await?)
        } else {
            None
        };
        self.token(&account, key).await
    }

    /// A valid access token for `username` without a password: for a
    /// delegated account only once a client login unlocked it in this process.
    pub async fn access_token(&self, username: &str) -> Result<SecretString, TokenError> {
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

    /// Checks `password` for a delegated account and returns its sealing key.
    async fn unlock(
        &self,
        account: &AccountTokens,
        password: &SecretString,
    ) -> Result<Arc<SealKey>, TokenError> {
        if let Some(key) = account.check_unlocked(&self.digest, password)? {
            return Ok(key);
        }
        let _one_at_a_time = account.unlocking.lock().await;
        if let Some(key) = account.check_unlocked(&self.digest, password)? {
            return Ok(key);
        }
        let username = account.config.username.clone();
        let store = self.store.clone();
        let name = username.clone();
        let entry = blocking(move || store.load_entry(&name))
            .await?
            .map_err(|e| store_error(&username, e))?;
        let key = match entry {
            None => return Err(not_signed_in(&username)),
            Some(Entry::Unsealed(tokens)) => {
                // Pending since `authorize`: this login binds its password.
                let key = self.derive(password, self.kdf, random_salt()).await?;
                self.save_sealed(&username, tokens, key.clone())
                    .await
                    .map_err(|e| {
                        TokenError::Configuration(format!(
                            "cannot seal the tokens of {username}: {e}"
                        ))
                    })?;
                tracing::info!(account = %username, "local password bound; tokens sealed");
                key
            }
            Some(Entry::Sealed(sealed)) => {
                let key = self
                    .derive(password, sealed.params(), sealed.salt())
                    .await?;
                let tokens = match sealed.open(&key) {
                    Ok(tokens) => tokens,
                    Err(OpenError::WrongPassword) => {
                        return Err(TokenError::WrongPassword(username));
                    }
                    Err(OpenError::Damaged(e)) => return Err(store_error(&username, e)),
                };
                if sealed.params() == self.kdf {
                    key
                } else {
                    self.reseal(&username, password, tokens, key).await?
                }
            }
        };
        account.set_unlocked(
            self.digest.tag(password.expose_secret().as_bytes()),
            key.clone(),
        );
        Ok(key)
    }

    /// Seals `tokens` again under the current KDF parameters and a new salt.
    /// If the disk refuses, the entry stays as it was and `old` keeps working.
    async fn reseal(
        &self,
        username: &str,
        password: &SecretString,
        tokens: StoredTokens,
        old: Arc<SealKey>,
    ) -> Result<Arc<SealKey>, TokenError> {
        let key = self.derive(password, self.kdf, random_salt()).await?;
        match self.save_sealed(username, tokens, key.clone()).await {
            Ok(()) => {
                tracing::info!(account = %username, from = ?old.params(), to = ?self.kdf,
                    "tokens re-sealed with the current key derivation parameters");
                Ok(key)
            }
            Err(e) => {
                tracing::warn!(account = %username, error = %e,
                    "cannot re-seal the tokens with the current parameters; keeping the old seal");
                Ok(old)
            }
        }
    }

    async fn derive(
        &self,
        password: &SecretString,
        params: KdfParams,
        salt: [u8; super::password::SALT_LEN],
    ) -> Result<Arc<SealKey>, TokenError> {
        self.kdf_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let password = zeroize::Zeroizing::new(password.expose_secret().as_bytes().to_vec());
        blocking(move || SealKey::derive(&password, params, salt))
            .await?
            .map(Arc::new)
            .map_err(|e| TokenError::Configuration(e.to_string()))
    }

    async fn token(
        &self,
        account: &Arc<AccountTokens>,
        key: Option<Arc<SealKey>>,
    ) -> Result<SecretString, TokenError> {
        self.token_within(account, key, self.margin).await
    }

    /// A cached token with more than `margin` left, or a refresh.
    async fn token_within(
        &self,
        account: &Arc<AccountTokens>,
        key: Option<Arc<SealKey>>,
        margin: Duration,
    ) -> Result<SecretString, TokenError> {
        if let Some(token) = account.fresh(margin) {
            return Ok(token);
        }
        let seen = account.refreshes_done.load(Ordering::Acquire);
        let mut state = account.refresh.lock().await;
        // Whoever held the lock before us may have refreshed or failed already.
        if let Some(token) = account.fresh(margin) {
            return Ok(token);
        }
        if let Some(err) = &state.last_failure
            && account.refreshes_done.load(Ordering::Acquire) != seen
        {
            return still_usable(account, Err(err.clone()));
        }
        if let Some(retry_at) = state.retry_at
            && Instant::now() < retry_at
        {
            let secs = retry_at.saturating_duration_since(Instant::now()).as_secs() + 1;
            let why = match &state.last_failure {
                Some(TokenError::Transient(m)) => m.clone(),
                _ => "the token endpoint is not available".to_owned(),
            };
            return still_usable(
                account,
                Err(TokenError::Transient(format!(
                    "{why} (the proxy tries again in {secs} s)"
                ))),
            );
        }
        let result = self.refresh_locked(account, &mut state, key, margin).await;
        match &result {
            Ok(_) => state.last_failure = None,
            Err(e) => state.last_failure = Some(e.clone()),
        }
        account.refreshes_done.fetch_add(1, Ordering::Release);
        still_usable(account, result)
    }

    /// How long until the next refresh of `username` may be tried, while it
    /// backs off after transient failures (for status and tests).
    pub async fn retry_in(&self, username: &str) -> Option<Duration> {
        let account = self.account(username).ok()?;
        let state = account.refresh.lock().await;
        let left = state.retry_at?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    async fn refresh_locked(
        &self,
        account: &Arc<AccountTokens>,
        state: &mut RefreshState,
        key: Option<Arc<SealKey>>,
        margin: Duration,
    ) -> Result<SecretString, TokenError> {
        let username = account.config.username.clone();
        if account.config.flow == Flow::ClientCredentials {
            return self.app_only_locked(account, state).await;
        }
        // Until a sign-in exists, look at the disk each time: `authorize` may
        // have run in another process since.
        if !state.loaded || state.refresh_token.is_none() {
            let stored = match self.load(&username, key.clone()).await {
                Err(e) if account.sealed => {
                    // Removed (`forget`) or replaced (a new sign-in) since the
                    // unlock: the next login starts from the disk again.
                    account.relock();
                    *state = RefreshState::default();
                    return Err(e);
                }
                other => other?,
            };
            state.loaded = true;
            if let Some(stored) = stored {
                state.refresh_token = stored.refresh_token;
                if let (Some(token), Some(exp)) = (stored.access_token, stored.expires_at) {
                    account.set_cached(token, UNIX_EPOCH + Duration::from_secs(exp));
                    if let Some(token) = account.fresh(margin) {
                        return Ok(token);
                    }
                }
            }
        }
        let Some(refresh_token) = state.refresh_token.clone() else {
            return Err(not_signed_in(&username));
        };
        if let Some(key) = &key
            && let Err(e) = self.still_ours(&username, key.clone()).await
        {
            account.relock();
            *state = RefreshState::default();
            return Err(e);
        }
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(account = %username, "refreshing access token");
        // From the request on, the endpoint may rotate the refresh token: the
        // exchange and the write of its result run in their own task, so a
        // session dropped meanwhile (a client gone, a shutdown closing it)
        // cannot cut them, and a shutdown waits for them (`wait_idle`). If
        // this caller is dropped, `loaded = false` makes the next one read
        // the new refresh token from disk.
        state.loaded = false;
        let job = tokio::spawn(exchange_and_save(
            account.clone(),
            self.http.clone(),
            self.store.clone(),
            refresh_token,
            key,
            InFlight::new(&self.in_flight),
        ));
        let outcome = job.await.map_err(|e| Failure {
            error: TokenError::Transient(format!("token refresh task failed: {e}")),
            retry_after: None,
        });
        state.loaded = true;
        let refreshed = match outcome.and_then(|r| r) {
            Ok(r) => r,
            Err(Failure { error, retry_after }) => {
                if let TokenError::Transient(_) = error {
                    state.transient_failures = state.transient_failures.saturating_add(1);
                    let wait = backoff_delay(state.transient_failures, retry_after, jitter());
                    state.retry_at = Some(Instant::now() + wait);
                    tracing::warn!(account = %username, error = %error,
                        failures_in_a_row = state.transient_failures, retry_in_secs = wait.as_secs(),
                        "token refresh failed; the tokens are kept and the refresh is tried again later");
                    return Err(error);
                }
                if let TokenError::NeedsSignIn(_) = error {
                    // The refresh token is dead; forget it so a new sign-in on disk is picked up
                    // (and, for a sealed account, bound by the next login).
                    state.refresh_token = None;
                    if account.sealed {
                        account.relock();
                    }
                }
                tracing::warn!(account = %username, error = %error, "token refresh failed");
                return Err(error);
            }
        };
        state.refresh_token = Some(refreshed.refresh_token);
        state.transient_failures = 0;
        state.retry_at = None;
        tracing::info!(account = %username, expires_in_secs = refreshed.lifetime.as_secs(), "access token refreshed");
        Ok(refreshed.access)
    }

    /// An app-only account (client credentials): a new access token from the
    /// app's own credential, kept in memory only; failures back off like
    /// refreshes.
    async fn app_only_locked(
        &self,
        account: &Arc<AccountTokens>,
        state: &mut RefreshState,
    ) -> Result<SecretString, TokenError> {
        let username = &account.config.username;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(account = %username, "requesting an app-only access token");
        let result = super::flows::client_credentials(&account.config, &self.http)
            .await
            .map_err(|e| classify(username, e));
        match result {
            Ok(response) => {
                let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
                let access = SecretString::from(response.access_token().secret().to_owned());
                account.set_cached(access.clone(), SystemTime::now() + lifetime);
                state.transient_failures = 0;
                state.retry_at = None;
                tracing::info!(account = %username, expires_in_secs = lifetime.as_secs(), "app-only access token issued");
                Ok(access)
            }
            Err(Failure { error, retry_after }) => {
                if let TokenError::Transient(_) = error {
                    state.transient_failures = state.transient_failures.saturating_add(1);
                    let wait = backoff_delay(state.transient_failures, retry_after, jitter());
                    state.retry_at = Some(Instant::now() + wait);
                }
                // Not a sign-in for a person: the app's credential or its
                // permissions are what an admin has to fix.
                let error = match error {
                    TokenError::NeedsSignIn(m) => TokenError::Configuration(m),
                    other => other,
                };
                tracing::warn!(account = %username, error = %error, "app-only token request failed");
                Err(error)
            }
        }
    }

    /// The account's stored tokens: unsealed ones as they are, sealed ones
    /// opened with `key`, which must be the entry's (not replaced since).
    async fn load(
        &self,
        username: &str,
        key: Option<Arc<SealKey>>,
    ) -> Result<Option<StoredTokens>, TokenError> {
        let store = self.store.clone();
        let name = username.to_owned();
        let entry = blocking(move || store.load_entry(&name))
            .await?
            .map_err(|e| store_error(username, e))?;
        match (entry, key) {
            (None, _) => Ok(None),
            (Some(Entry::Unsealed(tokens)), None) => Ok(Some(tokens)),
            (Some(Entry::Sealed(sealed)), Some(key)) => match sealed.open(&key) {
                Ok(tokens) => Ok(Some(tokens)),
                Err(OpenError::WrongPassword) => Err(replaced(username)),
                Err(OpenError::Damaged(e)) => Err(store_error(username, e)),
            },
            (Some(Entry::Unsealed(_)), Some(_)) => Err(replaced(username)),
            (Some(Entry::Sealed(_)), None) => Err(TokenError::Configuration(format!(
                "the tokens of {username} are sealed with a local password, but the account has \
                 password_hash: run `xoauth2-proxy forget {username}` and sign in again"
            ))),
        }
    }

    /// Whether the sealed entry on disk is still the one `key` opens: a
    /// `forget` or a new sign-in while the proxy runs must not be undone by
    /// the next refresh writing the old tokens back.
    async fn still_ours(&self, username: &str, key: Arc<SealKey>) -> Result<(), TokenError> {
        let store = self.store.clone();
        let name = username.to_owned();
        let entry = blocking(move || store.load_entry(&name))
            .await?
            .map_err(|e| store_error(username, e))?;
        match entry {
            Some(Entry::Sealed(sealed)) if sealed.key_matches(&key) => Ok(()),
            None => Err(not_signed_in(username)),
            Some(_) => Err(replaced(username)),
        }
    }

    async fn save_sealed(
        &self,
        username: &str,
        tokens: StoredTokens,
        key: Arc<SealKey>,
    ) -> Result<(), String> {
        save_to(self.store.clone(), username, tokens, Some(key)).await
    }
}

/// One refresh-token exchange and the write of what it returned: the new
/// refresh token is on disk before the access token is handed out or cached.
async fn exchange_and_save(
    account: Arc<AccountTokens>,
    http: HttpClient,
    store: Arc<TokenStore>,
    refresh_token: SecretString,
    key: Option<Arc<SealKey>>,
    _in_flight: InFlight,
) -> Result<Refreshed, Failure> {
    let username = account.config.username.clone();
    let response = exchange_refresh(&account, &http, &refresh_token).await?;
    let access = SecretString::from(response.access_token().secret().to_owned());
    let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
    let expires_at = SystemTime::now() + lifetime;
    let new_refresh = response
        .refresh_token()
        .map(|r| SecretString::from(r.secret().to_owned()))
        .unwrap_or(refresh_token);
    let stored = StoredTokens {
        refresh_token: Some(new_refresh.clone()),
        access_token: Some(access.clone()),
        expires_at: Some(unix_secs(expires_at)),
    };
    // If the disk refuses, keep the refresh token in memory so it is not
    // lost while this process runs, and say so loudly.
    if let Err(e) = save_to(store, &username, stored, key).await {
        tracing::error!(account = %username, error = %e, "cannot save the rotated refresh token; it is kept in memory until the next successful write");
    }
    account.set_cached(access.clone(), expires_at);
    Ok(Refreshed {
        access,
        lifetime,
        refresh_token: new_refresh,
    })
}

/// Writes `tokens` sealed with `key`, or unsealed without one.
async fn save_to(
    store: Arc<TokenStore>,
    username: &str,
    tokens: StoredTokens,
    key: Option<Arc<SealKey>>,
) -> Result<(), String> {
    let name = username.to_owned();
    tokio::task::spawn_blocking(move || match key {
        Some(key) => store.save_sealed(&name, &tokens, &key),
        None => store.save(&name, &tokens),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

async fn exchange_refresh(
    account: &AccountTokens,
    http: &HttpClient,
    refresh_token: &SecretString,
) -> Result<oauth2::basic::BasicTokenResponse, Failure> {
    let config_failure = |e: super::flows::FlowError| Failure {
        error: TokenError::Configuration(e.to_string()),
        retry_after: None,
    };
    let client = super::flows::token_client(&account.config).map_err(config_failure)?;
    let auth = super::flows::client_auth_params(&account.config).map_err(config_failure)?;
    let refresh = RefreshToken::new(refresh_token.expose_secret().to_owned());
    let client_http = http.clone();
    let http = move |req| {
        let client_http = client_http.clone();
        async move { client_http.send(req).await }
    };
    let mut request = client.exchange_refresh_token(&refresh);
    for scope in &account.endpoints.scopes {
        request = request.add_scope(oauth2::Scope::new(scope.clone()));
    }
    for (name, value) in &auth {
        request = request.add_extra_param(*name, value.expose_secret().to_owned());
    }
    request
        .request_async(&http)
        .await
        .map_err(|e| classify(&account.config.username, e))
}

struct Failure {
    error: TokenError,
    retry_after: Option<Duration>,
}

/// A transient failure does not stop a login while the cached access token
/// still has [`STILL_USABLE`] left (it is only inside the refresh margin).
fn still_usable(
    account: &AccountTokens,
    result: Result<SecretString, TokenError>,
) -> Result<SecretString, TokenError> {
    match result {
        Err(TokenError::Transient(m)) => {
            account.fresh(STILL_USABLE).ok_or(TokenError::Transient(m))
        }
        other => other,
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
        e => TokenError::Configuration(format!("cannot read the token store: {e}")),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sorts a failed token request into what the caller must do about it.
/// Branches on the OAuth `error` code, never on AADSTS numbers (they change).
fn classify(
    username: &str,
    e: RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>,
) -> Failure {
    let sign_in = |why: &str| {
        TokenError::NeedsSignIn(format!(
            "the sign-in of {username} {why}: run `xoauth2-proxy authorize {username}`"
        ))
    };
    match e {
        RequestTokenError::ServerResponse(resp) => {
            let code = resp.error().as_ref().to_owned();
            let error = match resp.error() {
                BasicErrorResponseType::InvalidGrant => {
                    sign_in("has expired or was revoked (invalid_grant)")
                }
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => TokenError::Configuration(format!(
                    "the token endpoint refused the app ({code}): check client_id and client_secret of {username}"
                )),
                BasicErrorResponseType::InvalidScope => TokenError::Configuration(format!(
                    "the token endpoint refused the scopes ({code}): check scopes of {username}"
                )),
                BasicErrorResponseType::Extension(ext)
                    if ext == "interaction_required" || ext == "consent_required" =>
                {
                    sign_in(&format!("needs the user again ({ext})"))
                }
                BasicErrorResponseType::Extension(ext) if ext == "temporarily_unavailable" => {
                    TokenError::Transient("the token endpoint is temporarily unavailable".into())
                }
                _ => TokenError::Configuration(format!(
                    "the token endpoint refused the refresh ({code})"
                )),
            };
            Failure {
                error,
                retry_after: None,
            }
        }
        RequestTokenError::Request(HttpError::Status {
            status,
            retry_after,
        }) => Failure {
            error: TokenError::Transient(format!(
                "the token endpoint is not available (HTTP {status}); try again shortly"
            )),
            retry_after,
        },
        RequestTokenError::Request(HttpError::Transport(text)) => Failure {
            error: TokenError::Transient(text),
            retry_after: None,
        },
        RequestTokenError::Parse(_, _) => Failure {
            error: TokenError::Transient(
                "the token endpoint sent an answer that is not a token response".into(),
            ),
            retry_after: None,
        },
        RequestTokenError::Other(text) => Failure {
            error: TokenError::Transient(format!("token request failed: {text}")),
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::TEST_PARAMS;
    use crate::config::{Flow, ProviderKind};

    const USER: &str = "alice@contoso.com";

    fn account(password_hash: Option<&str>) -> AccountConfig {
        AccountConfig {
            username: USER.into(),
            provider: ProviderKind::Custom,
            tenant: None,
            client_id: "id".into(),
            client_secret: None,
            flow: Flow::DeviceCode,
            authorize_url: None,
            // Nothing listens here: a test that reaches the network fails loudly.
            token_url: Some("http://127.0.0.1:9/token".into()),
            device_code_url: None,
            scopes: Some(vec!["x".into()]),
            password_hash: password_hash.map(|s| SecretString::from(s.to_owned())),
            mailbox: None,
            cloud: None,
            client_certificate: None,
            client_key: None,
        }
    }

    fn manager(store: &Arc<TokenStore>, kdf: KdfParams) -> TokenManager {
        let tls = crate::tls::client_config(None).unwrap();
        let http = HttpClient::new(tls, Duration::from_secs(1)).unwrap();
        TokenManager::with_kdf(
            &[account(None)],
            http,
            store.clone(),
            Duration::from_secs(60),
            kdf,
        )
    }

    /// What `authorize` leaves: unsealed tokens with an access token valid
    /// for an hour, so logins need no token endpoint.
    fn signed_in() -> (tempfile::TempDir, Arc<TokenStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TokenStore::new(dir.path()));
        store
            .save(
                USER,
                &StoredTokens {
                    refresh_token: Some(SecretString::from("rt-1".to_owned())),
                    access_token: Some(SecretString::from("at-1".to_owned())),
                    expires_at: Some(unix_secs(SystemTime::now() + Duration::from_secs(3600))),
                },
            )
            .unwrap();
        (dir, store)
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn sealed_params(store: &TokenStore) -> Option<KdfParams> {
        match store.load_entry(USER).unwrap()? {
            Entry::Sealed(s) => Some(s.params()),
            Entry::Unsealed(_) => None,
        }
    }

    #[tokio::test]
    async fn first_login_binds_the_password_and_later_ones_cost_no_kdf() {
        let (_dir, store) = signed_in();
        let tokens = manager(&store, TEST_PARAMS);
        assert_eq!(sealed_params(&store), None, "pending after authorize");
        let at = tokens.login(USER, &pw("correct horse")).await.unwrap();
        assert_eq!(at.expose_secret(), "at-1");
        assert_eq!(sealed_params(&store), Some(TEST_PARAMS), "bound and sealed");
        let text = std::fs::read_to_string(store.path_for(USER)).unwrap();
        assert!(!text.contains("rt-1") && !text.contains("at-1"), "{text}");
        for _ in 0..200 {
            tokens.login(USER, &pw("correct horse")).await.unwrap();
        }
        assert_eq!(tokens.kdf_runs(), 1, "one KDF per account per process");
        assert_eq!(tokens.refresh_count(), 0);
        // A new process opens the seal with the same password: one KDF again.
        let again = manager(&store, TEST_PARAMS);
        let at = again.login(USER, &pw("correct horse")).await.unwrap();
        assert_eq!(at.expose_secret(), "at-1");
        assert_eq!(again.kdf_runs(), 1);
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused_and_the_tokens_are_kept() {
        let (_dir, store) = signed_in();
        manager(&store, TEST_PARAMS)
            .login(USER, &pw("right"))
            .await
            .unwrap();
        let before = std::fs::read(store.path_for(USER)).unwrap();
        // Locked (a new process): the wrong password fails to open the seal.
        let tokens = manager(&store, TEST_PARAMS);
        let err = tokens.login(USER, &pw("wrong")).await.unwrap_err();
        assert_eq!(err, TokenError::WrongPassword(USER.into()));
        assert!(!err.to_string().contains("wrong\""));
        assert_eq!(tokens.kdf_runs(), 1);
        // Unlocked: the wrong password is refused by the digest, with no KDF.
        tokens.login(USER, &pw("right")).await.unwrap();
        assert_eq!(tokens.kdf_runs(), 2);
        for _ in 0..10 {
            assert!(matches!(
                tokens.login(USER, &pw("Right")).await,
                Err(TokenError::WrongPassword(_))
            ));
        }
        assert_eq!(tokens.kdf_runs(), 2);
        assert_eq!(tokens.refresh_count(), 0);
        assert_eq!(std::fs::read(store.path_for(USER)).unwrap(), before);
    }

    #[tokio::test]
    async fn concurrent_first_logins_share_one_kdf_run() {
        let (_dir, store) = signed_in();
        let tokens = Arc::new(manager(&store, TEST_PARAMS));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let tokens = tokens.clone();
            tasks.spawn(async move { tokens.login(USER, &pw("pw")).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(tokens.kdf_runs(), 1);
    }

    #[tokio::test]
    async fn entries_sealed_with_other_parameters_are_resealed_at_login() {
        let (_dir, store) = signed_in();
        manager(&store, TEST_PARAMS)
            .login(USER, &pw("pw"))
            .await
            .unwrap();
        let raised = KdfParams {
            memory_kib: 128,
            iterations: 2,
            lanes: 1,
        };
        let tokens = manager(&store, raised);
        let at = tokens.login(USER, &pw("pw")).await.unwrap();
        assert_eq!(at.expose_secret(), "at-1");
        assert_eq!(sealed_params(&store), Some(raised));
        assert_eq!(tokens.kdf_runs(), 2, "open with the old, seal with the new");
        tokens.login(USER, &pw("pw")).await.unwrap();
        assert_eq!(tokens.kdf_runs(), 2);
        // The re-sealed entry opens with the password under the new parameters only.
        let fresh = manager(&store, raised);
        fresh.login(USER, &pw("pw")).await.unwrap();
        assert_eq!(fresh.kdf_runs(), 1);
        assert!(matches!(
            manager(&store, raised).login(USER, &pw("nope")).await,
            Err(TokenError::WrongPassword(_))
        ));
    }

    #[tokio::test]
    async fn no_tokens_damaged_tokens_and_forget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TokenStore::new(dir.path()));
        let tokens = manager(&store, TEST_PARAMS);
        let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
        assert!(
            matches!(&err, TokenError::NeedsSignIn(m) if m.contains("authorize")),
            "{err}"
        );
        assert_eq!(tokens.kdf_runs(), 0, "nothing to bind to");

        let (_dir, store) = signed_in();
        manager(&store, TEST_PARAMS)
            .login(USER, &pw("pw"))
            .await
            .unwrap();
        let path = store.path_for(USER);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let ct = v["sealed"]["ciphertext"].as_str().unwrap().to_owned();
        let flipped = if ct.starts_with('A') { "B" } else { "A" };
        v["sealed"]["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let tokens = manager(&store, TEST_PARAMS);
        let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
        assert!(
            matches!(&err, TokenError::NeedsSignIn(m) if m.contains("damaged") && m.contains("authorize")),
            "{err}"
        );
        // With the wrong password it is still just a wrong password.
        assert!(matches!(
            tokens.login(USER, &pw("other")).await,
            Err(TokenError::WrongPassword(_))
        ));

        // `forget`, then a new sign-in: the next login binds a new password.
        assert!(store.remove(USER).unwrap());
        assert!(matches!(
            tokens.login(USER, &pw("pw")).await,
            Err(TokenError::NeedsSignIn(_))
        ));
        store
            .save(
                USER,
                &StoredTokens {
                    refresh_token: Some(SecretString::from("rt-2".to_owned())),
                    access_token: Some(SecretString::from("at-2".to_owned())),
                    expires_at: Some(unix_secs(SystemTime::now() + Duration::from_secs(3600))),
                },
            )
            .unwrap();
        let at = tokens.login(USER, &pw("new password")).await.unwrap();
        assert_eq!(at.expose_secret(), "at-2");
    }

    #[tokio::test]
    async fn password_hash_accounts_are_not_sealed() {
        let (_dir, store) = signed_in();
        let tls = crate::tls::client_config(None).unwrap();
        let http = HttpClient::new(tls, Duration::from_secs(1)).unwrap();
        let tokens = TokenManager::with_kdf(
            &[account(Some(
                "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            ))],
            http,
            store.clone(),
            Duration::from_secs(60),
            TEST_PARAMS,
        );
        // The password itself is checked by `Accounts`; here it plays no part.
        tokens.login(USER, &pw("anything")).await.unwrap();
        assert_eq!(tokens.kdf_runs(), 0);
        assert_eq!(sealed_params(&store), None);
        assert_eq!(
            tokens.access_token(USER).await.unwrap().expose_secret(),
            "at-1"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap_and_honours_retry_after() {
        let b = BACKOFF_BASE;
        assert_eq!(backoff_delay(1, None, 0.0), b);
        assert_eq!(backoff_delay(2, None, 0.0), b * 2);
        assert_eq!(backoff_delay(3, None, 0.0), b * 4);
        assert_eq!(
            backoff_delay(0, None, 0.0),
            b,
            "0 is read as the first failure"
        );
        assert_eq!(backoff_delay(30, None, 0.0), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX, None, 0.0), BACKOFF_MAX);
        // Jitter lengthens by up to BACKOFF_JITTER, never shortens.
        let most = backoff_delay(1, None, 1.0);
        assert_eq!(most, b.mul_f64(1.0 + BACKOFF_JITTER));
        assert_eq!(backoff_delay(1, None, 7.0), most, "jitter is clamped");
        assert_eq!(backoff_delay(1, None, -1.0), b);
        for _ in 0..100 {
            let d = backoff_delay(4, None, jitter());
            assert!(d >= b * 8 && d <= (b * 8).mul_f64(1.0 + BACKOFF_JITTER));
        }
        // Retry-After: at least what the endpoint asked for, capped.
        let asked = Duration::from_secs(90);
        assert_eq!(backoff_delay(1, Some(asked), 0.0), asked);
        assert!(backoff_delay(1, Some(asked), 1.0) >= asked);
        assert_eq!(
            backoff_delay(30, Some(Duration::from_secs(1)), 0.0),
            BACKOFF_MAX,
            "a short Retry-After does not cut the backoff"
        );
        assert_eq!(
            backoff_delay(1, Some(Duration::from_secs(86_400 * 7)), 0.0),
            RETRY_AFTER_MAX
        );
    }

    /// Tokens whose access token has expired: every login needs the endpoint.
    fn expired() -> (tempfile::TempDir, Arc<TokenStore>) {
        let (dir, store) = signed_in();
        store
            .save(
                USER,
                &StoredTokens {
                    refresh_token: Some(SecretString::from("rt-1".to_owned())),
                    access_token: Some(SecretString::from("at-old".to_owned())),
                    expires_at: Some(unix_secs(SystemTime::now() - Duration::from_secs(60))),
                },
            )
            .unwrap();
        (dir, store)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_and_keep_the_tokens() {
        let (_dir, store) = expired();
        // Nothing listens on the token_url: every try is a transient failure.
        let tokens = manager(&store, TEST_PARAMS);
        let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
        assert!(matches!(err, TokenError::Transient(_)), "{err}");
        assert_eq!(tokens.refresh_count(), 1);
        let mut expected = BACKOFF_BASE;
        for round in 1..=4u32 {
            let wait = tokens.retry_in(USER).await.expect("backing off");
            assert!(
                wait <= expected.mul_f64(1.0 + BACKOFF_JITTER)
                    && wait + Duration::from_secs(1) >= expected,
                "round {round}: {wait:?} for {expected:?}"
            );
            // Logins during the wait are answered locally.
            for _ in 0..5 {
                let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
                assert!(
                    matches!(&err, TokenError::Transient(m) if m.contains("tries again in")),
                    "{err}"
                );
            }
            assert_eq!(tokens.refresh_count(), u64::from(round));
            tokio::time::advance(wait).await;
            assert!(tokens.login(USER, &pw("pw")).await.is_err());
            assert_eq!(tokens.refresh_count(), u64::from(round) + 1);
            expected *= 2;
        }
        // The refresh token was never dropped: the entry still opens to it.
        let key = match store.load_entry(USER).unwrap().unwrap() {
            Entry::Sealed(s) => {
                let k = SealKey::derive(b"pw", s.params(), s.salt()).unwrap();
                s.open(&k).unwrap()
            }
            Entry::Unsealed(_) => panic!("sealed at the first login"),
        };
        assert_eq!(key.refresh_token.unwrap().expose_secret(), "rt-1");
    }

    #[tokio::test]
    async fn a_still_valid_token_is_used_while_the_endpoint_is_down() {
        let (_dir, store) = signed_in();
        store
            .save(
                USER,
                &StoredTokens {
                    refresh_token: Some(SecretString::from("rt-1".to_owned())),
                    access_token: Some(SecretString::from("at-inside-margin".to_owned())),
                    // Inside the 60 s margin, but not expired.
                    expires_at: Some(unix_secs(SystemTime::now() + Duration::from_secs(45))),
                },
            )
            .unwrap();
        let tokens = manager(&store, TEST_PARAMS);
        let at = tokens.login(USER, &pw("pw")).await.unwrap();
        assert_eq!(at.expose_secret(), "at-inside-margin");
        assert_eq!(tokens.refresh_count(), 1, "a refresh was tried");
        assert!(tokens.retry_in(USER).await.is_some());
    }

    #[tokio::test]
    async fn a_sealed_account_gives_no_token_without_its_password() {
        let (_dir, store) = signed_in();
        let tokens = manager(&store, TEST_PARAMS);
        assert!(matches!(
            tokens.access_token(USER).await,
            Err(TokenError::NeedsSignIn(_))
        ));
        tokens.login(USER, &pw("pw")).await.unwrap();
        assert_eq!(
            tokens.access_token(USER).await.unwrap().expose_secret(),
            "at-1"
        );
    }
}
