//! CoFuture: coroutines polled by async executors (tokio, futures).

mod support;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use costack::aio;
use costack::future::CoFuture;
use costack::sync::CoMutex;
use support::{panic_message, SetOnDrop};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Counts how often the inner future is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: Rc<Cell<u32>>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.set(self.polls.get() + 1);
        self.inner.as_mut().poll(cx)
    }
}

#[test]
fn yield_now_is_one_pending_and_wakes_the_poller() {
    let polls = Rc::new(Cell::new(0));
    let fut = Counted {
        inner: Box::pin(CoFuture::new(|| {
            for _ in 0..3 {
                costack::yield_now();
            }
            "done"
        })),
        polls: polls.clone(),
    };
    // futures' executor only polls again when woken: the yields must wake.
    assert_eq!(futures::executor::block_on(fut), "done");
    assert_eq!(polls.get(), 4);
}

#[test]
fn tokio_timers_and_sockets_inside_a_cofuture() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let got = local.block_on(
        &rt,
        CoFuture::new(|| {
            let t = Instant::now();
            aio::wait_future(tokio::time::sleep(Duration::from_millis(20)));
            assert!(t.elapsed() >= Duration::from_millis(20));
            // tokio::net, written as blocking code.
            let listener = aio::wait_future(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::task::spawn_local(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0; 5];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            });
            let mut c = aio::wait_future(tokio::net::TcpStream::connect(addr)).unwrap();
            aio::wait_future(c.write_all(b"hello")).unwrap();
            let mut buf = [0; 5];
            aio::wait_future(c.read_exact(&mut buf)).unwrap();
            aio::wait_future(server).unwrap();
            buf
        }),
    );
    assert_eq!(&got, b"hello");
}

#[test]
fn many_cofutures_on_a_localset_share_a_comutex() {
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let lock = Rc::new(CoMutex::new(Vec::new()));
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let lock = lock.clone();
            tasks.push(tokio::task::spawn_local(CoFuture::new(move || {
                let mut g = lock.lock();
                g.push(i);
                // Hold it across a yield: the others queue on the lock and
                // are woken through their pollers' wakers.
                aio::wait_future(tokio::task::yield_now());
                g.push(i);
            })));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let v = lock.try_lock().unwrap();
    assert_eq!(v.len(), 100);
    // Each holder pushed twice in a row: nobody got in while it waited.
    for pair in v.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
}

#[test]
fn ten_thousand_cofutures_at_once() {
    const COUNT: usize = 10_000;
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let notify = Rc::new(tokio::sync::Notify::new());
    let (started, done) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    local.block_on(&rt, async {
        let mut tasks = Vec::with_capacity(COUNT);
        for _ in 0..COUNT {
            let (n, s, d) = (notify.clone(), started.clone(), done.clone());
            let fut =
                CoFuture::with_builder(costack::Builder::new().stack_size(16 << 10), move || {
                    // Created before notify_waiters is called: it will fire.
                    let notified = n.notified();
                    s.set(s.get() + 1);
                    aio::wait_future(notified);
                    d.set(d.get() + 1);
                })
                .unwrap();
            tasks.push(tokio::task::spawn_local(fut));
        }
        // Until every one of them runs, suspended at once.
        while started.get() < COUNT {
            tokio::task::yield_now().await;
        }
        assert_eq!(done.get(), 0);
        notify.notify_waiters();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(done.get(), COUNT);
}

#[test]
fn timeout_drops_a_pending_cofuture_and_unwinds_it() {
    let rt = current_thread();
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let r = rt.block_on(async move {
        let fut = CoFuture::new(move || {
            let _f = SetOnDrop(d);
            aio::wait_future(tokio::time::sleep(Duration::from_secs(3600)));
        });
        tokio::time::timeout(Duration::from_millis(10), fut).await
    });
    assert!(r.is_err(), "timed out");
    assert!(dropped.get(), "the coroutine's destructors ran");
}

#[test]
fn a_panic_inside_resumes_out_of_poll() {
    let err = catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(CoFuture::new(|| -> u8 {
            costack::yield_now();
            panic!("inside the coroutine")
        }))
    }))
    .unwrap_err();
    assert_eq!(panic_message(&*err), "inside the coroutine");
}

#[test]
fn a_panic_out_of_an_awaited_poll_leaves_the_coroutine_able_to_wait() {
    // A future that panics in its poll, caught inside the coroutine: the
    // poll's context goes back to the coroutine and the in-poll mark is
    // cleared, so the next await pends and yields as usual.
    struct PanicsInPoll;
    impl Future for PanicsInPoll {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            panic!("in the awaited poll")
        }
    }
    let polls = Rc::new(Cell::new(0));
    let fut = Counted {
        inner: Box::pin(CoFuture::new(|| {
            let err = catch_unwind(|| aio::wait_future(PanicsInPoll)).unwrap_err();
            assert_eq!(panic_message(&*err), "in the awaited poll");
            aio::wait_future(std::future::pending::<()>().or_ready_after(3));
            costack::yield_now();
            "waited"
        })),
        polls: polls.clone(),
    };
    assert_eq!(futures::executor::block_on(fut), "waited");
    assert_eq!(polls.get(), 4, "two pending awaits and a yield");
}

#[cfg(any(unix, windows))]
#[test]
fn calls_that_need_costacks_loop_panic_clearly() {
    fn check(what: &str, f: fn()) {
        let err = catch_unwind(AssertUnwindSafe(|| {
            futures::executor::block_on(CoFuture::new(f))
        }))
        .unwrap_err();
        let m = panic_message(&*err);
        assert!(m.contains("needs a costack event loop"), "{what}: {m}");
    }
    check("sleep", || aio::sleep(Duration::from_millis(1)));
    check("spawn", || drop(aio::spawn(|| ())));
    check("run_blocking", || aio::run_blocking(|| ()));
    check("net", || {
        let _ = costack::net::TcpStream::connect("127.0.0.1:9");
    });
}

#[test]
fn waiting_inside_a_futures_poll_panics() {
    // A future whose poll waits on a costack lock: that would yield with
    // the poller's context lent out.
    struct LocksInPoll(Rc<CoMutex<()>>);
    impl Future for LocksInPoll {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            drop(self.0.lock());
            Poll::Ready(())
        }
    }
    let lock = Rc::new(CoMutex::new(()));
    let l = lock.clone();
    let err = catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(CoFuture::new(move || {
            let held = l.clone();
            // Another CoFuture holds the lock, suspended.
            let mut holder = Box::pin(CoFuture::new(move || {
                let _g = held.lock();
                costack::yield_now();
            }));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(holder.as_mut().poll(&mut cx).is_pending());
            aio::wait_future(LocksInPoll(l));
        }))
    }))
    .unwrap_err();
    assert!(
        panic_message(&*err).contains("cannot wait inside Future::poll"),
        "{}",
        panic_message(&*err)
    );
}

#[test]
fn polling_after_completion_panics() {
    let mut fut = Box::pin(CoFuture::new(|| 1));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(1));
    let err = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))).unwrap_err();
    assert!(panic_message(&*err).contains("after it completed"));
}

#[test]
fn entering_its_coroutine_outside_a_poll_is_harmless() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let mut fut = Box::pin(CoFuture::new(move || {
        l.borrow_mut().push("start");
        let me = costack::current().unwrap();
        l.borrow_mut().push("waits");
        aio::wait_future(std::future::pending::<()>().or_ready_after(2));
        drop(me);
        l.borrow_mut().push("done");
    }));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    // A stray enter, with no poll lending a context: only re-checks.
    fut.coroutine().clone().enter();
    assert_eq!(*log.borrow(), ["start", "waits"]);
    assert!(fut.as_mut().poll(&mut cx).is_ready());
    assert_eq!(*log.borrow(), ["start", "waits", "done"]);
}

/// A future ready on its n-th poll.
trait ReadyAfter: Sized {
    fn or_ready_after(self, n: u32) -> ReadyOn;
}
impl<F> ReadyAfter for F {
    fn or_ready_after(self, n: u32) -> ReadyOn {
        ReadyOn(n)
    }
}
struct ReadyOn(u32);
impl Future for ReadyOn {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0 -= 1;
        if self.0 == 0 {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[cfg(any(unix, windows))]
#[test]
fn a_lock_held_on_a_costack_iothread_wakes_a_cofuture_on_tokio() {
    let lock = std::sync::Arc::new(CoMutex::new(0u32));
    let io = aio::IoThread::spawn("holder").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let l = lock.clone();
    let holder = io.handle().spawn(move || {
        let mut g = l.lock();
        tx.send(()).unwrap();
        aio::sleep(Duration::from_millis(30));
        *g += 1;
    });
    rx.recv().unwrap();
    let rt = current_thread();
    let l = lock.clone();
    let v = rt.block_on(CoFuture::new(move || {
        let mut g = l.lock(); // contended: woken from the iothread
        *g += 1;
        *g
    }));
    assert_eq!(v, 2);
    holder.join().unwrap();
}

#[cfg(any(unix, windows))]
#[test]
fn a_cofuture_awaited_from_a_coroutine_on_an_event_loop() {
    let lp = aio::EventLoop::new().unwrap();
    let v = lp.block_on(|| {
        let inner = CoFuture::new(|| {
            costack::yield_now();
            aio::wait_future(ReadyOn(3));
            21
        });
        aio::wait_future(inner) * 2
    });
    assert_eq!(v, 42);
}

// ---- tokio futures on costack's own loop ----------------------------------

#[cfg(any(unix, windows))]
fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[cfg(any(unix, windows))]
#[test]
fn tokio_timers_and_sockets_on_a_loop_with_a_multi_thread_runtime_entered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = multi_thread();
    let _entered = rt.enter();
    let lp = aio::EventLoop::new().unwrap();
    let echoed = lp.block_on(|| {
        let listener = aio::wait_future(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        // A coroutine of the loop serves while this one is the client.
        let server = aio::spawn(move || {
            let (mut s, _) = aio::wait_future(listener.accept()).unwrap();
            let mut buf = [0u8; 5];
            aio::wait_future(s.read_exact(&mut buf)).unwrap();
            aio::wait_future(s.write_all(&buf)).unwrap();
        });
        let t = Instant::now();
        aio::wait_future(tokio::time::sleep(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
        let mut c = aio::wait_future(tokio::net::TcpStream::connect(addr)).unwrap();
        aio::wait_future(c.write_all(b"hello")).unwrap();
        let mut back = [0u8; 5];
        aio::wait_future(c.read_exact(&mut back)).unwrap();
        server.join().unwrap();
        back
    });
    assert_eq!(&echoed, b"hello");
}

#[cfg(any(unix, windows))]
#[test]
fn tokio_work_spawned_on_a_runtime_is_joined_without_entering_it() {
    let rt = multi_thread();
    let handle = rt.handle().clone();
    let lp = aio::EventLoop::new().unwrap();
    let v = lp.block_on(move || {
        let task = handle.spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        });
        aio::wait_future(task).unwrap()
    });
    assert_eq!(v, 7);
}

/// With the `tokio` feature, a current_thread runtime entered on the loop's
/// thread is refused with a clear panic instead of a silent hang.
#[cfg(all(target_os = "linux", feature = "tokio"))]
#[test]
fn a_current_thread_runtime_entered_on_the_loop_is_refused_clearly() {
    let rt = current_thread();
    let _entered = rt.enter();
    let lp = aio::EventLoop::new().unwrap();
    let err = catch_unwind(AssertUnwindSafe(|| {
        lp.block_on(|| aio::wait_future(tokio::time::sleep(Duration::from_millis(1))))
    }))
    .unwrap_err();
    let msg = panic_message(&*err);
    assert!(msg.contains("tokio current_thread"), "{msg}");
    // A future that is ready at once never needed the runtime: no panic.
    assert_eq!(lp.block_on(|| aio::wait_future(async { 5 })), 5);
}

/// The check is about costack's loop only: inside a CoFuture polled by that
/// same current_thread runtime, tokio's futures work.
#[cfg(feature = "tokio")]
#[test]
fn a_cofuture_on_a_current_thread_runtime_is_not_refused() {
    let rt = current_thread();
    let v = rt.block_on(CoFuture::new(|| {
        aio::wait_future(tokio::time::sleep(Duration::from_millis(1)));
        9
    }));
    assert_eq!(v, 9);
}
