//! Cancellation, deadlines and shields: `JoinHandle::cancel`,
//! `RemoteJoinHandle::cancel`, `aio::timeout`/`timeout_at`, `aio::shield`,
//! and what every wait point does when a cancellation reaches it.

#![cfg(any(unix, windows))]

mod support;

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use costack::aio::{self, Cancelled, Elapsed, EventLoop, IoThread};
use costack::sync::{CoMutex, CoQueue, CoSemaphore};
use support::{panic_message, Log, Noisy};

const LONG: Duration = Duration::from_secs(3600);

fn is_cancelled(p: &(dyn std::any::Any + Send)) -> bool {
    p.is::<Cancelled>()
}

#[test]
fn a_sleeping_coroutine_unwinds_from_its_sleep() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let l2 = l.clone();
        let h = aio::spawn(move || {
            let _guard = Noisy(l2.clone(), "guard");
            aio::sleep(LONG);
            l2.push("woke");
        });
        aio::yield_now();
        assert!(!h.is_finished());
        let t = Instant::now();
        h.cancel();
        let p = h.join().unwrap_err();
        assert!(is_cancelled(&*p), "{}", panic_message(&*p));
        assert!(t.elapsed() < Duration::from_secs(5));
    });
    assert_eq!(log.take(), ["drop guard"]);
}

#[test]
fn cancelled_before_it_starts_it_never_runs() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    EventLoop::new().unwrap().block_on(move || {
        let h = aio::spawn(move || r.set(true));
        h.cancel();
        assert!(h.join().unwrap_err().is::<Cancelled>());
    });
    assert!(!ran.get());
}

#[test]
fn a_running_coroutine_is_cancelled_at_its_next_wait_point() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let slot: Rc<std::cell::RefCell<Option<aio::JoinHandle<()>>>> = Rc::default();
        let (l2, mine) = (l.clone(), slot.clone());
        let h = aio::spawn(move || {
            // Cancelled through its own handle while it runs: it runs on
            // until it reaches a wait point.
            mine.borrow().as_ref().unwrap().cancel();
            l2.push("still running");
            aio::yield_now();
            l2.push("after the wait point");
        });
        *slot.borrow_mut() = Some(h);
        aio::yield_now();
        let h = slot.borrow_mut().take().unwrap();
        assert!(h.join().unwrap_err().is::<Cancelled>());
    });
    assert_eq!(log.take(), ["still running"]);
}

#[test]
fn cancelling_a_finished_coroutine_does_nothing() {
    EventLoop::new().unwrap().block_on(|| {
        let h = aio::spawn(|| 42);
        aio::yield_now();
        assert!(h.is_finished());
        h.cancel();
        assert_eq!(h.join().unwrap(), 42);
    });
}

#[test]
fn a_cancellation_is_sticky_and_what_is_returned_after_it_does_not_count() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let l2 = l.clone();
        let h = aio::spawn(move || {
            let first = catch_unwind(AssertUnwindSafe(|| aio::sleep(LONG)));
            assert!(first.unwrap_err().is::<Cancelled>());
            l2.push("caught");
            // The next wait point raises it again.
            let again = catch_unwind(AssertUnwindSafe(aio::yield_now));
            assert!(again.unwrap_err().is::<Cancelled>());
            l2.push("caught again");
            Noisy(l2.clone(), "value")
        });
        aio::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is::<Cancelled>());
    });
    assert_eq!(log.take(), ["caught", "caught again", "drop value"]);
}

thread_local! {
    static HOOK_CALLS: Cell<usize> = const { Cell::new(0) };
}

#[test]
fn delivery_runs_no_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            HOOK_CALLS.with(|c| c.set(c.get() + 1));
            previous(info);
        }));
    });
    let before = HOOK_CALLS.with(Cell::get);
    EventLoop::new().unwrap().block_on(|| {
        let h = aio::spawn(|| aio::sleep(LONG));
        aio::yield_now();
        h.cancel();
        assert!(h.join().is_err());
        assert!(aio::timeout(Duration::from_millis(1), || aio::sleep(LONG)).is_err());
    });
    assert_eq!(HOOK_CALLS.with(Cell::get), before);
}

#[test]
fn destructors_of_a_cancelled_coroutine_may_wait() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let lock = Rc::new(CoMutex::new(()));
        let held = lock.lock();
        struct Cleanup(Log, Rc<CoMutex<()>>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                // Unwinding: these wait, and are not interrupted.
                aio::sleep(Duration::from_millis(2));
                let _g = self.1.lock();
                self.0.push("cleaned up");
            }
        }
        let (l2, lock2) = (l.clone(), lock.clone());
        let h = aio::spawn(move || {
            let _c = Cleanup(l2, lock2);
            aio::sleep(LONG);
        });
        aio::yield_now();
        h.cancel();
        aio::sleep(Duration::from_millis(10));
        assert!(!h.is_finished(), "the cleanup waits for the lock");
        drop(held);
        assert!(h.join().unwrap_err().is::<Cancelled>());
    });
    assert_eq!(log.take(), ["cleaned up"]);
}

#[test]
fn a_shield_defers_the_cancellation_to_the_next_wait_point() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let l2 = l.clone();
        let h = aio::spawn(move || {
            aio::shield(|| {
                aio::sleep(Duration::from_millis(20));
                l2.push("shielded sleep done");
            });
            l2.push("after the shield");
            aio::yield_now();
            l2.push("never");
        });
        aio::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is::<Cancelled>());
    });
    assert_eq!(log.take(), ["shielded sleep done", "after the shield"]);
}

#[test]
fn shield_outside_a_coroutine_just_runs() {
    assert_eq!(aio::shield(|| 7), 7);
}

#[test]
fn timeout_returns_the_value_or_elapsed() {
    EventLoop::new().unwrap().block_on(|| {
        assert_eq!(aio::timeout(Duration::from_secs(5), || 1), Ok(1));
        let t = Instant::now();
        let r = aio::timeout(Duration::from_millis(5), || aio::sleep(LONG));
        assert!(r.is_err());
        assert!(t.elapsed() >= Duration::from_millis(5));
        assert!(t.elapsed() < Duration::from_secs(5));
        // Past the deadline but no wait point reached: the value counts.
        let late = aio::timeout(Duration::from_millis(1), || {
            std::thread::sleep(Duration::from_millis(5));
            "late but done"
        });
        assert_eq!(late, Ok("late but done"));
        // And the expired scope left nothing behind.
        aio::sleep(Duration::from_millis(2));
    });
}

#[test]
fn elapsed_is_an_error_with_a_message() {
    fn error<E: std::error::Error + Clone + Eq + Send + Sync + 'static>(_: &E) {}
    EventLoop::new().unwrap().block_on(|| {
        let e: Elapsed = aio::timeout(Duration::ZERO, || aio::sleep(LONG)).unwrap_err();
        error(&e);
        assert_eq!(e.to_string(), "deadline has elapsed");
    });
}

#[test]
fn nested_timeouts_unwind_to_their_own_scope() {
    EventLoop::new().unwrap().block_on(|| {
        // The inner one expires: only it returns Elapsed.
        let outer = aio::timeout(Duration::from_secs(10), || {
            let inner = aio::timeout(Duration::from_millis(2), || aio::sleep(LONG));
            assert!(inner.is_err());
            "outer finished"
        });
        assert_eq!(outer, Ok("outer finished"));
        // The outer one expires: it passes through the inner one.
        let reached = Cell::new(false);
        let outer = aio::timeout(Duration::from_millis(2), || {
            let inner = aio::timeout(Duration::from_secs(10), || aio::sleep(LONG));
            reached.set(true);
            inner
        });
        assert!(outer.is_err());
        assert!(
            !reached.get(),
            "the inner timeout returned instead of unwinding"
        );
    });
}

#[test]
fn cancel_and_panics_pass_through_timeouts() {
    EventLoop::new().unwrap().block_on(|| {
        let h = aio::spawn(|| {
            let r = aio::timeout(Duration::from_secs(10), || aio::sleep(LONG));
            unreachable!("timeout returned {r:?} for a cancel()");
        });
        aio::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is::<Cancelled>());

        let p = catch_unwind(|| {
            let _ = aio::timeout(Duration::from_secs(10), || panic!("inside"));
        })
        .unwrap_err();
        assert_eq!(panic_message(&*p), "inside");
    });
}

#[test]
#[cfg_attr(miri, ignore = "sockets: ioctl(FIONBIO) is not supported by Miri")]
fn a_timeout_stops_io_that_never_waits() {
    // A socket that always has data: the reader's calls never wait, yet
    // the fair share lets the loop run the timer.
    #[cfg(unix)]
    {
        use std::io::{Read, Write};
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut a = a;
            let chunk = [7u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if a.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let r = EventLoop::new().unwrap().block_on(move || {
            let b = costack::net::UnixStream::from_std(b).unwrap();
            let mut buf = [0u8; 64];
            let t = Instant::now();
            let r = aio::timeout(Duration::from_millis(20), || loop {
                (&b).read_exact(&mut buf).unwrap();
            });
            (r.is_err(), t.elapsed())
        });
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(r.0);
        assert!(r.1 < Duration::from_secs(5), "took {:?}", r.1);
    }
}

#[test]
fn timeout_needs_a_costack_event_loop() {
    let mut fut = Box::pin(costack::future::CoFuture::new(|| {
        let _ = aio::timeout(Duration::from_secs(1), || ());
    }));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let p = catch_unwind(AssertUnwindSafe(|| {
        let _ = fut.as_mut().poll(&mut cx);
    }))
    .unwrap_err();
    assert!(
        panic_message(&*p).contains("needs a costack event loop"),
        "{}",
        panic_message(&*p)
    );
}

#[test]
fn cancelled_lock_waiters_leave_the_queue_and_hand_offs_go_on() {
    EventLoop::new().unwrap().block_on(|| {
        let m = Rc::new(CoMutex::new(Vec::new()));
        let held = m.lock();
        let waiter = |name: &'static str| {
            let m = m.clone();
            aio::spawn(move || m.lock().push(name))
        };
        let b = waiter("b");
        let c = waiter("c");
        aio::yield_now(); // both queued
        b.cancel();
        aio::yield_now(); // b unwinds out of the queue
        assert!(b.join().unwrap_err().is::<Cancelled>());
        drop(held);
        c.join().unwrap();
        assert_eq!(*m.lock(), ["c"]);
        assert!(!m.is_locked());
    });
}

#[test]
fn a_hand_off_that_reached_a_cancelled_waiter_goes_on() {
    EventLoop::new().unwrap().block_on(|| {
        let m = Rc::new(CoMutex::new(0));
        let held = m.lock();
        let b = {
            let m = m.clone();
            aio::spawn(move || *m.lock() += 1)
        };
        let c = {
            let m = m.clone();
            aio::spawn(move || *m.lock() += 10)
        };
        aio::yield_now();
        // The lock is handed to b, and b is cancelled before it runs.
        drop(held);
        b.cancel();
        let rb = b.join();
        c.join().unwrap();
        // Either b took the lock (it had completed its wait) or it was
        // cancelled and passed it on; never lost, never twice.
        match rb {
            Ok(()) => assert_eq!(*m.lock(), 11),
            Err(p) => {
                assert!(p.is::<Cancelled>());
                assert_eq!(*m.lock(), 10);
            }
        }
        assert!(!m.is_locked());
    });
}

#[test]
fn semaphore_permits_add_up_after_cancellations() {
    EventLoop::new().unwrap().block_on(|| {
        let s = Rc::new(CoSemaphore::new(2));
        s.acquire(2);
        let waiters: Vec<_> = (0..6)
            .map(|i| {
                let s = s.clone();
                aio::spawn(move || {
                    // Permits held by a guard, so that a cancellation after
                    // the acquire gives them back too.
                    struct Permits(Rc<CoSemaphore>, usize);
                    impl Drop for Permits {
                        fn drop(&mut self) {
                            self.0.release(self.1);
                        }
                    }
                    s.acquire(1 + i % 2);
                    let _held = Permits(s, 1 + i % 2);
                    aio::sleep(Duration::from_millis(1));
                })
            })
            .collect();
        aio::yield_now();
        for w in waiters.iter().step_by(2) {
            w.cancel();
        }
        s.release(2);
        for w in waiters {
            let _ = w.join();
        }
        assert_eq!(s.available(), 2);
    });
}

#[test]
fn cancelled_queue_waiters_leave_the_queue() {
    EventLoop::new().unwrap().block_on(|| {
        let q = Rc::new(CoQueue::new());
        let woken = Rc::new(Cell::new(0));
        let spawn_waiter = || {
            let (q, woken) = (q.clone(), woken.clone());
            aio::spawn(move || {
                q.wait();
                woken.set(woken.get() + 1);
            })
        };
        let a = spawn_waiter();
        let b = spawn_waiter();
        aio::yield_now();
        a.cancel();
        assert!(a.join().unwrap_err().is::<Cancelled>());
        // The restart goes to b: a left the queue.
        assert!(q.restart_next());
        b.join().unwrap();
        assert!(q.is_empty());
        assert!(!q.restart_next());
        assert_eq!(woken.get(), 1);
    });
}

#[test]
fn a_waiter_whose_wait_completed_returns_normally() {
    EventLoop::new().unwrap().block_on(|| {
        let q = Rc::new(CoQueue::new());
        let q2 = q.clone();
        let a = aio::spawn(move || {
            q2.wait(); // restarted before the cancellation reaches it
            "restarted"
        });
        aio::yield_now();
        assert!(q.restart_next());
        a.cancel();
        // Its wait had completed: it returns from it; the cancellation is
        // delivered at its next wait point (there is none: it finishes).
        assert_eq!(a.join().unwrap(), "restarted");
    });
}

#[test]
#[cfg_attr(miri, ignore = "timing: Miri runs far slower than the bound")]
fn run_blocking_unwinds_at_once_and_the_job_finishes_alone() {
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    EventLoop::new().unwrap().block_on(move || {
        let h = aio::spawn(move || {
            aio::run_blocking(move || {
                std::thread::sleep(Duration::from_millis(50));
                d.fetch_add(1, Ordering::SeqCst);
            })
        });
        aio::yield_now();
        let t = Instant::now();
        h.cancel();
        assert!(h.join().unwrap_err().is::<Cancelled>());
        assert!(t.elapsed() < Duration::from_millis(40));
    });
    let t = Instant::now();
    while done.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn wait_future_drops_the_future_when_cancelled() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let l2 = l.clone();
        let h = aio::spawn(move || {
            let noisy = Noisy(l2, "future");
            aio::wait_future(async move {
                let _keep = noisy;
                std::future::pending::<()>().await;
            });
        });
        aio::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is::<Cancelled>());
    });
    assert_eq!(log.take(), ["drop future"]);
}

#[test]
fn a_join_is_a_wait_point_and_the_joined_coroutine_runs_on() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let l2 = l.clone();
        let inner = aio::spawn(move || {
            aio::sleep(Duration::from_millis(10));
            l2.push("inner done");
        });
        let outer = aio::spawn(move || inner.join());
        aio::yield_now();
        outer.cancel();
        assert!(outer.join().unwrap_err().is::<Cancelled>());
        aio::sleep(Duration::from_millis(30));
    });
    assert_eq!(log.take(), ["inner done"]);
}

#[test]
fn remote_cancel_from_another_thread() {
    let io = IoThread::spawn("cancel-me").unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let h = io.handle().spawn(move || {
        s.fetch_add(1, Ordering::SeqCst);
        aio::sleep(LONG);
    });
    while started.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    h.cancel();
    assert!(h.join().unwrap_err().is::<Cancelled>());
    // Cancelled before it could start: it never runs.
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let h = io.handle().spawn(move || r.fetch_add(1, Ordering::SeqCst));
    h.cancel();
    match h.join() {
        Ok(_) => assert_eq!(ran.load(Ordering::SeqCst), 1), // it won the race
        Err(p) => {
            assert!(p.is::<Cancelled>());
            assert_eq!(ran.load(Ordering::SeqCst), 0);
        }
    }
}

#[test]
fn a_dropped_loop_joins_as_cancelled() {
    let lp = EventLoop::new().unwrap();
    let h = lp.handle().spawn(|| aio::sleep(LONG));
    let local = lp.spawn(|| aio::sleep(LONG));
    lp.poll(false);
    drop(lp);
    assert!(h.join().unwrap_err().is::<Cancelled>());
    drop(local);
}

#[test]
fn the_payload_displays_and_compares() {
    EventLoop::new().unwrap().block_on(|| {
        let a = aio::spawn(|| aio::sleep(LONG));
        let b = aio::spawn(|| aio::sleep(LONG));
        aio::yield_now();
        a.cancel();
        b.cancel();
        let pa = *a.join().unwrap_err().downcast::<Cancelled>().unwrap();
        let pb = *b.join().unwrap_err().downcast::<Cancelled>().unwrap();
        assert_eq!(pa, pb);
        assert_eq!(pa.to_string(), "the coroutine was cancelled");
        let copy = pa;
        assert_eq!(format!("{copy:?}"), format!("{pa:?}"));
    });
}

#[test]
fn permits_granted_to_a_waiter_cancelled_before_it_ran_are_not_lost() {
    EventLoop::new().unwrap().block_on(|| {
        let s = Rc::new(CoSemaphore::new(1));
        s.acquire(1);
        let s2 = s.clone();
        let waiter = aio::spawn(move || {
            s2.acquire(1);
            s2.release(1);
        });
        aio::yield_now(); // queued
        s.release(1); // granted to the waiter, which has not run yet
        waiter.cancel();
        let _ = waiter.join(); // it returned, or gave the permit back
        assert_eq!(s.available(), 1);
    });
}

#[test]
fn locks_handed_to_a_waiter_cancelled_before_it_ran_are_not_lost() {
    EventLoop::new().unwrap().block_on(|| {
        let m = Rc::new(CoMutex::new(()));
        let rw = Rc::new(costack::sync::CoRwLock::new(()));
        let q = Rc::new(CoQueue::new());
        let held = m.lock();
        let written = rw.write();
        let (m2, rw2, q2) = (m.clone(), rw.clone(), q.clone());
        let a = aio::spawn(move || drop(m2.lock()));
        let b = aio::spawn(move || drop(rw2.write()));
        let c = aio::spawn(move || q2.wait());
        let d = {
            let q = q.clone();
            aio::spawn(move || q.wait())
        };
        aio::yield_now(); // all queued
        drop(held); // handed to a
        drop(written); // handed to b
        assert!(q.restart_next()); // to c
        for h in [&a, &b, &c] {
            h.cancel();
        }
        for h in [a, b, c] {
            let _ = h.join();
        }
        assert!(!m.is_locked());
        assert!(rw.try_write().is_some());
        // d is still queued: c's restart was used, or passed on to d.
        if !d.is_finished() {
            assert!(q.restart_next());
        }
        d.join().unwrap();
    });
}
