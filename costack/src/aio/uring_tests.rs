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
