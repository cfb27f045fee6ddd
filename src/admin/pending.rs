//! Sign-ins started from the page and not yet back: found again by the
//! `state` of the redirect. Bounded in number and in age, so a page (or a
//! script) that keeps clicking Sign in cannot make it grow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most this many browser sign-ins wait at once; the oldest gives way.
pub(crate) const MAX_PENDING: usize = 16;
/// A sign-in not back within this is forgotten (the provider's codes live
/// about ten minutes; a person needs a few).
pub(crate) const PENDING_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Items by their `state`, with when they were started.
pub(crate) struct PendingMap<T> {
    items: HashMap<String, (Instant, T)>,
}

impl<T> Default for PendingMap<T> {
    fn default() -> Self {
        PendingMap {
            items: HashMap::new(),
        }
    }
}

impl<T> PendingMap<T> {
    /// Adds `item` under `state`, dropping expired ones and, when full, the oldest.
    pub fn insert(&mut self, state: String, item: T, now: Instant) {
        self.expire(now);
        while self.items.len() >= MAX_PENDING {
            let Some(oldest) = self
                .items
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.items.remove(&oldest);
        }
        self.items.insert(state, (now, item));
    }

    /// The item of `state`, removed: an answer is used once.
    pub fn take(&mut self, state: &str, now: Instant) -> Option<T> {
        self.expire(now);
        self.items.remove(state).map(|(_, item)| item)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.items
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= PENDING_EXPIRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_taken_once() {
        let now = Instant::now();
        let mut map = PendingMap::default();
        map.insert("s1".into(), 1, now);
        assert_eq!(map.take("s2", now), None);
        assert_eq!(map.take("", now), None);
        assert_eq!(map.take("s1", now), Some(1));
        assert_eq!(map.take("s1", now), None);
        assert!(map.is_empty());
    }

    #[test]
    fn old_sign_ins_expire() {
        let start = Instant::now();
        let mut map = PendingMap::default();
        map.insert("old".into(), 1, start);
        map.insert("new".into(), 2, start + PENDING_EXPIRY);
        let later = start + PENDING_EXPIRY + Duration::from_secs(1);
        assert_eq!(map.take("old", later), None);
        assert_eq!(map.take("new", later), Some(2));
    }

    #[test]
    fn the_map_is_bounded_and_the_oldest_gives_way() {
        let start = Instant::now();
        let mut map = PendingMap::default();
        for i in 0..(MAX_PENDING * 3) {
            map.insert(format!("s{i}"), i, start + Duration::from_millis(i as u64));
            assert!(map.len() <= MAX_PENDING);
        }
        let now = start + Duration::from_secs(1);
        assert_eq!(map.take("s0", now), None);
        let last = MAX_PENDING * 3 - 1;
        assert_eq!(map.take(&format!("s{last}"), now), Some(last));
        assert_eq!(
            map.take(&format!("s{}", last + 1 - MAX_PENDING), now),
            Some(last + 1 - MAX_PENDING)
        );
    }
}
