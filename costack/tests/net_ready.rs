//! Read readiness cached per TCP socket: after a short read the next read
//! waits for the loop to see data instead of calling `recv` first. These
//! tests check that no wakeup is lost whichever way the data comes (Unix
//! sockets, which do not cache, must behave the same).

// The event loop and sockets run on unix systems (see the crate docs).
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use costack::aio::{self, EventLoop};
use costack::net::{TcpListener, TcpStream, UnixStream};

/// Generous: a lost wakeup turns into a TimedOut error, not a hang.
const LIMIT: Duration = Duration::from_secs(20);

/// A connected TCP pair on the current loop.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (s, _) = listener.accept().unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// Echoes small messages through `b` and checks them on `a`. Each read is
/// short (a 64 KiB buffer, 1..200-byte messages), so every next read
/// waits for an edge first.
fn ping_pong<S>(a: S, b: S)
where
    S: 'static,
    for<'x> &'x S: std::io::Read + std::io::Write,
{
    let echo = aio::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = (&b).read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            (&b).write_all(&buf[..n]).unwrap();
        }
    });
    let mut got = vec![0u8; 256];
    for i in 0..2000usize {
        let len = 1 + i % 200;
        let msg: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
        (&a).write_all(&msg).unwrap();
        (&a).read_exact(&mut got[..len]).unwrap();
        assert_eq!(&got[..len], &msg[..]);
    }
    drop(a);
    while !echo.is_finished() {
        aio::sleep(Duration::from_millis(1));
    }
}

#[test]
fn small_messages_after_short_reads_all_arrive() {
    EventLoop::new().unwrap().block_on(|| {
        let (a, b) = tcp_pair();
        a.set_read_timeout(Some(LIMIT)).unwrap();
        b.set_read_timeout(Some(LIMIT)).unwrap();
        ping_pong(a, b);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(LIMIT)).unwrap();
        b.set_read_timeout(Some(LIMIT)).unwrap();
        ping_pong(a, b);
    });
}

#[test]
fn urgent_data_does_not_strand_the_data_behind_it() {
    // A read stops short at TCP's urgent mark with data left after it;
    // the reader must not then wait for an edge that never comes.
    EventLoop::new().unwrap().block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut buf = [0u8; 64];
        // Drain once so the socket is marked drained.
        (&c).write_all(b"0").unwrap();
        assert_eq!((&s).read(&mut buf).unwrap(), 1);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c);
        let send = |b: &[u8], flags| {
            // SAFETY: sends from a valid buffer on an open socket.
            let n = unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), flags) };
            assert_eq!(n, b.len() as isize);
        };
        send(b"abc", 0);
        send(b"X", libc::MSG_OOB);
        send(b"def", 0);
        // Let all of it arrive before the loop looks.
        std::thread::sleep(Duration::from_millis(20));
        let mut all = Vec::new();
        while all.len() < 6 {
            let n = (&s).read(&mut buf).unwrap();
            assert!(n > 0);
            all.extend_from_slice(&buf[..n]);
        }
        // The urgent byte is out of band (SO_OOBINLINE is off).
        assert_eq!(all, b"abcdef");
        drop(c);
    });
}

#[test]
fn data_from_another_thread_wakes_a_drained_reader() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            for i in 0..200u32 {
                s.write_all(&i.to_be_bytes()).unwrap();
                if i % 16 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // Half-close: the reader then sees EOF.
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
        });
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = (&s)
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("after {} bytes: {e}", all.len()));
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let want: Vec<u8> = (0..200u32).flat_map(u32::to_be_bytes).collect();
        assert_eq!(all, want);
        // EOF stays readable: reading again returns 0 at once.
        assert_eq!((&s).read(&mut buf).unwrap(), 0);
        assert_eq!((&s).read(&mut buf).unwrap(), 0);
        drop(s);
        writer.join().unwrap();
    });
}

#[test]
fn shutdown_from_another_thread_wakes_a_drained_reader() {
    let lp = EventLoop::new().unwrap();
    lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        c.write_all(b"abc").unwrap();
        let mut buf = [0u8; 64];
        // Short read: the socket is marked drained.
        let mut n = 0;
        while n < 3 {
            n += (&s).read(&mut buf[n..]).unwrap();
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the socket outlives the thread (joined below).
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        });
        assert_eq!((&s).read(&mut buf).unwrap(), 0);
        t.join().unwrap();
        drop(c);
    });
}

#[test]
fn second_loop_reads_a_socket_drained_on_the_first() {
    // The cache belongs to the socket's registration with its first loop;
    // a read from another thread's loop must not trust it.
    let (a, b) = UnixStream::pair().unwrap();
    let b = std::sync::Arc::new(b);
    b.set_read_timeout(Some(LIMIT)).unwrap();
    let b1 = b.clone();
    EventLoop::new().unwrap().block_on(move || {
        let mut buf = [0u8; 16];
        let reader = aio::spawn(move || {
            let n = (&*b1).read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"one");
        });
        aio::sleep(Duration::from_millis(5));
        (&a).write_all(b"one").unwrap();
        while !reader.is_finished() {
            aio::sleep(Duration::from_millis(1));
        }
        // Data already waiting when the other loop reads.
        (&a).write_all(b"two").unwrap();
        let t = std::thread::spawn(move || {
            EventLoop::new().unwrap().block_on(move || {
                let mut buf = [0u8; 16];
                let n = (&*b).read(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"two");
            })
        });
        t.join().unwrap();
    });
}

#[test]
fn unix_pair_ping_pong_across_threads() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut b = b;
        let mut buf = [0u8; 8];
        for i in 0..500u64 {
            b.read_exact(&mut buf).unwrap();
            assert_eq!(u64::from_be_bytes(buf), i);
            b.write_all(&(i * 2).to_be_bytes()).unwrap();
        }
    });
    let lp = EventLoop::new().unwrap();
    lp.block_on(move || {
        let a = UnixStream::from_std(a).unwrap();
        a.set_read_timeout(Some(LIMIT)).unwrap();
        let mut buf = [0u8; 64];
        for i in 0..500u64 {
            (&a).write_all(&i.to_be_bytes()).unwrap();
            let mut got = 0;
            while got < 8 {
                got += (&a).read(&mut buf[got..]).unwrap();
            }
            assert_eq!(got, 8);
            assert_eq!(u64::from_be_bytes(buf[..8].try_into().unwrap()), i * 2);
        }
    });
    t.join().unwrap();
}
