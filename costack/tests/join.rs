//! Join handles of spawned coroutines (local and remote) and iothreads.

// The event loop runs on unix systems (see the crate docs).
#![cfg(any(unix, windows))]

mod support;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use costack::aio::{self, Cancelled, EventLoop, IoThread, JoinHandle, RemoteJoinHandle};
use support::panic_message;

#[test]
fn remote_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RemoteJoinHandle<u32>>();
    send_sync::<IoThread>();
}

#[test]
fn join_in_a_coroutine_waits_for_the_value() {
    let lp = EventLoop::new().unwrap();
    let v = lp.block_on(|| {
        let h = aio::spawn(|| {
            aio::sleep(Duration::from_millis(5));
            "slept"
        });
        assert!(!h.is_finished());
        h.join().unwrap()
    });
    assert_eq!(v, "slept");
}

#[test]
fn join_returns_the_panic_and_the_server_goes_on() {
    let lp = EventLoop::new().unwrap();
    let handled = lp.block_on(|| {
        let handlers: Vec<_> = (0..10)
            .map(|i| {
                aio::spawn(move || {
                    aio::sleep(Duration::from_millis(1));
                    if i == 3 {
                        panic!("bad request {i}");
                    }
                    i
                })
            })
            .collect();
        let mut ok = 0;
        for h in handlers {
            match h.join() {
                Ok(_) => ok += 1,
                Err(p) => assert_eq!(panic_message(&*p), "bad request 3"),
            }
        }
        ok
    });
    assert_eq!(handled, 9);
}

#[test]
fn join_outside_a_coroutine_runs_the_loop() {
    let lp = EventLoop::new().unwrap();
    let h = lp.spawn(|| {
        aio::sleep(Duration::from_millis(2));
        7
    });
    assert_eq!(h.join().unwrap(), 7);
    assert_eq!(lp.task_count(), 0);
}

#[test]
fn block_on_still_resumes_its_own_panic() {
    let lp = EventLoop::new().unwrap();
    let p = catch_unwind(AssertUnwindSafe(|| lp.block_on(|| panic!("mine")))).unwrap_err();
    assert_eq!(panic_message(&*p), "mine");
    assert_eq!(lp.block_on(|| 2), 2);
}

#[test]
fn a_coroutine_joining_itself_panics() {
    let lp = EventLoop::new().unwrap();
    let slot: Rc<Cell<Option<JoinHandle<()>>>> = Rc::new(Cell::new(None));
    let msg = Rc::new(RefCell::new(String::new()));
    let (s, m) = (slot.clone(), msg.clone());
    let h = lp.spawn(move || {
        aio::sleep(Duration::from_millis(1));
        let me = s.take().expect("own handle");
        let e = catch_unwind(AssertUnwindSafe(|| me.join())).unwrap_err();
        *m.borrow_mut() = panic_message(&*e);
    });
    slot.set(Some(h));
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert!(
        msg.borrow().contains("cannot join itself"),
        "{}",
        msg.borrow()
    );
}

#[test]
fn dropping_the_loop_cancels_what_is_joined() {
    let lp = EventLoop::new().unwrap();
    let h = lp.spawn(|| aio::sleep(Duration::from_secs(3600)));
    lp.poll(false);
    let remote = lp.handle().spawn(|| 1);
    drop(lp);
    assert!(h.is_finished());
    assert!(h.join().unwrap_err().is::<Cancelled>());
    // The bottom half that would have spawned it was dropped.
    assert!(remote.is_finished());
    assert!(remote.join().unwrap_err().is::<Cancelled>());
}

#[test]
fn remote_join_from_a_plain_thread_and_from_a_coroutine() {
    let io = IoThread::spawn("remote-join").unwrap();
    let h = io.handle().spawn(|| {
        aio::sleep(Duration::from_millis(2));
        thread::current().name().map(str::to_owned)
    });
    assert_eq!(h.join().unwrap().as_deref(), Some("remote-join"));

    let handle = io.handle();
    let lp = EventLoop::new().unwrap();
    let got = lp.block_on(move || {
        let h = handle.spawn(|| -> u8 { panic!("remote boom") });
        let e = h.join().unwrap_err();
        let ok = handle.spawn(|| 5).join().unwrap();
        (panic_message(&*e), ok)
    });
    assert_eq!(got, ("remote boom".to_owned(), 5));
}

#[test]
fn iothread_stop_unwinds_its_coroutines_and_joins() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let unwound = Arc::new(AtomicBool::new(false));
    let io = IoThread::spawn("stopper").unwrap();
    let f = Flag(unwound.clone());
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let h = io.handle().spawn(move || {
        let _f = f;
        s.store(true, Ordering::Release);
        aio::sleep(Duration::from_secs(3600));
    });
    while !started.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    io.stop();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(unwound.load(Ordering::Acquire));
    assert!(h.join().unwrap_err().is::<Cancelled>());
}

#[test]
fn iothread_survives_a_panicking_bottom_half() {
    let io = IoThread::spawn("sturdy").unwrap();
    io.handle().call_soon(|| panic!("bh boom"));
    assert_eq!(io.handle().spawn(|| 3).join().unwrap(), 3);
    drop(io); // Drop stops and joins too
}
