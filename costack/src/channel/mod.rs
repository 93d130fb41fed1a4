//! Channels that yield: crossbeam-channel's API, for coroutines and
//! threads alike.
//!
//! Multi-producer, multi-consumer channels with crossbeam-channel 0.5's
//! names, signatures, errors, disconnection rules and `select!` syntax, so
//! code written for it compiles with `use costack::channel as
//! crossbeam_channel;`. What differs is where a blocked operation waits:
//!
//! - in a coroutine on an [`EventLoop`](crate::aio::EventLoop) it
//!   *suspends*: the loop runs its other coroutines, timers and I/O until
//!   the channel wakes it (from this thread, another loop's thread or a
//!   plain thread);
//! - inside a [`CoFuture`](crate::future::CoFuture) it waits through the
//!   poller's waker (the `*_timeout`/`*_deadline` calls and timer channels
//!   need a costack loop there, as [`aio::sleep`](crate::aio::sleep) does);
//! - on a plain thread it blocks, exactly like crossbeam's.
//!
//! Any mix works: coroutines on several loops and plain threads may hold
//! the ends of one channel. [`Sender`] and [`Receiver`] are `Send + Sync`
//! when `T: Send`.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use costack::channel::bounded;
//!
//! let total = EventLoop::new().unwrap().block_on(|| {
//!     let (s, r) = bounded(4);
//!     let producer = aio::spawn(move || {
//!         for i in 1..=100u64 {
//!             s.send(i).unwrap(); // yields while the channel is full
//!         }
//!     });
//!     let sum: u64 = r.iter().sum(); // yields while it is empty; ends when `s` is dropped
//!     producer.join().unwrap();
//!     sum
//! });
//! assert_eq!(total, 5050);
//! ```
//!
//! # Kinds of channels
//!
//! - [`bounded`]`(n)`: room for `n` messages; `bounded(0)` is a
//!   rendezvous, where a send completes only with a receiver.
//! - [`unbounded`]: sends never wait.
//! - [`after`], [`at`], [`tick`]: deliver instants; [`never()`] delivers
//!   nothing (an arm of `select!` that is switched off).
//!
//! # Select
//!
//! [`select!`], [`select_biased!`] and [`Select`] wait on several
//! operations and perform exactly one, after Go's `select`: every
//! operation is tried; if none can proceed, one waiter is registered on
//! all of them, the first channel to become ready claims it (a single
//! compare-and-swap decides), and it withdraws from the others.
//!
//! # Cancellation and timeouts
//!
//! Blocked operations and selects are wait points (see
//! [`aio`](crate::aio)'s cancellation rules): a coroutine cancelled, or
//! timed out by an enclosing deadline, while blocked unwinds from there
//! with no effect on the channel: its send did not happen, its receive
//! took nothing, and a message that was being handed to it at that very
//! moment goes to another receiver (or stays in the channel). A wait
//! whose hand-off had already completed returns normally instead, and the
//! cancellation comes at the next wait point. The same holds when a
//! coroutine is unwound because its loop is dropped.
//!
//! A `SelectedOperation` that is dropped without being completed gives
//! back what it had reserved (and, unless it is dropped by an unwind,
//! panics as crossbeam's does).
//!
//! # How it is checked
//!
//! crossbeam-channel's own test suite (about 11,000 lines, with ports of
//! Go's and std's channel tests) runs against this module unchanged, on
//! plain threads (`scripts/crossbeam-suite.sh`). `tests/channel*.rs` cover
//! coroutines: one loop, several loops, threads, `CoFuture`s, select,
//! cancellation and 10,000 blocked coroutines. The cross-thread tests run
//! under Miri (data races, use-after-free and leaks in the waiter and
//! hand-off code, on the thread backend) and ThreadSanitizer, and
//! `tests/channel_loom.rs` runs the real channel code on loom's atomics,
//! locks and threads, exploring every interleaving (up to two
//! preemptions) of small send/receive/select/disconnect scenarios. What
//! each covers: the crossbeam suite, the API's behaviour at full size;
//! Miri, undefined behaviour and leaks in the code as it runs; TSan, data
//! races in optimized builds; loom, orderings and lost wake-ups that only
//! rare interleavings show. The coroutine paths (suspension, cancellation)
//! are covered by `tests/channel.rs` on every loop backend.

mod array;
mod chan;
mod err;
mod handles;
mod list;
mod macros;
mod select;
mod selected;
mod sync;
mod timer;
mod waiter;
mod zero;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use sync::Arc;

pub use chan::{IntoIter, Iter, Receiver, Sender, TryIter};
pub use err::{
    ReadyTimeoutError, RecvError, RecvTimeoutError, SelectTimeoutError, SendError,
    SendTimeoutError, TryReadyError, TryRecvError, TrySelectError, TrySendError,
};
pub use select::Select;
pub use selected::SelectedOperation;

#[doc(hidden)]
pub use crate::crossbeam_channel_internal;
#[doc(inline)]
pub use crate::{select, select_biased};

use chan::{Counted, ReceiverFlavor, SenderFlavor};

/// A channel with room for `cap` messages; `cap == 0` makes a rendezvous
/// channel, where each send waits for a receiver.
///
/// ```
/// use costack::channel::bounded;
/// use std::thread;
///
/// let (s, r) = bounded(0);
/// let t = thread::spawn(move || s.send("handed over").unwrap());
/// assert_eq!(r.recv(), Ok("handed over"));
/// t.join().unwrap();
/// ```
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    if cap == 0 {
        let c = Counted::new(zero::Channel::new());
        (
            Sender {
                flavor: SenderFlavor::Zero(c.clone()),
            },
            Receiver {
                flavor: ReceiverFlavor::Zero(c),
            },
        )
    } else {
        let c = Counted::new(array::Channel::with_capacity(cap));
        (
            Sender {
                flavor: SenderFlavor::Array(c.clone()),
            },
            Receiver {
                flavor: ReceiverFlavor::Array(c),
            },
        )
    }
}

/// A channel without a bound: sends never wait.
///
/// ```
/// use costack::channel::unbounded;
///
/// let (s, r) = unbounded();
/// for i in 0..1000 {
///     s.send(i).unwrap();
/// }
/// assert_eq!(r.len(), 1000);
/// ```
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let c = Counted::new(list::Channel::new());
    (
        Sender {
            flavor: SenderFlavor::List(c.clone()),
        },
        Receiver {
            flavor: ReceiverFlavor::List(c),
        },
    )
}

fn same_instant(i: Instant) -> Instant {
    i
}

/// A channel that delivers one message, the instant it fires, once
/// `duration` has passed. It never disconnects.
///
/// ```
/// use costack::channel::after;
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// let fired = after(Duration::from_millis(10)).recv().unwrap();
/// assert!(fired >= start + Duration::from_millis(10));
/// ```
pub fn after(duration: Duration) -> Receiver<Instant> {
    match Instant::now().checked_add(duration) {
        Some(when) => at(when),
        None => never(),
    }
}

/// A channel that delivers one message, `when`, at `when`.
///
/// ```
/// use costack::channel::at;
/// use std::time::{Duration, Instant};
///
/// let when = Instant::now() + Duration::from_millis(5);
/// assert_eq!(at(when).recv(), Ok(when));
/// ```
pub fn at(when: Instant) -> Receiver<Instant> {
    Receiver {
        flavor: ReceiverFlavor::At(Arc::new(timer::At::new(when)), same_instant),
    }
}

/// A channel that delivers the instant of each tick, every `duration`
/// (first after one `duration`). Ticks that nobody receives are not
/// queued up.
///
/// ```
/// use costack::channel::tick;
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// let ticker = tick(Duration::from_millis(5));
/// for _ in 0..3 {
///     ticker.recv().unwrap();
/// }
/// assert!(start.elapsed() >= Duration::from_millis(15));
/// ```
pub fn tick(duration: Duration) -> Receiver<Instant> {
    let flavor = match Instant::now().checked_add(duration) {
        Some(first) => {
            ReceiverFlavor::Tick(Arc::new(timer::Tick::new(first, duration)), same_instant)
        }
        None => ReceiverFlavor::Never,
    };
    Receiver { flavor }
}

/// A channel that never delivers and never disconnects: a `select!` arm
/// that is switched off.
///
/// ```
/// use costack::channel::{never, select, unbounded, Receiver};
/// use std::time::Duration;
///
/// let (s, r) = unbounded();
/// s.send(1).unwrap();
/// let timeout: Option<Duration> = None;
/// let deadline = timeout.map(costack::channel::after).unwrap_or(never());
/// select! {
///     recv(r) -> m => assert_eq!(m, Ok(1)),
///     recv(deadline) -> _ => unreachable!(),
/// }
/// ```
pub fn never<T>() -> Receiver<T> {
    Receiver {
        flavor: ReceiverFlavor::Never,
    }
}
