//! The server's memory budget: one bound on the bytes every connection together holds for
//! unfinished requests and unsent replies.
//!
//! Each connection holds its first [`FLOOR`] bytes without asking, so the small requests of
//! ordinary load never touch the shared counter (one atomic shared by every core would cost
//! more than the request). Beyond the floor, a connection *reserves* before it reads: a frame
//! whose payload would take it past the floor asks for the whole payload when its header
//! arrives. Granted, the frame is read to its end; refused, the connection is not read until
//! the budget has room again, its client pushed back by TCP flow control. Reserving whole
//! frames, not bytes as they come, is what keeps the bound from deadlocking: every frame being
//! read can finish, so memory comes back as its replies leave, and the waiting connections
//! are then served in their turn. Nothing well-behaved is closed and no reply is lost.
//!
//! The bound is therefore `limit + connections × FLOOR`, and a budget smaller than one frame
//! still serves it when nothing else is held (it is never refused by an empty budget).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Bytes each connection holds without asking the budget.
pub const FLOOR: usize = 64 * 1024;

pub struct MemoryBudget {
    limit: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
    /// Reservations refused (a connection stopped being read until there was room).
    refusals: AtomicU64,
    /// Set by the first refusal, so that the alarm sounds once.
    bit: AtomicBool,
    /// What the server does at the first refusal (it logs a line); the core does no I/O.
    alarm: OnceLock<Alarm>,
}

type Alarm = Box<dyn Fn(&MemoryBudget) + Send + Sync>;

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("held", &self.held())
            .field("refusals", &self.refusals())
            .finish()
    }
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
            bit: AtomicBool::new(false),
            alarm: OnceLock::new(),
        }
    }

    /// Calls `alarm` at the first refusal (once; a second alarm is ignored).
    pub fn on_first_refusal(&self, alarm: impl Fn(&MemoryBudget) + Send + Sync + 'static) {
        let _ = self.alarm.set(Box::new(alarm));
    }

    /// The default: a quarter of the machine's memory, at most 1 GiB, at least 64 MiB.
    pub fn default_limit(total_ram: Option<u64>) -> usize {
        let quarter = total_ram.map_or(1 << 30, |r| r / 4);
        quarter.clamp(64 << 20, 1 << 30) as usize
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now, beyond the connections' floors.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The most ever reserved at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Whether a reservation of `n` bytes would be granted now (a hint: another connection
    /// may take the room first).
    pub fn has_room(&self, n: usize) -> bool {
        let held = self.held();
        held == 0 || held.saturating_add(n) <= self.limit
    }

    /// Reserves `n` bytes if they fit, or if nothing is held at all (so that one frame larger
    /// than the budget is still served alone). Returns whether it did; a refusal is counted,
    /// and the first one sounds the alarm.
    pub fn try_reserve(&self, n: usize) -> bool {
        match self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held.saturating_add(n) <= self.limit).then(|| held + n)
            }) {
            Ok(before) => {
                self.peak.fetch_max(before + n, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                if !self.bit.swap(true, Ordering::Relaxed) {
                    if let Some(alarm) = self.alarm.get() {
                        alarm(self);
                    }
                }
                false
            }
        }
    }

    /// Takes `n` bytes whether or not they fit: bytes already in memory (a reply a worker
    /// produced) are held either way, and must be counted.
    pub fn take(&self, n: usize) {
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        self.peak.fetch_max(before + n, Ordering::Relaxed);
    }

    /// Gives back `n` bytes reserved earlier.
    pub fn release(&self, n: usize) {
        let before = self.held.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "released {n} B of {before} B held");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_limit_and_come_back() {
        let b = MemoryBudget::new(100);
        let alarms = std::sync::Arc::new(AtomicU64::new(0));
        let counted = alarms.clone();
        b.on_first_refusal(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(50));
        assert!(!b.try_reserve(50));
        assert!(b.try_reserve(40));
        assert_eq!((b.held(), b.peak()), (100, 100));
        b.release(60);
        assert!(b.has_room(50) && !b.has_room(61));
        assert!(b.try_reserve(50));
        assert_eq!(b.refusals(), 2);
        assert_eq!(alarms.load(Ordering::Relaxed), 1, "the alarm sounds once");
    }

    #[test]
    fn an_empty_budget_grants_one_frame_larger_than_itself() {
        let b = MemoryBudget::new(10);
        assert!(b.try_reserve(1000));
        assert!(!b.try_reserve(1));
        b.release(1000);
        assert_eq!((b.held(), b.peak()), (0, 1000));
    }

    #[test]
    fn the_default_is_a_quarter_of_memory_within_bounds() {
        assert_eq!(MemoryBudget::default_limit(Some(24 << 30)), 1 << 30);
        assert_eq!(MemoryBudget::default_limit(Some(1 << 30)), 256 << 20);
        assert_eq!(MemoryBudget::default_limit(Some(100 << 20)), 64 << 20);
        assert_eq!(MemoryBudget::default_limit(None), 1 << 30);
    }
}
