//! The synchronization primitives the channels are built from: std's, or
//! loom's when the crate is built for the loom model
//! (`RUSTFLAGS="--cfg costack_loom"`, see `tests/channel_loom.rs`), which
//! then explores the interleavings of the real channel code.

#[cfg(not(costack_loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
#[cfg(not(costack_loom))]
pub(crate) use std::thread::{current, park, Thread};

#[cfg(costack_loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicBool, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
#[cfg(costack_loom)]
pub(crate) use loom::thread::{current, park, Thread};

/// Parks the thread for at most `d`.
#[cfg(not(costack_loom))]
pub(crate) fn park_timeout(d: std::time::Duration) {
    std::thread::park_timeout(d)
}

/// Loom has no clock: a model never waits with a deadline.
#[cfg(costack_loom)]
pub(crate) fn park_timeout(_: std::time::Duration) {
    unreachable!("no deadlines in the loom model")
}

/// Sleeps the thread for `d`.
#[cfg(not(costack_loom))]
pub(crate) fn sleep(d: std::time::Duration) {
    std::thread::sleep(d)
}

#[cfg(costack_loom)]
pub(crate) fn sleep(_: std::time::Duration) {
    unreachable!("no timers in the loom model")
}

/// A hint inside a spin loop (under loom: let the other threads run).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(costack_loom))]
    std::hint::spin_loop();
    #[cfg(costack_loom)]
    loom::thread::yield_now();
}

/// Gives the CPU up.
pub(crate) fn yield_now() {
    #[cfg(not(costack_loom))]
    std::thread::yield_now();
    #[cfg(costack_loom)]
    loom::thread::yield_now();
}
