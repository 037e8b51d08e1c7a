//! How long a fan-out thread may spend writing to TCP readers' sockets itself, before it
//! hands the rest of a batch to the readers' writer tasks.
//!
//! A direct write is the cheapest way out: one `sendmsg` on the fan-out thread, no task
//! wake-up. But the fan-out runs on the publisher's thread (and one helper per core), and
//! while it writes, the publisher's input waits. Writer tasks cost more per write while
//! they keep up (a wake-up and a poll per reader per frame), but when they run behind they
//! write several frames per call: that is what lets the box serve more TCP readers than
//! one write per reader per frame would.
//!
//! So every flush may write directly for [`DIRECT_STRETCH`]. When that runs out with
//! readers left, the flush predicts its whole length from the pace so far, and keeps
//! writing directly only if the whole of it fits in the time this thread has saved up: a
//! token bucket refilled at [`DIRECT_SHARE_PERCENT`] of the wall clock, up to
//! [`DIRECT_BURST`]. A fan-out that fits (1,000 readers of a 30 fps stream take about a
//! tenth of a core) is written directly to the last reader; one that does not (5,000 or
//! 10,000 readers) stops at the stretch, as the queued readers' writers will batch.
//!
//! The budget is for the threads others wait for: a runtime worker that runs a source's
//! task (and its RTSP neighbours'). The fan-out threads, which deliver the batches of
//! streams with many readers off the runtime ([`crate::rtsp::readers::outbox`]), are exempt
//! ([`exempt_this_thread`]): nobody waits for them, a fan-out that falls behind sends
//! bigger batches itself, and a direct write to each of 5,000 TCP readers cost 20 % less
//! CPU than handing most of them to their writer tasks, woken from outside the runtime.
//! Sans-IO: time is passed in.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long every flush may write directly, whatever its size.
pub const DIRECT_STRETCH: Duration = Duration::from_millis(2);

/// The share of the wall clock at which a thread's bucket refills, in percent: over time,
/// flushes that write past their stretch keep the thread's direct writing to about this.
pub const DIRECT_SHARE_PERCENT: u32 = 25;

/// The most direct-write time a thread can save up: the longest flush written directly
/// to its last reader.
pub const DIRECT_BURST: Duration = Duration::from_millis(8);

/// Whether a flush that took `elapsed` for its first `done` of `total` sinks is predicted,
/// at that pace, to fit whole in `saved`.
pub fn whole_flush_fits(elapsed: Duration, done: usize, total: usize, saved: Duration) -> bool {
    if done == 0 {
        return false;
    }
    let per_sink = elapsed / u32::try_from(done).unwrap_or(u32::MAX);
    per_sink.saturating_mul(u32::try_from(total).unwrap_or(u32::MAX)) <= saved
}

/// A token bucket of direct-write time (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectBudget {
    share_percent: u32,
    burst: Duration,
    /// Time saved up, as of `last`.
    tokens: Duration,
    /// When the bucket was last refilled; `None` before the first flush.
    last: Option<Instant>,
}

impl Default for DirectBudget {
    fn default() -> Self {
        DirectBudget::new(DIRECT_SHARE_PERCENT, DIRECT_BURST)
    }
}

impl DirectBudget {
    /// A full bucket refilling at `share_percent` of wall time, holding at most `burst`.
    pub const fn new(share_percent: u32, burst: Duration) -> DirectBudget {
        DirectBudget {
            share_percent,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Refills the bucket for the time since the last call and returns the time saved up
    /// for a flush starting at `now`.
    pub fn handle_flush_start(&mut self, now: Instant) -> Duration {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last);
            let earned = elapsed.saturating_mul(self.share_percent) / 100;
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
        }
        // A clock read that lags another thread's never moves the refill point back.
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        self.tokens
    }

    /// Takes `spent` (the flush's direct-writing time) out of the bucket.
    pub fn handle_spent(&mut self, spent: Duration) {
        self.tokens = self.tokens.saturating_sub(spent);
    }

    /// The direct-write time saved up, as of the last call.
    pub fn tokens(&self) -> Duration {
        self.tokens
    }
}

thread_local! {
    /// This thread's bucket: each thread that delivers batches has its own.
    static BUDGET: Cell<DirectBudget> = Cell::new(DirectBudget::default());
    /// Whether this thread is exempt from the budget.
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
}

/// Exempts this thread from the budget, for good: a fan-out thread that nobody waits for.
pub fn exempt_this_thread() {
    EXEMPT.with(|e| e.set(true));
}

/// Starts a flush on this thread at `now`: the direct-write time it has saved up, or
/// `None` if the thread is exempt (its flushes write directly to the last reader).
pub fn start(now: Instant) -> Option<Duration> {
    if EXEMPT.with(Cell::get) {
        return None;
    }
    Some(BUDGET.with(|b| {
        let mut budget = b.get();
        let granted = budget.handle_flush_start(now);
        b.set(budget);
        granted
    }))
}

/// Ends a flush on this thread that wrote directly for `spent`.
pub fn spend(spent: Duration) {
    BUDGET.with(|b| {
        let mut budget = b.get();
        budget.handle_spent(spent);
        b.set(budget);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_whole_flush_is_predicted_from_the_pace_so_far() {
        // 2 ms for 290 of 500 sinks: 3.45 ms in all, fits 8 ms.
        assert!(whole_flush_fits(2 * MS, 290, 500, 8 * MS));
        // 2 ms for 290 of 2,500: 17 ms, does not.
        assert!(!whole_flush_fits(2 * MS, 290, 2_500, 8 * MS));
        // Exactly the saved time fits; nothing done yet predicts nothing.
        assert!(whole_flush_fits(2 * MS, 1, 4, 8 * MS));
        assert!(!whole_flush_fits(2 * MS, 0, 4, 8 * MS));
    }

    #[test]
    fn a_fan_out_within_the_share_is_always_granted_all_it_needs() {
        // 3 ms of writes per 33 ms frame is 9 %: under a 15 % share, never cut short.
        let mut b = DirectBudget::new(15, 8 * MS);
        let t0 = Instant::now();
        for frame in 0..100u32 {
            let granted = b.handle_flush_start(t0 + frame * 33 * MS);
            assert!(granted >= 3 * MS, "frame {frame}: granted {granted:?}");
            b.handle_spent(3 * MS);
        }
    }

    #[test]
    fn a_fan_out_past_the_share_settles_at_the_share() {
        // Wanting 17 ms per 33 ms frame: after the first burst, each frame gets what 33 ms
        // earns at 15 % (4.95 ms), and spends all of it.
        let mut b = DirectBudget::new(15, 8 * MS);
        let t0 = Instant::now();
        assert_eq!(b.handle_flush_start(t0), 8 * MS, "a fresh bucket is full");
        b.handle_spent(8 * MS);
        let mut total = Duration::ZERO;
        for frame in 1..=30u32 {
            let granted = b.handle_flush_start(t0 + frame * 33 * MS);
            assert_eq!(granted, Duration::from_micros(4_950), "frame {frame}");
            b.handle_spent(granted.min(17 * MS));
            total += granted;
        }
        // Over the 30 frames (990 ms), direct writes took 15 % of the time.
        assert_eq!(total, Duration::from_micros(148_500));
    }

    #[test]
    fn savings_stop_at_the_burst_and_overspending_empties_the_bucket() {
        let mut b = DirectBudget::new(15, 8 * MS);
        let t0 = Instant::now();
        b.handle_flush_start(t0);
        // An idle minute saves no more than the burst.
        assert_eq!(b.handle_flush_start(t0 + 60_000 * MS), 8 * MS);
        // A flush's last write can overrun its grant: the bucket empties, no debt.
        b.handle_spent(9 * MS);
        assert_eq!(b.tokens(), Duration::ZERO);
        // 1 ms later, 0.15 ms earned.
        assert_eq!(
            b.handle_flush_start(t0 + 60_001 * MS),
            Duration::from_micros(150)
        );
        // An earlier reading earns nothing, and does not make the next one earn twice.
        assert_eq!(
            b.handle_flush_start(t0 + 60_000 * MS),
            Duration::from_micros(150)
        );
        assert_eq!(
            b.handle_flush_start(t0 + 60_002 * MS),
            Duration::from_micros(300)
        );
    }
}
