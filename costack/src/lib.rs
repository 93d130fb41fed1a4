//! Stackful coroutines after QEMU's, with the event loop, coroutine locks and
//! I/O that make them useful.
//!
//! A coroutine has its own stack, so code can look synchronous (`read()`,
//! `lock()`, `sleep()`) while under the covers it yields to a
//! single-threaded event loop and is entered again when its I/O completes.
//! Coroutines of one thread never run at the same time: races can only
//! happen across a yield.
//!
//! ```
//! use costack::{yield_now, Coroutine};
//! use std::cell::RefCell;
//! use std::rc::Rc;
//!
//! let log = Rc::new(RefCell::new(Vec::new()));
//! let l = log.clone();
//! let co = Coroutine::new(move || {
//!     l.borrow_mut().push("one");
//!     yield_now();
//!     l.borrow_mut().push("three");
//! });
//! co.enter();
//! log.borrow_mut().push("two");
//! co.enter();
//! assert_eq!(*log.borrow(), ["one", "two", "three"]);
//! ```
//!
//! Layers, each depending only on those below: `net`/`fs` (coroutine I/O) →
//! [`aio`] (event loop) and [`sync`] (locks) → the coroutine core (this
//! crate's root) → stacks and the per-architecture switch.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Without the event loop (unix only for now), its hooks in the core and
// the mailbox are unused.
#![cfg_attr(not(unix), allow(dead_code))]

/// Emits a `tracing` event for a coroutine life-cycle point when the
/// `tracing` feature is on; nothing otherwise.
macro_rules! trace_event {
    ($what:literal, $co:expr) => {{
        #[cfg(feature = "tracing")]
        {
            let co = $co;
            tracing::trace!(
                target: "costack::coroutine",
                co = ?(co as *const _),
                name = co.name().unwrap_or(""),
                $what
            );
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = &$co;
        }
    }};
}

pub mod aio;
mod arch;
mod coroutine;
pub mod debug;
#[cfg(target_os = "linux")]
pub mod fs;
pub mod future;
mod generator;
#[cfg(unix)]
pub mod net;
mod stack;
pub mod sync;
#[cfg(unix)]
mod sys;

pub use coroutine::{current, in_coroutine, yield_now, Builder, Coroutine};
pub use generator::{Generator, Yielder};

/// The per-thread stack pool.
pub mod pool {
    pub use crate::stack::pool::{pooled, trim, POOL_BYTES};
    pub use crate::stack::{DEFAULT_STACK_SIZE, MIN_STACK_SIZE};
}
