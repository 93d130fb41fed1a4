//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

/// The text of a panic payload (`&str` or `String`), or "".
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Runs `f`, which must panic with a message containing `needle`.
pub fn expect_panic<R>(f: impl FnOnce() -> R, needle: &str) {
    let err = panic::catch_unwind(AssertUnwindSafe(f))
        .err()
        .expect("expected a panic");
    let msg = panic_message(&*err);
    assert!(msg.contains(needle), "panic {msg:?} lacks {needle:?}");
}

/// Sets its flag when dropped: shows a coroutine's stack was unwound.
pub struct SetOnDrop(pub Rc<Cell<bool>>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// A log the coroutines of one test append to, to check what ran in which
/// order.
#[derive(Clone, Debug, Default)]
pub struct Log(Rc<RefCell<Vec<String>>>);

impl Log {
    pub fn push(&self, what: impl Into<String>) {
        self.0.borrow_mut().push(what.into());
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.borrow_mut())
    }

    pub fn contains(&self, what: &str) -> bool {
        self.0.borrow().iter().any(|s| s == what)
    }
}

/// Pushes its name to a [`Log`] when dropped: shows a destructor ran.
#[derive(Debug)]
pub struct Noisy(pub Log, pub &'static str);

impl Drop for Noisy {
    fn drop(&mut self) {
        self.0.push(format!("drop {}", self.1));
    }
}
