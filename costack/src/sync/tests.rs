//! Tests that need crate internals: coroutines on several threads driven by
//! hand (delivering their thread's mailbox, as an event loop would), and
//! waiters granted but dropped before they ran (through a test home that
//! holds scheduled coroutines instead of running them).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{CoMutex, CoQueue, CoRwLock, CoSemaphore};
use crate::coroutine::control::Home;
use crate::{yield_now, Coroutine};

/// Enters the coroutines `runnable` allows and delivers this thread's
/// cross-thread wakes, until all have finished.
fn drive(cos: &[Coroutine], runnable: impl Fn(usize) -> bool) {
    let mailbox = crate::aio::mailbox();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = true;
        for (i, c) in cos.iter().enumerate() {
            if !c.is_finished() {
                done = false;
                if runnable(i) {
                    c.enter();
                }
            }
        }
        mailbox.deliver();
        if done {
            return;
        }
        std::thread::yield_now();
        assert!(Instant::now() < deadline, "no progress: a lost wake-up?");
    }
}

/// Delivers this thread's mailbox until `co` finishes.
fn deliver_until_finished(co: &Coroutine) {
    drive(std::slice::from_ref(co), |_| false);
}

#[test]
fn mutex_shared_by_coroutines_on_two_threads() {
    const PER: usize = 300;
    let m = Arc::new(CoMutex::new(0usize));
    let busy = Arc::new(AtomicBool::new(false));
    let handoffs = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (m, busy, handoffs) = (m.clone(), busy.clone(), handoffs.clone());
            std::thread::spawn(move || {
                let waiting: Rc<Vec<Cell<bool>>> =
                    Rc::new((0..3).map(|_| Cell::new(false)).collect());
                let cos: Vec<Coroutine> = (0..3)
                    .map(|i| {
                        let (m, busy, handoffs, waiting) =
                            (m.clone(), busy.clone(), handoffs.clone(), waiting.clone());
                        Coroutine::new(move || {
                            for k in 0..PER {
                                waiting[i].set(true);
                                let contended = m.is_locked();
                                let mut g = m.lock();
                                waiting[i].set(false);
                                if contended {
                                    handoffs.fetch_add(1, Ordering::Relaxed);
                                }
                                assert!(!busy.swap(true, Ordering::Relaxed), "mutual exclusion");
                                *g += 1;
                                if k % 3 == 0 {
                                    yield_now(); // hold across a yield
                                }
                                busy.store(false, Ordering::Relaxed);
                                drop(g);
                                yield_now();
                            }
                        })
                    })
                    .collect();
                drive(&cos, |i| !waiting[i].get());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*m.lock(), 2 * 3 * PER);
    assert!(!m.is_locked());
    assert!(handoffs.load(Ordering::Relaxed) > 0);
}

#[test]
fn cross_thread_hand_off_is_direct() {
    let m = Arc::new(CoMutex::new(Vec::new()));
    let g = m.lock();
    let (queued_tx, queued_rx) = mpsc::channel();
    let m2 = m.clone();
    let t = std::thread::spawn(move || {
        let m3 = m2.clone();
        let co = Coroutine::new(move || m3.lock().push("other thread"));
        co.enter();
        assert!(!co.is_finished());
        queued_tx.send(()).unwrap();
        deliver_until_finished(&co);
    });
    queued_rx.recv().unwrap();
    drop(g); // grants the waiter on the other thread
    assert!(m.is_locked(), "owned by the waiter before it even ran");
    assert!(m.try_lock().is_none());
    t.join().unwrap();
    assert_eq!(*m.lock(), ["other thread"]);
}

#[test]
fn cross_thread_grant_to_a_dropped_waiter_is_passed_on() {
    let m = Arc::new(CoMutex::new(Vec::new()));
    let g = m.lock();
    let (queued_tx, queued_rx) = mpsc::channel();
    let (granted_tx, granted_rx) = mpsc::channel::<()>();
    let m2 = m.clone();
    let t = std::thread::spawn(move || {
        let mk = |name: &'static str| {
            let m = m2.clone();
            let co = Coroutine::new(move || m.lock().push(name));
            co.enter();
            co
        };
        let first = mk("first");
        let second = mk("second");
        queued_tx.send(()).unwrap();
        granted_rx.recv().unwrap();
        // The grant for `first` sits in our mailbox: drop it unrun.
        drop(first);
        deliver_until_finished(&second);
    });
    queued_rx.recv().unwrap();
    drop(g);
    granted_tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(*m.lock(), ["second"]);
    assert!(!m.is_locked());
}

/// One thread locks and unlocks in a loop while another keeps creating
/// waiters and dropping some of them at arbitrary points, so grants and
/// drops race. Nothing may hang, and every increment is counted.
#[test]
fn grants_racing_with_dropped_waiters() {
    const ROUNDS: usize = 400;
    let m = Arc::new(CoMutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let (m1, stop1) = (m.clone(), stop.clone());
    let locker = std::thread::spawn(move || {
        let waiting = Rc::new(Cell::new(false));
        let (w, m) = (waiting.clone(), m1.clone());
        let co = Coroutine::new(move || {
            let mut n = 0;
            // Keep going at least a while, even if the other side is done.
            while n < 200 || !stop1.load(Ordering::Relaxed) {
                w.set(true);
                let mut g = m.lock();
                w.set(false);
                *g += 1;
                n += 1;
                drop(g);
                yield_now();
            }
        });
        drive(std::slice::from_ref(&co), |_| !waiting.get());
    });
    let mut finished = 0;
    let mailbox = crate::aio::mailbox();
    for round in 0..ROUNDS {
        let m = m.clone();
        let co = Coroutine::new(move || *m.lock() += 1);
        co.enter();
        for _ in 0..round % 4 {
            std::thread::yield_now();
            mailbox.deliver();
        }
        if round % 2 == 0 && !co.is_finished() {
            drop(co); // maybe granted meanwhile, maybe still queued
        } else {
            deliver_until_finished(&co);
            finished += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    locker.join().unwrap();
    mailbox.deliver();
    assert!(!m.is_locked());
    assert!(*m.lock() >= finished);
}

#[test]
fn rwlock_and_semaphore_across_threads() {
    const PER: usize = 200;
    let lock = Arc::new(CoRwLock::new(0usize));
    let sem = Arc::new(CoSemaphore::new(2));
    let inside = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (lock, sem, inside) = (lock.clone(), sem.clone(), inside.clone());
            std::thread::spawn(move || {
                let waiting: Rc<Vec<Cell<bool>>> =
                    Rc::new((0..3).map(|_| Cell::new(false)).collect());
                let cos: Vec<Coroutine> = (0..3)
                    .map(|i| {
                        let (lock, sem, inside, waiting) =
                            (lock.clone(), sem.clone(), inside.clone(), waiting.clone());
                        Coroutine::new(move || {
                            for k in 0..PER {
                                waiting[i].set(true);
                                if (k + i + t) % 3 == 0 {
                                    let mut w = lock.write();
                                    waiting[i].set(false);
                                    *w += 1;
                                    yield_now();
                                } else {
                                    let r = lock.read();
                                    waiting[i].set(false);
                                    let _ = *r;
                                    yield_now();
                                }
                                waiting[i].set(true);
                                sem.acquire(1);
                                waiting[i].set(false);
                                assert!(inside.fetch_add(1, Ordering::Relaxed) < 2);
                                yield_now();
                                inside.fetch_sub(1, Ordering::Relaxed);
                                sem.release(1);
                            }
                        })
                    })
                    .collect();
                drive(&cos, |i| !waiting[i].get());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let writes: usize = (0..2)
        .flat_map(|t| (0..3).map(move |i| (0..PER).filter(|k| (k + i + t) % 3 == 0).count()))
        .sum();
    assert_eq!(*lock.try_read().unwrap(), writes);
    assert_eq!(sem.available(), 2);
}

/// A home that keeps scheduled coroutines instead of running them, so a
/// test can drop a waiter between its grant and its run.
#[derive(Default)]
struct Parking(RefCell<Vec<Coroutine>>);

impl Home for Parking {
    fn schedule(&self, co: Coroutine) {
        self.0.borrow_mut().push(co);
    }
}

/// Queues `co` (which must start by waiting), with a parking home.
fn parked(home: &Rc<Parking>, f: impl FnOnce() + 'static) -> Coroutine {
    let co = Coroutine::new(f);
    co.set_home(Some(home.clone()));
    co.enter();
    assert!(!co.is_finished());
    co
}

/// Drops the only handles to a granted, parked waiter.
fn drop_parked(home: &Rc<Parking>, co: Coroutine) {
    assert_eq!(home.0.borrow().len(), 1, "the grant scheduled the waiter");
    drop(co);
    let parked = std::mem::take(&mut *home.0.borrow_mut());
    drop(parked); // the last handle: unwinds the granted waiter
}

#[test]
fn granted_then_dropped_mutex_waiter_passes_the_lock_on() {
    let home = Rc::new(Parking::default());
    let m = Rc::new(CoMutex::new(Vec::new()));
    let g = m.lock();
    let m1 = m.clone();
    let first = parked(&home, move || m1.lock().push("first"));
    let m2 = m.clone();
    let second = Coroutine::new(move || m2.lock().push("second"));
    second.enter();
    drop(g); // grants `first`, which is only scheduled
    drop_parked(&home, first);
    assert!(second.is_finished());
    assert_eq!(*m.lock(), ["second"]);
}

#[test]
fn granted_then_dropped_queue_waiter_passes_the_restart_on() {
    let home = Rc::new(Parking::default());
    let q = Rc::new(CoQueue::new());
    let q1 = q.clone();
    let first = parked(&home, move || q1.wait());
    let q2 = q.clone();
    let second = Coroutine::new(move || q2.wait());
    second.enter();
    assert!(q.restart_next());
    drop_parked(&home, first);
    assert!(second.is_finished(), "the restart was not lost");
    assert!(q.is_empty());

    // A broadcast restart is not passed on: everyone got one.
    let q3 = q.clone();
    let a = parked(&home, move || q3.wait());
    q.restart_all();
    let q4 = q.clone();
    let later = Coroutine::new(move || q4.wait());
    later.enter();
    drop_parked(&home, a);
    assert!(!later.is_finished());
    assert!(q.restart_next());
    assert!(later.is_finished());
}

#[test]
fn granted_then_dropped_rwlock_and_semaphore_waiters_give_back() {
    let home = Rc::new(Parking::default());
    let lock = Rc::new(CoRwLock::new(0));
    let w = lock.write();
    let l1 = lock.clone();
    let writer = parked(&home, move || *l1.write() += 1);
    let l2 = lock.clone();
    let reader = Coroutine::new(move || assert_eq!(*l2.read(), 0));
    reader.enter();
    drop(w);
    drop_parked(&home, writer);
    assert!(reader.is_finished());
    assert!(lock.try_write().is_some());

    let sem = Rc::new(CoSemaphore::new(0));
    let s1 = sem.clone();
    let big = parked(&home, move || s1.acquire(2));
    let s2 = sem.clone();
    let small = Coroutine::new(move || s2.acquire(1));
    small.enter();
    sem.release(2); // granted to `big`
    assert_eq!(sem.available(), 0);
    drop_parked(&home, big);
    assert!(small.is_finished());
    assert_eq!(sem.available(), 1);
}

#[test]
fn queue_restarts_reach_waiters_on_another_thread() {
    let q = Arc::new(CoQueue::new());
    let count = Arc::new(AtomicUsize::new(0));
    let (queued_tx, queued_rx) = mpsc::channel();
    let (q2, c2) = (q.clone(), count.clone());
    let t = std::thread::spawn(move || {
        let cos: Vec<Coroutine> = (0..3)
            .map(|_| {
                let (q, c) = (q2.clone(), c2.clone());
                let co = Coroutine::new(move || {
                    q.wait();
                    c.fetch_add(1, Ordering::SeqCst);
                });
                co.enter();
                co
            })
            .collect();
        queued_tx.send(()).unwrap();
        drive(&cos, |_| false);
    });
    queued_rx.recv().unwrap();
    // From another thread, even enter_next only posts the wake.
    assert!(q.enter_next());
    assert!(q.restart_next());
    q.restart_all();
    assert!(q.is_empty());
    t.join().unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
}
