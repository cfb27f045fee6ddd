//! Repeated wrong passwords from one source address: a growing delay before
//! each further try, then a refusal for a while. Tokio time, so tests can
//! pause the clock.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Failures forgiven without delay: a typo, a client trying an old password once.
pub const FREE_FAILURES: u32 = 2;
/// The delay after the first failure beyond the free ones; it doubles with each further one.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay: guessing stays slow, and a person's next try still
/// comes well within clients' login timeouts (30 s and more).
pub const MAX_DELAY: Duration = Duration::from_secs(16);
/// This many failures within [`WINDOW`] refuse the source for [`LOCKOUT`]:
/// more than any person mistyping, few enough that guessing gets nowhere.
pub const LOCKOUT_FAILURES: u32 = 10;
/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a source that reached [`LOCKOUT_FAILURES`] is refused.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Sources remembered at most, so a flood of addresses cannot grow memory
/// without bound; past it the stalest record is dropped.
pub const MAX_SOURCES: usize = 4096;

struct Record {
    failures: u32,
    window_start: Instant,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

impl Record {
    fn expired(&self, now: Instant) -> bool {
        self.locked_until.is_none_or(|t| now >= t) && now >= self.window_start + WINDOW
    }
}

/// What to do with a login attempt from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead after this delay (zero for a source without recent failures).
    Proceed(Duration),
    /// Refuse without checking anything; the source may try again after this.
    Refuse(Duration),
}

#[derive(Default)]
pub struct Throttle {
    sources: Mutex<HashMap<IpAddr, Record>>,
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

impl Throttle {
    pub fn new() -> Throttle {
        Throttle::default()
    }

    pub fn verdict(&self, source: IpAddr) -> Verdict {
        let now = Instant::now();
        let mut sources = self.sources.lock();
        let Some(record) = sources.get(&source) else {
            return Verdict::Proceed(Duration::ZERO);
        };
        if record.expired(now) {
            sources.remove(&source);
            return Verdict::Proceed(Duration::ZERO);
        }
        if let Some(until) = record.locked_until
            && now < until
        {
            return Verdict::Refuse(until - now);
        }
        let delay = delay_after(record.failures);
        // The delay counts from the last failure: a person who waited is not held again.
        let waited = now.saturating_duration_since(record.last_failure);
        Verdict::Proceed(delay.saturating_sub(waited))
    }

    /// Waits out the source's delay; `Err(retry_after)` while it is refused.
    pub async fn admit(&self, source: IpAddr) -> Result<(), Duration> {
        match self.verdict(source) {
            Verdict::Refuse(left) => Err(left),
            Verdict::Proceed(delay) if delay.is_zero() => Ok(()),
            Verdict::Proceed(delay) => {
                tokio::time::sleep(delay).await;
                // A refusal may have started while this attempt waited.
                match self.verdict(source) {
                    Verdict::Refuse(left) => Err(left),
                    Verdict::Proceed(_) => Ok(()),
                }
            }
        }
    }

    /// Records a wrong password (or unknown user) from `source`.
    pub fn failed(&self, source: IpAddr) {
        let now = Instant::now();
        let mut sources = self.sources.lock();
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            sources.retain(|_, r| !r.expired(now));
            if sources.len() >= MAX_SOURCES
                && let Some(stalest) = sources
                    .iter()
                    .min_by_key(|(_, r)| r.last_failure)
                    .map(|(ip, _)| *ip)
            {
                sources.remove(&stalest);
            }
        }
        let record = sources.entry(source).or_insert(Record {
            failures: 0,
            window_start: now,
            last_failure: now,
            locked_until: None,
        });
        if record.expired(now) {
            *record = Record {
                failures: 0,
                window_start: now,
                last_failure: now,
                locked_until: None,
            };
        }
        record.failures += 1;
        record.last_failure = now;
        if record.failures >= LOCKOUT_FAILURES {
            record.locked_until = Some(now + LOCKOUT);
            // The window restarts when the refusal ends.
            record.window_start = now + LOCKOUT;
            record.failures = 0;
            tracing::warn!(%source, failures = LOCKOUT_FAILURES, refuse_secs = LOCKOUT.as_secs(),
                "too many failed logins from this address; refusing it for a while");
        } else if record.failures > FREE_FAILURES {
            tracing::warn!(%source, failures = record.failures,
                delay_secs = delay_after(record.failures).as_secs(),
                "repeated failed logins from this address; slowing it down");
        }
    }

    /// A successful login clears the source's record.
    pub fn succeeded(&self, source: IpAddr) {
        let mut sources = self.sources.lock();
        if sources
            .get(&source)
            .is_some_and(|r| r.locked_until.is_none())
        {
            sources.remove(&source);
        }
    }

    /// Sources with a record (for status and tests).
    pub fn tracked(&self) -> usize {
        self.sources.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn delays_grow_from_zero_and_are_capped() {
        let secs: Vec<u64> = (0..10).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(secs, [0, 0, 1, 2, 4, 8, 16, 16, 16, 16]);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_a_source_down_then_refuse_it_then_expire() {
        let t = Throttle::new();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.verdict(A), Verdict::Proceed(Duration::ZERO));
            t.failed(A);
        }
        assert_eq!(t.verdict(A), Verdict::Proceed(FIRST_DELAY));
        assert_eq!(t.verdict(B), Verdict::Proceed(Duration::ZERO), "per source");
        // admit waits the delay on tokio's clock.
        let started = Instant::now();
        t.admit(A).await.unwrap();
        assert_eq!(started.elapsed(), FIRST_DELAY);
        t.failed(A);
        assert_eq!(t.verdict(A), Verdict::Proceed(2 * FIRST_DELAY));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            t.verdict(A),
            Verdict::Proceed(Duration::from_millis(500)),
            "time already waited counts"
        );
        for _ in 3..LOCKOUT_FAILURES {
            t.failed(A);
        }
        assert_eq!(t.verdict(A), Verdict::Refuse(LOCKOUT));
        assert_eq!(t.admit(A).await, Err(LOCKOUT));
        t.succeeded(A);
        assert!(
            matches!(t.verdict(A), Verdict::Refuse(_)),
            "a success does not lift a refusal"
        );
        tokio::time::advance(LOCKOUT - Duration::from_secs(1)).await;
        assert_eq!(t.verdict(A), Verdict::Refuse(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.verdict(A), Verdict::Proceed(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn success_and_time_clear_failures() {
        let t = Throttle::new();
        for _ in 0..5 {
            t.failed(A);
        }
        t.succeeded(A);
        assert_eq!(t.verdict(A), Verdict::Proceed(Duration::ZERO));
        assert_eq!(t.tracked(), 0);
        for _ in 0..5 {
            t.failed(B);
        }
        tokio::time::advance(WINDOW).await;
        assert_eq!(t.verdict(B), Verdict::Proceed(Duration::ZERO));
        t.failed(B);
        assert_eq!(
            t.verdict(B),
            Verdict::Proceed(Duration::ZERO),
            "a new window starts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let t = Throttle::new();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            t.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(t.tracked(), MAX_SOURCES);
    }
}
