//! Getting a valid access token: the cache (the fast path: one short lock),
//! else the decision the account's state makes (wait for the flight in
//! progress, answer from the backoff or the refusal, or start a flight),
//! and the backoff's constants.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;

use super::flight::Flight;
use super::machine::{Event, TokenState};
use super::state::AccountTokens;
use super::{InFlight, TokenError, TokenManager, not_signed_in};
use crate::auth::password::SealKey;

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

impl TokenManager {
    pub(super) async fn token(
        &self,
        account: &Arc<AccountTokens>,
        key: Option<Arc<SealKey>>,
    ) -> Result<SecretString, TokenError> {
        self.token_within(account, key, self.margin, Caller::Login)
            .await
    }

    /// A cached token with more than `margin` left, or the outcome of a
    /// flight: this caller's own, or the one in progress when it came.
    pub(super) async fn token_within(
        &self,
        account: &Arc<AccountTokens>,
        key: Option<Arc<SealKey>>,
        margin: Duration,
        caller: Caller,
    ) -> Result<SecretString, TokenError> {
        // After a flight ended: its outcome is this caller's too, so a
        // refusal or a failure is not tried again by each of its waiters.
        let mut waited = false;
        loop {
            let mut ended = {
                let mut state = account.lock();
                if let Some(token) = state.fresh(margin) {
                    return Ok(token);
                }
                if let Some(result) = self.decide(account, &mut state, &key, margin, caller, waited)
                {
                    return result;
                }
                account.flights.subscribe()
            };
            let _ = ended.changed().await;
            waited = true;
        }
    }

    /// What the state says to a caller with no fresh token: an answer, or
    /// `None` to wait for the flight in progress (started here if none is).
    fn decide(
        &self,
        account: &Arc<AccountTokens>,
        state: &mut TokenState,
        key: &Option<Arc<SealKey>>,
        margin: Duration,
        caller: Caller,
        waited: bool,
    ) -> Option<Result<SecretString, TokenError>> {
        let now = Instant::now();
        let login = caller == Caller::Login;
        match state {
            TokenState::Refreshing { .. } => return None,
            TokenState::SignInNeeded { access, error } => {
                // The refresh token was refused: asking again cannot help,
                // and the token in hand is good until it expires. After
                // that, start over from the disk, where a new sign-in may
                // be by then.
                if let Some(token) = access.as_ref().and_then(|a| a.fresh(STILL_USABLE)) {
                    return Some(Ok(token));
                }
                let error = error.clone();
                account.step(state, Event::Expired);
                if account.sealed {
                    account.forget_unlock();
                }
                return Some(Err(error));
            }
            TokenState::Locked { error: Some(error) } if waited => {
                return Some(Err(error.clone()));
            }
            TokenState::SignedOut if waited => {
                return Some(Err(not_signed_in(&account.config.username)));
            }
            // What the flight brought has less than this caller's margin
            // left (a very short-lived token): it is still this caller's.
            TokenState::Ready { access, .. } if waited => {
                let token = access.as_ref().and_then(|a| a.fresh(Duration::ZERO));
                return Some(token.ok_or_else(|| {
                    TokenError::Transient("the token endpoint sent an expired access token".into())
                }));
            }
            TokenState::BackingOff { .. } if !state.may_start(login, now) => {
                return Some(still_usable(state, backoff_error(state, now)));
            }
            TokenState::SignedOut
            | TokenState::Locked { .. }
            | TokenState::Ready { .. }
            | TokenState::BackingOff { .. } => {}
        }
        let load = matches!(state, TokenState::SignedOut | TokenState::Locked { .. });
        account.step(state, Event::Start { login });
        Flight {
            account: account.clone(),
            http: self.http.clone(),
            store: self.store.clone(),
            requests: self.refreshes.clone(),
            key: key.clone(),
            margin,
            refresh_token: state.refresh_token().cloned(),
            load,
            in_flight: InFlight::new(&self.in_flight),
        }
        .launch();
        None
    }

    /// How long until the next refresh of `username` may be tried, while it
    /// backs off after transient failures (for status and tests).
    pub async fn retry_in(&self, username: &str) -> Option<Duration> {
        let account = self.account(username).ok()?;
        let left = account
            .lock()
            .retry_at()?
            .saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Stretches the current backoff of `username` to end `by` from now: to
    /// the proxy, what a long outage (many failures in a row) looks like.
    /// For tests; the state's kind stays as it is.
    #[doc(hidden)]
    pub async fn prolong_backoff(&self, username: &str, by: Duration) {
        if let Ok(account) = self.account(username)
            && let TokenState::BackingOff { until, .. } = &mut *account.lock()
        {
            *until = Instant::now() + by;
        }
    }

    /// How many refresh requests this process has sent (for status and tests).
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }
}

/// What a caller hears while the account backs off.
fn backoff_error(state: &TokenState, now: Instant) -> TokenError {
    let (until, why) = match state {
        TokenState::BackingOff {
            until,
            error: TokenError::Transient(m),
            ..
        } => (*until, m.clone()),
        other => (
            other.retry_at().unwrap_or(now),
            "the token endpoint is not available".to_owned(),
        ),
    };
    let secs = until.saturating_duration_since(now).as_secs() + 1;
    TokenError::Transient(format!("{why} (the proxy tries again in {secs} s)"))
}

/// A transient failure does not stop a login while the cached access token
/// still has [`STILL_USABLE`] left (it is only inside the refresh margin).
fn still_usable(state: &TokenState, error: TokenError) -> Result<SecretString, TokenError> {
    match error {
        TokenError::Transient(_) => state.fresh(STILL_USABLE).ok_or(error),
        other => Err(other),
    }
}
