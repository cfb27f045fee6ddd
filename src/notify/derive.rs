//! From what the proxy observes to the notifications it sends: a pure
//! function of the observations, the time and the thresholds, with the
//! memory it needs (since when something fails, what was said and when).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::auth::tokens::TokenHealth;
use crate::health::Seen;

use super::Timing;

/// The events a notification is about (`XP_EVENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EventKind {
    SignInNeeded,
    RefreshFailing,
    UpstreamUnreachable,
    CredentialExpiring,
    Recovered,
}

impl EventKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            EventKind::SignInNeeded => "sign_in_needed",
            EventKind::RefreshFailing => "refresh_failing",
            EventKind::UpstreamUnreachable => "upstream_unreachable",
            EventKind::CredentialExpiring => "credential_expiring",
            EventKind::Recovered => "recovered",
        }
    }
}

/// What a notification is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    /// An account's tokens (`XP_ACCOUNT`).
    Account(String),
    /// A listener's upstream (`XP_LISTENER`: `imap 127.0.0.1:1143`).
    Listener(String),
    /// An account's client certificate (`XP_ACCOUNT`).
    ClientCertificate(String),
    /// The local TLS certificate of the `local_tls` listeners.
    LocalCertificate,
}

impl Subject {
    /// `XP_ACCOUNT`: empty for listener and local certificate events.
    pub(crate) fn account(&self) -> &str {
        match self {
            Subject::Account(a) | Subject::ClientCertificate(a) => a,
            _ => "",
        }
    }

    /// `XP_LISTENER`: empty for account events.
    pub(crate) fn listener(&self) -> &str {
        match self {
            Subject::Listener(l) => l,
            _ => "",
        }
    }

    /// A short name for the page and the log.
    pub(crate) fn describe(&self) -> String {
        match self {
            Subject::Account(a) => a.clone(),
            Subject::Listener(l) => format!("listener {l}"),
            Subject::ClientCertificate(a) => format!("client certificate of {a}"),
            Subject::LocalCertificate => "local TLS certificate".into(),
        }
    }
}

/// One notification to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub event: EventKind,
    pub subject: Subject,
    pub message: String,
}

/// A listener's upstream as last seen.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSeen {
    pub label: String,
    pub upstream: String,
    pub seen: Option<Seen>,
}

/// A certificate's end date, where known.
#[derive(Debug, Clone)]
pub(crate) struct Expiry {
    pub subject: Subject,
    pub not_after: SystemTime,
}

/// One look at the proxy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observation {
    pub accounts: Vec<(String, TokenHealth)>,
    pub listeners: Vec<ListenerSeen>,
    /// `None`: not looked at this time (certificates are read less often);
    /// what was known stays.
    pub expiries: Option<Vec<Expiry>>,
}

/// At most one notification per event and subject per `Timing::repeat_after`.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    last: HashMap<(EventKind, Subject), SystemTime>,
}

impl Limiter {
    /// Whether `event` about `subject` may be sent at `now`; if so, it is
    /// counted as sent. A clock that went back counts as no time passed.
    pub(crate) fn allow(
        &mut self,
        event: EventKind,
        subject: &Subject,
        now: SystemTime,
        window: Duration,
    ) -> bool {
        let key = (event, subject.clone());
        if let Some(last) = self.last.get(&key) {
            let passed = now.duration_since(*last).unwrap_or(Duration::ZERO);
            if passed < window {
                return false;
            }
        }
        self.last.insert(key, now);
        true
    }
}

/// What is remembered of one subject.
#[derive(Debug, Default)]
struct Track {
    /// When transient failures were first seen (accounts).
    failing_since: Option<SystemTime>,
    /// A problem was notified and no `recovered` since.
    notified: bool,
}

/// Turns observations into notifications.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    tracks: HashMap<Subject, Track>,
    limiter: Limiter,
    expiries: Vec<Expiry>,
}

impl Tracker {
    pub(crate) fn observe(
        &mut self,
        seen: Observation,
        now: SystemTime,
        timing: &Timing,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        for (account, health) in seen.accounts {
            let subject = Subject::Account(account);
            match health {
                TokenHealth::SignInNeeded(why) => {
                    self.track(&subject).failing_since = None;
                    let message = format!(
                        "{} must sign in again (the token endpoint refused the refresh token: {why})",
                        subject.describe()
                    );
                    self.problem(
                        EventKind::SignInNeeded,
                        subject,
                        message,
                        now,
                        timing,
                        &mut out,
                    );
                }
                TokenHealth::Failing(why) => {
                    let since = *self.track(&subject).failing_since.get_or_insert(now);
                    let failing = now.duration_since(since).unwrap_or(Duration::ZERO);
                    if failing >= timing.refresh_failing_after {
                        let message = format!(
                            "token refreshes for {} have failed for {} minutes: {why}",
                            subject.describe(),
                            failing.as_secs() / 60
                        );
                        self.problem(
                            EventKind::RefreshFailing,
                            subject,
                            message,
                            now,
                            timing,
                            &mut out,
                        );
                    }
                }
                TokenHealth::Good => {
                    self.track(&subject).failing_since = None;
                    self.recover(subject, "tokens are refreshed again", &mut out);
                }
                TokenHealth::Unknown => {}
            }
        }
        for l in seen.listeners {
            let subject = Subject::Listener(l.label);
            match l.seen {
                Some(Seen {
                    error: Some(error),
                    failing_since: Some(since),
                    ..
                }) => {
                    let failing = now.duration_since(since).unwrap_or(Duration::ZERO);
                    if failing >= timing.upstream_unreachable_after {
                        let message = format!(
                            "{} cannot reach {} for {} minutes: {error}",
                            subject.describe(),
                            l.upstream,
                            failing.as_secs() / 60
                        );
                        self.problem(
                            EventKind::UpstreamUnreachable,
                            subject,
                            message,
                            now,
                            timing,
                            &mut out,
                        );
                    }
                }
                Some(Seen { error: None, .. }) => {
                    let message = format!("{} reaches {} again", subject.describe(), l.upstream);
                    self.recover(subject, &message, &mut out);
                }
                _ => {}
            }
        }
        if let Some(expiries) = seen.expiries {
            self.expiries = expiries;
        }
        for e in self.expiries.clone() {
            let left = e.not_after.duration_since(now).unwrap_or(Duration::ZERO);
            if left <= timing.credential_warn_before {
                let message = match left.is_zero() {
                    true => format!("the {} has expired", e.subject.describe()),
                    false => format!(
                        "the {} expires in {} days ({}): renew it",
                        e.subject.describe(),
                        left.as_secs().div_ceil(86_400),
                        date(e.not_after)
                    ),
                };
                self.problem(
                    EventKind::CredentialExpiring,
                    e.subject,
                    message,
                    now,
                    timing,
                    &mut out,
                );
            } else {
                let message = format!("the {} was renewed", e.subject.describe());
                self.recover(e.subject, &message, &mut out);
            }
        }
        out
    }

    fn track(&mut self, subject: &Subject) -> &mut Track {
        self.tracks.entry(subject.clone()).or_default()
    }

    fn problem(
        &mut self,
        event: EventKind,
        subject: Subject,
        message: String,
        now: SystemTime,
        timing: &Timing,
        out: &mut Vec<Notice>,
    ) {
        if self
            .limiter
            .allow(event, &subject, now, timing.repeat_after)
        {
            self.track(&subject).notified = true;
            out.push(Notice {
                event,
                subject,
                message,
            });
        }
    }

    /// `recovered`, once, after a problem that was notified.
    fn recover(&mut self, subject: Subject, message: &str, out: &mut Vec<Notice>) {
        let Some(track) = self.tracks.get_mut(&subject) else {
            return;
        };
        if std::mem::take(&mut track.notified) {
            out.push(Notice {
                event: EventKind::Recovered,
                message: format!("{}: {message}", subject.describe()),
                subject,
            });
        }
    }
}

/// `2026-12-01` for a message.
fn date(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "derive_tests.rs"]
mod tests;
