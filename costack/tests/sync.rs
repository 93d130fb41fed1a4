//! `costack::sync`: every sentence of API.md's sync section, QEMU's
//! /locking tests, and a randomized model check.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use costack::sync::{
    CoMutex, CoMutexGuard, CoQueue, CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard, CoSemaphore,
};
use costack::{yield_now, Coroutine};

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string payload>".into()
    }
}

fn expect_panic<R>(f: impl FnOnce() -> R, needle: &str) {
    let err = panic::catch_unwind(AssertUnwindSafe(f))
        .err()
        .expect("expected a panic");
    let msg = panic_message(&*err);
    assert!(msg.contains(needle), "panic {msg:?} lacks {needle:?}");
}

type Log = Rc<RefCell<Vec<String>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

/// Records when it is dropped (to see a coroutine's stack unwound).
struct OnDrop(Rc<Cell<bool>>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

// ---- auto traits -------------------------------------------------------

fn assert_send_sync<T: Send + Sync>() {}

/// Compiles only if `T` is not Send (two impls become ambiguous otherwise).
trait AmbiguousIfSend<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

#[test]
fn auto_traits_match_std() {
    assert_send_sync::<CoMutex<Cell<u32>>>(); // T: Send suffices, as std
    assert_send_sync::<CoRwLock<Vec<u8>>>();
    assert_send_sync::<CoQueue>();
    assert_send_sync::<CoSemaphore>();
    <CoMutexGuard<'static, u32> as AmbiguousIfSend<_>>::check();
    <CoRwLockReadGuard<'static, u32> as AmbiguousIfSend<_>>::check();
    <CoRwLockWriteGuard<'static, u32> as AmbiguousIfSend<_>>::check();
}

// ---- CoMutex -------------------------------------------------------------

static GLOBAL: CoMutex<u32> = CoMutex::new(7);

#[test]
fn mutex_basics_const_new_try_lock_into_inner_get_mut() {
    {
        let mut g = GLOBAL.lock(); // outside any coroutine: uncontended is fine
        *g += 1;
        assert!(GLOBAL.is_locked());
        assert!(GLOBAL.try_lock().is_none());
    }
    assert!(!GLOBAL.is_locked());
    assert_eq!(*GLOBAL.try_lock().unwrap(), 8);

    let mut m = CoMutex::new(vec![1]);
    m.get_mut().push(2);
    assert_eq!(format!("{m:?}"), "CoMutex { data: [1, 2], .. }");
    let g = m.lock();
    assert_eq!(format!("{m:?}"), "CoMutex { data: <locked>, .. }");
    assert_eq!(format!("{g:?}"), "[1, 2]");
    drop(g);
    assert_eq!(m.into_inner(), [1, 2]);
}

#[test]
fn uncontended_lock_never_yields() {
    let m = Rc::new(CoMutex::new(0));
    let m2 = m.clone();
    let co = Coroutine::new(move || {
        for _ in 0..3 {
            *m2.lock() += 1;
        }
    });
    co.enter(); // a single enter: it never yielded
    assert!(co.is_finished());
    assert_eq!(*m.lock(), 3);
}

#[test]
fn contended_lock_outside_a_coroutine_panics() {
    let m = CoMutex::new(());
    let g = m.lock();
    expect_panic(|| m.lock(), "not in a coroutine");
    drop(g);
    assert!(!m.is_locked(), "the failed attempt left no trace");
    drop(m.lock());
}

/// QEMU's do_test_co_mutex, shared by /locking/co-mutex and
/// /locking/co-mutex/lockable: two coroutines lock, yield while holding,
/// unlock; the unlock queues the waiter, which runs when the holder
/// finishes.
fn do_test_co_mutex(make: impl Fn(Rc<Cell<bool>>, Rc<Cell<u32>>) -> Coroutine) {
    let locked = Rc::new(Cell::new(false));
    let done = Rc::new(Cell::new(0));
    let c1 = make(locked.clone(), done.clone());
    let c2 = make(locked.clone(), done.clone());
    c1.enter();
    assert!(locked.get());
    c2.enter();
    // Unlock queues c2; it starts when c1 terminates.
    c1.enter();
    assert_eq!(done.get(), 1);
    assert!(locked.get());
    c2.enter();
    assert_eq!(done.get(), 2);
    assert!(!locked.get());
}

#[test]
fn qemu_locking_co_mutex() {
    let m = Rc::new(CoMutex::new(()));
    do_test_co_mutex(|locked, done| {
        let m = m.clone();
        Coroutine::new(move || {
            let g = m.lock();
            assert!(!locked.get());
            locked.set(true);
            yield_now();
            locked.set(false);
            drop(g);
            done.set(done.get() + 1);
        })
    });
}

#[test]
fn qemu_locking_co_mutex_lockable() {
    // QEMU's variant goes through the generic QemuLockable; here the
    // generic path is a function over any `&CoMutex<T>` with the state in
    // the mutex itself, unlocked by the guard's scope.
    fn lockable<T: ?Sized>(m: &CoMutex<T>, f: impl FnOnce(&mut T)) {
        let mut g = m.lock();
        f(&mut g);
    }
    let m = Rc::new(CoMutex::new(()));
    do_test_co_mutex(|locked, done| {
        let m = m.clone();
        Coroutine::new(move || {
            lockable(&*m, |_| {
                assert!(!locked.get());
                locked.set(true);
                yield_now();
                locked.set(false);
            });
            done.set(done.get() + 1);
        })
    });
}

/// Ten coroutines queue on a held mutex; they get it in arrival order.
#[test]
fn mutex_fifo_order_with_10_waiters() {
    let m = Rc::new(CoMutex::new(Vec::new()));
    let holder = {
        let m = m.clone();
        Coroutine::new(move || {
            let g = m.lock();
            yield_now();
            drop(g);
        })
    };
    holder.enter();
    let order = [3, 7, 1, 9, 0, 5, 2, 8, 6, 4];
    let waiters: Vec<Coroutine> = order
        .iter()
        .map(|&i| {
            let m = m.clone();
            Coroutine::new(move || {
                let mut g = m.lock();
                g.push(i);
                yield_now(); // hold across a yield: the others keep waiting
            })
        })
        .collect();
    for w in &waiters {
        w.enter();
        assert!(!w.is_finished());
    }
    holder.enter(); // hands off to the first waiter
                    // Each waiter holds the lock across one yield; entering the holder
                    // lets it unlock and hand off to the next.
    for (k, w) in waiters.iter().enumerate() {
        assert_eq!(m.try_lock().map(|_| ()), None, "handed off, never free");
        assert_eq!(waiters.iter().filter(|w| w.is_finished()).count(), k);
        w.enter();
        assert!(w.is_finished());
    }
    assert_eq!(*m.lock(), order);
}

/// Direct hand-off: between the unlock and the waiter running, the mutex
/// already belongs to the waiter; nobody can take it.
#[test]
fn mutex_hand_off_prevents_barging() {
    let m = Rc::new(CoMutex::new(Vec::<&str>::new()));
    let (m1, m2, m3) = (m.clone(), m.clone(), m.clone());
    let waiter = Coroutine::new(move || m2.lock().push("waiter"));
    let barger = Coroutine::new(move || m3.lock().push("barger"));
    let barger2 = barger.clone();
    let holder = Coroutine::new(move || {
        let g = m1.lock();
        yield_now();
        drop(g); // hands to `waiter`, which runs only after we yield
        assert!(m1.is_locked());
        assert!(m1.try_lock().is_none());
        barger2.enter(); // must queue behind `waiter`
        assert!(!barger2.is_finished());
    });
    holder.enter();
    waiter.enter();
    holder.enter();
    assert!(holder.is_finished() && waiter.is_finished() && barger.is_finished());
    assert_eq!(*m.lock(), ["waiter", "barger"]);
}

#[test]
fn unlock_outside_a_coroutine_enters_the_waiter_at_once() {
    let m = Rc::new(CoMutex::new(0));
    let g = m.lock();
    let m2 = m.clone();
    let co = Coroutine::new(move || *m2.lock() += 1);
    co.enter();
    assert!(!co.is_finished());
    drop(g);
    assert!(co.is_finished());
    assert_eq!(*m.lock(), 1);
}

#[test]
fn guard_dropped_by_a_panic_releases_the_mutex() {
    let m = Rc::new(CoMutex::new(0));
    // Outside a coroutine.
    expect_panic(
        || {
            let mut g = m.lock();
            *g = 1;
            panic!("boom outside");
        },
        "boom outside",
    );
    assert!(!m.is_locked());
    // Inside one, with a waiter that gets the lock (no poisoning).
    let m1 = m.clone();
    let holder = Coroutine::new(move || {
        let mut g = m1.lock();
        *g = 2;
        yield_now();
        panic!("boom inside");
    });
    let m2 = m.clone();
    let waiter = Coroutine::new(move || *m2.lock() += 10);
    holder.enter();
    waiter.enter();
    expect_panic(|| holder.enter(), "boom inside");
    assert!(waiter.is_finished(), "the waiter ran after the panic");
    assert_eq!(*m.lock(), 12);
}

/// A guard dropped by a panic on the thread stack enters the waiter at
/// once; the waiter panicking as well must not turn into a double panic
/// (an abort), and the lock must end up free.
#[test]
fn unlock_during_unwinding_with_a_panicking_waiter() {
    let m = Rc::new(CoMutex::new(0));
    let g = m.lock();
    let m2 = m.clone();
    let waiter = Coroutine::new(move || {
        let mut g = m2.lock();
        *g += 1;
        panic!("the waiter panics too");
    });
    waiter.enter();
    expect_panic(
        move || {
            let _g = g;
            panic!("holder panics");
        },
        "holder panics",
    );
    assert!(waiter.is_finished());
    assert!(!m.is_locked());
    assert_eq!(*m.lock(), 1);
}

#[test]
fn mutex_waiter_dropped_while_queued_leaves_the_queue() {
    let m = Rc::new(CoMutex::new(Vec::new()));
    let m1 = m.clone();
    let holder = Coroutine::new(move || {
        let g = m1.lock();
        yield_now();
        drop(g);
    });
    holder.enter();
    let unwound = Rc::new(Cell::new(false));
    let mk = |name: &'static str, flag: Option<Rc<Cell<bool>>>| {
        let m = m.clone();
        Coroutine::new(move || {
            let _d = flag.map(OnDrop);
            m.lock().push(name);
        })
    };
    let a = mk("a", Some(unwound.clone()));
    let b = mk("b", None);
    a.enter();
    b.enter();
    drop(a); // unwinds `a` while it waits
    assert!(unwound.get());
    holder.enter();
    assert!(b.is_finished(), "the lock went past the dropped waiter");
    assert_eq!(*m.lock(), ["b"]);
    assert!(!m.is_locked());
}

#[test]
fn mutex_holder_dropped_passes_the_lock_on() {
    let m = Rc::new(CoMutex::new(0));
    let m1 = m.clone();
    let holder = Coroutine::new(move || {
        let _g = m1.lock();
        yield_now();
        unreachable!();
    });
    let m2 = m.clone();
    let waiter = Coroutine::new(move || *m2.lock() += 1);
    holder.enter();
    waiter.enter();
    drop(holder);
    assert!(waiter.is_finished());
    assert_eq!(*m.lock(), 1);
}

#[test]
fn mutex_shared_with_unsized_data() {
    let m: Rc<CoMutex<[u32]>> = Rc::new(CoMutex::new([1, 2, 3]));
    m.lock()[0] = 10;
    assert_eq!(m.lock().iter().sum::<u32>(), 15);
}

// ---- CoQueue -------------------------------------------------------------

#[test]
fn queue_wait_outside_a_coroutine_panics() {
    let q = CoQueue::new();
    expect_panic(|| q.wait(), "not in a coroutine");
    let m = CoMutex::new(());
    expect_panic(|| q.wait_with(m.lock()), "not in a coroutine");
    assert!(!m.is_locked(), "the guard was released");
    assert!(q.is_empty());
}

fn queue_waiters(q: &Rc<CoQueue>, l: &Log, names: &[&'static str]) -> Vec<Coroutine> {
    names
        .iter()
        .map(|&n| {
            let (q, l) = (q.clone(), l.clone());
            let co = Coroutine::new(move || {
                q.wait();
                l.borrow_mut().push(n.to_string());
            });
            co.enter();
            co
        })
        .collect()
}

#[test]
fn queue_restart_next_is_fifo_and_reports_emptiness() {
    let q = Rc::new(CoQueue::new());
    let l = log();
    assert!(q.is_empty());
    assert!(!q.restart_next());
    let cos = queue_waiters(&q, &l, &["a", "b", "c"]);
    assert!(!q.is_empty());
    assert!(q.restart_next()); // outside a coroutine: runs at once
    assert_eq!(*l.borrow(), ["a"]);
    assert!(q.restart_next());
    assert!(q.restart_next());
    assert!(!q.restart_next());
    assert_eq!(*l.borrow(), ["a", "b", "c"]);
    assert!(q.is_empty());
    assert!(cos.iter().all(Coroutine::is_finished));
}

#[test]
fn queue_restart_inside_a_coroutine_is_deferred_until_it_yields() {
    let q = Rc::new(CoQueue::new());
    let l = log();
    let _w = queue_waiters(&q, &l, &["woken"]);
    let (q2, l2) = (q.clone(), l.clone());
    let waker = Coroutine::new(move || {
        assert!(q2.restart_next());
        l2.borrow_mut().push("waker before yield".into());
        yield_now();
        l2.borrow_mut().push("waker after yield".into());
    });
    waker.enter();
    assert_eq!(*l.borrow(), ["waker before yield", "woken"]);
    waker.enter();
}

#[test]
fn queue_restart_all_restarts_only_current_waiters() {
    let q = Rc::new(CoQueue::new());
    let rounds = Rc::new(Cell::new(0));
    let cos: Vec<Coroutine> = (0..5)
        .map(|_| {
            let (q, r) = (q.clone(), rounds.clone());
            let co = Coroutine::new(move || loop {
                q.wait();
                r.set(r.get() + 1);
            });
            co.enter();
            co
        })
        .collect();
    q.restart_all(); // each runs once and waits again: no endless loop
    assert_eq!(rounds.get(), 5);
    assert!(!q.is_empty());
    q.restart_all();
    assert_eq!(rounds.get(), 10);
    drop(cos); // unwinds the waiters; they leave the queue
    assert!(q.is_empty());
}

#[test]
fn queue_enter_next_enters_at_once() {
    let q = Rc::new(CoQueue::new());
    let l = log();
    assert!(!q.enter_next());
    let _cos = queue_waiters(&q, &l, &["x", "y"]);
    assert!(q.enter_next());
    assert_eq!(*l.borrow(), ["x"]);
    assert!(q.enter_next());
    assert_eq!(*l.borrow(), ["x", "y"]);
}

#[test]
fn queue_waiters_ignore_stray_wakes() {
    let q = Rc::new(CoQueue::new());
    let l = log();
    let cos = queue_waiters(&q, &l, &["w"]);
    cos[0].wake(); // not a restart
    cos[0].enter();
    assert!(l.borrow().is_empty() && !q.is_empty());
    q.restart_next();
    assert_eq!(*l.borrow(), ["w"]);
}

#[test]
fn wait_with_releases_the_lock_while_waiting() {
    // A condition variable: the consumer waits for `ready` under the lock.
    let m = Rc::new(CoMutex::new(false));
    let q = Rc::new(CoQueue::new());
    let l = log();
    let (m1, q1, l1) = (m.clone(), q.clone(), l.clone());
    let consumer = Coroutine::new(move || {
        let mut g = m1.lock();
        while !*g {
            g = q1.wait_with(g);
        }
        l1.borrow_mut().push("consumed".into());
    });
    consumer.enter();
    assert!(!m.is_locked(), "released while waiting");
    assert!(!q.is_empty());
    let (m2, q2, l2) = (m.clone(), q.clone(), l.clone());
    let producer = Coroutine::new(move || {
        let mut g = m2.lock(); // free: the consumer gave it up
        q2.restart_next();
        yield_now(); // the consumer, restarted, now waits for the lock
        *g = true;
        l2.borrow_mut().push("produced".into());
    });
    producer.enter();
    assert!(!consumer.is_finished());
    producer.enter();
    assert!(consumer.is_finished());
    assert_eq!(*l.borrow(), ["produced", "consumed"]);
    assert!(!m.is_locked());
}

#[test]
fn queue_waiter_dropped_while_queued_and_restart_not_lost() {
    let q = Rc::new(CoQueue::new());
    let l = log();
    let mut cos = queue_waiters(&q, &l, &["a", "b"]);
    drop(cos.remove(0)); // `a` unwinds and leaves
    assert!(q.restart_next());
    assert_eq!(*l.borrow(), ["b"]);
    assert!(q.is_empty());
}

// ---- CoRwLock ------------------------------------------------------------

/// QEMU /locking/co-rwlock/upgrade: a reader that upgrades while a writer
/// is queued goes back to the queue, even as the sole reader.
#[test]
fn qemu_locking_co_rwlock_upgrade() {
    let lock = Rc::new(CoRwLock::new(()));
    let (c1_done, c2_done) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
    let (l1, d1) = (lock.clone(), c1_done.clone());
    let c1 = Coroutine::new(move || {
        let r = l1.read();
        yield_now();
        let w = CoRwLockReadGuard::upgrade(r);
        drop(w);
        d1.set(true);
    });
    let (l2, d2) = (lock.clone(), c2_done.clone());
    let c2 = Coroutine::new(move || {
        let w = l2.write();
        yield_now();
        drop(w);
        d2.set(true);
    });
    c1.enter();
    c2.enter();
    // c1 now goes to sleep: c2 runs first.
    c1.enter();
    assert!(!c1_done.get());
    c2.enter();
    assert!(c1_done.get());
    assert!(c2_done.get());
}

/// QEMU /locking/co-rwlock/downgrade: c1 reads; c2 (writer), c3 (reader)
/// and c4 (writer) queue; c1 unlocks, c2 downgrades and lets c3 in, then
/// c4 runs. Before QEMU's 2021 rewrite this hung.
#[test]
fn qemu_locking_co_rwlock_downgrade() {
    let lock = Rc::new(CoRwLock::new(()));
    let done: Vec<Rc<Cell<bool>>> = (0..4).map(|_| Rc::new(Cell::new(false))).collect();
    let (l, d) = (lock.clone(), done[0].clone());
    let c1 = Coroutine::new(move || {
        let r = l.read();
        yield_now();
        drop(r);
        yield_now();
        d.set(true);
    });
    let (l, d) = (lock.clone(), done[1].clone());
    let c2 = Coroutine::new(move || {
        let w = l.write();
        let r = CoRwLockWriteGuard::downgrade(w);
        drop(r);
        d.set(true);
    });
    let (l, d) = (lock.clone(), done[2].clone());
    let c3 = Coroutine::new(move || {
        drop(l.read());
        d.set(true);
    });
    let (l, d) = (lock.clone(), done[3].clone());
    let c4 = Coroutine::new(move || {
        drop(l.write());
        d.set(true);
    });
    c1.enter();
    c2.enter();
    c3.enter();
    c4.enter();
    c1.enter();
    assert!(done[1].get());
    assert!(done[2].get());
    assert!(done[3].get());
    c1.enter();
    assert!(done[0].get());
}

#[test]
fn rwlock_readers_share_writers_exclude() {
    let lock = CoRwLock::new(5);
    let r1 = lock.read();
    let r2 = lock.read();
    assert_eq!(*r1 + *r2, 10);
    assert!(lock.try_write().is_none());
    assert!(lock.try_read().is_some());
    drop((r1, r2));
    let mut w = lock.write();
    *w = 6;
    assert!(lock.try_read().is_none());
    assert_eq!(format!("{lock:?}"), "CoRwLock { data: <locked>, .. }");
    expect_panic(|| lock.read(), "not in a coroutine");
    expect_panic(|| lock.write(), "not in a coroutine");
    drop(w);
    assert_eq!(format!("{lock:?}"), "CoRwLock { data: 6, .. }");
    assert_eq!(lock.into_inner(), 6);
}

#[test]
fn rwlock_queued_writer_holds_back_new_readers() {
    let lock = Rc::new(CoRwLock::new(Vec::<&str>::new()));
    let r = lock.read();
    let l = lock.clone();
    let writer = Coroutine::new(move || l.write().push("writer"));
    writer.enter();
    assert!(!writer.is_finished());
    assert!(lock.try_read().is_none(), "a writer is queued");
    let l = lock.clone();
    let reader = Coroutine::new(move || {
        let g = l.read();
        assert_eq!(*g, ["writer"]);
    });
    reader.enter();
    assert!(
        !reader.is_finished(),
        "the new reader queued behind the writer"
    );
    drop(r); // outside a coroutine: the writer, then the reader, run now
    assert!(writer.is_finished() && reader.is_finished());
}

#[test]
fn rwlock_write_unlock_wakes_all_front_readers() {
    let lock = Rc::new(CoRwLock::new(0));
    let w = lock.write();
    let readers: Vec<Coroutine> = (0..3)
        .map(|_| {
            let l = lock.clone();
            let co = Coroutine::new(move || {
                let _r = l.read();
                yield_now();
            });
            co.enter();
            co
        })
        .collect();
    let l = lock.clone();
    let writer = Coroutine::new(move || *l.write() += 1);
    writer.enter();
    drop(w);
    // All three readers hold the lock together; the writer waits.
    assert!(readers.iter().all(|r| !r.is_finished()));
    assert!(
        lock.try_read().is_none(),
        "the queued writer blocks new readers"
    );
    for r in &readers {
        r.enter();
    }
    assert!(writer.is_finished());
    assert_eq!(*lock.read(), 1);
}

#[test]
fn upgrade_is_immediate_for_a_sole_reader_and_downgrade_never_blocks() {
    let lock = Rc::new(CoRwLock::new(0));
    let r = lock.read();
    let mut w = CoRwLockReadGuard::upgrade(r); // no coroutine needed
    *w = 1;
    // Readers queued behind the writer get in on downgrade.
    let l = lock.clone();
    let reader = Coroutine::new(move || assert_eq!(*l.read(), 1));
    reader.enter();
    assert!(!reader.is_finished());
    let r = CoRwLockWriteGuard::downgrade(w);
    assert!(reader.is_finished(), "downgrade let the queued reader in");
    assert_eq!(*r, 1);
    assert!(lock.try_read().is_some());
}

#[test]
fn upgrade_that_must_wait_outside_a_coroutine_panics_and_releases() {
    let lock = CoRwLock::new(0);
    let r1 = lock.read();
    let r2 = lock.read();
    expect_panic(|| CoRwLockReadGuard::upgrade(r2), "not in a coroutine");
    drop(r1);
    assert!(lock.try_write().is_some(), "both read locks are gone");
}

#[test]
fn rwlock_dropped_waiter_unblocks_those_behind_it() {
    let lock = Rc::new(CoRwLock::new(0));
    let r = lock.read();
    let l = lock.clone();
    let writer = Coroutine::new(move || *l.write() += 1);
    writer.enter();
    let l = lock.clone();
    let reader = Coroutine::new(move || drop(l.read()));
    reader.enter();
    assert!(!reader.is_finished());
    drop(writer); // the writer at the front leaves: the reader may go
    assert!(reader.is_finished(), "no lost wake-up");
    drop(r);
    assert_eq!(*lock.try_write().unwrap(), 0);
}

#[test]
fn rwlock_guards_dropped_by_panics_release() {
    let lock = Rc::new(CoRwLock::new(0));
    expect_panic(
        || {
            let _w = lock.write();
            panic!("w");
        },
        "w",
    );
    expect_panic(
        || {
            let _r = lock.read();
            panic!("r");
        },
        "r",
    );
    assert!(lock.try_write().is_some());
    // A holder coroutine dropped while writing passes the lock on.
    let l = lock.clone();
    let holder = Coroutine::new(move || {
        let _w = l.write();
        yield_now();
    });
    let l = lock.clone();
    let reader = Coroutine::new(move || drop(l.read()));
    holder.enter();
    reader.enter();
    drop(holder);
    assert!(reader.is_finished());
}

// ---- CoSemaphore -----------------------------------------------------------

#[test]
fn semaphore_basics() {
    let s = CoSemaphore::new(3);
    s.acquire(2);
    assert_eq!(s.available(), 1);
    assert!(!s.try_acquire(2));
    assert!(s.try_acquire(1));
    expect_panic(|| s.acquire(1), "not in a coroutine");
    s.release(3);
    assert_eq!(s.available(), 3);
    s.acquire(0);
    expect_panic(|| s.release(usize::MAX), "overflow");
    assert_eq!(s.available(), 3);
}

#[test]
fn semaphore_is_fifo_so_large_requests_are_not_starved() {
    let s = Rc::new(CoSemaphore::new(2));
    let l = log();
    s.acquire(2);
    let mk = |name: &'static str, n: usize| {
        let (s, l) = (s.clone(), l.clone());
        let co = Coroutine::new(move || {
            s.acquire(n);
            l.borrow_mut().push(name.into());
            yield_now();
            s.release(n);
        });
        co.enter();
        co
    };
    let big = mk("big", 2);
    let small1 = mk("small1", 1);
    let small2 = mk("small2", 1);
    s.release(1); // one free: `small1` must not pass `big`
    assert!(l.borrow().is_empty());
    assert!(!s.try_acquire(1), "no barging past the queue");
    s.release(1);
    assert_eq!(*l.borrow(), ["big"]);
    big.enter(); // releases 2: both small ones run
    assert_eq!(*l.borrow(), ["big", "small1", "small2"]);
    small1.enter();
    small2.enter();
    assert_eq!(s.available(), 2);
}

#[test]
fn semaphore_dropped_waiter_leaves_and_unblocks() {
    let s = Rc::new(CoSemaphore::new(1));
    let mk = |n: usize| {
        let s = s.clone();
        let co = Coroutine::new(move || s.acquire(n));
        co.enter();
        co
    };
    s.acquire(1);
    let big = mk(5);
    let small = mk(1);
    s.release(1);
    assert!(!small.is_finished(), "waits behind `big`");
    drop(big);
    assert!(small.is_finished(), "the big request left: small goes");
    assert_eq!(s.available(), 0);
}

// ---- randomized model check ----------------------------------------------

/// Seeds per randomized test: under Miri (each coroutine an interpreted
/// OS thread) a few cover every path of the locks; natively, hundreds.
const SEEDS: u64 = if cfg!(miri) { 6 } else { 300 };

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Lock(u32),
    TryLock(u32),
    Yield,
}

struct Model {
    holder: Cell<Option<usize>>,
    requests: RefCell<Vec<usize>>,
    acquired: RefCell<Vec<usize>>,
    waiting: Vec<Cell<bool>>,
}

/// Clears the model's record of a coroutine that is dropped mid-script.
struct Leave<'a>(&'a Model, usize);
impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let (m, i) = (self.0, self.1);
        if m.waiting[i].replace(false) {
            let mut req = m.requests.borrow_mut();
            let pos = req.iter().rposition(|&r| r == i).unwrap();
            req.remove(pos);
        }
        if m.holder.get() == Some(i) {
            m.holder.set(None);
        }
    }
}

fn run_mutex_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = 2 + rng.below(7) as usize;
    let mutex = Rc::new(CoMutex::new(0u64));
    let model = Rc::new(Model {
        holder: Cell::new(None),
        requests: RefCell::new(Vec::new()),
        acquired: RefCell::new(Vec::new()),
        waiting: (0..n).map(|_| Cell::new(false)).collect(),
    });
    let mut cos: Vec<Option<Coroutine>> = (0..n)
        .map(|i| {
            let script: Vec<Op> = (0..rng.below(12))
                .map(|_| match rng.below(3) {
                    0 => Op::Lock(rng.below(3) as u32),
                    1 => Op::TryLock(rng.below(2) as u32),
                    _ => Op::Yield,
                })
                .collect();
            let (mutex, model) = (mutex.clone(), model.clone());
            Some(Coroutine::new(move || {
                let model = &*model;
                let _leave = Leave(model, i);
                for op in script {
                    let (guard, hold) = match op {
                        Op::Yield => {
                            yield_now();
                            continue;
                        }
                        Op::Lock(hold) => {
                            model.waiting[i].set(true);
                            model.requests.borrow_mut().push(i);
                            let g = mutex.lock();
                            model.waiting[i].set(false);
                            (g, hold)
                        }
                        Op::TryLock(hold) => match mutex.try_lock() {
                            Some(g) => {
                                model.requests.borrow_mut().push(i);
                                (g, hold)
                            }
                            None => continue,
                        },
                    };
                    assert_eq!(model.holder.replace(Some(i)), None, "mutual exclusion");
                    model.acquired.borrow_mut().push(i);
                    let mut guard = guard;
                    *guard += 1;
                    for _ in 0..hold {
                        yield_now();
                    }
                    model.holder.set(None);
                    drop(guard);
                }
            }))
        })
        .collect();
    let mut steps = 0;
    loop {
        let runnable: Vec<usize> = (0..n)
            .filter(|&i| matches!(&cos[i], Some(c) if !c.is_finished() && !model.waiting[i].get()))
            .collect();
        if runnable.is_empty() {
            let stuck: Vec<usize> = (0..n)
                .filter(|&i| matches!(&cos[i], Some(c) if !c.is_finished()))
                .collect();
            assert!(
                stuck.is_empty(),
                "seed {seed}: lost wake-up, {stuck:?} wait forever"
            );
            break;
        }
        let pick = runnable[rng.below(runnable.len() as u64) as usize];
        if rng.below(40) == 0 {
            // Drop a random live coroutine (maybe a waiter, maybe the holder).
            let victim = rng.below(n as u64) as usize;
            cos[victim] = None;
            continue;
        }
        if let Some(c) = &cos[pick] {
            c.enter();
        }
        steps += 1;
        assert!(steps < 100_000, "seed {seed}: no progress");
    }
    assert_eq!(
        *model.requests.borrow(),
        *model.acquired.borrow(),
        "seed {seed}: FIFO: acquisitions follow requests"
    );
    assert!(!mutex.is_locked(), "seed {seed}");
    assert_eq!(*mutex.lock() as usize, model.acquired.borrow().len());
}

#[test]
fn randomized_mutex_against_a_model() {
    for seed in 0..SEEDS * 4 / 3 {
        run_mutex_model(seed);
    }
}

/// Semaphore: random acquire/release amounts; at no time do holders
/// exceed the capacity; requests are served in FIFO order; all finish.
fn run_semaphore_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0xd134_2543_de82_ef95) | 1);
    let cap = 1 + rng.below(4) as usize;
    let n = 2 + rng.below(6) as usize;
    let sem = Rc::new(CoSemaphore::new(cap));
    let used = Rc::new(Cell::new(0usize));
    let requests = Rc::new(RefCell::new(Vec::new()));
    let served = Rc::new(RefCell::new(Vec::new()));
    let waiting: Rc<Vec<Cell<bool>>> = Rc::new((0..n).map(|_| Cell::new(false)).collect());
    let cos: Vec<Coroutine> = (0..n)
        .map(|i| {
            let script: Vec<(usize, u32)> = (0..rng.below(8))
                .map(|_| (1 + rng.below(cap as u64) as usize, rng.below(3) as u32))
                .collect();
            let (sem, used, requests, served, waiting) = (
                sem.clone(),
                used.clone(),
                requests.clone(),
                served.clone(),
                waiting.clone(),
            );
            Coroutine::new(move || {
                for (k, hold) in script {
                    waiting[i].set(true);
                    requests.borrow_mut().push(i);
                    sem.acquire(k);
                    waiting[i].set(false);
                    served.borrow_mut().push(i);
                    used.set(used.get() + k);
                    assert!(used.get() <= cap, "capacity exceeded");
                    for _ in 0..hold {
                        yield_now();
                    }
                    used.set(used.get() - k);
                    sem.release(k);
                    yield_now();
                }
            })
        })
        .collect();
    loop {
        let runnable: Vec<&Coroutine> = cos
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.is_finished() && !waiting[*i].get())
            .map(|(_, c)| c)
            .collect();
        if runnable.is_empty() {
            assert!(
                cos.iter().all(Coroutine::is_finished),
                "seed {seed}: lost wake-up"
            );
            break;
        }
        runnable[rng.below(runnable.len() as u64) as usize].enter();
    }
    assert_eq!(*requests.borrow(), *served.borrow(), "seed {seed}: FIFO");
    assert_eq!(sem.available(), cap);
}

#[test]
fn randomized_semaphore_against_a_model() {
    for seed in 0..SEEDS {
        run_semaphore_model(seed);
    }
}

/// RwLock: random readers/writers/upgrades/downgrades; checks exclusion
/// (never a writer with anyone else) and that everyone finishes.
fn run_rwlock_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0xa076_1d64_78bd_642f) | 1);
    let n = 2 + rng.below(6) as usize;
    let lock = Rc::new(CoRwLock::new(()));
    let readers = Rc::new(Cell::new(0i32)); // -1: a writer
    let waiting: Rc<Vec<Cell<bool>>> = Rc::new((0..n).map(|_| Cell::new(false)).collect());
    let enter_read = |r: &Cell<i32>| {
        assert!(r.get() >= 0, "reader with a writer");
        r.set(r.get() + 1);
    };
    let enter_write = |r: &Cell<i32>| {
        assert_eq!(r.get(), 0, "writer with others");
        r.set(-1);
    };
    let cos: Vec<Coroutine> = (0..n)
        .map(|i| {
            let script: Vec<(u64, u32)> = (0..rng.below(8))
                .map(|_| (rng.below(4), rng.below(3) as u32))
                .collect();
            let (lock, readers, waiting) = (lock.clone(), readers.clone(), waiting.clone());
            Coroutine::new(move || {
                let hold = |k: u32| {
                    for _ in 0..k {
                        yield_now();
                    }
                };
                for (kind, k) in script {
                    waiting[i].set(true);
                    match kind {
                        0 => {
                            let g = lock.read();
                            waiting[i].set(false);
                            enter_read(&readers);
                            hold(k);
                            readers.set(readers.get() - 1);
                            drop(g);
                        }
                        1 => {
                            let g = lock.write();
                            waiting[i].set(false);
                            enter_write(&readers);
                            hold(k);
                            readers.set(0);
                            drop(g);
                        }
                        2 => {
                            let g = lock.read();
                            waiting[i].set(false);
                            enter_read(&readers);
                            hold(k);
                            readers.set(readers.get() - 1);
                            waiting[i].set(true);
                            let w = CoRwLockReadGuard::upgrade(g);
                            waiting[i].set(false);
                            enter_write(&readers);
                            hold(1);
                            readers.set(0);
                            drop(w);
                        }
                        _ => {
                            let w = lock.write();
                            waiting[i].set(false);
                            enter_write(&readers);
                            hold(k);
                            readers.set(1);
                            let r = CoRwLockWriteGuard::downgrade(w);
                            hold(1);
                            readers.set(readers.get() - 1);
                            drop(r);
                        }
                    }
                    yield_now();
                }
            })
        })
        .collect();
    loop {
        let runnable: Vec<&Coroutine> = cos
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.is_finished() && !waiting[*i].get())
            .map(|(_, c)| c)
            .collect();
        if runnable.is_empty() {
            assert!(
                cos.iter().all(Coroutine::is_finished),
                "seed {seed}: lost wake-up"
            );
            break;
        }
        runnable[rng.below(runnable.len() as u64) as usize].enter();
    }
    assert!(lock.try_write().is_some());
}

#[test]
fn randomized_rwlock_against_a_model() {
    for seed in 0..SEEDS {
        run_rwlock_model(seed);
    }
}
