//! Choosing the event loop's backend: `EventLoop::with_backend` and the
//! `COSTACK_AIO` environment variable (a test binary of its own, since it
//! sets the environment of its process), and what poll(2) must get right
//! that epoll gets from the kernel.

#![cfg(target_os = "linux")]

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use costack::aio::{self, Backend, EventLoop};
use costack::net::{TcpListener, TcpStream};

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: all-zero is a valid rusage, and the kernel fills the live
    // struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Echo round trips, a bulk write that must wait for the peer, then the
/// CPU the loop burns while both (registered, writable) sockets idle.
fn echo_and_idle(lp: &EventLoop) -> Duration {
    const BULK: usize = 8 << 20;
    lp.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = aio::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 8];
            for _ in 0..100 {
                s.read_exact(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
            }
            // Late to read the bulk: the client's write waits for room.
            aio::sleep(Duration::from_millis(20));
            let mut bulk = vec![0u8; BULK];
            s.read_exact(&mut bulk).unwrap();
            assert_eq!(s.read(&mut buf).unwrap(), 0);
        });
        let mut c = TcpStream::connect(addr).unwrap();
        for i in 0..100u8 {
            c.write_all(&[i; 8]).unwrap();
            let mut back = [0u8; 8];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, [i; 8]);
        }
        c.write_all(&vec![7u8; BULK]).unwrap();
        // Both ends are registered, writable and idle now, and each has
        // waited for readiness: a reactor that kept watching them would
        // report them again and again, spinning the loop.
        let before = thread_cpu();
        aio::sleep(Duration::from_millis(100));
        let spent = thread_cpu() - before;
        drop(c);
        server.join().unwrap();
        spent
    })
}

#[test]
fn backends_are_chosen_by_name_and_by_the_environment() {
    for b in [Backend::Epoll, Backend::Poll] {
        let lp = EventLoop::with_backend(b).unwrap();
        assert_eq!(lp.backend(), b);
        assert!(!lp.uses_io_uring());
        let idle = echo_and_idle(&lp);
        assert!(
            idle < Duration::from_millis(40),
            "{b}: {idle:?} of CPU while idle"
        );
    }

    // The environment variable: every value it takes, and refusals.
    std::env::set_var("COSTACK_AIO", "poll");
    assert_eq!(EventLoop::new().unwrap().backend(), Backend::Poll);
    assert_eq!(
        EventLoop::without_io_uring().unwrap().backend(),
        Backend::Poll
    );
    std::env::set_var("COSTACK_AIO", "epoll");
    assert_eq!(EventLoop::new().unwrap().backend(), Backend::Epoll);
    std::env::set_var("COSTACK_AIO", "io_uring");
    match EventLoop::new() {
        Ok(lp) => assert_eq!(lp.backend(), Backend::IoUring),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}"),
    }
    std::env::set_var("COSTACK_AIO", "kqueue");
    let err = EventLoop::new().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("\"kqueue\""), "{err}");
    assert!(err.to_string().contains("io_uring, epoll, poll"), "{err}");
    std::env::set_var("COSTACK_AIO", "");
    EventLoop::new().unwrap();
    std::env::remove_var("COSTACK_AIO");
}

#[test]
fn poll_backend_waits_on_plain_fds_and_their_hangups() {
    let lp = EventLoop::with_backend(Backend::Poll).unwrap();
    let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let got = lp.block_on(move || {
        let writer = aio::spawn(move || {
            aio::sleep(Duration::from_millis(5));
            a.write_all(b"x").unwrap();
            aio::sleep(Duration::from_millis(5));
            drop(a); // the hang-up ends the second wait
        });
        aio::wait_readable(b.as_fd()).unwrap();
        let mut buf = [0u8; 4];
        let n = (&b).read(&mut buf).unwrap();
        aio::wait_readable(b.as_fd()).unwrap();
        let eof = (&b).read(&mut buf).unwrap();
        writer.join().unwrap();
        (n, eof)
    });
    assert_eq!(got, (1, 0));
}

#[test]
fn poll_backend_times_out_waits_and_keeps_other_waiters() {
    let lp = EventLoop::with_backend(Backend::Poll).unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    lp.block_on(move || {
        // A reader times out; a writer on the same fd is served at once.
        let r = aio::wait_readable_timeout(a.as_fd(), Duration::from_millis(10));
        assert_eq!(r.unwrap_err().kind(), ErrorKind::TimedOut);
        aio::wait_writable(a.as_fd()).unwrap();
        drop(b);
    });
}

/// A socket of `net` is registered with its loop for good (edge-triggered
/// under epoll); `aio::wait_readable`/`wait_writable` on it must still see
/// readiness that is there already, whose edge came before anyone asked.
#[test]
fn waits_on_a_registered_socket_see_readiness_that_is_there_already() {
    for b in [Backend::Epoll, Backend::Poll] {
        let lp = EventLoop::with_backend(b).unwrap();
        lp.block_on(move || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = aio::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(b"ab").unwrap();
                let mut buf = [0u8; 1];
                s.read_exact(&mut buf).unwrap(); // until the client is done
            });
            let mut c = TcpStream::connect(addr).unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).unwrap(); // registers; one byte left
            aio::sleep(Duration::from_millis(5)); // the loop takes the edges
            aio::wait_writable(c.as_fd()).unwrap();
            aio::wait_readable(c.as_fd()).unwrap();
            c.read_exact(&mut one).unwrap();
            assert_eq!(&one, b"b");
            c.write_all(b"!").unwrap();
            server.join().unwrap();
        });
    }
}

#[test]
fn a_sub_millisecond_deadline_sets_the_loops_timer_slack_to_a_nanosecond() {
    // A thread of its own: the slack is per thread.
    std::thread::spawn(|| {
        // SAFETY: PR_GET_TIMERSLACK takes no pointer; it returns the value.
        let slack = || unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
        // The kernel's default, whatever this thread inherited.
        // SAFETY: PR_SET_TIMERSLACK takes an integer, no pointer.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 50_000 as libc::c_ulong, 0, 0, 0) };
        assert_eq!(slack(), 50_000);
        EventLoop::with_backend(Backend::Epoll)
            .unwrap()
            .block_on(|| aio::sleep(Duration::from_micros(1500)));
        assert_eq!(slack(), 1, "timed waits end within a nanosecond of slack");
    })
    .join()
    .unwrap();
}
