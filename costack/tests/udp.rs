//! `net::UdpSocket`: echo, one socket shared by a sending and a receiving
//! coroutine, timeouts, and a coroutine unwound while it waits. Runs on
//! every backend (`COSTACK_AIO=io_uring|epoll|poll`, see
//! scripts/test-all.sh) and Windows.

#![cfg(any(unix, windows))]

use std::cell::Cell;
use std::io::ErrorKind;
use std::rc::Rc;
use std::time::{Duration, Instant};

use costack::aio::{self, EventLoop};
use costack::net::UdpSocket;

#[test]
fn echo_between_coroutines() {
    EventLoop::new().unwrap().block_on(|| {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let echo = aio::spawn(move || {
            let mut buf = [0; 1500];
            for _ in 0..100 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(addr).unwrap();
        let mut buf = [0; 1500];
        for i in 0..100u32 {
            let msg = i.to_le_bytes();
            client.send(&msg).unwrap();
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &msg);
        }
        echo.join().unwrap();
    });
}

#[test]
fn echo_with_a_plain_thread_peer() {
    // Outside a loop the same type blocks like std's.
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0; 64];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        server.send_to(&buf[..n], from).unwrap();
    });
    EventLoop::new().unwrap().block_on(move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"across", addr).unwrap();
        let mut buf = [0; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"across"[..], addr));
    });
    t.join().unwrap();
}

#[test]
fn one_socket_sends_in_one_coroutine_and_receives_in_another() {
    const N: u32 = 2000;
    EventLoop::new().unwrap().block_on(|| {
        let a = Rc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // b echoes everything back to a.
        let echo = aio::spawn(move || {
            let mut buf = [0; 16];
            for _ in 0..N {
                let (n, _) = b.recv_from(&mut buf).unwrap();
                b.send_to(&buf[..n], a_addr).unwrap();
            }
        });
        let got = Rc::new(Cell::new(0u64));
        let (ra, g) = (a.clone(), got.clone());
        let receiver = aio::spawn(move || {
            let mut buf = [0; 16];
            for _ in 0..N {
                let (n, from) = ra.recv_from(&mut buf).unwrap();
                assert_eq!(from, b_addr);
                g.set(g.get() + u64::from(u32::from_le_bytes(buf[..n].try_into().unwrap())));
            }
        });
        // Sends paced by what came back (loopback drops a flood).
        for i in 0..N {
            a.send_to(&i.to_le_bytes(), b_addr).unwrap();
            while got.get() < u64::from(i) * u64::from(i.saturating_sub(1)) / 2 {
                aio::yield_now();
            }
        }
        receiver.join().unwrap();
        echo.join().unwrap();
        assert_eq!(got.get(), u64::from(N) * u64::from(N - 1) / 2);
    });
}

#[test]
fn read_timeout_yields_to_the_loop_and_times_out() {
    EventLoop::new().unwrap().block_on(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let ticks = Rc::new(Cell::new(0));
        let t = ticks.clone();
        let ticker = aio::spawn(move || {
            for _ in 0..5 {
                aio::sleep(Duration::from_millis(1));
                t.set(t.get() + 1);
            }
        });
        let start = Instant::now();
        let mut buf = [0; 8];
        let e = s.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(ticks.get(), 5, "the loop ran others meanwhile");
        ticker.join().unwrap();
        assert!(s.set_read_timeout(Some(Duration::ZERO)).is_err());
        s.set_read_timeout(None).unwrap();
        assert_eq!(s.read_timeout().unwrap(), None);
    });
}

#[test]
fn a_coroutine_unwound_while_receiving_leaves_the_socket_usable() {
    let s = Rc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let addr = s.local_addr().unwrap();
    {
        let ev = EventLoop::new().unwrap();
        let s2 = s.clone();
        let h = ev.spawn(move || {
            let mut buf = [0; 8];
            s2.recv_from(&mut buf).map(|(n, _)| n)
        });
        ev.poll(false);
        ev.poll(false);
        assert!(!h.is_finished());
        drop(h);
        // The loop goes with its suspended receiver.
    }
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"later", addr).unwrap();
    EventLoop::new().unwrap().block_on(move || {
        let mut buf = [0; 8];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"later");
    });
}

#[test]
fn options() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_broadcast(true).unwrap();
    assert!(s.broadcast().unwrap());
    s.set_ttl(7).unwrap();
    assert_eq!(s.ttl().unwrap(), 7);
    s.set_write_timeout(Some(Duration::from_millis(5))).unwrap();
    assert_eq!(s.write_timeout().unwrap(), Some(Duration::from_millis(5)));
    assert!(s.peer_addr().is_err());
    assert!(format!("{s:?}").contains("UdpSocket"));
    let std_sock = s.into_std();
    assert!(std_sock.local_addr().is_ok());
}

#[test]
fn a_cancelled_or_timed_out_receive_takes_no_datagram() {
    EventLoop::new().unwrap().block_on(|| {
        let socket = Rc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = socket.local_addr().unwrap();
        // Timed out: nothing taken.
        let s = socket.clone();
        let r = aio::timeout(Duration::from_millis(5), move || {
            let mut buf = [0; 64];
            s.recv_from(&mut buf)
        });
        assert!(r.is_err());
        // Cancelled while blocked: nothing taken.
        let s = socket.clone();
        let h = aio::spawn(move || {
            let mut buf = [0; 64];
            s.recv_from(&mut buf).map(|(n, _)| n)
        });
        aio::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is::<aio::Cancelled>());
        // The next datagram goes to the next receive.
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"kept", addr).unwrap();
        let mut buf = [0; 64];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept");
    });
}
