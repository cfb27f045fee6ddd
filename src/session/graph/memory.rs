//! The memory the Graph listeners spend on message text, across sessions
//! (`graph_memory_mib`). A session reserves what its message in hand holds
//! as it grows, in steps of [`RESERVE_STEP`]; a message that would pass the
//! bound is read to its end and dropped, and its client hears `452 4.3.1`
//! (try later). The reservation ends when Graph has the message.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Reservations grow in steps of this many octets: one atomic operation
/// per MiB of message, not one per read.
pub(crate) const RESERVE_STEP: usize = 1024 * 1024;

/// The bound and what is reserved of it; shared across reloads.
#[derive(Debug)]
pub struct MessageMemory {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl MessageMemory {
    pub fn new(limit: usize) -> MessageMemory {
        MessageMemory {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// A reload's new bound; reservations held stay.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Octets reserved now (for tests and the log).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_grow(&self, by: usize) -> bool {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(by).filter(|&after| after <= limit)
            })
            .is_ok()
    }

    fn shrink(&self, by: usize) {
        // Never below zero: each reservation gives back only what it took.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(by))
            });
    }
}

/// One session's reservation; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reserved<'a> {
    memory: &'a MessageMemory,
    octets: usize,
}

impl<'a> Reserved<'a> {
    pub(crate) fn new(memory: &'a MessageMemory) -> Reserved<'a> {
        Reserved { memory, octets: 0 }
    }

    /// Makes the reservation cover `holding` octets (rounded up to a
    /// step). `false`: the bound would be passed; the reservation is then
    /// given back whole (the message in hand is to be dropped).
    pub(crate) fn cover(&mut self, holding: usize) -> bool {
        let want = holding.div_ceil(RESERVE_STEP).saturating_mul(RESERVE_STEP);
        if want > self.octets {
            if !self.memory.try_grow(want - self.octets) {
                self.release();
                return false;
            }
        } else {
            self.memory.shrink(self.octets - want);
        }
        self.octets = want;
        true
    }

    pub(crate) fn release(&mut self) {
        self.memory.shrink(self.octets);
        self.octets = 0;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_in_steps_and_stop_at_the_bound() {
        let memory = MessageMemory::new(4 * RESERVE_STEP);
        let mut a = Reserved::new(&memory);
        let mut b = Reserved::new(&memory);
        assert!(a.cover(1));
        assert_eq!(memory.used(), RESERVE_STEP);
        assert!(a.cover(2 * RESERVE_STEP + 5));
        assert_eq!(memory.used(), 3 * RESERVE_STEP);
        assert!(b.cover(RESERVE_STEP));
        assert_eq!(memory.used(), 4 * RESERVE_STEP);
        // Past the bound: refused, and b's reservation is given back.
        assert!(!b.cover(RESERVE_STEP + 1));
        assert_eq!(memory.used(), 3 * RESERVE_STEP);
        assert!(a.cover(0));
        assert_eq!(memory.used(), 0);
        assert!(b.cover(4 * RESERVE_STEP));
        drop(b);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_lower_bound_after_a_reload_keeps_what_is_held() {
        let memory = MessageMemory::new(4 * RESERVE_STEP);
        let mut a = Reserved::new(&memory);
        assert!(a.cover(3 * RESERVE_STEP));
        memory.set_limit(RESERVE_STEP);
        assert!(!Reserved::new(&memory).cover(1));
        assert!(a.cover(RESERVE_STEP));
        assert_eq!(memory.used(), RESERVE_STEP);
    }
}
