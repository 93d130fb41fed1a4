//! The locks with coroutines on several event-loop threads: wakes cross
//! threads through the loops' mailboxes, never by hand.

// The event loop and sockets run on unix systems (see the crate docs).
#![cfg(any(unix, windows))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use costack::aio::{self, EventLoop, LoopHandle};
use costack::sync::{CoMutex, CoQueue, CoRwLock, CoSemaphore};

/// Lets the loop run its other coroutines, then continues (a bare
/// `yield_now` would wait for a wake nobody sends).
fn yield_to_loop() {
    aio::schedule(&costack::current().unwrap());
    costack::yield_now();
}

/// Runs `n` event loops on their own threads until `done` reaches `target`.
fn with_loops(n: usize, body: impl FnOnce(&[LoopHandle])) {
    let stop = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..n {
        let (tx, rx) = mpsc::channel();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let ev = EventLoop::new().unwrap();
            tx.send(ev.handle()).unwrap();
            ev.block_on(move || {
                while stop.load(Ordering::SeqCst) == 0 {
                    aio::sleep(Duration::from_millis(2));
                }
            });
        }));
        handles.push(rx.recv().unwrap());
    }
    body(&handles);
    stop.store(1, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
}

fn wait_for(counter: &AtomicUsize, target: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::SeqCst) < target {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at {} of {target}",
            counter.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn comutex_shared_by_coroutines_on_two_loop_threads() {
    const PER: usize = 8;
    const ROUNDS: usize = 200;
    let lock = Arc::new(CoMutex::new((0usize, false)));
    let done = Arc::new(AtomicUsize::new(0));
    with_loops(2, |loops| {
        for l in loops {
            for _ in 0..PER {
                let (lock, done) = (lock.clone(), done.clone());
                l.spawn(move || {
                    for i in 0..ROUNDS {
                        let mut g = lock.lock();
                        assert!(!g.1, "two holders at once");
                        g.1 = true;
                        // Hold the lock across a yield, or a sleep, so that
                        // waiters from the other thread queue up.
                        if i % 16 == 0 {
                            aio::sleep(Duration::from_micros(50));
                        } else {
                            yield_to_loop();
                        }
                        g.0 += 1;
                        g.1 = false;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        wait_for(&done, 2 * PER);
    });
    // Every coroutine finished: uncontended, so this never waits.
    let (count, held) = *lock.try_lock().unwrap();
    assert_eq!(count, 2 * PER * ROUNDS);
    assert!(!held);
}

#[test]
fn rwlock_semaphore_and_queue_across_loop_threads() {
    let rw = Arc::new(CoRwLock::new(0u64));
    let sem = Arc::new(CoSemaphore::new(3));
    let in_sem = Arc::new(AtomicUsize::new(0));
    let queue = Arc::new(CoQueue::new());
    let gate = Arc::new(CoMutex::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    with_loops(2, |loops| {
        for (t, l) in loops.iter().enumerate() {
            for k in 0..6 {
                let (rw, sem, in_sem) = (rw.clone(), sem.clone(), in_sem.clone());
                let (queue, gate, done) = (queue.clone(), gate.clone(), done.clone());
                l.spawn(move || {
                    // Wait on the queue until the gate opens.
                    let mut g = gate.lock();
                    while !*g {
                        g = queue.wait_with(g);
                    }
                    drop(g);
                    for i in 0..50 {
                        if (i + k + t) % 3 == 0 {
                            let mut w = rw.write();
                            let v = *w;
                            yield_to_loop();
                            *w = v + 1;
                        } else {
                            let r = rw.read();
                            let _ = *r;
                            yield_to_loop();
                        }
                        sem.acquire(1);
                        let now = in_sem.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 3, "semaphore over-admitted: {now}");
                        yield_to_loop();
                        in_sem.fetch_sub(1, Ordering::SeqCst);
                        sem.release(1);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        // Open the gate from one loop and restart everyone.
        let (gate, queue) = (gate.clone(), queue.clone());
        std::thread::sleep(Duration::from_millis(20));
        loops[0].spawn(move || {
            *gate.lock() = true;
            queue.restart_all();
        });
        wait_for(&done, 12);
    });
    let writes: u64 = (0..2)
        .flat_map(|t| (0..6).map(move |k| (0..50).filter(|i| (i + k + t) % 3 == 0).count() as u64))
        .sum();
    assert_eq!(*rw.read(), writes);
}

#[test]
fn dropping_a_loop_with_waiters_leaves_the_lock_usable() {
    let lock = Arc::new(CoMutex::new(0u32));
    let queued = Arc::new(AtomicUsize::new(0));
    {
        let ev = EventLoop::new().unwrap();
        let l = lock.clone();
        let q = queued.clone();
        ev.block_on(move || {
            let guard = l.lock();
            for _ in 0..5 {
                let (l, q) = (l.clone(), q.clone());
                aio::spawn(move || {
                    q.fetch_add(1, Ordering::SeqCst);
                    *l.lock() += 1;
                });
            }
            // Let the five queue up behind us, then return holding the lock
            // until the guard drops here; the loop is dropped with them
            // either granted or still queued.
            aio::sleep(Duration::from_millis(5));
            drop(guard);
        });
    }
    assert_eq!(queued.load(Ordering::SeqCst), 5);
    // Whatever the five did before the loop went away, the lock is free
    // and its queue empty: a new loop can take it.
    let ev = EventLoop::new().unwrap();
    let l = lock.clone();
    let value = ev.block_on(move || {
        let mut g = l.lock();
        *g += 100;
        *g
    });
    assert!(value >= 100);
    assert!(!lock.is_locked());
}
