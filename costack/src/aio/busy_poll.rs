//! Adaptive busy-polling before the loop sleeps (QEMU's `poll-max-ns`).
//!
//! A loop with nothing to do would block in `epoll_wait`. With polling on,
//! it first asks epoll without waiting, over and over, for up to a
//! *window*; only if nothing came by then does it block. An event that
//! comes within the window is taken without the thread having slept, so
//! without the wake-up: the scheduler's switch and, on an idle CPU, the
//! exit from its idle state (in a virtual machine, a halt and its
//! inter-processor interrupt). That is what a request/reply exchange at
//! queue depth one pays twice per round trip.
//!
//! The window adapts to what it buys, after QEMU's AioContext: each time
//! the loop waited, the whole wait (polling and blocking) is compared with
//! the window and the maximum:
//!
//! - longer than the maximum: polling would not have caught it; the
//!   window shrinks (divided by `shrink`, or to zero if `shrink` is 0);
//! - the thread was switched out while it polled (it yields the CPU each
//!   round to whatever else is runnable there): something else needs
//!   this CPU, quite possibly the peer whose event we wait for, and our
//!   polling only delays it; the window shrinks as above;
//! - within the window: the poll found the event; no change, unless it
//!   found it at once (under 4 µs): that is the next piece of a burst,
//!   which a sleep would let pile up and be taken in fewer, larger reads;
//!   the window drops to zero and stays there for the next 16 waits;
//! - in between: a longer window would have caught it; the window grows
//!   (from 0 to 4 µs, then times `grow`), up to the maximum.
//!
//! So a loop whose events come far apart stops polling after one long
//! wait, and a busy one polls just long enough for its events' spacing.

use std::cell::Cell;
use std::time::Duration;

/// The first window a loop polls once polling looks worthwhile (QEMU's).
const INITIAL_NS: u64 = 4_000;

/// A poll that finds its event sooner than this caught the next piece of
/// a burst (a payload still arriving, requests streaming in), not a reply
/// to what the loop just did: sleeping instead lets the burst pile up and
/// be taken in fewer, larger reads.
const BURST_NS: u64 = 4_000;

/// Waits after a burst during which the window does not grow again.
const REST_WAITS: u32 = 16;

/// The maximum window new loops take from `COSTACK_POLL_MAX_NS`, if set
/// (0 without it: no polling).
pub(crate) fn default_max() -> Duration {
    std::env::var("COSTACK_POLL_MAX_NS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// A loop's polling state: the maximum window, its current size, and how
/// it grows and shrinks.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    max_ns: Cell<u64>,
    ns: Cell<u64>,
    grow: Cell<u32>,
    shrink: Cell<u32>,
    /// Waits left before the window may grow again after a burst.
    rest: Cell<u32>,
}

impl BusyPoll {
    pub(crate) fn new(max: Duration) -> BusyPoll {
        let p = BusyPoll {
            max_ns: Cell::new(0),
            ns: Cell::new(0),
            grow: Cell::new(2),
            shrink: Cell::new(0),
            rest: Cell::new(0),
        };
        p.set_max(max);
        p
    }

    /// Whether waits are measured at all (a maximum is set).
    pub(crate) fn enabled(&self) -> bool {
        self.max_ns.get() != 0
    }

    /// How long to poll before blocking, now.
    pub(crate) fn window(&self) -> Duration {
        Duration::from_nanos(self.ns.get())
    }

    pub(crate) fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.get())
    }

    /// Sets the maximum window (zero: never poll); the window starts over
    /// from zero.
    pub(crate) fn set_max(&self, max: Duration) {
        self.max_ns
            .set(u64::try_from(max.as_nanos()).unwrap_or(u64::MAX));
        self.ns.set(0);
        self.rest.set(0);
    }

    /// Sets the growth factor (values below 2 count as 2) and the shrink
    /// divisor (0 or 1: back to zero at once).
    pub(crate) fn set_factors(&self, grow: u32, shrink: u32) {
        self.grow.set(grow.max(2));
        self.shrink.set(if shrink <= 1 { 0 } else { shrink });
    }

    #[cfg(test)]
    pub(crate) fn factors(&self) -> (u32, u32) {
        (self.grow.get(), self.shrink.get())
    }

    /// Adapts the window to a wait that took `waited` in all, during
    /// whose poll the thread was `preempted` or not.
    pub(crate) fn adjust(&self, waited: Duration, preempted: bool) {
        let max = self.max_ns.get();
        if max == 0 {
            return;
        }
        let block = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        let ns = self.ns.get();
        if preempted || block > max {
            let shrink = u64::from(self.shrink.get());
            // Divisor 0: straight back to zero.
            self.ns.set(ns.checked_div(shrink).unwrap_or(0));
        } else if block <= ns {
            // Caught by the poll; straight away means a burst.
            if block < BURST_NS {
                self.ns.set(0);
                self.rest.set(REST_WAITS);
            }
        } else if self.rest.get() > 0 {
            self.rest.set(self.rest.get() - 1);
        } else if ns < max {
            let next = if ns == 0 {
                INITIAL_NS
            } else {
                ns.saturating_mul(u64::from(self.grow.get()))
            };
            self.ns.set(next.min(max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// `times` waits of `wait` each, none of them preempted.
    fn waits(p: &BusyPoll, times: usize, wait: Duration) {
        for _ in 0..times {
            p.adjust(wait, false);
        }
    }

    #[test]
    fn off_by_default_and_never_grows_when_off() {
        let p = BusyPoll::new(Duration::ZERO);
        assert!(!p.enabled());
        waits(&p, 10, us(1));
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn grows_to_cover_waits_below_the_maximum() {
        let p = BusyPoll::new(us(50));
        // Events 20 µs apart: 4, 8, 16, 32 µs, then caught.
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adjust(us(20), false);
            seen.push(p.window().as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 32, 32]);
        // Waits just below the maximum take it to the maximum, not past.
        p.adjust(us(45), false);
        assert_eq!(p.window(), us(50));
        p.adjust(us(49), false);
        assert_eq!(p.window(), us(50));
    }

    #[test]
    fn a_wait_past_the_maximum_stops_polling_or_divides() {
        let p = BusyPoll::new(us(64));
        waits(&p, 10, us(60));
        assert_eq!(p.window(), us(64));
        p.adjust(Duration::from_millis(5), false);
        assert_eq!(p.window(), Duration::ZERO);

        p.set_factors(4, 2);
        assert_eq!(p.factors(), (4, 2));
        p.adjust(us(10), false);
        p.adjust(us(10), false);
        assert_eq!(p.window(), us(16));
        p.adjust(Duration::from_millis(5), false);
        assert_eq!(p.window(), us(8));
    }

    #[test]
    fn a_preempted_poll_counts_as_a_miss() {
        let p = BusyPoll::new(us(64));
        waits(&p, 10, us(30));
        assert_eq!(p.window(), us(32));
        // Caught within the window, but another thread had to run first.
        p.adjust(us(5), true);
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn an_event_caught_at_once_stops_polling_for_a_while() {
        let p = BusyPoll::new(us(128));
        waits(&p, 10, us(30));
        assert_eq!(p.window(), us(32));
        // The next piece of a burst: found at once.
        p.adjust(us(1), false);
        assert_eq!(p.window(), Duration::ZERO);
        for _ in 0..REST_WAITS {
            p.adjust(us(30), false);
            assert_eq!(p.window(), Duration::ZERO);
        }
        p.adjust(us(30), false);
        assert_eq!(p.window(), us(4));
        // Waits shorter than a burst's gap while not polling do not count.
        p.set_max(us(128));
        p.adjust(us(1), false);
        assert_eq!(p.window(), us(4));
    }

    #[test]
    fn setting_the_maximum_restarts_and_caps() {
        let p = BusyPoll::new(us(1000));
        waits(&p, 20, us(900));
        assert_eq!(p.window(), us(1000));
        p.set_max(us(10));
        assert_eq!(p.window(), Duration::ZERO);
        waits(&p, 20, us(9));
        assert_eq!(p.window(), us(10));
        assert_eq!(p.max(), us(10));
    }
}
