//! One flight of an account: what runs between `Start` and the outcome
//! event, in its own task, so a caller dropped meanwhile (a client gone, a
//! shutdown closing its session) cannot cut it, and a shutdown waits for
//! it (`wait_idle`). It reads the disk if nothing is in memory, asks the
//! token endpoint if the access token is not fresh, writes what came back,
//! takes the outcome through the state machine and wakes the waiters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use oauth2::TokenResponse;
use secrecy::SecretString;
use tokio::time::Instant;

use super::counts::RefreshOutcome;
use super::exchange::{Failure, Outcome, classify, exchange_and_save};
use super::machine::{Access, Event, Kind, TokenState};
use super::refresh::{STILL_USABLE, jitter};
use super::shared::{Turn, adopted, take_turn};
use super::state::AccountTokens;
use super::{
    InFlight, LIFETIME_WITHOUT_EXPIRY, TokenError, blocking, not_signed_in, replaced, store_error,
};
use crate::auth::http::HttpClient;
use crate::auth::password::SealKey;
use crate::auth::vault::{Entry, OpenError, StoredTokens, TokenStore};
use crate::config::Flow;

/// Everything a flight needs, owned, so it runs in its own task.
pub(super) struct Flight {
    pub(super) account: Arc<AccountTokens>,
    pub(super) http: HttpClient,
    pub(super) store: Arc<TokenStore>,
    /// The manager's count of token requests.
    pub(super) requests: Arc<AtomicU64>,
    pub(super) key: Option<Arc<SealKey>>,
    /// The starter's refresh margin: a token read from disk with more life
    /// left than this needs no request.
    pub(super) margin: Duration,
    /// The refresh token in hand at the start; `None` with `load` when the
    /// flight starts from the disk.
    pub(super) refresh_token: Option<SecretString>,
    pub(super) load: bool,
    pub(super) in_flight: InFlight,
}

/// Ends the flight: the outcome event, then the waiters woken. If the task
/// is dropped before (a panic, a runtime shutting down), the flight ends as
/// a transient failure, so no caller waits for it forever.
pub(super) struct Landing {
    account: Arc<AccountTokens>,
    landed: bool,
}

impl Landing {
    /// For a flight of `account` that has started (`Refreshing`).
    pub(super) fn new(account: Arc<AccountTokens>) -> Landing {
        Landing {
            account,
            landed: false,
        }
    }

    pub(super) fn land(mut self, event: Option<Event>) {
        let transient = matches!(event, Some(Event::Transient { .. }));
        if let Some(outcome) = event.as_ref().and_then(RefreshOutcome::of) {
            self.account.refreshes.record(outcome);
        }
        {
            let mut state = self.account.lock();
            if let Some(event) = event {
                self.account.step(&mut state, event);
            }
            if let (
                true,
                TokenState::BackingOff {
                    failures,
                    until,
                    error,
                    ..
                },
            ) = (transient, &*state)
            {
                let wait = until.saturating_duration_since(Instant::now());
                tracing::warn!(account = %self.account.config.username, error = %error,
                    failures_in_a_row = failures, retry_in_secs = wait.as_secs(),
                    "token refresh failed; the tokens are kept and the refresh is tried again later");
            }
        }
        self.landed = true;
        self.account.flights.send_replace(());
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        {
            let mut state = self.account.lock();
            if state.kind() == Kind::Refreshing {
                self.account.refreshes.record(RefreshOutcome::Transient);
                let error = TokenError::Transient("the token refresh task ended early".into());
                let event = Event::Transient {
                    error,
                    retry_after: None,
                    firm: false,
                    jitter: jitter(),
                };
                self.account.step(&mut state, event);
            }
        }
        self.account.flights.send_replace(());
    }
}

impl Flight {
    /// Runs the flight in its own task; the caller waits on
    /// `account.flights` (subscribed before, under the state's lock).
    pub(super) fn launch(self) {
        // Made before the task, so even a task dropped unpolled lands.
        let landing = Landing::new(self.account.clone());
        tokio::spawn(async move {
            let event = self.run().await;
            landing.land(event);
            drop(self.in_flight);
        });
    }

    /// The flight's outcome event; `None` when it already ended by reading
    /// the disk (nothing stored, or a token fresh enough).
    async fn run(&self) -> Option<Event> {
        let account = &self.account;
        let username = &account.config.username;
        if account.config.flow == Flow::ClientCredentials {
            return Some(self.app_only().await);
        }
        let mut refresh_token = self.refresh_token.clone();
        if self.load {
            // Until a sign-in exists, the disk is read at each try:
            // `authorize` may have run in another process since.
            let stored = match load(&self.store, username, self.key.clone()).await {
                Ok(stored) => stored,
                Err(e @ TokenError::Transient(_)) => return Some(store_down(e)),
                Err(e) => {
                    if account.sealed {
                        // Removed (`forget`) or replaced (a new sign-in)
                        // since the unlock: the next login checks again.
                        account.forget_unlock();
                    }
                    return Some(Event::Failed(e));
                }
            };
            let loaded = stored.map(|s| {
                let access = match (s.access_token, s.expires_at) {
                    (Some(token), Some(exp)) => Some(Access {
                        token,
                        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
                        lifetime: None,
                        cached_at: Instant::now(),
                    }),
                    _ => None,
                };
                (s.refresh_token, access)
            });
            let mut state = account.lock();
            account.step(&mut state, Event::Loaded(loaded));
            if state.kind() != Kind::Ready || state.fresh(self.margin).is_some() {
                return None;
            }
            refresh_token = state.refresh_token().cloned();
            account.step(&mut state, Event::Start { login: true });
        }
        let Some(refresh_token) = refresh_token else {
            return Some(Event::Failed(not_signed_in(username)));
        };
        if let Some(key) = &self.key
            && let Err(e) = still_ours(&self.store, username, key.clone()).await
        {
            if let TokenError::Transient(_) = e {
                return Some(store_down(e));
            }
            account.forget_unlock();
            return Some(Event::Failed(e));
        }
        // A shared store: the account's lease first, and the store's
        // refresh token (another proxy may have rotated the one in hand).
        let (refresh_token, lease, fence) = if self.store.is_shared() {
            match take_turn(&self.store, account, self.key.clone(), Some(self.margin)).await {
                Ok(Turn::Mine {
                    lease,
                    refresh_token,
                    fingerprint,
                }) => (refresh_token, Some(lease), Some(fingerprint)),
                Ok(Turn::Theirs(stored)) => {
                    tracing::debug!(account = %username, "tokens refreshed by another proxy");
                    return Some(adopted(stored));
                }
                Err(error @ TokenError::Transient(_)) => return Some(store_down(error)),
                Err(error) => {
                    if account.sealed {
                        account.forget_unlock();
                    }
                    return Some(Event::Failed(error));
                }
            }
        } else {
            (refresh_token, None, None)
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(account = %username, "refreshing access token");
        let outcome = exchange_and_save(
            account,
            &self.http,
            self.store.clone(),
            refresh_token,
            self.key.clone(),
            fence,
        )
        .await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        Some(match outcome {
            Outcome::Refreshed(r) => {
                tracing::info!(account = %username, expires_in_secs = r.lifetime.as_secs(),
                    "access token refreshed");
                Event::Refreshed {
                    access: Access {
                        token: r.access,
                        expires_at: r.expires_at,
                        lifetime: Some(r.lifetime),
                        cached_at: Instant::now(),
                    },
                    refresh_token: Some(r.refresh_token),
                }
            }
            Outcome::Replaced(error) => {
                if account.sealed {
                    account.forget_unlock();
                }
                Event::Failed(error)
            }
            Outcome::Failed(failure) => self.failed(failure),
        })
    }

    fn failed(&self, failure: Failure) -> Event {
        failed(&self.account, failure)
    }
    /// An app-only account (client credentials): a new access token from the
    /// app's own credential, kept in memory only; failures back off like
    /// refreshes.
    async fn app_only(&self) -> Event {
        let account = &self.account;
        let username = &account.config.username;
        self.requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(account = %username, "requesting an app-only access token");
        let result = crate::auth::flows::client_credentials(&account.config, &self.http)
            .await
            .map_err(|e| classify(username, e));
        match result {
            Ok(response) => {
                let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
                tracing::info!(account = %username, expires_in_secs = lifetime.as_secs(),
                    "app-only access token issued");
                Event::Refreshed {
                    access: Access {
                        token: SecretString::from(response.access_token().secret().to_owned()),
                        expires_at: std::time::SystemTime::now() + lifetime,
                        lifetime: Some(lifetime),
                        cached_at: Instant::now(),
                    },
                    refresh_token: None,
                }
            }
            Err(Failure {
                error: error @ TokenError::Transient(_),
                retry_after,
                firm,
            }) => Event::Transient {
                error,
                retry_after,
                firm,
                jitter: jitter(),
            },
            Err(Failure { error, .. }) => {
                // Not a sign-in for a person: the app's credential or its
                // permissions are what an admin has to fix.
                let error = match error {
                    TokenError::NeedsSignIn(m) => TokenError::Configuration(m),
                    other => other,
                };
                tracing::warn!(account = %username, error = %error, "app-only token request failed");
                Event::Failed(error)
            }
        }
    }
}

/// The event for a store that cannot be read now (a shared store that is
/// down): back off and keep the tokens and the unlock; no refresh token is
/// redeemed while its successor would have no place to go.
fn store_down(error: TokenError) -> Event {
    Event::Transient {
        error,
        retry_after: None,
        firm: false,
        jitter: jitter(),
    }
}

/// The account's stored tokens: unsealed ones as they are, sealed ones
/// opened with `key`, which must be the entry's (not replaced since).
async fn load(
    store: &Arc<TokenStore>,
    username: &str,
    key: Option<Arc<SealKey>>,
) -> Result<Option<StoredTokens>, TokenError> {
    let store = store.clone();
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
async fn still_ours(
    store: &Arc<TokenStore>,
    username: &str,
    key: Arc<SealKey>,
) -> Result<(), TokenError> {
    let store = store.clone();
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

/// The event for a failed exchange of `account` (a refresh, or a Graph
/// redemption).
pub(super) fn failed(account: &Arc<AccountTokens>, failure: Failure) -> Event {
    let username = &account.config.username;
    let Failure {
        error,
        retry_after,
        firm,
    } = failure;
    match error {
        TokenError::Transient(_) => Event::Transient {
            error,
            retry_after,
            firm,
            jitter: jitter(),
        },
        TokenError::NeedsSignIn(_) => {
            let left = account.lock().access().map(|a| a.left());
            match left {
                Some(left) if left > STILL_USABLE => {
                    // The token in hand still works: use it until it
                    // expires, and say now that a sign-in is needed.
                    tracing::warn!(account = %username, error = %error,
                        access_token_expires_in_secs = left.as_secs(),
                        "token refresh refused; the current access token is used until it \
                         expires: sign in again before then");
                    Event::Refused {
                        error,
                        usable: true,
                    }
                }
                _ => {
                    // The next login starts from the disk, where a new
                    // sign-in may be (and, sealed, is opened again).
                    if account.sealed {
                        account.forget_unlock();
                    }
                    tracing::warn!(account = %username, error = %error, "token refresh failed");
                    Event::Refused {
                        error,
                        usable: false,
                    }
                }
            }
        }
        error => {
            tracing::warn!(account = %username, error = %error, "token refresh failed");
            Event::Failed(error)
        }
    }
}
