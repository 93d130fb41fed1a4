//! Coroutine sockets: TCP and Unix echo, concurrent halves, shutdown,
//! timeouts, blocking use outside a loop.

// The event loop and sockets run on unix systems (see the crate docs).
#![cfg(unix)]

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

use costack::aio::{self, Cancelled, EventLoop};
use costack::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use costack::Coroutine;

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("costack-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn echo<S: Read + Write>(mut s: S) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => s.write_all(&buf[..n]).unwrap(),
            Err(e) => panic!("echo read: {e}"),
        }
    }
}

#[test]
fn tcp_echo_64_clients_one_loop() {
    let lp = EventLoop::new().unwrap();
    let ok = lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        aio::spawn(move || loop {
            let (s, peer) = listener.accept().unwrap();
            assert_eq!(s.peer_addr().unwrap(), peer);
            aio::spawn(move || echo(s));
        });
        let ok = Rc::new(Cell::new(0));
        let clients: Vec<_> = (0..64u8)
            .map(|i| {
                let ok = ok.clone();
                aio::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_nodelay(true).unwrap();
                    assert!(c.nodelay().unwrap());
                    assert_eq!(c.peer_addr().unwrap(), addr);
                    for round in 0..20u8 {
                        let msg = vec![i ^ round; 1000 + i as usize];
                        c.write_all(&msg).unwrap();
                        let mut back = vec![0; msg.len()];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg);
                    }
                    ok.set(ok.get() + 1);
                })
            })
            .collect();
        while !clients.iter().all(|c| c.is_finished()) {
            aio::sleep(Duration::from_millis(1));
        }
        ok.get()
    });
    assert_eq!(ok, 64);
}

#[test]
fn unix_echo() {
    let path = temp_path("echo.sock");
    let lp = EventLoop::new().unwrap();
    let p = path.clone();
    lp.block_on(move || {
        let listener = UnixListener::bind(&p).unwrap();
        assert_eq!(
            listener.local_addr().unwrap().as_pathname(),
            Some(p.as_path())
        );
        aio::spawn(move || {
            let (s, _addr) = listener.accept().unwrap();
            echo(s);
        });
        let mut c = UnixStream::connect(&p).unwrap();
        for n in [1usize, 100, 65536] {
            let msg: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let writer = {
                let msg = msg.clone();
                let c2 = UnixStream::from_std(c.try_clone_std()).unwrap();
                aio::spawn(move || (&c2).write_all(&msg).unwrap())
            };
            let mut back = vec![0; n];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
            assert!(writer.is_finished());
        }
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    });
    std::fs::remove_file(&path).unwrap();
}

trait TryCloneStd {
    fn try_clone_std(&self) -> std::os::unix::net::UnixStream;
}
impl TryCloneStd for UnixStream {
    fn try_clone_std(&self) -> std::os::unix::net::UnixStream {
        use std::os::fd::AsFd;
        std::os::unix::net::UnixStream::from(self.as_fd().try_clone_to_owned().unwrap())
    }
}

#[test]
fn read_and_write_halves_from_two_coroutines() {
    // One coroutine writes 4 MiB through &stream while another reads
    // through &stream: the writes block on a full buffer, the reads on an
    // empty one, and neither blocks the other.
    let lp = EventLoop::new().unwrap();
    let total = lp.block_on(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let a = Rc::new(a);
        let b = Rc::new(b);
        const N: usize = 4 << 20;
        // b echoes everything back.
        let b2 = b.clone();
        aio::spawn(move || echo(&*b2));
        let a2 = a.clone();
        let writer = aio::spawn(move || {
            let chunk: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < N {
                (&*a2).write_all(&chunk).unwrap();
                sent += chunk.len();
            }
        });
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        while got < N {
            let n = (&*a).read(&mut buf).unwrap();
            assert!(n > 0);
            for (k, &byte) in buf[..n].iter().enumerate() {
                assert_eq!(byte, ((got + k) % 65536 % 251) as u8);
            }
            got += n;
        }
        assert!(writer.is_finished());
        got
    });
    assert_eq!(total, 4 << 20);
}

#[test]
fn shutdown_wakes_a_waiting_reader() {
    let lp = EventLoop::new().unwrap();
    let t = Instant::now();
    lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _peer = aio::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            aio::sleep(Duration::from_secs(3600));
            drop(s);
        });
        let c = Rc::new(TcpStream::connect(addr).unwrap());
        let c2 = c.clone();
        let result = Rc::new(Cell::new(None));
        let r = result.clone();
        let reader = aio::spawn(move || {
            let mut buf = [0; 16];
            r.set(Some((&*c2).read(&mut buf).map_err(|e| e.kind())));
        });
        aio::sleep(Duration::from_millis(20));
        assert!(!reader.is_finished());
        c.shutdown(Shutdown::Both).unwrap();
        while !reader.is_finished() {
            aio::sleep(Duration::from_millis(1));
        }
        assert_eq!(result.get(), Some(Ok(0)));
    });
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn peer_close_gives_eof_and_write_error() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let a = Rc::new(a);
        let a2 = a.clone();
        let reader = aio::spawn(move || {
            let mut buf = [0; 8];
            assert_eq!((&*a2).read(&mut buf).unwrap(), 0);
        });
        aio::sleep(Duration::from_millis(5));
        drop(b);
        while !reader.is_finished() {
            aio::sleep(Duration::from_millis(1));
        }
        let e = (&*a).write_all(&[1; 1 << 20]).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{e:?}"
        );
    });
}

#[test]
fn read_timeout_gives_timed_out() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(a.set_read_timeout(Some(Duration::ZERO)).is_err());
        a.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        assert_eq!(a.read_timeout(), Some(Duration::from_millis(30)));
        let t = Instant::now();
        let e = (&a).read(&mut [0; 4]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(30));
        // Writes time out once the buffer is full.
        a.set_write_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let big = vec![0u8; 1 << 16];
        let e = loop {
            if let Err(e) = (&a).write(&big) {
                break e;
            }
        };
        assert_eq!(e.kind(), ErrorKind::TimedOut);
    });
}

#[test]
fn tcp_read_timeout_and_connect_refused() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (_s, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(
            (&c).read(&mut [0; 1]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        drop(listener);
        let e = TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        let e = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    });
}

#[test]
fn accept_does_not_block_the_loop() {
    let lp = EventLoop::new().unwrap();
    let ticks = lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ticks = Rc::new(Cell::new(0));
        let t = ticks.clone();
        aio::spawn(move || {
            for _ in 0..10 {
                aio::sleep(Duration::from_millis(5));
                t.set(t.get() + 1);
            }
            TcpStream::connect(addr).unwrap();
        });
        listener.accept().unwrap();
        ticks.get()
    });
    assert_eq!(ticks, 10);
}

#[test]
fn blocking_use_outside_a_loop() {
    // On plain threads the same calls block like std's.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        echo(s);
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"plain thread").unwrap();
    let mut buf = [0; 12];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"plain thread");
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    assert_eq!(c.read(&mut buf).unwrap_err().kind(), ErrorKind::TimedOut);
    drop(c);
    t.join().unwrap();
}

#[test]
fn streams_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TcpStream>();
    check::<TcpListener>();
    check::<UnixStream>();
    check::<UnixListener>();
}

#[test]
fn streams_move_between_loop_threads() {
    // Accept on one loop, serve on another loop's thread.
    let server = EventLoop::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let lp = EventLoop::new().unwrap();
        tx.send(lp.handle()).unwrap();
        lp.block_on(|| aio::sleep(Duration::from_millis(300)));
        while lp.poll(false) {}
    });
    let handle = rx.recv().unwrap();
    server.block_on(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        aio::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            handle.spawn(move || echo(s));
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"across").unwrap();
        let mut buf = [0; 6];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"across");
    });
    worker.join().unwrap();
}

#[test]
fn generic_waits_on_a_socket_fd_mix_with_its_own() {
    use std::os::fd::AsFd;
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Rc::new(a), Rc::new(b));
        // A generic wait first (one-shot arming), then the socket's own
        // read registers it while the generic waiter still waits.
        let a2 = a.clone();
        let generic = aio::spawn(move || aio::wait_readable(a2.as_fd()).unwrap());
        let a3 = a.clone();
        let own = aio::spawn(move || {
            let mut buf = [0; 1];
            (&*a3).read_exact(&mut buf).unwrap();
            assert_eq!(buf, [9]);
        });
        aio::sleep(Duration::from_millis(5));
        // Two bytes, so that one is left for the generic waiter to see
        // whichever of them the loop serves first (a read on an io_uring
        // loop can take its byte before epoll reports the fd).
        (&*b).write_all(&[9, 9]).unwrap();
        while !(generic.is_finished() && own.is_finished()) {
            aio::sleep(Duration::from_millis(1));
        }
        let mut rest = [0; 1];
        (&*a).read_exact(&mut rest).unwrap();
        // And a generic wait after the registration exists.
        let a4 = a.clone();
        let generic = aio::spawn(move || aio::wait_readable(a4.as_fd()).unwrap());
        aio::sleep(Duration::from_millis(5));
        assert!(!generic.is_finished());
        (&*b).write_all(&[1]).unwrap();
        while !generic.is_finished() {
            aio::sleep(Duration::from_millis(1));
        }
    });
}

/// A connected TCP pair (from a coroutine on a loop).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

// A read in flight when its coroutine stops (cancelled, timed out, dropped,
// its loop dropped) is given back by the kernel before the coroutine goes
// on: on the io_uring backend the kernel holds the buffer meanwhile, and
// the bytes that come later are the next read's, not lost.

#[test]
fn a_cancelled_read_consumes_no_data() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let (a, b) = tcp_pair();
        let a = Rc::new(a);
        let a2 = a.clone();
        let reader = aio::spawn(move || {
            let mut buf = [0; 16];
            (&*a2).read(&mut buf).map(|n| buf[..n].to_vec())
        });
        aio::sleep(Duration::from_millis(5));
        assert!(!reader.is_finished(), "the read waits for data");
        reader.cancel();
        assert!(reader.join().unwrap_err().is::<Cancelled>());
        (&b).write_all(b"intact").unwrap();
        let mut got = [0; 6];
        (&*a).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"intact");
    });
}

#[test]
fn a_read_that_times_out_consumes_no_data() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let (a, b) = tcp_pair();
        a.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let e = (&a).read(&mut [0; 16]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        // And under `aio::timeout`, a cancellation of its own.
        a.set_read_timeout(None).unwrap();
        let r = aio::timeout(Duration::from_millis(5), || (&a).read(&mut [0; 16]));
        assert!(r.is_err(), "{r:?}");
        (&b).write_all(b"intact").unwrap();
        let mut got = [0; 6];
        (&a).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"intact");
    });
}

#[test]
fn dropping_a_coroutine_suspended_in_a_read_unwinds_it() {
    let lp = EventLoop::new().unwrap();
    let t = Instant::now();
    lp.block_on(|| {
        let (a, b) = tcp_pair();
        let a = Rc::new(a);
        let a2 = a.clone();
        let unwound = Rc::new(Cell::new(false));
        let flag = unwound.clone();
        let co = Coroutine::new(move || {
            struct Mark(Rc<Cell<bool>>);
            impl Drop for Mark {
                fn drop(&mut self) {
                    self.0.set(true);
                }
            }
            let _mark = Mark(flag);
            let mut buf = [0; 16];
            let _ = (&*a2).read(&mut buf);
            unreachable!("no data comes");
        });
        co.enter();
        aio::sleep(Duration::from_millis(5));
        drop(co);
        assert!(unwound.get());
        (&b).write_all(b"intact").unwrap();
        let mut got = [0; 6];
        (&*a).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"intact");
    });
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn dropping_the_loop_under_a_coroutine_suspended_in_a_read_does_not_hang() {
    let t = Instant::now();
    let lp = EventLoop::new().unwrap();
    let (co, _peer) = lp.block_on(|| {
        let (a, b) = tcp_pair();
        let co = Coroutine::new(move || {
            let mut buf = [0; 16];
            let _ = (&a).read(&mut buf);
        });
        co.enter();
        (co, b)
    });
    assert!(!co.is_finished());
    drop(lp);
    drop(co);
    assert!(t.elapsed() < Duration::from_secs(10));
}
