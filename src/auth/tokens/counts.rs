//! Each account's refresh outcomes, counted where a flight lands, and what
//! `metrics` reads at a scrape: the counts, the access token's life left,
//! the time of the last successful refresh. Relaxed atomics: one add per
//! flight, nothing on a login's path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::TokenError;
use super::TokenManager;
use super::machine::Event;

/// How a refresh (or an app-only token request) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    Ok,
    /// Network, 429, 5xx: tried again later.
    Transient,
    /// `invalid_grant`, `interaction_required`, no tokens: a person must sign in.
    SignInNeeded,
    /// The endpoint refused the app, or the token store is in the way.
    Configuration,
}

impl RefreshOutcome {
    pub const ALL: [RefreshOutcome; 4] = [
        RefreshOutcome::Ok,
        RefreshOutcome::Transient,
        RefreshOutcome::SignInNeeded,
        RefreshOutcome::Configuration,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::Transient => "transient",
            RefreshOutcome::SignInNeeded => "sign_in_needed",
            RefreshOutcome::Configuration => "configuration",
        }
    }

    /// The outcome a flight's last event stands for (`None`: not an outcome).
    pub(super) fn of(event: &Event) -> Option<RefreshOutcome> {
        Some(match event {
            Event::Refreshed { .. } | Event::Rotated { .. } => RefreshOutcome::Ok,
            Event::Transient { .. } => RefreshOutcome::Transient,
            Event::Refused { .. } => RefreshOutcome::SignInNeeded,
            Event::Failed(TokenError::Transient(_)) => RefreshOutcome::Transient,
            Event::Failed(TokenError::NeedsSignIn(_)) => RefreshOutcome::SignInNeeded,
            Event::Failed(_) => RefreshOutcome::Configuration,
            _ => return None,
        })
    }
}

/// One account's counts (kept with its state across reloads).
#[derive(Debug, Default)]
pub(super) struct RefreshCounts {
    by_outcome: [AtomicU64; 4],
    /// Seconds since the epoch of the last success; 0: none in this process.
    last_ok: AtomicU64,
}

impl RefreshCounts {
    pub(super) fn record(&self, outcome: RefreshOutcome) {
        self.by_outcome[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if outcome == RefreshOutcome::Ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_secs().max(1));
            self.last_ok.store(now, Ordering::Relaxed);
        }
    }
}

/// What a scrape shows of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshFigures {
    pub username: String,
    /// Counts in [`RefreshOutcome::ALL`]'s order.
    pub by_outcome: [u64; 4],
    /// The access token's life left, if one is held.
    pub expires_in: Option<Duration>,
    /// When a refresh last worked in this process.
    pub last_ok: Option<SystemTime>,
}

impl TokenManager {
    /// Every account's figures (and each catch-all address used), from
    /// memory only: one short lock per account, no disk, no await.
    pub fn refresh_figures(&self) -> Vec<RefreshFigures> {
        let mut rows: Vec<RefreshFigures> = self
            .all()
            .iter()
            .map(|account| {
                let counts = &account.refreshes;
                let last_ok = counts.last_ok.load(Ordering::Relaxed);
                RefreshFigures {
                    username: account.config.username.clone(),
                    by_outcome: RefreshOutcome::ALL
                        .map(|o| counts.by_outcome[o as usize].load(Ordering::Relaxed)),
                    expires_in: account.lock().access().map(|a| a.left()),
                    last_ok: (last_ok > 0).then(|| UNIX_EPOCH + Duration::from_secs(last_ok)),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.username.cmp(&b.username));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_class() {
        let counts = RefreshCounts::default();
        let transient = Event::Failed(TokenError::Transient("down".into()));
        let sign_in = Event::Failed(TokenError::NeedsSignIn("revoked".into()));
        let config = Event::Failed(TokenError::Configuration("invalid_client".into()));
        for event in [&transient, &sign_in, &config, &Event::Discard] {
            if let Some(outcome) = RefreshOutcome::of(event) {
                counts.record(outcome);
            }
        }
        counts.record(RefreshOutcome::Ok);
        let got =
            RefreshOutcome::ALL.map(|o| counts.by_outcome[o as usize].load(Ordering::Relaxed));
        assert_eq!(got, [1, 1, 1, 1]);
        assert!(counts.last_ok.load(Ordering::Relaxed) > 0);
    }
}
