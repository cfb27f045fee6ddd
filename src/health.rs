//! What the proxy knows of its own health: per listener its counters
//! (`counters`: connections, logins, bytes, upstream failures; the page
//! shows the open connections, `metrics` serves them all), and how each
//! upstream answered the last time a session reached for it.

mod counters;

use std::collections::HashMap;
use std::time::SystemTime;

use parking_lot::Mutex;

pub(crate) use counters::{
    Bytes, Counters, ListenerStats, LoginOutcome, RefusedBecause, UpstreamStage,
};

/// The last outcome of reaching one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub at: SystemTime,
    /// Why it failed (connect, TLS, greeting or authentication exchange);
    /// `None`: it answered.
    pub error: Option<String>,
    /// Since when it has failed without a success in between (for
    /// `upstream_unreachable`); `None` while it answers.
    pub failing_since: Option<SystemTime>,
}

/// The last outcome per upstream (`host:port`). The keys are the configured
/// upstreams, so the map is as small as the configuration.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    seen: Mutex<HashMap<String, Seen>>,
}

impl UpstreamHealth {
    pub fn record(&self, upstream: &str, outcome: Result<(), &dyn std::fmt::Display>) {
        let at = SystemTime::now();
        let error = outcome.err().map(|e| e.to_string());
        let mut seen = self.seen.lock();
        let failing_since = match (&error, seen.get(upstream)) {
            (None, _) => None,
            (Some(_), Some(before)) => before.failing_since.or(Some(at)),
            (Some(_), None) => Some(at),
        };
        seen.insert(
            upstream.to_owned(),
            Seen {
                at,
                error,
                failing_since,
            },
        );
    }

    pub fn get(&self, upstream: &str) -> Option<Seen> {
        self.seen.lock().get(upstream).cloned()
    }
}

/// What the notifier said lately, newest first, for the page (the last
/// [`Notices::KEEP`]); shared across reloads.
#[derive(Debug, Default)]
pub struct Notices {
    said: Mutex<std::collections::VecDeque<Notice>>,
}

/// One notification as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub at: SystemTime,
    /// `sign_in_needed`, `recovered`, …
    pub event: &'static str,
    /// The account or listener it is about.
    pub subject: String,
    pub message: String,
}

impl Notices {
    /// A short history: what a person glancing at the page needs, not a log
    /// (the log has every one).
    pub const KEEP: usize = 10;

    pub fn push(&self, notice: Notice) {
        let mut said = self.said.lock();
        said.push_front(notice);
        said.truncate(Self::KEEP);
    }

    pub fn recent(&self) -> Vec<Notice> {
        self.said.lock().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_outcome_per_upstream_wins() {
        let health = UpstreamHealth::default();
        assert_eq!(health.get("a:993"), None);
        health.record("a:993", Err(&"connection refused"));
        assert_eq!(
            health.get("a:993").unwrap().error.as_deref(),
            Some("connection refused")
        );
        let since = health.get("a:993").unwrap().failing_since.unwrap();
        health.record("a:993", Err(&"timed out"));
        assert_eq!(
            health.get("a:993").unwrap().failing_since,
            Some(since),
            "failing since the first failure"
        );
        health.record("a:993", Ok(()));
        assert_eq!(health.get("a:993").unwrap().error, None);
        assert_eq!(health.get("a:993").unwrap().failing_since, None);
        assert_eq!(health.get("b:993"), None);
    }

    #[test]
    fn notices_keep_the_newest_few() {
        let notices = Notices::default();
        for i in 0..Notices::KEEP + 3 {
            notices.push(Notice {
                at: SystemTime::UNIX_EPOCH,
                event: "recovered",
                subject: format!("a{i}"),
                message: String::new(),
            });
        }
        let recent = notices.recent();
        assert_eq!(recent.len(), Notices::KEEP);
        assert_eq!(recent[0].subject, format!("a{}", Notices::KEEP + 2));
    }
}
