//! The event loop's suite that runs unchanged on every system it builds
//! for: Linux (on each backend), and Windows (under Wine in CI). Timers,
//! bottom halves, cross-thread wakes, the thread pool, futures, iothreads,
//! the locks across loops, TCP, and readiness waits on sockets.

#![cfg(any(unix, windows))]

use std::cell::RefCell;
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use costack::aio::{self, EventLoop, IoThread};
use costack::net::{TcpListener, TcpStream};
use costack::sync::CoMutex;

#[cfg(unix)]
fn sock<S: std::os::fd::AsFd>(s: &S) -> std::os::fd::BorrowedFd<'_> {
    s.as_fd()
}
#[cfg(windows)]
fn sock<S: std::os::windows::io::AsSocket>(s: &S) -> std::os::windows::io::BorrowedSocket<'_> {
    s.as_socket()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[test]
fn timers_fire_in_deadline_order() {
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    let t = Instant::now();
    EventLoop::new().unwrap().block_on(move || {
        let jobs: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| {
                let o = o.clone();
                aio::spawn(move || {
                    aio::sleep(Duration::from_millis(ms));
                    o.borrow_mut().push(ms);
                })
            })
            .collect();
        jobs.into_iter().for_each(|j| j.join().unwrap());
    });
    assert_eq!(*order.borrow(), [10, 20, 30]);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(30), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn bottom_halves_and_wakes_from_other_threads() {
    let lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    lp.block_on(move || {
        // A waker handed to another thread, which also posts a bottom half.
        let waker = aio::waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            handle.call_soon(move || g.lock().unwrap().push("bottom half"));
            waker.wake();
        });
        costack::yield_now(); // until the other thread wakes us
        t.join().unwrap();
        aio::yield_now(); // the bottom half runs by now
    });
    assert_eq!(*got.lock().unwrap(), ["bottom half"]);
}

#[test]
fn run_blocking_and_spawned_panics() {
    let lp = EventLoop::new().unwrap();
    let (v, err) = lp.block_on(|| {
        let v = aio::run_blocking(|| {
            std::thread::sleep(Duration::from_millis(5));
            6 * 7
        });
        let bad = aio::spawn(|| -> u8 { panic!("one bad handler") });
        (v, bad.join().unwrap_err())
    });
    assert_eq!(v, 42);
    assert_eq!(panic_text(&*err), "one bad handler");
}

/// A one-shot value another thread sets.
struct Slot(Arc<Mutex<(Option<u32>, Option<std::task::Waker>)>>);

impl Future for Slot {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let mut s = self.0.lock().unwrap();
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[test]
fn wait_future_is_woken_from_another_thread() {
    let shared = Arc::new(Mutex::new((None, None::<std::task::Waker>)));
    let theirs = shared.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        let mut s = theirs.lock().unwrap();
        s.0 = Some(7);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    });
    let v = EventLoop::new()
        .unwrap()
        .block_on(move || aio::wait_future(Slot(shared)));
    assert_eq!(v, 7);
    t.join().unwrap();
}

#[test]
fn iothreads_and_a_lock_shared_across_loops() {
    let io = IoThread::spawn("portable-io").unwrap();
    let lock = Arc::new(CoMutex::new(0u32));
    let l = lock.clone();
    let remote = io.handle().spawn(move || {
        for _ in 0..100 {
            let mut g = l.lock();
            aio::yield_now(); // hold it across a yield: the others queue
            *g += 1;
        }
        std::thread::current().name().map(str::to_owned)
    });
    let l = lock.clone();
    EventLoop::new().unwrap().block_on(move || {
        for _ in 0..100 {
            let mut g = l.lock();
            aio::yield_now();
            *g += 1;
        }
    });
    assert_eq!(remote.join().unwrap().as_deref(), Some("portable-io"));
    assert_eq!(*lock.try_lock().unwrap(), 200);
    io.stop();
}

#[test]
fn tcp_echo_with_many_connections() {
    const CONNS: usize = 16;
    const ROUNDS: usize = 50;
    let total = EventLoop::new().unwrap().block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = aio::spawn(move || {
            let mut handlers = Vec::new();
            for _ in 0..CONNS {
                let (mut s, _) = listener.accept().unwrap();
                handlers.push(aio::spawn(move || {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).unwrap() {
                            0 => break,
                            n => s.write_all(&buf[..n]).unwrap(),
                        }
                    }
                }));
            }
            handlers.into_iter().for_each(|h| h.join().unwrap());
        });
        let clients: Vec<_> = (0..CONNS)
            .map(|c| {
                aio::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut echoed = 0;
                    for r in 0..ROUNDS {
                        let msg = [(c + r) as u8; 100];
                        s.write_all(&msg).unwrap();
                        let mut back = [0u8; 100];
                        s.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg);
                        echoed += back.len();
                    }
                    echoed
                })
            })
            .collect();
        let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        server.join().unwrap();
        total
    });
    assert_eq!(total, CONNS * ROUNDS * 100);
}

#[test]
fn tcp_timeouts_shutdown_and_readiness_waits() {
    EventLoop::new().unwrap().block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s, _) = listener.accept().unwrap();

        // A read that waits too long fails with TimedOut.
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(c.read(&mut [0; 4]).unwrap_err().kind(), ErrorKind::TimedOut);

        // Readiness waits on the sockets themselves.
        aio::wait_writable(sock(&s)).unwrap();
        let r = aio::wait_readable_timeout(sock(&s), Duration::from_millis(10));
        assert_eq!(r.unwrap_err().kind(), ErrorKind::TimedOut);
        c.write_all(b"x").unwrap();
        aio::wait_readable(sock(&s)).unwrap();

        // A reader waiting on the stream wakes to EOF when the peer shuts
        // its side down.
        let reader = aio::spawn(move || {
            let mut buf = [0u8; 8];
            let n = (&s).read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"x");
            (&s).read(&mut buf).unwrap()
        });
        aio::sleep(Duration::from_millis(10));
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), 0);
    });
}

#[test]
fn connect_to_a_closed_port_fails() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again
    let r = EventLoop::new()
        .unwrap()
        .block_on(move || TcpStream::connect(addr).map(drop));
    assert!(r.is_err());
}

#[test]
fn block_on_that_nothing_can_wake_fails_clearly() {
    let lp = EventLoop::new().unwrap();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lp.block_on(costack::yield_now)
    }))
    .unwrap_err();
    assert!(panic_text(&*err).contains("would wait forever"));
}
