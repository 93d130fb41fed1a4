//! The event loop (QEMU's AioContext): fd readiness, timers, bottom halves,
//! a thread pool, and cross-thread wakes.

mod waker;

pub(crate) use waker::{mailbox, Mailbox};
pub use waker::{waker, Waker};
