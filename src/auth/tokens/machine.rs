//! The token lifecycle of one account as one enum, so that illegal
//! combinations (a refresh in flight while backing off, a backoff while a
//! sign-in is needed, an access token with no record of where it came from)
//! cannot be represented, and one pure function, [`transition`], for every
//! change of it.
//!
//! What is *not* in the enum, on purpose: the per-process unlock (the
//! verified password's digest and the sealing key, `Unlocked` in `state`).
//! It is orthogonal: an account may be unlocked in any token state (a
//! refresh token refused while the client password stays right, a backoff
//! of an unlocked account), and a `password_hash` or app-only account never
//! has a seal. It stays a separate field; forgetting it goes with a move of
//! the token state to `Locked`.
//!
//! # States
//!
//! | state          | on disk         | in memory                                          |
//! |----------------|-----------------|----------------------------------------------------|
//! | `SignedOut`    | nothing         | nothing (the disk is read again at each try)       |
//! | `Locked`       | tokens          | nothing usable: the next try reads the disk; why, if a try failed |
//! | `Ready`        | tokens          | refresh token, maybe a valid access token          |
//! | `Refreshing`   | tokens          | the same, one flight (disk read, exchange) running |
//! | `BackingOff`   | tokens          | refresh token, failures, until, last try, firm     |
//! | `SignInNeeded` | a dead grant    | maybe the access token in hand, the refusal        |
//!
//! # Events and transitions
//!
//! | from                                  | event              | to                                        |
//! |---------------------------------------|--------------------|-------------------------------------------|
//! | `SignedOut`/`Locked`/`Ready`          | `Start`            | `Refreshing` (failures 0)                 |
//! | `BackingOff` (may try, see below)     | `Start`            | `Refreshing` (failures carried)           |
//! | `Refreshing`                          | `Loaded(None)`     | `SignedOut`                               |
//! | `Refreshing`                          | `Loaded(Some(t))`  | `Ready{t}`                                |
//! | `Refreshing`                          | `Refreshed(a, r)`  | `Ready{a, r}`                             |
//! | `Refreshing`                          | `Rotated(r)`       | `Ready{access kept, r or the old one}`    |
//! | `Refreshing`                          | `Transient(..)`    | `BackingOff{failures + 1}`                |
//! | `Refreshing`                          | `Refused`          | `SignInNeeded{access}` if it lives, else `Locked{error}` |
//! | `Refreshing`                          | `Failed(e)`        | `Locked{e}` (start over from the disk)    |
//! | `SignInNeeded`                        | `Expired`          | `Locked{error}` (start over from the disk) |
//! | any                                   | `Discard`          | the same, without the access token        |
//! | any but `Refreshing`                  | `Relock`           | `Locked` (no error)                       |
//! | anything else                         |                    | refused: state unchanged, `Err(Illegal)`  |
//!
//! A backoff may be cut short by a client login's probe every
//! [`LOGIN_PROBE_EVERY`] unless the endpoint asked for the wait (`firm`);
//! the background waits it out (`Start { login: false }` is refused until
//! `until`). Single flight follows from the table: `Start` is refused in
//! `Refreshing`, so a second caller waits for the first one's outcome
//! instead of starting another; and an outcome is refused anywhere but in
//! `Refreshing`, so a flight's result cannot land on a state it did not
//! start from (`Relock` waits for the flight to end).

use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::time::Instant;

use super::TokenError;
use super::refresh::{LOGIN_PROBE_EVERY, backoff_delay};

/// An access token in hand.
pub(super) struct Access {
    pub(super) token: SecretString,
    pub(super) expires_at: SystemTime,
    /// The whole life it was issued with, when known (not for one read from
    /// disk): the refresh margin is at most half of it.
    pub(super) lifetime: Option<Duration>,
    /// When it was cached (monotonic), so a token whose whole life is inside
    /// the margin is not renewed in the background at every check.
    pub(super) cached_at: Instant,
}

impl Access {
    /// The token if more than `margin` of its life is left; the margin is
    /// never more than half its lifetime, so a token is not renewed in the
    /// first half of its life (a token shorter-lived than the margin would
    /// otherwise be renewed at every login).
    pub(super) fn fresh(&self, margin: Duration) -> Option<SecretString> {
        let left = self.expires_at.duration_since(SystemTime::now()).ok()?;
        let margin = self.lifetime.map_or(margin, |life| margin.min(life / 2));
        (left > margin).then(|| self.token.clone())
    }

    /// The wall-clock life left (zero once expired).
    pub(super) fn left(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// One account's token lifecycle (see the module documentation).
pub(super) enum TokenState {
    /// No tokens on disk: the disk is read again at the next try (a sign-in
    /// in another process may have written some).
    SignedOut,
    /// Tokens on disk (as far as this process knows), nothing usable in
    /// memory: the next try reads them. `error`: why the last try failed,
    /// if it did (a refused grant, a replaced entry, the app refused).
    Locked { error: Option<TokenError> },
    /// A refresh token in hand (`None` for an app-only account, which uses
    /// the app's own credential), and the access token if one is cached.
    Ready {
        access: Option<Access>,
        refresh_token: Option<SecretString>,
    },
    /// One flight in progress (a read of the disk, a token request, the
    /// write of its result); its waiters share the outcome.
    Refreshing {
        access: Option<Access>,
        refresh_token: Option<SecretString>,
        /// Transient failures in a row before this try.
        failures: u32,
    },
    /// Transient failures in a row: the background waits until `until`; a
    /// client login may probe every [`LOGIN_PROBE_EVERY`] unless `firm`
    /// (a 429 or a `Retry-After`).
    BackingOff {
        access: Option<Access>,
        refresh_token: Option<SecretString>,
        failures: u32,
        until: Instant,
        last_try: Instant,
        firm: bool,
        error: TokenError,
    },
    /// The refresh token was refused: no more refreshes; the access token
    /// in hand is used until it expires.
    SignInNeeded {
        access: Option<Access>,
        error: TokenError,
    },
}

/// What happens to an account's tokens.
pub(super) enum Event {
    /// A flight begins: for a client login (which may probe a backoff) or
    /// the background (which waits it out).
    Start { login: bool },
    /// The flight read the disk: the stored refresh and access tokens, or
    /// none.
    Loaded(Option<(Option<SecretString>, Option<Access>)>),
    /// The refresh worked: new tokens, already on disk.
    Refreshed {
        access: Access,
        refresh_token: Option<SecretString>,
    },
    /// A redemption for another resource (Graph, `graph.rs`) worked: the
    /// mail access token stays, the refresh token is the new one (already
    /// on disk), if the endpoint sent one.
    Rotated { refresh_token: Option<SecretString> },
    /// The refresh failed for now (network, 5xx, 429).
    Transient {
        error: TokenError,
        retry_after: Option<Duration>,
        firm: bool,
        jitter: f64,
    },
    /// The refresh token was refused; `usable`: the access token in hand
    /// still has enough life to be handed out.
    Refused { error: TokenError, usable: bool },
    /// The flight failed otherwise: the entry on disk is gone, replaced or
    /// unreadable, or the endpoint refused the app.
    Failed(TokenError),
    /// The access token held while a sign-in is needed expired.
    Expired,
    /// The mail server refused the access token: drop it, keep the rest.
    Discard,
    /// The unlock was forgotten, or a sign-in in this process wrote new
    /// tokens: read the disk again at the next try.
    Relock,
}

impl Event {
    /// The event's name, for the log of an illegal one.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Event::Start { .. } => "Start",
            Event::Loaded(_) => "Loaded",
            Event::Refreshed { .. } => "Refreshed",
            Event::Rotated { .. } => "Rotated",
            Event::Transient { .. } => "Transient",
            Event::Refused { .. } => "Refused",
            Event::Failed(_) => "Failed",
            Event::Expired => "Expired",
            Event::Discard => "Discard",
            Event::Relock => "Relock",
        }
    }
}

/// An event the state cannot take (a second `Start` while one flight is in
/// progress, an outcome with no flight): refused, state unchanged.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Illegal;

/// A state's name, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    SignedOut,
    Locked,
    Ready,
    Refreshing,
    BackingOff,
    SignInNeeded,
}

/// What the state says of an account's health, for notifications: the
/// classification is the state machine's (a refusal of the grant is
/// `SignInNeeded` here because [`transition`] put it there), read, not
/// redone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHealth {
    /// A refresh worked (tokens in hand, no failure since).
    Good,
    /// Transient failures in a row (backing off, or retrying after them):
    /// the last one's reason.
    Failing(String),
    /// The grant was refused (`invalid_grant`, `interaction_required`): a
    /// person must sign in again. The endpoint's reason.
    SignInNeeded(String),
    /// Nothing to judge: never used in this process, signed out, locked, or
    /// stopped for a configuration error (said at each login).
    Unknown,
}

impl TokenState {
    /// See [`TokenHealth`].
    pub(super) fn health(&self) -> TokenHealth {
        match self {
            TokenState::Ready {
                access: Some(_), ..
            } => TokenHealth::Good,
            TokenState::BackingOff { error, .. } => TokenHealth::Failing(error.to_string()),
            TokenState::Refreshing { failures, .. } if *failures > 0 => {
                TokenHealth::Failing("retrying after transient failures".into())
            }
            TokenState::SignInNeeded { error, .. }
            | TokenState::Locked {
                error: Some(error @ TokenError::NeedsSignIn(_)),
            } => TokenHealth::SignInNeeded(error.to_string()),
            _ => TokenHealth::Unknown,
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            TokenState::SignedOut => Kind::SignedOut,
            TokenState::Locked { .. } => Kind::Locked,
            TokenState::Ready { .. } => Kind::Ready,
            TokenState::Refreshing { .. } => Kind::Refreshing,
            TokenState::BackingOff { .. } => Kind::BackingOff,
            TokenState::SignInNeeded { .. } => Kind::SignInNeeded,
        }
    }

    /// The access token in hand, in any state that may hold one.
    pub(super) fn access(&self) -> Option<&Access> {
        self.access_slot().and_then(|a| a.as_ref())
    }

    /// The access token in hand, to change in place (tests age it).
    pub(super) fn access_mut(&mut self) -> Option<&mut Access> {
        match self {
            TokenState::Ready { access, .. }
            | TokenState::Refreshing { access, .. }
            | TokenState::BackingOff { access, .. }
            | TokenState::SignInNeeded { access, .. } => access.as_mut(),
            TokenState::SignedOut | TokenState::Locked { .. } => None,
        }
    }

    fn access_slot(&self) -> Option<&Option<Access>> {
        match self {
            TokenState::Ready { access, .. }
            | TokenState::Refreshing { access, .. }
            | TokenState::BackingOff { access, .. }
            | TokenState::SignInNeeded { access, .. } => Some(access),
            TokenState::SignedOut | TokenState::Locked { .. } => None,
        }
    }

    /// The cached token if more than `margin` of its life is left (see
    /// [`Access::fresh`]).
    pub(super) fn fresh(&self, margin: Duration) -> Option<SecretString> {
        self.access()?.fresh(margin)
    }

    /// The refresh token in hand, if any.
    pub(super) fn refresh_token(&self) -> Option<&SecretString> {
        match self {
            TokenState::Ready { refresh_token, .. }
            | TokenState::Refreshing { refresh_token, .. }
            | TokenState::BackingOff { refresh_token, .. } => refresh_token.as_ref(),
            _ => None,
        }
    }

    /// What the last try said, if it failed.
    pub(super) fn error(&self) -> Option<&TokenError> {
        match self {
            TokenState::Locked { error } => error.as_ref(),
            TokenState::BackingOff { error, .. } | TokenState::SignInNeeded { error, .. } => {
                Some(error)
            }
            _ => None,
        }
    }

    /// While backing off: when the next background try may go out.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self {
            TokenState::BackingOff { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Whether a flight may start now for a client login (`login`) or the
    /// background: never while one is in progress or after a refusal;
    /// during a backoff, once it ends, or for a login probe every
    /// [`LOGIN_PROBE_EVERY`] unless the endpoint asked for the wait.
    pub(super) fn may_start(&self, login: bool, now: Instant) -> bool {
        match self {
            TokenState::SignedOut | TokenState::Locked { .. } | TokenState::Ready { .. } => true,
            TokenState::BackingOff {
                until,
                last_try,
                firm,
                ..
            } => {
                now >= *until
                    || (login
                        && !firm
                        && now.saturating_duration_since(*last_try) >= LOGIN_PROBE_EVERY)
            }
            TokenState::Refreshing { .. } | TokenState::SignInNeeded { .. } => false,
        }
    }

    /// Takes `event` at `now`: the next state, or `Err(Illegal)` with the
    /// state left as it was.
    pub(super) fn step(&mut self, event: Event, now: Instant) -> Result<(), Illegal> {
        let old = std::mem::replace(self, TokenState::SignedOut);
        match transition(old, event, now) {
            Ok(next) => {
                *self = next;
                Ok(())
            }
            Err(old) => {
                *self = old;
                Err(Illegal)
            }
        }
    }
}

/// The one place the state changes: the next state for `event`, or the
/// state itself back (`Err`) for an event it cannot take.
#[expect(
    clippy::result_large_err,
    reason = "the state is moved through and back, never boxed: both sides are one TokenState"
)]
pub(super) fn transition(
    state: TokenState,
    event: Event,
    now: Instant,
) -> Result<TokenState, TokenState> {
    use TokenState as S;
    Ok(match (state, event) {
        (state @ S::Refreshing { .. }, Event::Relock) => return Err(state),
        (_, Event::Relock) => S::Locked { error: None },
        (state, Event::Start { login }) if !state.may_start(login, now) => return Err(state),
        (S::SignedOut | S::Locked { .. }, Event::Start { .. }) => S::Refreshing {
            access: None,
            refresh_token: None,
            failures: 0,
        },
        (
            S::Ready {
                access,
                refresh_token,
            },
            Event::Start { .. },
        ) => S::Refreshing {
            access,
            refresh_token,
            failures: 0,
        },
        (
            S::BackingOff {
                access,
                refresh_token,
                failures,
                ..
            },
            Event::Start { .. },
        ) => S::Refreshing {
            access,
            refresh_token,
            failures,
        },
        (S::Refreshing { .. }, Event::Loaded(None)) => S::SignedOut,
        (S::Refreshing { .. }, Event::Loaded(Some((refresh_token, access)))) => S::Ready {
            access,
            refresh_token,
        },
        (
            S::Refreshing { .. },
            Event::Refreshed {
                access,
                refresh_token,
            },
        ) => S::Ready {
            access: Some(access),
            refresh_token,
        },
        (
            S::Refreshing {
                access,
                refresh_token,
                ..
            },
            Event::Rotated {
                refresh_token: rotated,
            },
        ) => S::Ready {
            access,
            refresh_token: rotated.or(refresh_token),
        },
        (
            S::Refreshing {
                access,
                refresh_token,
                failures,
            },
            Event::Transient {
                error,
                retry_after,
                firm,
                jitter,
            },
        ) => {
            let failures = failures.saturating_add(1);
            S::BackingOff {
                access,
                refresh_token,
                failures,
                until: now + backoff_delay(failures, retry_after, jitter),
                last_try: now,
                firm: firm || retry_after.is_some(),
                error,
            }
        }
        (S::Refreshing { access, .. }, Event::Refused { error, usable }) => match usable {
            true => S::SignInNeeded { access, error },
            false => S::Locked { error: Some(error) },
        },
        (S::Refreshing { .. }, Event::Failed(error)) => S::Locked { error: Some(error) },
        (S::SignInNeeded { error, .. }, Event::Expired) => S::Locked { error: Some(error) },
        (mut state, Event::Discard) => {
            if let S::Ready { access, .. }
            | S::Refreshing { access, .. }
            | S::BackingOff { access, .. }
            | S::SignInNeeded { access, .. } = &mut state
            {
                *access = None;
            }
            state
        }
        (state, _) => return Err(state),
    })
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
