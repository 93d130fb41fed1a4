//! The event loop: block_on, spawn, timers, bottom halves, polling,
//! shutdown (other threads and run_blocking: `aio_threads.rs`).

// The event loop and sockets run on unix systems (see the crate docs).
#![cfg(unix)]

mod support;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use costack::aio::{self, EventLoop, LoopHandle, Waker};
use costack::{yield_now, Coroutine};
use support::{panic_message, SetOnDrop};

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<LoopHandle>();
    check::<Waker>();
}

#[test]
fn block_on_returns_value() {
    let lp = EventLoop::new().unwrap();
    assert_eq!(lp.block_on(|| 40 + 2), 42);
    let s = lp.block_on(|| String::from("again"));
    assert_eq!(s, "again");
    assert_eq!(lp.task_count(), 0);
}

#[test]
fn block_on_runs_in_a_coroutine() {
    let lp = EventLoop::new().unwrap();
    assert!(lp.block_on(costack::in_coroutine));
}

#[test]
fn block_on_resumes_panic() {
    let lp = EventLoop::new().unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        lp.block_on(|| -> u32 { panic!("boom in block_on") })
    }));
    let p = r.unwrap_err();
    assert_eq!(panic_message(&*p), "boom in block_on");
    // The loop is still usable.
    assert_eq!(lp.block_on(|| 7), 7);
}

#[test]
fn clone_is_same_loop() {
    let lp = EventLoop::new().unwrap();
    let lp2 = lp.clone();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    lp2.spawn(move || r.set(true));
    assert_eq!(lp.task_count(), 1);
    while lp.poll(false) {}
    assert!(ran.get());
    assert!(lp.handle().same_loop(&lp2.handle()));
}

#[test]
fn poll_reports_progress() {
    let lp = EventLoop::new().unwrap();
    assert!(!lp.poll(false));
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    lp.call_soon(move || r.set(r.get() + 1));
    assert!(lp.poll(false));
    assert_eq!(ran.get(), 1);
    assert!(!lp.poll(false));
    // A blocking poll waits for the timer.
    let t = Instant::now();
    lp.spawn(|| aio::sleep(Duration::from_millis(30)));
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[test]
fn sleepers_overlap() {
    let lp = EventLoop::new().unwrap();
    let t = Instant::now();
    lp.block_on(|| {
        let a = aio::spawn(|| aio::sleep(Duration::from_millis(200)));
        let b = aio::spawn(|| aio::sleep(Duration::from_millis(200)));
        while !(a.is_finished() && b.is_finished()) {
            aio::sleep(Duration::from_millis(5));
        }
    });
    let e = t.elapsed();
    assert!(e >= Duration::from_millis(200), "{e:?}");
    assert!(
        e < Duration::from_millis(390),
        "sleeps did not overlap: {e:?}"
    );
}

#[test]
fn thousand_sleepers_finish_on_time() {
    let lp = EventLoop::new().unwrap();
    let done = Rc::new(Cell::new(0));
    let late = Rc::new(Cell::new(Duration::ZERO));
    let t = Instant::now();
    for i in 0..1000u64 {
        let (done, late) = (done.clone(), late.clone());
        lp.spawn(move || {
            let want = Duration::from_millis(50 + i % 100);
            let start = Instant::now();
            aio::sleep(want);
            let got = start.elapsed();
            assert!(got >= want, "woke early: {got:?} < {want:?}");
            late.set(late.get().max(got - want));
            done.set(done.get() + 1);
        });
    }
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert_eq!(done.get(), 1000);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        late.get() < Duration::from_secs(1),
        "latest wake-up {:?} late",
        late.get()
    );
}

/// Spawns one coroutine per entry of `ms`, sleeping that many milliseconds
/// and then logging its index: the log is the order the timers fired in.
fn spawn_sleepers(lp: &EventLoop, ms: &[u64]) -> Rc<RefCell<Vec<usize>>> {
    let order = Rc::new(RefCell::new(Vec::new()));
    for (i, &ms) in ms.iter().enumerate() {
        let order = order.clone();
        lp.spawn(move || {
            aio::sleep(Duration::from_millis(ms));
            order.borrow_mut().push(i);
        });
    }
    order
}

#[test]
fn timers_fire_in_deadline_order() {
    let lp = EventLoop::new().unwrap();
    let order = spawn_sleepers(&lp, &[60, 20, 40, 1]);
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert_eq!(*order.borrow(), [3, 1, 2, 0]);
}

#[test]
fn spawned_handle_may_be_dropped() {
    let lp = EventLoop::new().unwrap();
    let steps = Rc::new(Cell::new(0));
    let s = steps.clone();
    drop(lp.spawn(move || {
        s.set(1);
        aio::sleep(Duration::from_millis(5));
        s.set(2);
    }));
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert_eq!(steps.get(), 2);
}

#[test]
fn spawn_starts_on_next_iteration() {
    let lp = EventLoop::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    lp.block_on(move || {
        let l2 = l.clone();
        let co = aio::spawn(move || l2.borrow_mut().push("child"));
        l.borrow_mut().push("parent");
        while !co.is_finished() {
            aio::schedule(&costack::current().unwrap());
            yield_now();
        }
    });
    assert_eq!(*log.borrow(), ["parent", "child"]);
}

#[test]
fn schedule_coalesces() {
    let lp = EventLoop::new().unwrap();
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let co = Coroutine::new(move || loop {
        r.set(r.get() + 1);
        yield_now();
    });
    co.enter();
    assert_eq!(runs.get(), 1);
    lp.block_on({
        let co = co.clone();
        move || {
            aio::schedule(&co);
            aio::schedule(&co);
            aio::schedule(&co);
            aio::sleep(Duration::from_millis(5));
        }
    });
    assert_eq!(runs.get(), 2);
}

#[test]
fn dropping_loop_unwinds_suspended_coroutines() {
    let lp = EventLoop::new().unwrap();
    let sleeping = Rc::new(Cell::new(false));
    let waiting = Rc::new(Cell::new(false));
    let unstarted = Rc::new(Cell::new(false));
    let after = Rc::new(Cell::new(false));
    {
        let (g, a) = (SetOnDrop(sleeping.clone()), after.clone());
        drop(lp.spawn(move || {
            let _g = g;
            aio::sleep(Duration::from_secs(3600));
            a.set(true);
        }));
        let (g, a) = (SetOnDrop(waiting.clone()), after.clone());
        lp.spawn(move || {
            let _g = g;
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            aio::wait_readable(r.as_fd()).unwrap();
            a.set(true);
        });
    }
    lp.poll(false);
    let g = SetOnDrop(unstarted.clone());
    lp.spawn(move || drop(g));
    assert_eq!(lp.task_count(), 3);
    let t = Instant::now();
    drop(lp);
    assert!(sleeping.get() && waiting.get() && unstarted.get());
    assert!(!after.get());
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Runs a closure when dropped: a destructor that may wait.
struct OnDrop<F: FnMut()>(F);
impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[test]
fn dropping_loop_drives_destructors_that_wait() {
    let lp = EventLoop::new().unwrap();
    let lock = Rc::new(costack::sync::CoMutex::new(0));
    let done = Rc::new(RefCell::new(Vec::new()));
    // Spawned first, so unwound first: its destructor waits for the lock
    // the second task holds until that one is unwound too.
    let (l, d) = (lock.clone(), done.clone());
    lp.spawn(move || {
        let _wait = OnDrop(move || {
            *l.lock() += 1;
            d.borrow_mut().push("locked");
        });
        aio::sleep(Duration::from_secs(3600));
    });
    let l = lock.clone();
    lp.spawn(move || {
        let _held = l.lock();
        aio::sleep(Duration::from_secs(3600));
    });
    let d = done.clone();
    lp.spawn(move || {
        let _wait = OnDrop(move || {
            aio::sleep(Duration::from_millis(5));
            let v = aio::run_blocking(|| 6 * 7);
            d.borrow_mut()
                .push(if v == 42 { "slept, ran" } else { "wrong" });
        });
        aio::sleep(Duration::from_secs(3600));
    });
    while lp.poll(false) {}
    assert_eq!(lp.task_count(), 3);
    assert!(lock.is_locked());
    let t = Instant::now();
    drop(lp);
    let mut done = done.borrow().clone();
    done.sort();
    assert_eq!(done, ["locked", "slept, ran"]);
    assert!(!lock.is_locked());
    assert_eq!(*lock.try_lock().unwrap(), 1);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_waker_of_wait_future_woken_from_a_nested_coroutine() {
    // The future's poll enters a coroutine that wakes the poller's waker:
    // the polling coroutine is its entered ancestor.
    struct WakeFromInside(bool);
    impl Future for WakeFromInside {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            if self.0 {
                return Poll::Ready("woken");
            }
            self.0 = true;
            let w = cx.waker().clone();
            Coroutine::new(move || w.wake()).enter();
            Poll::Pending
        }
    }
    let lp = EventLoop::new().unwrap();
    assert_eq!(
        lp.block_on(|| aio::wait_future(WakeFromInside(false))),
        "woken"
    );
}

#[test]
fn panic_in_bottom_half_propagates_and_loop_survives() {
    let lp = EventLoop::new().unwrap();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    lp.call_soon(|| panic!("bh boom"));
    lp.call_soon(move || r.set(r.get() + 1));
    let p = catch_unwind(AssertUnwindSafe(|| lp.poll(false))).unwrap_err();
    assert_eq!(panic_message(&*p), "bh boom");
    while lp.poll(false) {}
    assert_eq!(ran.get(), 1);
    // Also a cross-thread bottom half.
    let h = lp.handle();
    thread::spawn(move || h.call_soon(|| panic!("remote boom")))
        .join()
        .unwrap();
    let p = catch_unwind(AssertUnwindSafe(|| lp.poll(true))).unwrap_err();
    assert_eq!(panic_message(&*p), "remote boom");
    assert_eq!(lp.block_on(|| 3), 3);
}

#[test]
fn panic_in_a_detached_coroutine_is_caught_and_the_loop_goes_on() {
    let lp = EventLoop::new().unwrap();
    let survivor = Rc::new(Cell::new(0));
    let s = survivor.clone();
    lp.spawn(move || {
        aio::sleep(Duration::from_millis(5));
        s.set(1);
    });
    drop(lp.spawn(|| panic!("task boom")));
    while lp.poll(false) {}
    // The other coroutine was not disturbed, and the loop still serves.
    assert_eq!(lp.block_on(|| 1), 1);
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert_eq!(survivor.get(), 1);
}

#[test]
fn free_functions_panic_outside_coroutine() {
    let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    let r: &'static std::os::unix::net::UnixStream = Box::leak(Box::new(r));
    type Check = (&'static str, Box<dyn Fn()>);
    let checks: Vec<Check> = vec![
        ("spawn", Box::new(|| drop(aio::spawn(|| ())))),
        (
            "schedule",
            Box::new(|| aio::schedule(&Coroutine::new(|| ()))),
        ),
        ("sleep", Box::new(|| aio::sleep(Duration::from_millis(1)))),
        ("yield_now", Box::new(aio::yield_now)),
        (
            "wait_readable",
            Box::new(|| drop(aio::wait_readable(r.as_fd()))),
        ),
        (
            "wait_writable",
            Box::new(|| drop(aio::wait_writable(r.as_fd()))),
        ),
        ("run_blocking", Box::new(|| aio::run_blocking(|| ()))),
        ("wait_future", Box::new(|| aio::wait_future(async {}))),
        ("waker", Box::new(|| drop(aio::waker()))),
    ];
    for (name, f) in &checks {
        // On a thread's own stack...
        let p = catch_unwind(AssertUnwindSafe(f)).unwrap_err();
        assert!(
            panic_message(&*p).contains("not in a coroutine"),
            "{name}: {}",
            panic_message(&*p)
        );
    }
    for (name, f) in checks {
        if name == "waker" {
            continue; // any coroutine has a waker
        }
        // ...and in a coroutine that no event loop runs.
        let msg = Rc::new(RefCell::new(String::new()));
        let m = msg.clone();
        Coroutine::new(move || {
            let p = catch_unwind(AssertUnwindSafe(f)).unwrap_err();
            *m.borrow_mut() = panic_message(&*p);
        })
        .enter();
        assert!(
            msg.borrow().contains("not in a coroutine"),
            "{name}: {}",
            msg.borrow()
        );
    }
}

#[test]
fn yield_now_takes_turns_with_the_runnable_coroutines() {
    let lp = EventLoop::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    for name in ["a", "b", "c"] {
        let log = log.clone();
        lp.spawn(move || {
            for i in 0..3 {
                log.borrow_mut().push(format!("{name}{i}"));
                aio::yield_now();
            }
        });
    }
    while lp.poll(false) {}
    assert_eq!(lp.task_count(), 0);
    assert_eq!(
        log.borrow().join(" "),
        "a0 b0 c0 a1 b1 c1 a2 b2 c2",
        "each yield_now lets the others run once"
    );
    // On the loop's thread but outside any coroutine: there is nothing
    // to yield.
    let msg = Rc::new(RefCell::new(String::new()));
    let m = msg.clone();
    lp.call_soon(move || {
        let p = catch_unwind(aio::yield_now).unwrap_err();
        *m.borrow_mut() = panic_message(&*p);
    });
    while lp.poll(false) {}
    assert!(
        msg.borrow().contains("not in a coroutine"),
        "{}",
        msg.borrow()
    );
}

#[test]
fn coroutine_entered_by_hand_adopts_the_loop() {
    let lp = EventLoop::new().unwrap();
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    lp.block_on(move || {
        let co = Coroutine::new(move || {
            aio::sleep(Duration::from_millis(5));
            d.set(true);
        });
        co.enter();
        while !co.is_finished() {
            aio::sleep(Duration::from_millis(1));
        }
    });
    assert!(done.get());
}

#[test]
fn wait_readable_wakes_on_data_and_timeout() {
    use std::io::Write;
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = aio::wait_readable_timeout(r.as_fd(), Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        aio::wait_writable(w.as_fd()).unwrap();
        aio::spawn(move || {
            aio::sleep(Duration::from_millis(10));
            w.write_all(b"x").unwrap();
        });
        aio::wait_readable(r.as_fd()).unwrap();
    });
}

#[test]
fn sleepers_cost_no_o_n_per_poll() {
    // 10,000 coroutines sleep for a long time while one coroutine ticks:
    // each tick must stay cheap.
    let lp = EventLoop::new().unwrap();
    for _ in 0..10_000 {
        lp.spawn(|| aio::sleep(Duration::from_secs(3600)));
    }
    let t = Instant::now();
    lp.block_on(|| {
        for _ in 0..2000 {
            aio::schedule(&costack::current().unwrap());
            yield_now();
        }
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(lp.task_count(), 10_000);
}

#[test]
fn two_loops_on_one_thread_get_cross_thread_wakes() {
    // The loop that polls receives the thread's cross-thread wakes.
    let a = EventLoop::new().unwrap();
    let b = EventLoop::new().unwrap();
    for lp in [&a, &b, &a] {
        let v = lp.block_on(|| aio::run_blocking(|| 5));
        assert_eq!(v, 5);
    }
}

#[test]
fn destructor_spawning_during_loop_drop_does_not_abort() {
    struct SpawnOnDrop(Rc<Cell<bool>>);
    impl Drop for SpawnOnDrop {
        fn drop(&mut self) {
            let ran = self.0.clone();
            drop(aio::spawn(move || ran.set(true)));
        }
    }
    let lp = EventLoop::new().unwrap();
    let ran = Rc::new(Cell::new(false));
    let g = SpawnOnDrop(ran.clone());
    lp.spawn(move || {
        let _g = g;
        aio::sleep(Duration::from_secs(3600));
    });
    lp.poll(false);
    drop(lp);
    assert!(!ran.get());
}

#[test]
fn thread_pool_is_bounded_and_parallel() {
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    let lp = EventLoop::new().unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        lp.spawn(|| {
            aio::run_blocking(|| {
                let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                PEAK.fetch_max(now, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
                RUNNING.fetch_sub(1, Ordering::SeqCst);
            })
        });
    }
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    let peak = PEAK.load(Ordering::SeqCst);
    // Other tests of this binary use the pool too, hence "at most".
    assert!(
        peak <= aio::thread_pool::MAX_THREADS,
        "{peak} workers at once"
    );
    assert!(peak >= 8, "jobs did not run in parallel: peak {peak}");
    // 100 jobs of 100 ms on at most 64 threads: two rounds, not 100.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// Busy-polling before blocking (`set_poll_max`) must not change what the
/// loop delivers: fd events from another thread, cross-thread posts and
/// timers, in order, with a window far longer than their spacing.
#[test]
fn polling_loop_delivers_fd_events_posts_and_timers() {
    use std::io::{Read, Write};
    let lp = EventLoop::new().unwrap();
    if std::env::var_os("COSTACK_POLL_MAX_NS").is_none() {
        assert_eq!(lp.poll_max(), Duration::ZERO, "polling is off by default");
    }
    lp.set_poll_max(Duration::from_millis(50));
    assert_eq!(lp.poll_max(), Duration::from_millis(50));

    // Echo peer on another thread.
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 8];
        while theirs.read_exact(&mut buf).is_ok() {
            theirs.write_all(&buf).unwrap();
        }
    });
    let ours = costack::net::UnixStream::from_std(ours).unwrap();
    let echoed = lp.spawn(move || {
        let mut s = &ours;
        for i in 0..500u64 {
            s.write_all(&i.to_le_bytes()).unwrap();
            let mut buf = [0u8; 8];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(u64::from_le_bytes(buf), i);
        }
    });

    // Timers in deadline order, spaced shorter and longer than a window.
    let order = spawn_sleepers(&lp, &[90, 3, 40, 1]);

    // Posts from another thread.
    let posted = Rc::new(Cell::new(0));
    let (tx, rx) = mpsc::channel::<()>();
    let h = lp.handle();
    let poster = thread::spawn(move || {
        for _ in 0..100 {
            let tx = tx.clone();
            h.call_soon(move || tx.send(()).unwrap());
            thread::sleep(Duration::from_micros(200));
        }
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    while lp.task_count() > 0 || posted.get() < 100 {
        assert!(Instant::now() < deadline, "events lost while polling");
        lp.poll(true);
        while rx.try_recv().is_ok() {
            posted.set(posted.get() + 1);
        }
    }
    assert!(echoed.is_finished());
    assert_eq!(*order.borrow(), [3, 1, 2, 0]);
    assert_eq!(posted.get(), 100);
    poster.join().unwrap();
    drop(lp); // closes our end: the echo thread reads EOF
    echo.join().unwrap();
}

/// The polling window grows from zero after a wait shorter than the
/// maximum, and falls back to zero after one longer than it; with
/// polling off it stays zero.
#[test]
fn polling_window_grows_and_falls_back_to_zero() {
    let lp = EventLoop::new().unwrap();
    lp.set_poll_max(Duration::ZERO);
    lp.block_on(|| aio::sleep(Duration::from_millis(2)));
    assert_eq!(lp.poll_window(), Duration::ZERO, "polling is off");

    // Waits of about 1 ms, far below a 10 s maximum: any wait the window
    // did not cover makes it grow (a wait the poll was preempted in sets
    // it back to zero, so look at every step).
    lp.set_poll_max(Duration::from_secs(10));
    lp.set_poll_factors(4, 0);
    let windows = Rc::new(RefCell::new(Vec::new()));
    let w = windows.clone();
    let lp2 = lp.clone();
    lp.block_on(move || {
        for _ in 0..20 {
            aio::sleep(Duration::from_millis(1));
            w.borrow_mut().push(lp2.poll_window());
        }
    });
    let windows = windows.borrow();
    assert!(
        windows.iter().any(|w| !w.is_zero()),
        "never polled: {windows:?}"
    );
    assert!(windows.iter().all(|w| *w <= Duration::from_secs(10)));

    // A wait longer than the maximum: back to zero.
    lp.set_poll_max(Duration::from_micros(100));
    lp.block_on(|| aio::sleep(Duration::from_millis(1)));
    lp.block_on(|| aio::sleep(Duration::from_millis(20)));
    assert_eq!(lp.poll_window(), Duration::ZERO);
    lp.set_poll_max(Duration::ZERO);
    assert_eq!(lp.poll_max(), Duration::ZERO);
}

// ---- a block_on that could never finish ------------------------------------

#[test]
fn block_on_with_nothing_left_to_wake_it_fails_clearly() {
    let lp = EventLoop::new().unwrap();
    let err = catch_unwind(AssertUnwindSafe(|| {
        // The classic mistake: costack::yield_now suspends until woken, and
        // nobody holds anything that could wake this coroutine.
        lp.block_on(costack::yield_now)
    }))
    .unwrap_err();
    let msg = panic_message(&*err);
    assert!(msg.contains("would wait forever"), "{msg}");
    assert!(msg.contains("aio::yield_now"), "{msg}");
    // aio::yield_now is the one that comes back.
    lp.block_on(aio::yield_now);
    // Joining from outside the loop runs the loop: the same check.
    let h = lp.spawn(costack::yield_now);
    let err = catch_unwind(AssertUnwindSafe(|| h.join())).unwrap_err();
    assert!(panic_message(&*err).contains("would wait forever"));
}

#[test]
fn block_on_waits_while_a_waker_or_a_loop_handle_could_still_wake_it() {
    // A waker held by another thread.
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let w = aio::waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        costack::yield_now();
        t.join().unwrap();
    });

    // Only a loop handle: its bottom half, on the loop's thread, wakes the
    // coroutine it finds there.
    thread_local! {
        static PARKED: RefCell<Option<costack::Coroutine>> = const { RefCell::new(None) };
    }
    let handle = lp.handle();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle.call_soon(|| {
            let co = PARKED.with(|p| p.borrow_mut().take()).expect("parked");
            co.wake();
        });
    });
    lp.block_on(|| {
        PARKED.with(|p| *p.borrow_mut() = costack::current());
        costack::yield_now();
    });
    t.join().unwrap();
}
