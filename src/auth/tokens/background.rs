//! Renewal ahead of expiry for accounts in use, on wall-clock time.

use std::time::Duration;

use super::machine::Event;
use super::refresh::{Caller, jitter};
use super::{TokenError, TokenManager};

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

impl TokenManager {
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
                .token_within(
                    &account,
                    key,
                    left + Duration::from_secs(1),
                    Caller::Background,
                )
                .await
            {
                Ok(_) | Err(TokenError::Transient(_)) => {}
                Err(e) => {
                    // Needs a sign-in or a configuration change: stop trying
                    // until a client logs in again.
                    tracing::warn!(account = %username, error = %e, "background refresh failed");
                    let mut state = account.lock();
                    account.step(&mut state, Event::Discard);
                }
            }
        }
    }
}
