//! The event loop and other threads: wakes, posts and spawns from them,
//! `run_blocking`, and `wait_future` completed by them.

// The event loop runs on unix systems (see the crate docs).
#![cfg(unix)]

mod support;

use std::cell::Cell;
use std::future::Future;
use std::panic::catch_unwind;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use costack::aio::{self, EventLoop};
use costack::yield_now;
use support::panic_message;

#[test]
fn wake_outside_coroutine_schedules_on_home_loop() {
    let lp = EventLoop::new().unwrap();
    let steps = Rc::new(Cell::new(0));
    let s = steps.clone();
    let co = lp.spawn(move || {
        s.set(1);
        yield_now(); // wait for an explicit wake
        s.set(2);
    });
    lp.poll(false);
    assert_eq!(steps.get(), 1);
    co.coroutine().wake(); // outside any coroutine: scheduled, not entered
    assert_eq!(steps.get(), 1);
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert_eq!(steps.get(), 2);
}

#[test]
fn call_soon_from_other_thread_runs_on_loop_thread() {
    let lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let (tx, rx) = mpsc::channel();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let t = thread::spawn(move || {
        for _ in 0..1000 {
            let tx = tx.clone();
            let c = c.clone();
            h.call_soon(move || {
                c.fetch_add(1, Ordering::SeqCst);
                tx.send(thread::current().id()).unwrap();
            });
        }
    });
    let me = thread::current().id();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen < 1000 {
        assert!(Instant::now() < deadline, "bottom halves lost: {seen}");
        lp.poll(true);
        while let Ok(id) = rx.try_recv() {
            assert_eq!(id, me);
            seen += 1;
        }
    }
    t.join().unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1000);
}

#[test]
fn spawn_from_other_thread_runs_on_loop_thread() {
    let lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        h.spawn(move || {
            assert!(costack::in_coroutine());
            aio::sleep(Duration::from_millis(1));
            tx.send(thread::current().id()).unwrap();
        });
    });
    t.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        if let Ok(id) = rx.try_recv() {
            break id;
        }
        assert!(Instant::now() < deadline);
        lp.poll(true);
    };
    assert_eq!(id, thread::current().id());
}

#[test]
fn waker_from_other_thread_resumes_on_loop_thread() {
    let lp = EventLoop::new().unwrap();
    let woke_on = lp.block_on(|| {
        let w = aio::waker();
        let flag = Arc::new(AtomicUsize::new(0));
        let f = flag.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            f.store(1, Ordering::SeqCst);
            w.wake();
        });
        while flag.load(Ordering::SeqCst) == 0 {
            yield_now(); // only a wake brings us back
        }
        t.join().unwrap();
        thread::current().id()
    });
    assert_eq!(woke_on, thread::current().id());
}

#[test]
fn run_blocking_keeps_loop_responsive() {
    let lp = EventLoop::new().unwrap();
    let ticks = Rc::new(Cell::new(0));
    let t = ticks.clone();
    let (worker, ticks_during) = lp.block_on(move || {
        let t2 = t.clone();
        let ticker = aio::spawn(move || loop {
            aio::sleep(Duration::from_millis(10));
            t2.set(t2.get() + 1);
        });
        let worker = aio::run_blocking(|| {
            thread::sleep(Duration::from_millis(300));
            thread::current().id()
        });
        let during = t.get();
        drop(ticker);
        (worker, during)
    });
    assert_ne!(worker, thread::current().id());
    assert!(ticks_during >= 5, "ticker starved: {ticks_during} ticks");
}

#[test]
fn run_blocking_resumes_panic_in_coroutine() {
    let lp = EventLoop::new().unwrap();
    let msg = lp.block_on(|| {
        let r = catch_unwind(|| aio::run_blocking(|| -> u8 { panic!("worker boom") }));
        panic_message(&*r.unwrap_err())
    });
    assert_eq!(msg, "worker boom");
}

#[test]
fn run_blocking_many_in_parallel() {
    let lp = EventLoop::new().unwrap();
    let sum = Rc::new(Cell::new(0u64));
    for i in 0..100u64 {
        let sum = sum.clone();
        lp.spawn(move || {
            let v = aio::run_blocking(move || i * 2);
            sum.set(sum.get() + v);
        });
    }
    while lp.task_count() > 0 {
        lp.poll(true);
    }
    assert_eq!(sum.get(), (0..100).map(|i| i * 2).sum::<u64>());
    assert!(aio::thread_pool::worker_count() <= aio::thread_pool::MAX_THREADS);
}

/// A value another thread sets, as a future.
#[derive(Default)]
struct Slot {
    value: Option<u32>,
    waker: Option<std::task::Waker>,
}
struct Recv(Arc<Mutex<Slot>>);
impl Future for Recv {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let mut s = self.0.lock().unwrap();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[test]
fn wait_future_completed_by_other_thread() {
    let lp = EventLoop::new().unwrap();
    let slot = Arc::new(Mutex::new(Slot::default()));
    let theirs = slot.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        let mut s = theirs.lock().unwrap();
        s.value = Some(99);
        s.waker.take().unwrap().wake();
    });
    let ticks = Rc::new(Cell::new(0));
    let tk = ticks.clone();
    let (v, on) = lp.block_on(move || {
        let ticker = aio::spawn(move || loop {
            aio::sleep(Duration::from_millis(2));
            tk.set(tk.get() + 1);
        });
        let v = aio::wait_future(Recv(slot));
        drop(ticker);
        (v, thread::current().id())
    });
    t.join().unwrap();
    assert_eq!(v, 99);
    assert_eq!(on, thread::current().id());
    assert!(
        ticks.get() > 0,
        "loop did not run while the future was pending"
    );
}

#[test]
fn wait_future_ready_and_self_waking() {
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            if self.0 {
                Poll::Ready("done")
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    let lp = EventLoop::new().unwrap();
    assert_eq!(lp.block_on(|| aio::wait_future(async { 5 })), 5);
    assert_eq!(lp.block_on(|| aio::wait_future(YieldOnce(false))), "done");
}
