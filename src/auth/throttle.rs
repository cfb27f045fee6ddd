//! Failed logins, counted per source and per account: a growing delay
//! before each further try, then a refusal for a while. Tokio time, so
//! tests can pause the clock.
//!
//! A record is kept per (source, subject). The source is the client's
//! address, or on loopback the local user who owns the client's socket
//! where the OS tells it (`net::peer_user`), because there every client is
//! `127.0.0.1`. The subject is the account the login names, or one shared
//! subject for every name that is no account: guesses at unknown names never
//! count against a real account, and guesses from one local user or host
//! never lock out the account's owner on another.
//!
//! An attempt is reserved when it is admitted, before the password is
//! checked: a success releases the reservation, a judged failure keeps it.
//! Attempts in flight count against the window's [`LOCKOUT_FAILURES`], so
//! parallel guesses are counted as they arrive, not after they were all
//! judged: at most that many are ever judged. An attempt that finds the
//! window taken by attempts in flight waits for one of them to settle (a
//! client opening many connections with the right password is not held
//! up for long), at most [`MAX_DELAY`], then gets the temporary reply.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::net::peer_user::{self, PeerUser};

/// Failures forgiven without delay: a typo, a client trying an old password once.
pub const FREE_FAILURES: u32 = 2;
/// The delay after the first failure beyond the free ones; it doubles with each further one.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay: guessing stays slow, and a person's next try still
/// comes well within clients' login timeouts (30 s and more). Also how
/// long an attempt waits for a place when attempts in flight fill the
/// window, before it is refused for now.
pub const MAX_DELAY: Duration = Duration::from_secs(16);
/// This many failures within [`WINDOW`] refuse the (source, account) for
/// [`LOCKOUT`]: more than any person mistyping, few enough that guessing
/// gets nowhere. Attempts in flight count: no more than this many are
/// ever judged in a window.
pub const LOCKOUT_FAILURES: u32 = 10;
/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a (source, account) that reached [`LOCKOUT_FAILURES`] is refused.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Records kept at most, so a flood of addresses cannot grow memory
/// without bound; past it the stalest record is dropped. A source makes at
/// most one record per account plus one for names that are no account.
pub const MAX_RECORDS: usize = 4096;

/// Who a login comes from, as failures are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A loopback client whose local user the OS named.
    LocalUser(PeerUser),
    /// Any other client, by address (an IPv4-mapped one as IPv4). On
    /// loopback where the OS names no user (macOS), every local client
    /// shares `127.0.0.1`.
    Address(IpAddr),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::LocalUser(user) => write!(f, "local {user}"),
            Source::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// What a login names, as failures are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An account of this proxy (its lowercase address, or a catch-all's
    /// name when the catch-all's shared `password_hash` is what is tried).
    Account(String),
    /// Any name that is no account: unknown, or a catch-all address that
    /// has no tokens. One subject for all of them, so trying many names
    /// gains nothing and costs no real account anything.
    NotAnAccount,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Account(name) => f.write_str(name),
            Subject::NotAnAccount => f.write_str("names that are no account"),
        }
    }
}

type Key = (Source, Subject);

struct Record {
    /// Judged failures in this window.
    failures: u32,
    /// Admitted attempts not judged yet: they count as failures until they
    /// are settled.
    pending: u32,
    window_start: Instant,
    /// The latest judged failure (or success): the next attempt's delay
    /// counts from here.
    last: Instant,
    locked_until: Option<Instant>,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            pending: 0,
            window_start: now,
            last: now,
            locked_until: None,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    fn expired(&self, now: Instant) -> bool {
        self.pending == 0 && self.locked(now).is_none() && now >= self.window_start + WINDOW
    }

    fn empty(&self, now: Instant) -> bool {
        self.pending == 0 && self.failures == 0 && self.locked(now).is_none()
    }
}

/// How the throttle learns who a loopback client is.
type Identify = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<PeerUser> + Send + Sync>;

pub struct Throttle {
    records: Mutex<HashMap<Key, Record>>,
    /// Woken whenever an attempt settles: attempts waiting for a place in
    /// a full window look again.
    settled: Notify,
    /// `None`: ask the OS (`net::peer_user`), on a blocking thread.
    identify: RwLock<Option<Identify>>,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            records: Mutex::new(HashMap::new()),
            settled: Notify::new(),
            identify: RwLock::new(None),
        }
    }
}

/// The delay before the next try after `failures` recent failures.
pub fn delay_after(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES) {
        None => Duration::ZERO,
        Some(doublings) => FIRST_DELAY
            .checked_mul(1u32 << doublings.min(16))
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY),
    }
}

/// An admitted attempt, counted until it is settled: [`Reservation::succeeded`]
/// releases it and clears the record, [`Reservation::failed`] keeps it as a
/// failure; dropped unsettled (not judged: the token endpoint was down, the
/// client went away) it is released.
pub struct Reservation {
    throttle: Arc<Throttle>,
    key: Option<Key>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .finish()
    }
}

impl Reservation {
    /// The right password: the record of this (source, account) is cleared
    /// (a refusal already running is not lifted).
    pub fn succeeded(mut self) {
        if let Some(key) = self.key.take() {
            self.throttle.settle(&key, Settled::Success);
        }
    }

    /// Judged and refused: the attempt stays counted.
    pub fn failed(mut self) {
        if let Some(key) = self.key.take() {
            self.throttle.settle(&key, Settled::Failure);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.throttle.settle(&key, Settled::NotJudged);
        }
    }
}

/// Why an attempt finds no place.
enum Full {
    /// Refused for this long.
    Locked(Duration),
    /// Attempts in flight take what is left of the window.
    InFlight,
}

enum Settled {
    Success,
    Failure,
    NotJudged,
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle::default()
    }

    /// Replaces the OS lookup of a loopback client's user (tests: two
    /// sockets of one process have the same owner).
    #[doc(hidden)]
    pub fn identify_peers_with(
        &self,
        identify: impl Fn(SocketAddr, SocketAddr) -> Option<PeerUser> + Send + Sync + 'static,
    ) {
        *self.identify.write() = Some(Arc::new(identify));
    }

    /// Who the client at `peer`, connected to the proxy's `local`, counts
    /// as: its local user when it runs on this machine (loopback, or the
    /// machine's own address) and the OS tells it, else its address.
    pub async fn source(&self, peer: SocketAddr, local: Option<SocketAddr>) -> Source {
        let ip = peer.ip().to_canonical();
        if let Some(local) = local
            && peer_user::from_this_machine(local, peer)
        {
            let identify = self.identify.read().clone();
            let user = match identify {
                Some(identify) => identify(local, peer),
                None => tokio::task::spawn_blocking(move || peer_user::owner(local, peer))
                    .await
                    .ok()
                    .flatten(),
            };
            if let Some(user) = user {
                return Source::LocalUser(user);
            }
        }
        Source::Address(ip)
    }

    /// Admits an attempt of `source` at `subject` after its delay, counting
    /// it at once; `Err(retry_after)` while refused, and when attempts in
    /// flight keep the window full for longer than [`MAX_DELAY`].
    pub async fn admit(
        self: &Arc<Self>,
        source: Source,
        subject: Subject,
    ) -> Result<Reservation, Duration> {
        let key = (source, subject);
        let give_up = Instant::now() + MAX_DELAY;
        let start = loop {
            // Registered before looking, so a settle in between is not missed.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.reserve(&key) {
                Ok(start) => break start,
                Err(Full::Locked(left)) => return Err(left),
                Err(Full::InFlight) => {
                    if tokio::time::timeout_at(give_up, settled).await.is_err() {
                        return Err(MAX_DELAY);
                    }
                }
            }
        };
        let reservation = Reservation {
            throttle: self.clone(),
            key: Some(key),
        };
        if start > Instant::now() {
            tokio::time::sleep_until(start).await;
        }
        Ok(reservation)
    }

    /// Counts an attempt on `key`; `Ok(when it may start)`.
    fn reserve(&self, key: &Key) -> Result<Instant, Full> {
        let now = Instant::now();
        let mut records = self.records.lock();
        if !records.contains_key(key) && records.len() >= MAX_RECORDS {
            make_room(&mut records, now);
        }
        let record = records
            .entry(key.clone())
            .or_insert_with(|| Record::new(now));
        if record.expired(now) {
            *record = Record::new(now);
        }
        if let Some(left) = record.locked(now) {
            return Err(Full::Locked(left));
        }
        if record.failures + record.pending >= LOCKOUT_FAILURES {
            // What is left of the window is in flight: its outcome decides.
            return Err(Full::InFlight);
        }
        record.pending += 1;
        // The delay counts from the last failure: a person who waited is
        // not held again.
        Ok((record.last + delay_after(record.failures)).max(now))
    }

    fn settle(&self, key: &Key, settled: Settled) {
        let now = Instant::now();
        let mut records = self.records.lock();
        let Some(record) = records.get_mut(key) else {
            drop(records);
            self.settled.notify_waiters();
            return;
        };
        record.pending = record.pending.saturating_sub(1);
        match settled {
            Settled::NotJudged => {}
            Settled::Success => {
                if record.locked(now).is_none() {
                    record.failures = 0;
                    record.last = now;
                }
            }
            Settled::Failure => {
                record.failures += 1;
                record.last = now;
                let (source, subject) = key;
                if record.failures >= LOCKOUT_FAILURES {
                    record.locked_until = Some(now + LOCKOUT);
                    // The window restarts when the refusal ends.
                    record.window_start = now + LOCKOUT;
                    record.failures = 0;
                    tracing::warn!(%source, account = %subject, failures = LOCKOUT_FAILURES,
                        refuse_secs = LOCKOUT.as_secs(),
                        "too many failed logins from this source for this account; refusing them for a while");
                } else if record.failures > FREE_FAILURES {
                    tracing::warn!(%source, account = %subject, failures = record.failures,
                        delay_secs = delay_after(record.failures).as_secs(),
                        "repeated failed logins from this source for this account; slowing them down");
                }
            }
        }
        if record.empty(now) {
            records.remove(key);
        }
        drop(records);
        self.settled.notify_waiters();
    }

    /// Records kept (for status and tests).
    pub fn tracked(&self) -> usize {
        self.records.lock().len()
    }
}

/// Drops expired records, then, if still full, the stalest one without an
/// attempt in flight.
fn make_room(records: &mut HashMap<Key, Record>, now: Instant) {
    records.retain(|_, r| !r.expired(now));
    if records.len() >= MAX_RECORDS
        && let Some(stalest) = records
            .iter()
            .min_by_key(|(_, r)| (r.pending > 0, r.last))
            .map(|(key, _)| key.clone())
    {
        records.remove(&stalest);
    }
}

#[cfg(test)]
#[path = "throttle_tests.rs"]
mod tests;
