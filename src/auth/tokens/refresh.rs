//! Getting a valid access token: the cache, one refresh in flight per
//! account, the refresh-token exchange and the write of its result, error
//! classes and the backoff after transient failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::BasicErrorResponseType;
use oauth2::{RefreshToken, RequestTokenError, TokenResponse};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::state::{AccountTokens, Health, RefreshState};
use super::{
    InFlight, LIFETIME_WITHOUT_EXPIRY, TokenError, TokenManager, blocking, not_signed_in, replaced,
    store_error, unix_secs,
};
use crate::auth::http::{HttpClient, HttpError};
use crate::auth::password::SealKey;
use crate::auth::vault::{Entry, OpenError, StoredTokens, TokenStore};
use crate::config::Flow;

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
pub(super) fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    crate::auth::password::fill_random(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// While the background backs off after transient failures, a client login
/// may still send one refresh of its own this often per account: an outage
/// that ended should not keep refusing logins for the rest of an
/// exponential wait (up to [`BACKOFF_MAX`]), and a few seconds between
/// probes keeps a crowd of clients from hammering an endpoint that is still
/// down. Never against a 429 or a `Retry-After`.
pub const LOGIN_PROBE_EVERY: Duration = Duration::from_secs(3);

/// Who asks for a token: a client login may probe during a backoff; the
/// background refresher waits it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    Login,
    Background,
}

/// How one refresh ended.
enum Outcome {
    /// New tokens, on disk (or kept in memory if the disk refused).
    Refreshed(Refreshed),
    /// The endpoint (or the request) failed; the tokens are as they were.
    Failed(Failure),
    /// Another process replaced or removed the entry meanwhile: its tokens
    /// win, and this process starts over from the disk.
    Replaced(TokenError),
}

/// The outcome of one refresh-token exchange, already on disk.
struct Refreshed {
    access: SecretString,
    lifetime: Duration,
    refresh_token: SecretString,
}

impl TokenManager {
    pub(super) async fn token(
        &self,
        account: &Arc<AccountTokens>,
        key: Option<Arc<SealKey>>,
    ) -> Result<SecretString, TokenError> {
        self.token_within(account, key, self.margin, Caller::Login)
            .await
    }

    /// A cached token with more than `margin` left, or a refresh.
    pub(super) async fn token_within(
        &self,
        account: &Arc<AccountTokens>,
        key: Option<Arc<SealKey>>,
        margin: Duration,
        caller: Caller,
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
        if state.health == Health::SignInNeeded {
            // The refresh token was refused: asking again cannot help, and
            // the token in hand is good until it expires. After that, start
            // over from the disk, where a new sign-in may be by then.
            let result = sign_in_needed(account, state.last_failure.clone());
            if result.is_err() {
                *state = RefreshState::default();
                if account.sealed {
                    account.relock();
                }
            }
            return result;
        }
        if let Some(err) = &state.last_failure
            && account.refreshes_done.load(Ordering::Acquire) != seen
        {
            return still_usable(account, Err(err.clone()));
        }
        if let Health::BackingOff {
            until,
            last_try,
            firm,
            ..
        } = state.health
            && Instant::now() < until
            && !(caller == Caller::Login && !firm && last_try.elapsed() >= LOGIN_PROBE_EVERY)
        {
            let secs = until.saturating_duration_since(Instant::now()).as_secs() + 1;
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
        if state.health == Health::SignInNeeded {
            return sign_in_needed(account, result.err());
        }
        still_usable(account, result)
    }

    /// How long until the next refresh of `username` may be tried, while it
    /// backs off after transient failures (for status and tests).
    pub async fn retry_in(&self, username: &str) -> Option<Duration> {
        let account = self.account(username).ok()?;
        let state = account.refresh.lock().await;
        let left = state
            .health
            .retry_at()?
            .saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Stretches the current backoff of `username` to end `by` from now: to
    /// the proxy, what a long outage (many failures in a row) looks like.
    /// For tests.
    #[doc(hidden)]
    pub async fn prolong_backoff(&self, username: &str, by: Duration) {
        if let Ok(account) = self.account(username)
            && let Health::BackingOff { until, .. } = &mut account.refresh.lock().await.health
        {
            *until = Instant::now() + by;
        }
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
                    account.set_cached(token, UNIX_EPOCH + Duration::from_secs(exp), None);
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
        let outcome = job.await.unwrap_or_else(|e| {
            Outcome::Failed(Failure::new(TokenError::Transient(format!(
                "token refresh task failed: {e}"
            ))))
        });
        state.loaded = true;
        let refreshed = match outcome {
            Outcome::Refreshed(r) => r,
            Outcome::Replaced(error) => {
                if account.sealed {
                    account.relock();
                } else {
                    *account.cached.write() = None;
                }
                *state = RefreshState::default();
                return Err(error);
            }
            Outcome::Failed(Failure {
                error,
                retry_after,
                firm,
            }) => {
                if let TokenError::Transient(_) = error {
                    let failures = state.health.back_off(retry_after, firm);
                    let wait = state.health.retry_at().map_or(Duration::ZERO, |t| {
                        t.saturating_duration_since(Instant::now())
                    });
                    tracing::warn!(account = %username, error = %error,
                        failures_in_a_row = failures, retry_in_secs = wait.as_secs(),
                        "token refresh failed; the tokens are kept and the refresh is tried again later");
                    return Err(error);
                }
                if let TokenError::NeedsSignIn(_) = error {
                    state.refresh_token = None;
                    if let Some((left, _)) = account.cached_life()
                        && left > STILL_USABLE
                    {
                        // The token in hand still works: use it until it
                        // expires, and say now that a sign-in is needed.
                        state.health = Health::SignInNeeded;
                        tracing::warn!(account = %username, error = %error,
                            access_token_expires_in_secs = left.as_secs(),
                            "token refresh refused; the current access token is used until it \
                             expires: sign in again before then");
                        return Err(error);
                    }
                    // Forget the dead refresh token so a new sign-in on disk is
                    // picked up (and, for a sealed account, bound by the next login).
                    if account.sealed {
                        account.relock();
                    }
                }
                tracing::warn!(account = %username, error = %error, "token refresh failed");
                return Err(error);
            }
        };
        state.refresh_token = Some(refreshed.refresh_token);
        state.health = Health::Good;
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
        let result = crate::auth::flows::client_credentials(&account.config, &self.http)
            .await
            .map_err(|e| classify(username, e));
        match result {
            Ok(response) => {
                let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
                let access = SecretString::from(response.access_token().secret().to_owned());
                account.set_cached(access.clone(), SystemTime::now() + lifetime, Some(lifetime));
                state.health = Health::Good;
                tracing::info!(account = %username, expires_in_secs = lifetime.as_secs(), "app-only access token issued");
                Ok(access)
            }
            Err(Failure {
                error,
                retry_after,
                firm,
            }) => {
                if let TokenError::Transient(_) = error {
                    state.health.back_off(retry_after, firm);
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
    pub(super) async fn load(
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

    pub(super) async fn save_sealed(
        &self,
        username: &str,
        tokens: StoredTokens,
        key: Arc<SealKey>,
        expect: Expect,
    ) -> Result<Saved, String> {
        save_to(self.store.clone(), username, tokens, Some(key), expect).await
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
) -> Outcome {
    let username = account.config.username.clone();
    let response =
        match exchange_refresh(&account, &http, &refresh_token, &account.endpoints.scopes).await {
            Ok(response) => response,
            Err(failure) => return Outcome::Failed(failure),
        };
    let refresh_token_used = refresh_token.clone();
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
    let expect = match &key {
        Some(key) => Expect::SealedWith(key.clone()),
        None => Expect::Unsealed(Some(refresh_token_used)),
    };
    match save_to(store, &username, stored, key, expect).await {
        Ok(Saved::Written) => {}
        Ok(Saved::Replaced) => {
            tracing::warn!(account = %username,
                "the stored tokens were replaced or removed by another process during a refresh; \
                 they are kept, and the refresh's result is dropped");
            return Outcome::Replaced(replaced(&username));
        }
        // If the disk refuses, keep the refresh token in memory so it is not
        // lost while this process runs, and say so loudly.
        Err(e) => {
            tracing::error!(account = %username, error = %e, "cannot save the rotated refresh token; it is kept in memory until the next successful write");
        }
    }
    account.set_cached(access.clone(), expires_at, Some(lifetime));
    Outcome::Refreshed(Refreshed {
        access,
        lifetime,
        refresh_token: new_refresh,
    })
}

/// What the entry on disk must still be for a write to go ahead: a writer
/// in another process (`authorize`, `forget`) may have replaced it since
/// this process read it, and then its tokens win. This is the generation
/// check; the store's lock makes check and write one step across processes.
pub(super) enum Expect {
    /// Sealed under this key.
    SealedWith(Arc<SealKey>),
    /// Unsealed, holding this refresh token.
    Unsealed(Option<SecretString>),
}

impl Expect {
    fn holds(&self, entry: Option<&Entry>) -> bool {
        let same = |a: &Option<SecretString>, b: &Option<SecretString>| match (a, b) {
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            (None, None) => true,
            _ => false,
        };
        match (self, entry) {
            (Expect::SealedWith(key), Some(Entry::Sealed(sealed))) => sealed.key_matches(key),
            (Expect::Unsealed(rt), Some(Entry::Unsealed(tokens))) => {
                same(rt, &tokens.refresh_token)
            }
            _ => false,
        }
    }
}

/// Whether a conditional write happened.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Saved {
    Written,
    /// The entry on disk was no longer the one expected; left as it is.
    Replaced,
}

/// Writes `tokens` sealed with `key`, or unsealed without one, under the
/// store's cross-process lock, if the entry on disk is still as `expect`s.
pub(super) async fn save_to(
    store: Arc<TokenStore>,
    username: &str,
    tokens: StoredTokens,
    key: Option<Arc<SealKey>>,
    expect: Expect,
) -> Result<Saved, String> {
    let name = username.to_owned();
    tokio::task::spawn_blocking(move || {
        let lock = store.lock()?;
        if !expect.holds(lock.load_entry(&name)?.as_ref()) {
            return Ok(Saved::Replaced);
        }
        match key {
            Some(key) => lock.save_sealed(&name, &tokens, &key),
            None => lock.save(&name, &tokens),
        }
        .map(|()| Saved::Written)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e: crate::auth::vault::StoreError| e.to_string())
}

pub(super) async fn exchange_refresh(
    account: &AccountTokens,
    http: &HttpClient,
    refresh_token: &SecretString,
    scopes: &[String],
) -> Result<oauth2::basic::BasicTokenResponse, Failure> {
    let config_failure =
        |e: crate::auth::flows::FlowError| Failure::new(TokenError::Configuration(e.to_string()));
    let client = crate::auth::flows::token_client(&account.config).map_err(config_failure)?;
    let auth = crate::auth::flows::client_auth_params(&account.config).map_err(config_failure)?;
    let refresh = RefreshToken::new(refresh_token.expose_secret().to_owned());
    let client_http = http.clone();
    let http = move |req| {
        let client_http = client_http.clone();
        async move { client_http.send(req).await }
    };
    let mut request = client.exchange_refresh_token(&refresh);
    for scope in scopes {
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

pub(super) struct Failure {
    pub(super) error: TokenError,
    retry_after: Option<Duration>,
    /// The endpoint itself asked for the wait (a 429 or a `Retry-After`):
    /// client logins do not probe before it ends.
    firm: bool,
}

impl Failure {
    fn new(error: TokenError) -> Failure {
        Failure {
            error,
            retry_after: None,
            firm: false,
        }
    }
}

impl Health {
    /// One more transient failure: the wait doubles (see [`backoff_delay`]).
    /// Returns the failures in a row.
    fn back_off(&mut self, retry_after: Option<Duration>, firm: bool) -> u32 {
        let failures = match *self {
            Health::BackingOff { failures, .. } => failures.saturating_add(1),
            _ => 1,
        };
        let now = Instant::now();
        *self = Health::BackingOff {
            failures,
            until: now + backoff_delay(failures, retry_after, jitter()),
            last_try: now,
            firm: firm || retry_after.is_some(),
        };
        failures
    }
}

/// After the refresh token was refused: the access token in hand while it
/// lives, else the refusal.
fn sign_in_needed(
    account: &AccountTokens,
    error: Option<TokenError>,
) -> Result<SecretString, TokenError> {
    if let Some(token) = account.fresh(STILL_USABLE) {
        return Ok(token);
    }
    Err(error.unwrap_or_else(|| {
        TokenError::NeedsSignIn(format!(
            "the sign-in of {} has expired or was revoked",
            account.config.username
        ))
    }))
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

/// Sorts a failed token request into what the caller must do about it.
/// Branches on the OAuth `error` code, never on AADSTS numbers (they change).
pub(super) fn classify(
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
            Failure::new(error)
        }
        RequestTokenError::Request(HttpError::Status {
            status,
            retry_after,
        }) => Failure {
            error: TokenError::Transient(format!(
                "the token endpoint is not available (HTTP {status}); try again shortly"
            )),
            retry_after,
            firm: status == 429,
        },
        RequestTokenError::Request(HttpError::Transport(text)) => {
            Failure::new(TokenError::Transient(text))
        }
        RequestTokenError::Parse(_, _) => Failure::new(TokenError::Transient(
            "the token endpoint sent an answer that is not a token response".into(),
        )),
        RequestTokenError::Other(text) => Failure::new(TokenError::Transient(format!(
            "token request failed: {text}"
        ))),
    }
}
