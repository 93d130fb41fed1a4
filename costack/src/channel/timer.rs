//! The channels that nobody sends into: [`at`](super::at)/[`after`](super::after)
//! (one instant, once), [`tick`](super::tick) (an instant every period)
//! and [`never`](super::never). Their messages are made when received; a
//! wait for one is a sleep (on the loop's timers in a coroutine).

use std::time::{Duration, Instant};

use super::select::Token;
use super::sync::{AtomicBool, Mutex, Ordering};
use super::waiter::{lock, sleep_until};
use super::{RecvTimeoutError, TryRecvError};

/// Delivers `when` once, at `when`.
pub(crate) struct At {
    when: Instant,
    received: AtomicBool,
}

impl At {
    pub(crate) fn new(when: Instant) -> At {
        At {
            when,
            received: AtomicBool::new(false),
        }
    }

    pub(crate) fn try_recv(&self) -> Result<Instant, TryRecvError> {
        if self.received.load(Ordering::Relaxed) || Instant::now() < self.when {
            return Err(TryRecvError::Empty);
        }
        if self.received.swap(true, Ordering::SeqCst) {
            Err(TryRecvError::Empty)
        } else {
            Ok(self.when)
        }
    }

    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Instant, RecvTimeoutError> {
        if !self.received.load(Ordering::Relaxed) {
            if deadline.is_some_and(|d| d < self.when) {
                sleep_until("channel recv", deadline);
                return Err(RecvTimeoutError::Timeout);
            }
            sleep_until("channel recv", Some(self.when));
            if let Ok(t) = self.try_recv() {
                return Ok(t);
            }
        }
        // Taken by another receiver: nothing more will come.
        sleep_until("channel recv", deadline);
        Err(RecvTimeoutError::Timeout)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.received.load(Ordering::SeqCst) || Instant::now() < self.when
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        (!self.received.load(Ordering::Relaxed)).then_some(self.when)
    }

    pub(crate) fn start_recv(&self, token: &mut Token) -> bool {
        token.instant = self.try_recv().ok();
        token.instant.is_some()
    }

    /// A receive picked by a select and not completed: the instant can be
    /// received again.
    pub(crate) fn cancel_read(&self, token: &mut Token) {
        if token.instant.take().is_some() {
            self.received.store(false, Ordering::SeqCst);
        }
    }
}

/// Delivers an instant every `period`: the instant each delivery was due.
pub(crate) struct Tick {
    next: Mutex<Instant>,
    period: Duration,
}

impl Tick {
    pub(crate) fn new(first: Instant, period: Duration) -> Tick {
        Tick {
            next: Mutex::new(first),
            period,
        }
    }

    pub(crate) fn try_recv(&self) -> Result<Instant, TryRecvError> {
        let now = Instant::now();
        let mut next = lock(&self.next);
        if now < *next {
            return Err(TryRecvError::Empty);
        }
        let due = *next;
        // Missed ticks are not made up for: the next is a period from now.
        *next = now + self.period;
        Ok(due)
    }

    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Instant, RecvTimeoutError> {
        let (due, now) = {
            let now = Instant::now();
            let mut next = lock(&self.next);
            let due = *next;
            if deadline.is_some_and(|d| d < due) {
                drop(next);
                sleep_until("channel recv", deadline);
                return Err(RecvTimeoutError::Timeout);
            }
            // Claim this tick now; wait for it below.
            *next = due.max(now) + self.period;
            (due, now)
        };
        if now < due {
            sleep_until("channel recv", Some(due));
        }
        Ok(due)
    }

    pub(crate) fn is_empty(&self) -> bool {
        Instant::now() < *lock(&self.next)
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some(*lock(&self.next))
    }

    pub(crate) fn start_recv(&self, token: &mut Token) -> bool {
        token.instant = self.try_recv().ok();
        token.instant.is_some()
    }
}

/// Never delivers: a receive waits until its deadline, or for ever.
pub(crate) fn never_recv(deadline: Option<Instant>) -> RecvTimeoutError {
    sleep_until("channel recv", deadline);
    RecvTimeoutError::Timeout
}
