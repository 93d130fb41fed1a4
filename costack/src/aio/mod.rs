//! The event loop (QEMU's AioContext): fd readiness, timers, bottom halves,
//! a thread pool, and cross-thread wakes.

mod waker;

pub use waker::{waker, Waker};
pub(crate) use waker::{mailbox, Mailbox};
