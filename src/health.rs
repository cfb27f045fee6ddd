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
}

/// The last outcome per upstream (`host:port`). The keys are the configured
/// upstreams, so the map is as small as the configuration.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    seen: Mutex<HashMap<String, Seen>>,
}

impl UpstreamHealth {
    pub fn record(&self, upstream: &str, outcome: Result<(), &dyn std::fmt::Display>) {
        let seen = Seen {
            at: SystemTime::now(),
            error: outcome.err().map(|e| e.to_string()),
        };
        self.seen.lock().insert(upstream.to_owned(), seen);
    }

    pub fn get(&self, upstream: &str) -> Option<Seen> {
        self.seen.lock().get(upstream).cloned()
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
        health.record("a:993", Ok(()));
        assert_eq!(health.get("a:993").unwrap().error, None);
        assert_eq!(health.get("b:993"), None);
    }
}
