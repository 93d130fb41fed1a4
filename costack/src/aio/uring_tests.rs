//! A request in flight when its coroutine is cancelled is cancelled in the
//! kernel and awaited: it consumes nothing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use crate::aio::{self, Backend, Cancelled, EventLoop};

#[test]
fn a_cancelled_read_consumes_no_data() {
    let Ok(lp) = EventLoop::with_backend(Backend::IoUring) else {
        eprintln!("skipping: no io_uring here");
        return;
    };
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    let fd = reader.as_raw_fd();
    lp.block_on(move || {
        let h = aio::spawn(move || {
            let inner = aio::context("test");
            let uring = inner.uring().expect("the loop has a ring");
            let mut buf = [0u8; 16];
            // Offset -1: the pipe's current position (it has none).
            let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
                .offset(u64::MAX)
                .build();
            // SAFETY: `buf` outlives the call, which waits for the kernel.
            let r = unsafe { uring.run("test read", e) };
            r.map(|n| buf[..n as usize].to_vec())
        });
        aio::sleep(std::time::Duration::from_millis(5));
        assert!(!h.is_finished(), "the read waits for data");
        h.cancel();
        let p = h.join().unwrap_err();
        assert!(p.is::<Cancelled>());
    });
    writer.write_all(b"intact").unwrap();
    drop(writer);
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"intact");
}

#[test]
fn stream_io_goes_through_the_ring_on_the_io_uring_backend_only() {
    use crate::net::{TcpListener, TcpStream};
    let pending_read_is_on_the_ring = |lp: EventLoop| {
        lp.block_on(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (b, _) = listener.accept().unwrap();
            let reader = aio::spawn(move || {
                let mut buf = [0u8; 4];
                (&a).read_exact(&mut buf).unwrap();
                buf
            });
            aio::sleep(std::time::Duration::from_millis(5));
            let inner = aio::context("test");
            let on_ring = inner.uring().is_some_and(|u| u.busy());
            (&b).write_all(b"ping").unwrap();
            assert_eq!(&reader.join().unwrap(), b"ping");
            assert!(
                !inner.uring().is_some_and(|u| u.busy()),
                "nothing left in flight"
            );
            on_ring
        })
    };
    if let Ok(lp) = EventLoop::with_backend(Backend::IoUring) {
        assert!(
            pending_read_is_on_the_ring(lp),
            "the read is a request in the kernel"
        );
    } else {
        eprintln!("skipping the io_uring half: no io_uring here");
    }
    assert!(!pending_read_is_on_the_ring(
        EventLoop::with_backend(Backend::Epoll).unwrap()
    ));
}
