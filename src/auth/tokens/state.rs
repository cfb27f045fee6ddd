//! One account's record: its settings, the unlock of its sealed tokens and
//! its token state.

use std::sync::Arc;

use parking_lot::RwLock;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::TokenError;
use crate::auth::password::{PasswordDigest, SealKey, Tag};
use crate::auth::provider::{Endpoints, endpoints};
use crate::config::AccountConfig;

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

#[derive(Default)]
pub(super) struct RefreshState {
    /// Loaded from disk on first use; `None` after loading means no sign-in yet.
    pub(super) refresh_token: Option<SecretString>,
    pub(super) loaded: bool,
    /// The outcome of the last refresh, if it failed: callers that were
    /// waiting for that refresh share it.
    pub(super) last_failure: Option<TokenError>,
    /// How the last refreshes went: one value, so "backing off" and
    /// "needs a sign-in" cannot both hold.
    pub(super) health: Health,
}

impl RefreshState {
    /// A redemption for another resource (Graph, `graph.rs`) returned a
    /// new refresh token, already saved: the next refresh uses it.
    pub(super) fn rotated(&mut self, refresh_token: Option<SecretString>) {
        if let Some(token) = refresh_token {
            self.refresh_token = Some(token);
        }
    }
}

/// What the refreshes so far say about the next one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// The last refresh worked, or none ran yet.
    #[default]
    Good,
    /// Transient failures in a row: the background waits until `until`; a
    /// client login may probe once `last_try` is [`LOGIN_PROBE_EVERY`] old,
    /// unless the endpoint asked for the wait itself (`firm`: a 429 or a
    /// `Retry-After`).
    ///
    /// [`LOGIN_PROBE_EVERY`]: super::refresh::LOGIN_PROBE_EVERY
    BackingOff {
        failures: u32,
        until: Instant,
        last_try: Instant,
        firm: bool,
    },
    /// The refresh token was refused (`invalid_grant`, ...): no more
    /// refreshes; the access token in hand is used until it expires.
    SignInNeeded,
}

impl Health {
    /// While backing off: when the next background try may go out.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self {
            Health::BackingOff { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// What a verified password opens: the sealing key of a delegated
/// account's tokens, nothing for a `password_hash` account (unsealed tokens).
pub(super) type Opened = Option<Arc<SealKey>>;

/// An account whose local password was verified in this process: the one
/// record of it, for sealed and `password_hash` accounts alike.
pub(super) struct Unlocked {
    pub(super) tag: Tag,
    pub(super) key: Opened,
}

pub(super) struct AccountTokens {
    pub(super) config: AccountConfig,
    pub(super) endpoints: Endpoints,
    /// Tokens sealed with the local password (no `password_hash` configured).
    pub(super) sealed: bool,
    pub(super) cached: RwLock<Option<Access>>,
    pub(super) refresh: tokio::sync::Mutex<RefreshState>,
    pub(super) unlocked: RwLock<Option<Unlocked>>,
    /// One password check (KDF) per account at a time: the others wait and
    /// then take the fast path.
    pub(super) unlocking: tokio::sync::Mutex<()>,
    /// Refreshes finished (either way), so a caller that waited for one
    /// can tell it happened meanwhile and share its outcome.
    pub(super) refreshes_done: std::sync::atomic::AtomicU64,
}

impl AccountTokens {
    pub(super) fn new(config: AccountConfig) -> Arc<AccountTokens> {
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

    /// The fast path: `Some(opened)` for the password this account was
    /// unlocked with, `WrongPassword` for another, `None` while still locked.
    pub(super) fn check_unlocked(
        &self,
        digest: &PasswordDigest,
        password: &SecretString,
    ) -> Result<Option<Opened>, TokenError> {
        let unlocked = self.unlocked.read();
        match unlocked.as_ref() {
            None => Ok(None),
            Some(u) if digest.matches(password.expose_secret().as_bytes(), &u.tag) => {
                Ok(Some(u.key.clone()))
            }
            Some(_) => Err(TokenError::WrongPassword(self.config.username.clone())),
        }
    }

    pub(super) fn current_key(&self) -> Option<Arc<SealKey>> {
        let unlocked = self.unlocked.read();
        unlocked.as_ref().and_then(|u| u.key.clone())
    }

    pub(super) fn set_unlocked(&self, tag: Tag, key: Opened) {
        *self.unlocked.write() = Some(Unlocked { tag, key });
    }

    /// Forgets the password and the cached access token: the next login reads
    /// the disk again (after `forget`, a new sign-in, or a revoked grant).
    pub(super) fn relock(&self) {
        *self.unlocked.write() = None;
        *self.cached.write() = None;
    }

    /// The cached token if more than `margin` of its life is left; the
    /// margin is never more than half its lifetime, so a token is not
    /// renewed in the first half of its life (a token shorter-lived than
    /// the margin would otherwise be renewed at every login).
    pub(super) fn fresh(&self, margin: Duration) -> Option<SecretString> {
        let cached = self.cached.read();
        let access = cached.as_ref()?;
        let left = access.expires_at.duration_since(SystemTime::now()).ok()?;
        let margin = access.lifetime.map_or(margin, |life| margin.min(life / 2));
        (left > margin).then(|| access.token.clone())
    }

    /// `lifetime`: what the token endpoint said, or `None` for a token read
    /// from disk (its issue time is not stored).
    pub(super) fn set_cached(
        &self,
        token: SecretString,
        expires_at: SystemTime,
        lifetime: Option<Duration>,
    ) {
        *self.cached.write() = Some(Access {
            token,
            expires_at,
            lifetime,
            cached_at: Instant::now(),
        });
    }

    /// For the background refresher: the wall-clock life left of the cached
    /// access token and how long ago it was cached; `None` when nothing is
    /// cached (never used in this process, locked again, or given up on).
    pub(super) fn cached_life(&self) -> Option<(Duration, Duration)> {
        let cached = self.cached.read();
        let access = cached.as_ref()?;
        let left = access
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some((left, access.cached_at.elapsed()))
    }
}
