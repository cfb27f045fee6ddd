//! The proxy's counters: one set of Prometheus families per process (kept
//! across reloads), and per listener the handles its accept loop, sessions
//! and relay increment. A handle is an `Arc`'d atomic taken out of its
//! family once, when the listener is bound: counting costs one relaxed
//! add, never a label lookup. Encoding and serving them is `metrics`'s job
//! (layer 6); this module only counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One listener's labels: its protocol and configured address.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub listener: String,
    pub protocol: String,
}

/// Why a connection was turned away before its session started.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum RefusedBecause {
    max_connections,
    not_allowed,
    max_connections_per_source,
}

/// How a client login ended (DESIGN.md's table of failures).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum LoginOutcome {
    ok,
    wrong_password,
    throttled,
    sign_in_needed,
    upstream_refused,
    unavailable,
}

impl LoginOutcome {
    const ALL: [LoginOutcome; 6] = [
        LoginOutcome::ok,
        LoginOutcome::wrong_password,
        LoginOutcome::throttled,
        LoginOutcome::sign_in_needed,
        LoginOutcome::upstream_refused,
        LoginOutcome::unavailable,
    ];
}

/// Where reaching the upstream failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum UpstreamStage {
    /// TCP (or the `upstream_proxy` hop), a timeout included.
    connect,
    tls,
    /// The greeting or capabilities: closed, garbled, too long.
    greeting,
}

/// Which way relayed bytes went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Direction {
    to_client,
    to_server,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    protocol: String,
    reason: RefusedBecause,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    listener: String,
    protocol: String,
    outcome: LoginOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: String,
    protocol: String,
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    listener: String,
    protocol: String,
    stage: UpstreamStage,
}

type Count = Counter<u64, AtomicU64>;
type Level = Gauge<i64, AtomicI64>;

/// The per-listener families of the whole process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    accepted: Family<ListenerLabels, Count>,
    refused: Family<RefusedLabels, Count>,
    connections_open: Family<ListenerLabels, Level>,
    sessions_open: Family<ListenerLabels, Level>,
    logins: Family<LoginLabels, Count>,
    bytes: Family<BytesLabels, Count>,
    upstream_failures: Family<UpstreamLabels, Count>,
}

impl Counters {
    /// Adds the families to `registry` (the metric names are `metrics`'s
    /// README table; the prefix is the registry's).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Client connections accepted by a listener",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections turned away before their session, by reason",
            self.refused.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            self.connections_open.clone(),
        );
        registry.register(
            "sessions_open",
            "Logged-in sessions relaying now",
            self.sessions_open.clone(),
        );
        registry.register("logins", "Client logins by outcome", self.logins.clone());
        registry.register(
            "relayed_bytes",
            "Bytes relayed after login, to the client or to the server",
            self.bytes.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failures to reach the mail server, by stage (connect, tls, greeting)",
            self.upstream_failures.clone(),
        );
    }

    /// The handles of one listener (`protocol` on `listen`).
    pub(crate) fn listener(&self, protocol: &str, listen: &str) -> ListenerStats {
        let labels = ListenerLabels {
            listener: listen.to_owned(),
            protocol: protocol.to_owned(),
        };
        let refused = |reason| {
            self.refused
                .get_or_create(&RefusedLabels {
                    listener: labels.listener.clone(),
                    protocol: labels.protocol.clone(),
                    reason,
                })
                .clone()
        };
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    listener: labels.listener.clone(),
                    protocol: labels.protocol.clone(),
                    direction,
                })
                .clone()
        };
        let upstream = |stage| {
            self.upstream_failures
                .get_or_create(&UpstreamLabels {
                    listener: labels.listener.clone(),
                    protocol: labels.protocol.clone(),
                    stage,
                })
                .clone()
        };
        ListenerStats {
            accepted: self.accepted.get_or_create(&labels).clone(),
            refused: [
                refused(RefusedBecause::max_connections),
                refused(RefusedBecause::not_allowed),
                refused(RefusedBecause::max_connections_per_source),
            ],
            open: self.connections_open.get_or_create(&labels).clone(),
            sessions: self.sessions_open.get_or_create(&labels).clone(),
            logins: LoginOutcome::ALL.map(|outcome| {
                self.logins
                    .get_or_create(&LoginLabels {
                        listener: labels.listener.clone(),
                        protocol: labels.protocol.clone(),
                        outcome,
                    })
                    .clone()
            }),
            bytes: Bytes {
                to_client: bytes(Direction::to_client),
                to_server: bytes(Direction::to_server),
            },
            upstream: [
                upstream(UpstreamStage::connect),
                upstream(UpstreamStage::tls),
                upstream(UpstreamStage::greeting),
            ],
        }
    }
}

/// The relay's two byte counters (shared with the listener's family).
#[derive(Debug, Clone, Default)]
pub(crate) struct Bytes {
    pub to_client: Count,
    pub to_server: Count,
}

/// One listener's handles (kept across reloads with its socket). Without
/// [`Counters`] (`Default`) they count into nothing registered: tests.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    accepted: Count,
    refused: [Count; 3],
    open: Level,
    sessions: Level,
    logins: [Count; 6],
    pub(crate) bytes: Bytes,
    upstream: [Count; 3],
}

impl ListenerStats {
    /// Counts an accepted connection as open until the guard is dropped.
    pub(crate) fn opened(self: &Arc<Self>) -> OpenConnection {
        self.accepted.inc();
        self.open.inc();
        OpenConnection(self.clone())
    }

    /// Client connections open now.
    pub(crate) fn open(&self) -> usize {
        usize::try_from(self.open.get()).unwrap_or(0)
    }

    pub(crate) fn refused(&self, why: RefusedBecause) {
        self.refused[why as usize].inc();
    }

    /// Counts a logged-in session as relaying until the guard is dropped.
    pub(crate) fn session(self: &Arc<Self>) -> OpenSession {
        self.sessions.inc();
        OpenSession(self.clone())
    }

    pub(crate) fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].inc();
    }

    pub(crate) fn upstream_failed(&self, stage: UpstreamStage) {
        self.upstream[stage as usize].inc();
    }

    #[cfg(test)]
    pub(crate) fn logins(&self, outcome: LoginOutcome) -> u64 {
        self.logins[outcome as usize].get()
    }
}

pub(crate) struct OpenConnection(Arc<ListenerStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

pub(crate) struct OpenSession(Arc<ListenerStats>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.sessions.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_count_into_their_listener_family() {
        let counters = Counters::default();
        let imap = Arc::new(counters.listener("imap", "127.0.0.1:1143"));
        let smtp = Arc::new(counters.listener("smtp", "127.0.0.1:1587"));
        let a = imap.opened();
        let b = imap.opened();
        let _s = smtp.opened();
        assert_eq!((imap.open(), smtp.open()), (2, 1));
        drop(a);
        drop(b);
        assert_eq!(imap.open(), 0);
        imap.login(LoginOutcome::ok);
        imap.login(LoginOutcome::wrong_password);
        imap.refused(RefusedBecause::not_allowed);
        imap.bytes.to_client.inc_by(100);
        let again = counters.listener("imap", "127.0.0.1:1143");
        assert_eq!(again.logins(LoginOutcome::ok), 1);
        assert_eq!(again.logins(LoginOutcome::wrong_password), 1);
        assert_eq!(again.accepted.get(), 2);
        assert_eq!(again.refused[RefusedBecause::not_allowed as usize].get(), 1);
        assert_eq!(again.bytes.to_client.get(), 100);
        assert_eq!(smtp.logins(LoginOutcome::ok), 0);
        let session = imap.session();
        assert_eq!(again.sessions.get(), 1);
        drop(session);
        assert_eq!(again.sessions.get(), 0);
    }
}
