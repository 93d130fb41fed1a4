//! Wait-queue nodes shared by every primitive of this module.
//!
//! Coroutines are stackful, so a waiter's node lives on its own stack: no
//! allocation per wait. Each primitive keeps an intrusive FIFO [`List`] of
//! nodes under its own (std) mutex. The protocol that keeps this sound:
//!
//! - A node is pushed only through a [`Ticket`] that borrows it, so the node
//!   cannot move or die while the ticket lives, and the ticket's destructor
//!   takes the node out of the list (under the lock) if it is still there.
//! - Whoever grants a node (pops it and hands it what it waited for) does so
//!   under the lock, copies out everything it needs, and only then stores
//!   `GRANTED` with release ordering. From that store on the owner may return
//!   and free the node at any time, so the granter never touches it again.
//! - The hand-off lives in the node's state, not in the wake. A waiter loops
//!   until its node is granted, so spurious or stale wakes are harmless; a
//!   waiter that dies (its coroutine force-unwound) after being granted but
//!   before noticing gives the grant back, so nobody else loses a wake-up.
//!
//! A node names its coroutine through an [`aio::Waker`](crate::aio::Waker)
//! (by id, not keeping it alive: a strong handle in a queue would be a
//! reference cycle that prevents unwinding a dropped waiter).

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::aio::Waker;
use crate::coroutine;

/// Not granted yet (linked, or about to be).
pub(crate) const WAITING: u8 = 0;
/// Granted by a "one waiter" operation: a dying owner passes it on.
pub(crate) const GRANTED_ONE: u8 = 1;
/// Granted by a broadcast (CoQueue::restart_all): nothing to pass on.
pub(crate) const GRANTED_ALL: u8 = 2;

/// A waiting coroutine, on that coroutine's stack.
pub(crate) struct Waiter {
    // Links and `waker` are touched only with the owning list's lock held.
    prev: Cell<*const Waiter>,
    next: Cell<*const Waiter>,
    linked: Cell<bool>,
    waker: UnsafeCell<Option<Waker>>,
    /// What the waiter asks for (permits, read/write, a sequence number);
    /// written by its owner before it is pushed, or under the lock.
    tag: Cell<usize>,
    state: AtomicU8,
}

impl Waiter {
    /// A node for the calling coroutine.
    ///
    /// # Panics
    /// Outside a coroutine: "`what` called when not in a coroutine".
    pub(crate) fn new(tag: usize, what: &str) -> Waiter {
        coroutine::with_current(|co| match co {
            Some(co) => Waiter {
                prev: Cell::new(ptr::null()),
                next: Cell::new(ptr::null()),
                linked: Cell::new(false),
                waker: UnsafeCell::new(Some(Waker::for_coroutine(co))),
                tag: Cell::new(tag),
                state: AtomicU8::new(WAITING),
            },
            None => coroutine::not_in_coroutine(what),
        })
    }

    #[inline]
    pub(crate) fn tag(&self) -> usize {
        self.tag.get()
    }

    /// Sets the tag; only before the node is pushed, or under the lock.
    #[inline]
    pub(crate) fn set_tag(&self, tag: usize) {
        self.tag.set(tag)
    }

    /// The grant kind (WAITING if none). Call under the lock, or from the
    /// owner (which then may act on a grant).
    #[inline]
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// How to wake a granted waiter, copied out of its node.
pub(crate) struct Wake {
    waker: Waker,
}

impl Wake {
    /// Wakes the waiter as [`Coroutine::wake`](crate::Coroutine::wake) would: deferred inside a
    /// coroutine, at once (or on its loop) outside; through its thread's
    /// mailbox from another thread.
    pub(crate) fn wake(self) {
        let Some(co) = self.waker.local_coroutine() else {
            // Another thread's (or gone): its mailbox delivers it.
            return self.waker.wake();
        };
        if std::thread::panicking() && !coroutine::in_coroutine() {
            // A guard dropped while unwinding enters the waiter right now; a
            // panic of the waiter would be a panic in a drop while panicking
            // (an abort). The panic hook has reported it; drop it.
            let _ = panic::catch_unwind(AssertUnwindSafe(|| co.wake()));
        } else {
            co.wake();
        }
    }

    /// As [`wake`](Wake::wake), except that outside any coroutine a waiter
    /// of this thread is entered at once even if it belongs to an event
    /// loop (aio_co_enter).
    pub(crate) fn enter(self) {
        if !coroutine::in_coroutine() && self.waker.is_local() {
            match self.waker.local_coroutine() {
                // Only its future's poll enters a polled coroutine.
                Some(co) if co.is_polled() => co.wake(),
                Some(co) => {
                    co.enter_if_inactive();
                }
                None => {}
            }
        } else {
            self.wake();
        }
    }
}

/// Wakes waiters one after another. A waiter entered at once (outside any
/// coroutine) that panics does not keep the others asleep: its panic is
/// resumed once every waiter is woken, as the core does for wake lists.
#[derive(Default)]
pub(crate) struct WakeAll {
    panic: Option<Box<dyn Any + Send>>,
}

impl WakeAll {
    pub(crate) fn wake(&mut self, wake: Wake) {
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| wake.wake())) {
            self.panic.get_or_insert(p);
        }
    }

    pub(crate) fn finish(self) {
        if let Some(p) = self.panic {
            panic::resume_unwind(p);
        }
    }
}

/// An intrusive FIFO of waiters. It only holds pointers; use it under the
/// owning primitive's mutex.
pub(crate) struct List {
    head: *const Waiter,
    tail: *const Waiter,
}

// SAFETY: a List only points at nodes. Every node field it reaches is
// either atomic or read and written with the owning mutex held (see the
// module protocol), and the one value it hands out across threads, the
// `Waker`, is Send.
unsafe impl Send for List {}

impl List {
    pub(crate) const fn new() -> List {
        List {
            head: ptr::null(),
            tail: ptr::null(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Whether at least two waiters are queued.
    #[inline]
    pub(crate) fn has_two(&self) -> bool {
        self.front().is_some_and(|w| !w.next.get().is_null())
    }

    /// The first waiter, if any.
    #[inline]
    pub(crate) fn front(&self) -> Option<&Waiter> {
        // SAFETY: linked nodes are alive (their tickets unlink them before
        // they die), and we are used under the lock that orders all access.
        unsafe { self.head.as_ref() }
    }

    /// Appends `node`.
    ///
    /// # Safety
    /// `node` must not be in any list, and must stay at its address and
    /// alive until it has been removed again (by `grant_front` or
    /// `unlink`): push it only while a [`Ticket`] for it exists.
    pub(crate) unsafe fn push_back(&mut self, node: &Waiter) {
        debug_assert!(!node.linked.get());
        node.prev.set(self.tail);
        node.next.set(ptr::null());
        node.linked.set(true);
        match self.tail.is_null() {
            true => self.head = node,
            // SAFETY: the tail is linked, hence alive (see `front`).
            false => unsafe { (*self.tail).next.set(node) },
        }
        self.tail = node;
    }

    /// Removes `node` if it is linked (in this list); returns whether it was.
    pub(crate) fn unlink(&mut self, node: &Waiter) -> bool {
        if !node.linked.get() {
            return false;
        }
        let (prev, next) = (node.prev.get(), node.next.get());
        match prev.is_null() {
            true => self.head = next,
            // SAFETY: neighbours of a linked node are linked, hence alive.
            false => unsafe { (*prev).next.set(next) },
        }
        match next.is_null() {
            true => self.tail = prev,
            // SAFETY: as above.
            false => unsafe { (*next).prev.set(prev) },
        }
        node.prev.set(ptr::null());
        node.next.set(ptr::null());
        node.linked.set(false);
        true
    }

    /// Pops the first waiter and grants it (`kind`: GRANTED_ONE or
    /// GRANTED_ALL). The node must not be touched afterwards: its owner
    /// may free it as soon as it sees the grant.
    pub(crate) fn grant_front(&mut self, kind: u8) -> Option<Wake> {
        let head = self.head;
        if head.is_null() {
            return None;
        }
        // SAFETY: the head is linked, hence alive until we grant it below.
        let node = unsafe { &*head };
        self.unlink(node);
        // SAFETY: `waker` is only touched under the lock we hold.
        let waker = unsafe { (*node.waker.get()).take() }.expect("waiter granted twice");
        let wake = Wake { waker };
        // The last access: publishes the hand-off (and, through it, the
        // data the previous owner wrote) to the waiter.
        node.state.store(kind, Ordering::Release);
        Some(wake)
    }
}

/// Locks a primitive's internal mutex. Nothing panics while it is held,
/// so poisoning (which would only come from a bug here) is ignored.
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a primitive does when a waiter's coroutine dies while queued.
pub(crate) trait Abandon {
    /// `node`'s owner is going away without having used its grant. Under
    /// the primitive's lock: if `node` is still linked, unlink it and wake
    /// whoever its departure unblocks; if it was granted, give back what
    /// it was granted (pass the lock on, release the permits, ...).
    fn abandon(&self, node: &Waiter);
}

/// A node's membership in a primitive's queue, owned by the waiting
/// coroutine. Borrowing the node pins it; dropping the ticket before the
/// grant was consumed (a force-unwound coroutine) calls
/// [`Abandon::abandon`].
pub(crate) struct Ticket<'a, S: Abandon + ?Sized> {
    site: &'a S,
    node: &'a Waiter,
    done: bool,
}

impl<'a, S: Abandon + ?Sized> Ticket<'a, S> {
    pub(crate) fn new(site: &'a S, node: &'a Waiter) -> Self {
        Ticket {
            site,
            node,
            done: false,
        }
    }

    /// Suspends until the node is granted; returns the grant kind. A wait
    /// point: a cancellation (or a forced unwind) of this coroutine unwinds
    /// from here, and `drop` gives back a grant that came meanwhile.
    pub(crate) fn wait(mut self, what: &str) -> u8 {
        let node = self.node;
        let state = coroutine::wait::wait_until(what, || {
            let state = node.state();
            (state != WAITING).then_some(state)
        });
        self.done = true;
        state
    }
}

impl<S: Abandon + ?Sized> Drop for Ticket<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.site.abandon(self.node);
        }
    }
}
