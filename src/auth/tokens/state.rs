//! One account's record: its settings, the unlock of its sealed tokens and
//! its token state (one [`TokenState`], changed only by [`transition`]).
//!
//! [`transition`]: super::machine::transition

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard, RwLock};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::TokenError;
use super::machine::{Event, TokenState};
use crate::auth::password::{PasswordDigest, SealKey, Tag};
use crate::auth::provider::{Endpoints, endpoints};
use crate::config::AccountConfig;

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
    /// The token lifecycle. Held only for a few field reads or one
    /// [`AccountTokens::step`], never across an `.await`.
    pub(super) state: Mutex<TokenState>,
    /// Sent to when a flight ends (after its last step): callers that found
    /// the state `Refreshing` subscribe under the state's lock, wait for
    /// this, then read the flight's outcome from the state.
    pub(super) flights: tokio::sync::watch::Sender<()>,
    pub(super) unlocked: RwLock<Option<Unlocked>>,
    /// One password check (KDF) per account at a time: the others wait and
    /// then take the fast path.
    pub(super) unlocking: tokio::sync::Mutex<()>,
    /// Refresh outcomes, for `metrics`.
    pub(super) refreshes: super::counts::RefreshCounts,
}

impl AccountTokens {
    pub(super) fn new(config: AccountConfig) -> Arc<AccountTokens> {
        Arc::new(AccountTokens {
            endpoints: endpoints(&config),
            sealed: config.password_hash.is_none(),
            config,
            state: Mutex::new(TokenState::Locked { error: None }),
            flights: tokio::sync::watch::channel(()).0,
            unlocked: RwLock::new(None),
            unlocking: tokio::sync::Mutex::new(()),
            refreshes: Default::default(),
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

    /// Forgets the password (and with it the sealing key): the next login
    /// checks it again (after `forget`, a new sign-in, or a revoked grant).
    pub(super) fn forget_unlock(&self) {
        *self.unlocked.write() = None;
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, TokenState> {
        self.state.lock()
    }

    /// Takes `event` through [`transition`]. An event the state cannot
    /// take is a bug here: it is logged (and fails debug builds), the state
    /// stays as it was.
    ///
    /// [`transition`]: super::machine::transition
    pub(super) fn step(&self, state: &mut TokenState, event: Event) {
        let name = event.name();
        let from = state.kind();
        if state.step(event, Instant::now()).is_err() {
            tracing::error!(account = %self.config.username, state = ?from, event = name,
                "illegal token state change refused (a bug)");
            debug_assert!(false, "illegal token state change: {from:?} --{name}-->");
        }
    }

    /// Waits until no flight is in progress, then runs `f` on the state
    /// (under its lock, so none can start in between).
    pub(super) async fn when_idle<T>(&self, f: impl FnOnce(&mut TokenState) -> T) -> T {
        loop {
            let mut ended = {
                let mut state = self.lock();
                if !matches!(*state, TokenState::Refreshing { .. }) {
                    return f(&mut state);
                }
                self.flights.subscribe()
            };
            let _ = ended.changed().await;
        }
    }

    /// For the background refresher: the wall-clock life left of the cached
    /// access token and how long ago it was cached; `None` when nothing is
    /// cached (never used in this process, locked again, or given up on).
    pub(super) fn cached_life(&self) -> Option<(Duration, Duration)> {
        let state = self.lock();
        let access = state.access()?;
        Some((access.left(), access.cached_at.elapsed()))
    }
}
