//! CoRwLock: a fair reader-writer lock for coroutines (QEMU's CoRwlock,
//! as rewritten in 2021 around a FIFO of tickets).

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

use super::waiter::{self, Abandon, List, Ticket, Waiter, WakeAll, GRANTED_ONE, WAITING};

const READ: usize = 0;
const WRITE: usize = 1;

/// A reader-writer lock for coroutines, with the data inside (like
/// [`std::sync::RwLock`]); QEMU's CoRwlock.
///
/// Many readers or one writer hold it at a time. It is fair: requests are
/// served in FIFO order, and a queued writer holds back readers that come
/// after it, so writers are not starved. Waiting suspends the coroutine;
/// uncontended acquisition never yields and works anywhere.
///
/// [`CoRwLockReadGuard::upgrade`] turns a read lock into a write lock; as
/// in QEMU, it may let a writer queued earlier run first (the data may
/// change between the read and the write part). [`CoRwLockWriteGuard::downgrade`]
/// turns a write lock into a read lock without ever blocking, and lets
/// readers queued at the front in with it.
///
/// No poisoning: guards dropped while unwinding just unlock. A coroutine
/// dropped while it waits leaves the queue, and passes on a lock that was
/// granted to it as it died.
///
/// ```
/// use costack::sync::{CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard};
///
/// let lock = CoRwLock::new(1);
/// let r1 = lock.read();
/// let r2 = lock.read();
/// assert_eq!(*r1 + *r2, 2);
/// drop(r2);
/// let mut w = CoRwLockReadGuard::upgrade(r1); // sole reader: at once
/// *w += 1;
/// let r = CoRwLockWriteGuard::downgrade(w);
/// assert_eq!(*r, 2);
/// ```
pub struct CoRwLock<T: ?Sized> {
    inner: Mutex<Inner>,
    data: UnsafeCell<T>,
}

struct Inner {
    /// -1: a writer holds the lock; n >= 0: n readers do.
    owners: isize,
    /// Tickets, tagged READ or WRITE. Invariant (outside the lock): the
    /// first one cannot be granted.
    list: List,
}

// SAFETY: like std's RwLock: the data moves with the lock.
unsafe impl<T: ?Sized + Send> Send for CoRwLock<T> {}
// SAFETY: like std's RwLock: readers share `&T` across threads (T: Sync),
// a writer gets `&mut T` on whatever thread it runs (T: Send); accesses
// are ordered by the internal mutex or a waiter's grant (release/acquire).
unsafe impl<T: ?Sized + Send + Sync> Sync for CoRwLock<T> {}

impl<T> CoRwLock<T> {
    /// A new unlocked lock holding `value`.
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// static CONFIG: CoRwLock<&str> = CoRwLock::new("default");
    /// assert_eq!(*CONFIG.try_read().unwrap(), "default");
    /// ```
    pub const fn new(value: T) -> Self {
        CoRwLock {
            inner: Mutex::new(Inner {
                owners: 0,
                list: List::new(),
            }),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the lock, returning the data.
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// let l = CoRwLock::new(String::from("a"));
    /// l.try_write().unwrap().push('b');
    /// assert_eq!(l.into_inner(), "ab");
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> CoRwLock<T> {
    /// Takes a read lock, suspending the coroutine while a writer holds
    /// the lock or is queued (qemu_co_rwlock_rdlock).
    ///
    /// # Panics
    /// If it must wait and the caller is not in a coroutine: "not in a
    /// coroutine".
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// let l = CoRwLock::new(5);
    /// let (a, b) = (l.read(), l.read()); // readers share
    /// assert_eq!(*a + *b, 10);
    /// ```
    pub fn read(&self) -> CoRwLockReadGuard<'_, T> {
        self.acquire(READ, "CoRwLock::read");
        CoRwLockReadGuard::new(self)
    }

    /// Takes the write lock, suspending the coroutine while anyone holds
    /// the lock or is queued (qemu_co_rwlock_wrlock).
    ///
    /// # Panics
    /// If it must wait and the caller is not in a coroutine: "not in a
    /// coroutine".
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// let l = CoRwLock::new(5);
    /// *l.write() += 1; // free: never waits
    /// assert_eq!(*l.read(), 6);
    /// ```
    pub fn write(&self) -> CoRwLockWriteGuard<'_, T> {
        self.acquire(WRITE, "CoRwLock::write");
        CoRwLockWriteGuard::new(self)
    }

    /// Takes a read lock if that needs no waiting.
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// let l = CoRwLock::new(0);
    /// let w = l.try_write().unwrap();
    /// assert!(l.try_read().is_none()); // a writer holds it
    /// drop(w);
    /// assert!(l.try_read().is_some());
    /// ```
    pub fn try_read(&self) -> Option<CoRwLockReadGuard<'_, T>> {
        let mut inner = waiter::lock(&self.inner);
        try_take(&mut inner, READ).then(|| CoRwLockReadGuard::new(self))
    }

    /// Takes the write lock if that needs no waiting.
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// let l = CoRwLock::new(0);
    /// let r = l.try_read().unwrap();
    /// assert!(l.try_write().is_none()); // a reader holds it
    /// drop(r);
    /// assert!(l.try_write().is_some());
    /// ```
    pub fn try_write(&self) -> Option<CoRwLockWriteGuard<'_, T>> {
        let mut inner = waiter::lock(&self.inner);
        try_take(&mut inner, WRITE).then(|| CoRwLockWriteGuard::new(self))
    }

    /// The data, through a unique borrow: no locking needed.
    ///
    /// ```
    /// use costack::sync::CoRwLock;
    ///
    /// let mut l = CoRwLock::new(1);
    /// *l.get_mut() = 2;
    /// assert_eq!(l.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    fn acquire(&self, kind: usize, what: &str) {
        if try_take(&mut waiter::lock(&self.inner), kind) {
            return;
        }
        let node = Waiter::new(kind, what);
        let ticket = Ticket::new(self, &node);
        {
            let mut inner = waiter::lock(&self.inner);
            // It may have been released while we built the node.
            if try_take(&mut inner, kind) {
                drop(inner);
                std::mem::forget(ticket);
                return;
            }
            // SAFETY: `ticket` borrows `node` and unlinks it before it dies.
            unsafe { inner.list.push_back(&node) };
        }
        ticket.wait(what);
    }

    /// Grants the tickets at the front while they can be granted, waking
    /// their coroutines (qemu_co_rwlock_maybe_wake_one, applied until it
    /// stops); called after every change of `owners` or of the front.
    fn wake_ready<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) {
        let mut wakes = WakeAll::default();
        while let Some(kind) = inner.list.front().map(Waiter::tag) {
            match kind {
                READ if inner.owners >= 0 => inner.owners += 1,
                WRITE if inner.owners == 0 => inner.owners = -1,
                _ => break,
            }
            let wake = inner.list.grant_front(GRANTED_ONE);
            drop(inner);
            if let Some(wake) = wake {
                wakes.wake(wake);
            }
            if kind == WRITE {
                return wakes.finish();
            }
            inner = waiter::lock(&self.inner);
        }
        drop(inner);
        wakes.finish();
    }

    fn read_unlock(&self) {
        let mut inner = waiter::lock(&self.inner);
        debug_assert!(inner.owners > 0);
        inner.owners -= 1;
        self.wake_ready(inner);
    }

    fn write_unlock(&self) {
        let mut inner = waiter::lock(&self.inner);
        debug_assert_eq!(inner.owners, -1);
        inner.owners = 0;
        self.wake_ready(inner);
    }
}

/// Takes the lock for `kind` if that is possible without waiting: a
/// reader only if no writer holds it or is queued (fairness).
fn try_take(inner: &mut Inner, kind: usize) -> bool {
    let free = match kind {
        READ => inner.owners == 0 || (inner.owners > 0 && inner.list.is_empty()),
        _ => inner.owners == 0,
    };
    if free {
        inner.owners = if kind == READ { inner.owners + 1 } else { -1 };
    }
    free
}

impl<T: ?Sized> Abandon for CoRwLock<T> {
    fn abandon(&self, node: &Waiter) {
        let mut inner = waiter::lock(&self.inner);
        if inner.list.unlink(node) {
            // The front may have changed: whoever was behind us may go.
            self.wake_ready(inner);
        } else if node.state() != WAITING {
            // Granted as we died: release what we were given.
            match node.tag() {
                READ => inner.owners -= 1,
                _ => inner.owners = 0,
            }
            self.wake_ready(inner);
        }
    }
}

impl<T: Default> Default for CoRwLock<T> {
    fn default() -> Self {
        CoRwLock::new(T::default())
    }
}

impl<T> From<T> for CoRwLock<T> {
    fn from(value: T) -> Self {
        CoRwLock::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoRwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CoRwLock");
        match self.try_read() {
            Some(guard) => d.field("data", &&*guard),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.finish_non_exhaustive()
    }
}

/// A read lock on a [`CoRwLock`]; derefs to the data, unlocks when
/// dropped. Not `Send`: it stays with the coroutine that locked.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct CoRwLockReadGuard<'a, T: ?Sized> {
    lock: &'a CoRwLock<T>,
    _not_send: PhantomData<*const ()>,
}

/// The write lock on a [`CoRwLock`]; derefs (mutably) to the data,
/// unlocks when dropped. Not `Send`: it stays with the coroutine that
/// locked.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct CoRwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a CoRwLock<T>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard gives only `&T`, as std's guards.
unsafe impl<T: ?Sized + Sync> Sync for CoRwLockReadGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for CoRwLockWriteGuard<'_, T> {}

impl<'a, T: ?Sized> CoRwLockReadGuard<'a, T> {
    fn new(lock: &'a CoRwLock<T>) -> Self {
        CoRwLockReadGuard {
            lock,
            _not_send: PhantomData,
        }
    }

    /// Turns the read lock into the write lock (qemu_co_rwlock_upgrade).
    ///
    /// If this is the only reader and nobody is queued, that happens at
    /// once. Otherwise the read lock is released and the coroutine queues
    /// for the write lock behind those already queued: a writer queued
    /// earlier runs first and may change the data meanwhile.
    ///
    /// # Panics
    /// If it must wait and the caller is not in a coroutine: "not in a
    /// coroutine" (the read lock is released).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::sync::{CoRwLock, CoRwLockReadGuard};
    ///
    /// let l = CoRwLock::new(1);
    /// let r = l.read();
    /// if *r == 1 {
    ///     let mut w = CoRwLockReadGuard::upgrade(r); // the sole reader: at once
    ///     *w = 2;
    /// }
    /// assert_eq!(*l.read(), 2);
    /// ```
    pub fn upgrade(this: Self) -> CoRwLockWriteGuard<'a, T> {
        let lock = this.lock;
        if take_upgrade(&mut waiter::lock(&lock.inner)) {
            std::mem::forget(this);
            return CoRwLockWriteGuard::new(lock);
        }
        // Panics outside a coroutine; `this` then releases the read lock.
        let node = Waiter::new(WRITE, "CoRwLockReadGuard::upgrade");
        let ticket = Ticket::new(lock, &node);
        let mut inner = waiter::lock(&lock.inner);
        // From here on our read lock is accounted for by hand.
        std::mem::forget(this);
        if take_upgrade(&mut inner) {
            drop(inner);
            std::mem::forget(ticket);
        } else {
            inner.owners -= 1;
            // SAFETY: `ticket` borrows `node` and unlinks it before it dies.
            unsafe { inner.list.push_back(&node) };
            // Our read lock is gone: a writer at the front may now go.
            lock.wake_ready(inner);
            ticket.wait("CoRwLockReadGuard::upgrade");
        }
        CoRwLockWriteGuard::new(lock)
    }
}

/// Upgrades the caller's read lock in place if it is the only reader and
/// nobody is queued.
fn take_upgrade(inner: &mut Inner) -> bool {
    debug_assert!(inner.owners > 0);
    let alone = inner.owners == 1 && inner.list.is_empty();
    if alone {
        inner.owners = -1;
    }
    alone
}

impl<'a, T: ?Sized> CoRwLockWriteGuard<'a, T> {
    fn new(lock: &'a CoRwLock<T>) -> Self {
        CoRwLockWriteGuard {
            lock,
            _not_send: PhantomData,
        }
    }

    /// Turns the write lock into a read lock without ever blocking
    /// (qemu_co_rwlock_downgrade); readers at the front of the queue are
    /// let in as well.
    ///
    /// ```
    /// use costack::sync::{CoRwLock, CoRwLockWriteGuard};
    ///
    /// let l = CoRwLock::new(1);
    /// let mut w = l.write();
    /// *w = 3;
    /// let r = CoRwLockWriteGuard::downgrade(w); // never blocks
    /// assert_eq!(*r, 3);
    /// assert!(l.try_read().is_some()); // other readers may join now
    /// ```
    pub fn downgrade(this: Self) -> CoRwLockReadGuard<'a, T> {
        let lock = ManuallyDrop::new(this).lock;
        let mut inner = waiter::lock(&lock.inner);
        debug_assert_eq!(inner.owners, -1);
        inner.owners = 1;
        lock.wake_ready(inner);
        CoRwLockReadGuard::new(lock)
    }
}

impl<T: ?Sized> Deref for CoRwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read lock is held: nobody has `&mut T`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Deref for CoRwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write lock is held.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for CoRwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write lock is held, and `&mut self` makes this the
        // only borrow through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for CoRwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.read_unlock();
    }
}

impl<T: ?Sized> Drop for CoRwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.write_unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoRwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoRwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for CoRwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for CoRwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
