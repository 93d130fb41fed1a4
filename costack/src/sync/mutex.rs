//! CoMutex: a mutex whose contended `lock` yields the coroutine
//! (qemu_co_mutex_lock), handing the lock to waiters in FIFO order.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::waiter::{self, Abandon, List, Ticket, Waiter, GRANTED_ONE, WAITING};
use crate::coroutine;

/// Nobody holds the lock (and so nobody waits).
const UNLOCKED: u32 = 0;
/// Held, nobody waits: unlocking is a single atomic operation.
const LOCKED: u32 = 1;
/// Held, and the wait list may be non-empty: unlocking takes the list lock.
const CONTENDED: u32 = 2;

/// A mutual-exclusion lock for coroutines, with the data inside (like
/// [`std::sync::Mutex`]); QEMU's CoMutex.
///
/// [`lock`](CoMutex::lock) on a free mutex is one atomic operation and
/// never yields, so it works anywhere. On a held mutex it suspends the
/// calling coroutine until the lock is handed to it: waiters are served in
/// FIFO order and the unlocker passes ownership directly to the first one
/// (nobody can barge in between), also when the waiter runs on another
/// thread. Wakes follow [`Coroutine::wake`](crate::Coroutine::wake): a
/// waiter woken by a running coroutine runs once that coroutine yields.
///
/// The mutex is not poisoned: a guard dropped while a panic unwinds (or
/// while its coroutine is dropped and force-unwound) just unlocks. Code
/// that can leave the data half-updated across a panic must repair it
/// itself. A coroutine dropped while it waits leaves the queue cleanly.
///
/// ```
/// use costack::sync::CoMutex;
/// use costack::{yield_now, Coroutine};
/// use std::rc::Rc;
///
/// let m = Rc::new(CoMutex::new(Vec::new()));
/// let (m1, m2) = (m.clone(), m.clone());
/// let a = Coroutine::new(move || {
///     let mut v = m1.lock();
///     v.push("a1");
///     yield_now(); // still holding the lock
///     v.push("a2");
/// });
/// let b = Coroutine::new(move || m2.lock().push("b"));
/// a.enter();
/// b.enter(); // waits for `a`
/// a.enter(); // `a` unlocks; `b` runs right after `a` finishes
/// assert!(b.is_finished());
/// assert_eq!(*m.lock(), ["a1", "a2", "b"]);
/// ```
///
/// # Panics
/// [`lock`](CoMutex::lock) on a held mutex outside a coroutine panics with
/// "not in a coroutine" (it cannot wait there).
pub struct CoMutex<T: ?Sized> {
    state: AtomicU32,
    waiters: Mutex<List>,
    data: UnsafeCell<T>,
}

// SAFETY: like std's Mutex: the data is moved with the mutex.
unsafe impl<T: ?Sized + Send> Send for CoMutex<T> {}
// SAFETY: like std's Mutex: only the lock holder reaches the data, and
// lock hand-offs order its accesses (Acquire/Release on `state` or on the
// granted waiter's node), so sharing needs only `T: Send`.
unsafe impl<T: ?Sized + Send> Sync for CoMutex<T> {}

impl<T> CoMutex<T> {
    /// A new unlocked mutex holding `value`.
    ///
    /// ```
    /// use costack::sync::CoMutex;
    ///
    /// static COUNTER: CoMutex<u64> = CoMutex::new(0); // const: fine in a static
    /// *COUNTER.try_lock().unwrap() += 1;
    /// ```
    pub const fn new(value: T) -> Self {
        CoMutex {
            state: AtomicU32::new(UNLOCKED),
            waiters: Mutex::new(List::new()),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the mutex, returning the data.
    ///
    /// ```
    /// use costack::sync::CoMutex;
    ///
    /// let m = CoMutex::new(vec![1]);
    /// m.try_lock().unwrap().push(2);
    /// assert_eq!(m.into_inner(), [1, 2]);
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> CoMutex<T> {
    /// Locks the mutex, suspending the calling coroutine while another
    /// holder has it (qemu_co_mutex_lock).
    ///
    /// # Panics
    /// If the mutex is held and the caller is not in a coroutine:
    /// "not in a coroutine". Locking a mutex the calling coroutine already
    /// holds never returns (like QEMU's; unless the coroutine is dropped).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::sync::CoMutex;
    /// use std::rc::Rc;
    /// use std::time::Duration;
    ///
    /// let order = EventLoop::new().unwrap().block_on(|| {
    ///     let m = Rc::new(CoMutex::new(Vec::new()));
    ///     let m2 = m.clone();
    ///     let holder = aio::spawn(move || {
    ///         let mut g = m2.lock();
    ///         aio::sleep(Duration::from_millis(5)); // holds it across a wait
    ///         g.push("holder");
    ///     });
    ///     aio::yield_now(); // the holder has the lock now
    ///     m.lock().push("waiter"); // suspends until the holder unlocks
    ///     holder.join().unwrap();
    ///     let v = m.lock().clone();
    ///     v
    /// });
    /// assert_eq!(order, ["holder", "waiter"]);
    /// ```
    #[inline]
    pub fn lock(&self) -> CoMutexGuard<'_, T> {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        CoMutexGuard::new(self)
    }

    /// Locks the mutex if it is free right now; never waits. It does not
    /// jump the queue: with waiters queued the mutex is held anyway.
    ///
    /// ```
    /// use costack::sync::CoMutex;
    ///
    /// let m = CoMutex::new(0);
    /// let g = m.try_lock().unwrap();
    /// assert!(m.try_lock().is_none()); // held
    /// drop(g);
    /// assert!(m.try_lock().is_some());
    /// ```
    #[inline]
    pub fn try_lock(&self) -> Option<CoMutexGuard<'_, T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| CoMutexGuard::new(self))
    }

    /// Whether some coroutine (or thread) holds the lock. Only a snapshot
    /// when other threads use the mutex.
    ///
    /// ```
    /// use costack::sync::CoMutex;
    ///
    /// let m = CoMutex::new(());
    /// let g = m.try_lock().unwrap();
    /// assert!(m.is_locked());
    /// drop(g);
    /// assert!(!m.is_locked());
    /// ```
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }

    /// The data, through a unique borrow: no locking needed.
    ///
    /// ```
    /// use costack::sync::CoMutex;
    ///
    /// let mut m = CoMutex::new(1);
    /// *m.get_mut() += 1; // no locking: the borrow is exclusive
    /// assert_eq!(m.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        if !coroutine::in_coroutine() {
            coroutine::not_in_coroutine("CoMutex::lock on a locked mutex");
        }
        let node = Waiter::new(0, "CoMutex::lock");
        let ticket = Ticket::new(self, &node);
        {
            let mut list = waiter::lock(&self.waiters);
            // With the list lock held, `state` only moves between UNLOCKED
            // and LOCKED behind our back (the fast paths); leaving CONTENDED
            // needs the list lock.
            let mut s = self.state.load(Ordering::Relaxed);
            loop {
                let (from, to, order) = match s {
                    UNLOCKED => (UNLOCKED, LOCKED, Ordering::Acquire),
                    LOCKED => (LOCKED, CONTENDED, Ordering::Relaxed),
                    _ => break,
                };
                match self
                    .state
                    .compare_exchange(from, to, order, Ordering::Relaxed)
                {
                    Ok(_) if from == UNLOCKED => {
                        drop(list);
                        // Never queued: nothing to clean up.
                        std::mem::forget(ticket);
                        return;
                    }
                    Ok(_) => break,
                    Err(now) => s = now,
                }
            }
            // SAFETY: `ticket` borrows `node` and unlinks it before it dies.
            unsafe { list.push_back(&node) };
        }
        // Returns once the previous holder handed us the lock.
        ticket.wait("CoMutex::lock");
    }

    /// Releases the lock: hands it to the first waiter, if any.
    #[inline]
    fn unlock(&self) {
        // LOCKED -> UNLOCKED: done. CONTENDED -> LOCKED: still held (nobody
        // can barge in), and the slow path hands it over.
        if self.state.fetch_sub(1, Ordering::Release) != LOCKED {
            self.unlock_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn unlock_contended(&self) {
        let mut list = waiter::lock(&self.waiters);
        // The state is LOCKED now. Set it for the next owner before the
        // grant publishes ownership (the new owner may run at once on
        // another thread and unlock).
        if list.is_empty() {
            // Every waiter left meanwhile.
            self.state.store(UNLOCKED, Ordering::Release);
            return;
        }
        // More waiters behind the first: keep the new owner's unlock slow.
        if list.has_two() {
            self.state.store(CONTENDED, Ordering::Relaxed);
        }
        let wake = list.grant_front(GRANTED_ONE);
        drop(list);
        if let Some(wake) = wake {
            wake.wake();
        }
    }
}

impl<T: ?Sized> Abandon for CoMutex<T> {
    fn abandon(&self, node: &Waiter) {
        let mut list = waiter::lock(&self.waiters);
        if list.unlink(node) {
            // Someone else holds the lock; it needs no wake-up from us.
            if list.is_empty() {
                self.state.store(LOCKED, Ordering::Relaxed);
            }
        } else if node.state() != WAITING {
            // The lock was handed to us as we died: pass it on.
            drop(list);
            self.unlock();
        }
    }
}

impl<T: Default> Default for CoMutex<T> {
    fn default() -> Self {
        CoMutex::new(T::default())
    }
}

impl<T> From<T> for CoMutex<T> {
    fn from(value: T) -> Self {
        CoMutex::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CoMutex");
        match self.try_lock() {
            Some(guard) => d.field("data", &&*guard),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.finish_non_exhaustive()
    }
}

/// Holds a [`CoMutex`] locked; unlocks it when dropped (handing it to the
/// first waiter). Derefs to the data. Not `Send`: it stays with the
/// coroutine that locked.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct CoMutexGuard<'a, T: ?Sized> {
    pub(super) mutex: &'a CoMutex<T>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard gives only `&T`, as std's MutexGuard.
unsafe impl<T: ?Sized + Sync> Sync for CoMutexGuard<'_, T> {}

impl<'a, T: ?Sized> CoMutexGuard<'a, T> {
    fn new(mutex: &'a CoMutex<T>) -> Self {
        CoMutexGuard {
            mutex,
            _not_send: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for CoMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the lock.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for CoMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves we hold the lock, and `&mut self` that
        // this is the only borrow through it.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for CoMutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for CoMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
