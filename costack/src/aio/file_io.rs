//! File I/O for [`fs`](crate::fs): the one place that chooses, call by
//! call, how a file request runs.
//!
//! From a coroutine on a loop, in order: on the loop thread when it cannot
//! wait for a device ([`inline`](super::inline)); through the loop's
//! io_uring; on the thread pool. Elsewhere (a plain thread) the call
//! blocks. Each call from a coroutine is a wait point, also when it
//! completes without waiting: a pending cancellation is delivered first.
//! A request in flight when the cancellation comes is cancelled (io_uring)
//! or awaited (the thread pool), never abandoned with the caller's buffer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use io_uring::{opcode, types};

use super::blocking::run_borrowed;
use super::inline::Inline;
use super::turn::Inner;
use crate::coroutine::cancel;

/// Largest single request (Linux caps one read/write at about 2 GiB).
const MAX_IO: usize = 1 << 30;

/// The loop of the calling coroutine, which it adopts, with a pending
/// cancellation delivered; `None` on a plain thread.
#[track_caller]
fn on_loop() -> Option<Rc<Inner>> {
    let inner = super::io_loop("fs")?;
    inner.adopt(&crate::current().expect("io_loop found a coroutine"));
    cancel::checkpoint();
    Some(inner)
}

/// Runs a blocking call: on the thread pool from a coroutine on a loop,
/// else right here.
pub(crate) fn blocking<T: Send, F: FnOnce() -> T + Send>(f: F) -> T {
    match on_loop() {
        Some(_) => run_borrowed("fs", f),
        None => f(),
    }
}

/// A file's I/O state: how its requests may run inline.
#[derive(Debug, Default)]
pub(crate) struct FileIo {
    inline: Inline,
}

impl FileIo {
    /// Reads at `offset`; returns how many bytes were read.
    pub(crate) fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = buf.len().min(MAX_IO);
        let Some(inner) = on_loop() else {
            return file.read_at(&mut buf[..len], offset);
        };
        let fd = file.as_raw_fd();
        if let Some(r) = self.inline.read(fd, &mut buf[..len], offset) {
            return r;
        }
        if let Some(uring) = inner.uring() {
            let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len as u32)
                .offset(offset)
                .build();
            // SAFETY: `buf` is borrowed mutably for this whole call, and
            // `run` does not return before the kernel is done with it.
            return unsafe { uring.run("fs::File::read_at", e) }.map(|n| n as usize);
        }
        run_borrowed("fs::File::read_at", move || {
            file.read_at(&mut buf[..len], offset)
        })
    }

    /// Writes at `offset`; returns how many bytes were written.
    pub(crate) fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
        let len = buf.len().min(MAX_IO);
        let Some(inner) = on_loop() else {
            return file.write_at(&buf[..len], offset);
        };
        let fd = file.as_raw_fd();
        if let Some(r) = self.inline.write(fd, &buf[..len], offset) {
            return r;
        }
        if let Some(uring) = inner.uring() {
            let e = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len as u32)
                .offset(offset)
                .build();
            // SAFETY: `buf` is borrowed for this whole call, and `run` does
            // not return before the kernel is done with it.
            return unsafe { uring.run("fs::File::write_at", e) }.map(|n| n as usize);
        }
        run_borrowed("fs::File::write_at", move || {
            file.write_at(&buf[..len], offset)
        })
    }

    /// `fdatasync` (`data_only`) or `fsync`.
    pub(crate) fn sync(&self, file: &File, data_only: bool) -> io::Result<()> {
        let std_sync = move || {
            if data_only {
                file.sync_data()
            } else {
                file.sync_all()
            }
        };
        let Some(inner) = on_loop() else {
            return std_sync();
        };
        if let Some(uring) = inner.uring() {
            let flags = if data_only {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            let e = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                .flags(flags)
                .build();
            // SAFETY: the request refers to no memory.
            return unsafe { uring.run("fs::File::sync_data", e) }.map(drop);
        }
        run_borrowed("fs::File::sync_data", std_sync)
    }

    /// `fallocate(2)` with `mode`.
    pub(crate) fn fallocate(
        &self,
        file: &File,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let fd = file.as_raw_fd();
        let Some(inner) = on_loop() else {
            return fallocate(fd, mode, offset, len);
        };
        if inner.uring_fallocate() {
            if let Some(uring) = inner.uring() {
                let e = opcode::Fallocate::new(types::Fd(fd), len)
                    .offset(offset)
                    .mode(mode)
                    .build();
                // SAFETY: the request refers to no memory.
                return unsafe { uring.run("fs::File::fallocate", e) }.map(drop);
            }
        }
        run_borrowed("fs::File::fallocate", move || {
            fallocate(fd, mode, offset, len)
        })
    }
}

/// `fallocate(2)` on `fd`, here.
fn fallocate(fd: i32, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let off = |v: u64| {
        libc::off_t::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
    };
    let (offset, len) = (off(offset)?, off(len)?);
    loop {
        // SAFETY: fallocate on a descriptor the caller keeps open; it
        // touches no memory of ours.
        match crate::sys::cvt(unsafe { libc::fallocate(fd, mode, offset, len) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r.map(drop),
        }
    }
}
