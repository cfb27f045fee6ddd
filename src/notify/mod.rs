//! Notifications: tells a person when the proxy needs them — a sign-in is
//! needed, token refreshes or an upstream have failed for a while, a
//! certificate is about to expire — and when it has recovered.
//!
//! The lower layers do not call up here: the notifier looks at them every
//! [`Timing::poll_every`] ([`POLL_EVERY`]: an event is noticed at most that
//! long after it happens, for one short lock per account), through
//! `TokenManager::health` (the token state machine's own classification),
//! `UpstreamHealth` and the certificates' end dates. `derive` turns what it
//! sees into events (thresholds, once per event and subject per
//! [`REPEAT_AFTER`], `recovered` once after a problem), and each goes to
//! the page's history (`health::Notices`), the log, and one of:
//! `notify_command` (`program`), a desktop notification (`desktop`), or for
//! the Windows service the Event Log (`event_log`).
//!
//! `lib::start` starts it, a reload hands it the new configuration (what it
//! remembers stays), the shutdown stops it (a program still running is
//! killed).

mod derive;
pub(crate) mod desktop;
pub mod event_log;
pub(crate) mod program;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Backend, Config};
use crate::session::Context;
use derive::{EventKind, Expiry, ListenerSeen, Notice, Observation, Subject, Tracker};

/// How often the notifier looks: the longest an event waits to be noticed;
/// a lock per account each time, so cheap.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Transient token failures this long before `refresh_failing`: the
/// backoff retries within minutes, and a blip (a laptop off the network for
/// a while) should not wake anyone.
pub const REFRESH_FAILING_AFTER: Duration = Duration::from_secs(15 * 60);
/// A listener's upstream failing this long before `upstream_unreachable`:
/// long enough for a server restart or a Wi-Fi change, short enough that
/// mail is not quietly stuck for an hour.
pub const UPSTREAM_UNREACHABLE_AFTER: Duration = Duration::from_secs(5 * 60);
/// `credential_expiring` this long before a certificate's end: two weeks
/// leave time for an admin to get a new one through a change process.
pub const CREDENTIAL_WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);
/// The same event about the same account or listener at most once per this
/// long: a reminder a few times a day, not a flood.
pub const REPEAT_AFTER: Duration = Duration::from_secs(6 * 3600);
/// `notify_command` is killed after this long: sending a mail or a chat
/// message takes seconds; a hung program must not pile up.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Certificate files are read this often (an end date moves only when the
/// file is replaced).
pub const CREDENTIAL_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// A desktop notification service that does not answer within this long is
/// given up on.
#[cfg(feature = "desktop")]
pub(crate) const DESKTOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The notifier's clock settings (tests shorten them; see
/// `Running::set_notify_timing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub poll_every: Duration,
    pub refresh_failing_after: Duration,
    pub upstream_unreachable_after: Duration,
    pub credential_warn_before: Duration,
    pub repeat_after: Duration,
    pub program_timeout: Duration,
    pub credential_check_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll_every: POLL_EVERY,
            refresh_failing_after: REFRESH_FAILING_AFTER,
            upstream_unreachable_after: UPSTREAM_UNREACHABLE_AFTER,
            credential_warn_before: CREDENTIAL_WARN_BEFORE,
            repeat_after: REPEAT_AFTER,
            program_timeout: PROGRAM_TIMEOUT,
            credential_check_every: CREDENTIAL_CHECK_EVERY,
        }
    }
}

/// Set by the Windows service: without `notify_command`, notifications go
/// to the Event Log (a service has no desktop).
static EVENT_LOG: AtomicBool = AtomicBool::new(false);

/// The Windows service calls this before it starts the proxy.
pub fn use_event_log() {
    EVENT_LOG.store(true, Ordering::Relaxed);
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sink {
    Program(Vec<String>),
    Desktop,
    EventLog,
}

/// What the notifier looks at and where it sends, from one configuration.
#[derive(Clone)]
pub(crate) struct Setup {
    context: Arc<Context>,
    /// Each listener's label (`imap 127.0.0.1:1143`) and upstream key.
    listeners: Vec<(String, String)>,
    /// Certificates with an end date to watch.
    certificates: Vec<(Subject, PathBuf)>,
    sink: Sink,
}

impl Setup {
    /// `addrs`: the bound listener addresses, in configuration order.
    pub(crate) fn new(
        config: &Config,
        context: Arc<Context>,
        addrs: &[std::net::SocketAddr],
    ) -> Setup {
        let listeners = config
            .listeners
            .iter()
            .zip(addrs)
            .filter(|(l, _)| l.backend != Backend::Graph)
            .filter_map(|(l, addr)| {
                let (host, port) = l.upstream_host_port()?;
                Some((format!("{} {addr}", l.protocol), format!("{host}:{port}")))
            })
            .collect();
        let mut certificates: Vec<(Subject, PathBuf)> = config
            .accounts
            .iter()
            .filter_map(|a| {
                let cert = a.client_certificate.clone()?;
                Some((Subject::ClientCertificate(a.username.clone()), cert))
            })
            .collect();
        if config.uses_local_tls() {
            let source = crate::tls::local_cert::CertSource::from_config(config);
            certificates.push((Subject::LocalCertificate, source.cert_path()));
        }
        let sink = match &config.proxy.notify_command {
            Some(command) => Sink::Program(command.clone()),
            None if EVENT_LOG.load(Ordering::Relaxed) => Sink::EventLog,
            None => Sink::Desktop,
        };
        Setup {
            context,
            listeners,
            certificates,
            sink,
        }
    }

    fn observe(&self, read_certificates: bool) -> Observation {
        let health = &self.context.upstream_health;
        Observation {
            accounts: self.context.gate.tokens().health(),
            listeners: self
                .listeners
                .iter()
                .map(|(label, key)| ListenerSeen {
                    label: label.clone(),
                    upstream: key.clone(),
                    seen: health.get(key),
                })
                .collect(),
            expiries: read_certificates.then(|| {
                self.certificates
                    .iter()
                    .filter_map(|(subject, path)| {
                        Some(Expiry {
                            subject: subject.clone(),
                            not_after: not_after(path)?,
                        })
                    })
                    .collect()
            }),
        }
    }
}

/// The end date of the first certificate in a PEM file, if it can be read.
fn not_after(path: &std::path::Path) -> Option<SystemTime> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    let info = crate::tls::local_cert::CertInfo::parse(&der)?;
    let secs = u64::try_from(info.not_after).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The running notifier.
pub(crate) struct Notifier {
    setup: watch::Sender<Setup>,
    timing: watch::Sender<Timing>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Notifier {
    /// A proxy dropped without its shutdown (tests) leaves no task behind.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Notifier {
    pub(crate) fn start(setup: Setup) -> Notifier {
        let (setup, setup_rx) = watch::channel(setup);
        let (timing, timing_rx) = watch::channel(Timing::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_loop(setup_rx, timing_rx, stop_rx));
        Notifier {
            setup,
            timing,
            stop,
            task: Some(task),
        }
    }

    /// A reload: look at and send through the new configuration.
    pub(crate) fn update(&self, setup: Setup) {
        self.setup.send_replace(setup);
    }

    pub(crate) fn set_timing(&self, timing: Timing) {
        self.timing.send_replace(timing);
    }

    /// Stops looking; programs still running are killed.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn watch_loop(
    mut setup: watch::Receiver<Setup>,
    mut timing: watch::Receiver<Timing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tracker = Tracker::default();
    let mut deliveries = JoinSet::new();
    let mut certificates_read: Option<tokio::time::Instant> = None;
    loop {
        let now_timing = timing.borrow_and_update().clone();
        let current = setup.borrow_and_update().clone();
        let read_certificates =
            certificates_read.is_none_or(|at| at.elapsed() >= now_timing.credential_check_every);
        if read_certificates {
            certificates_read = Some(tokio::time::Instant::now());
        }
        let seen = match read_certificates {
            // Files: off the runtime's threads.
            true => {
                let s = current.clone();
                tokio::task::spawn_blocking(move || s.observe(true))
                    .await
                    .unwrap_or_default()
            }
            false => current.observe(false),
        };
        for notice in tracker.observe(seen, SystemTime::now(), &now_timing) {
            deliveries.spawn(deliver(current.clone(), notice, now_timing.program_timeout));
        }
        while deliveries.try_join_next().is_some() {}
        tokio::select! {
            _ = tokio::time::sleep(now_timing.poll_every) => {}
            _ = timing.changed() => {}
            _ = setup.changed() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Dropping the set aborts the deliveries: a program still running is killed.
    deliveries.shutdown().await;
}

/// Records `notice` for the page and the log, then sends it.
async fn deliver(setup: Setup, notice: Notice, timeout: Duration) {
    let page_url = setup
        .context
        .sign_in_page
        .get()
        .cloned()
        .unwrap_or_default();
    setup.context.notices.push(crate::health::Notice {
        at: SystemTime::now(),
        event: notice.event.name(),
        subject: notice.subject.describe(),
        message: notice.message.clone(),
    });
    let problem = notice.event != EventKind::Recovered;
    if problem {
        tracing::warn!(event = notice.event.name(), message = %notice.message, "notification");
    } else {
        tracing::info!(event = notice.event.name(), message = %notice.message, "notification");
    }
    match &setup.sink {
        Sink::Program(command) => match program::run(command, &notice, &page_url, timeout).await {
            program::Outcome::Done => {
                tracing::debug!(event = notice.event.name(), "notify_command done")
            }
            program::Outcome::Failed(why) => {
                tracing::warn!(event = notice.event.name(), error = %why, "notify_command failed")
            }
            program::Outcome::Killed => tracing::warn!(
                event = notice.event.name(),
                timeout_secs = timeout.as_secs_f32(),
                "notify_command did not finish in time; killed"
            ),
        },
        Sink::Desktop => desktop::show(&notice, &page_url).await,
        Sink::EventLog => {
            #[cfg(windows)]
            {
                let level = match problem {
                    true => event_log::Level::Warning,
                    false => event_log::Level::Information,
                };
                let text = format!("{}: {}", notice.event.name(), notice.message);
                let _ = tokio::task::spawn_blocking(move || event_log::report(level, &text)).await;
            }
        }
    }
}
