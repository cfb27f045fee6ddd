//! What the sign-in page says about each listener: the client connections
//! it has open, and how its upstream answered the last time a session
//! reached for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
/// Open client connections of one listener (kept across reloads with its socket).
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    open: AtomicUsize,
}

impl ListenerStats {
    /// Counts a connection as open until the guard is dropped.
    pub(crate) fn opened(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

pub(crate) struct OpenConnection(Arc<ListenerStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

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
    fn open_connections_are_counted_until_dropped() {
        let stats = Arc::new(ListenerStats::default());
        let a = stats.opened();
        let b = stats.opened();
        assert_eq!(stats.open(), 2);
        drop(a);
        assert_eq!(stats.open(), 1);
        drop(b);
        assert_eq!(stats.open(), 0);
    }

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
