//! `costack::sync`: every sentence of API.md's sync section and QEMU's
//! /locking tests (the randomized model check is in `sync_model.rs`).

mod support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use costack::sync::{
    CoMutex, CoMutexGuard, CoQueue, CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard, CoSemaphore,
};
use costack::{yield_now, Coroutine};
use support::{expect_panic, SetOnDrop};

type Log = Rc<RefCell<Vec<String>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
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
            let _d = flag.map(SetOnDrop);
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
