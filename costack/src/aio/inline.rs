//! Reads and writes done right on the loop thread when they cannot wait
//! for a disk.
//!
//! A read of data in the page cache is a memory copy. Through io_uring it
//! costs a submission, an eventfd signal, a trip round the loop and a
//! completion besides; through the thread pool, two thread switches. Worse,
//! io_uring hands I/O on files without non-blocking support (tmpfs) to a
//! kernel worker thread. So a [`File`](super::File) used from a coroutine
//! on a loop first tries the call on the loop thread, where it is known
//! not to wait for a device:
//!
//! * files on memory file systems (tmpfs, ramfs): plain `pread`/`pwrite`,
//!   the data being in memory (tmpfs supports no `RWF_NOWAIT`). A tmpfs page
//!   swapped out makes the loop wait for the swap-in, as a page fault on
//!   any memory would;
//! * other files: `preadv2`/`pwritev2` with `RWF_NOWAIT`, which fail with
//!   `EAGAIN` instead of waiting; the request then goes to io_uring or the
//!   thread pool as before. A file whose file system does not support the
//!   flag (`EOPNOTSUPP`), or a kernel without `preadv2`, is not asked again
//!   for that direction;
//! * never for `O_DIRECT` files, whose `RWF_NOWAIT` I/O still waits for the
//!   device.
//!
//! The results are those of the other paths. What changes is that a call
//! completed here does not yield: so that a coroutine doing nothing but
//! such I/O cannot keep the loop from its other work, each call charges
//! the loop's [budget](super::budget) (one unit plus one per 64 KiB).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use super::budget;

/// Not decided yet (first I/O on the loop decides).
const UNKNOWN: u8 = 0;
/// Memory file system: plain positional I/O.
const MEMORY: u8 = 1;
/// `RWF_NOWAIT` first.
const NOWAIT: u8 = 2;
/// Never inline.
const NEVER: u8 = 3;

/// `statfs` magic numbers of the memory file systems (tmpfs, ramfs).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6_u32 as i64;

/// How a file's reads and writes may be done inline.
#[derive(Debug, Default)]
pub(crate) struct Inline {
    read: AtomicU8,
    write: AtomicU8,
}

/// How `fd` may be read or written inline.
fn classify(fd: RawFd) -> u8 {
    // SAFETY: fcntl(F_GETFL) on a borrowed fd reads its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || flags & libc::O_DIRECT != 0 {
        return NEVER;
    }
    match on_memory_fs(fd) {
        Some(true) => MEMORY,
        Some(false) => NOWAIT,
        None => NEVER,
    }
}

/// Whether `fd`'s file lives on a memory file system (tmpfs, ramfs), whose
/// I/O and page faults never wait for a device; `None` if `fstatfs` fails.
pub(crate) fn on_memory_fs(fd: RawFd) -> Option<bool> {
    // SAFETY: statfs is plain data (all zeroes valid) and `fstatfs` writes
    // it whole on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-buffer; a bad fd is an error.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    Some(matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC))
}

impl Inline {
    fn mode(&self, slot: &AtomicU8, fd: RawFd) -> u8 {
        match slot.load(Ordering::Relaxed) {
            UNKNOWN => {
                let m = classify(fd);
                // Both directions share the file's classification; a
                // direction may later drop to NEVER on its own.
                let _ =
                    self.read
                        .compare_exchange(UNKNOWN, m, Ordering::Relaxed, Ordering::Relaxed);
                let _ =
                    self.write
                        .compare_exchange(UNKNOWN, m, Ordering::Relaxed, Ordering::Relaxed);
                slot.load(Ordering::Relaxed)
            }
            m => m,
        }
    }

    /// Reads inline if that cannot wait for a device; `None` if the caller
    /// must take the asynchronous path.
    pub(crate) fn read(&self, fd: RawFd, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
        let mode = self.mode(&self.read, fd);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        self.attempt(&self.read, mode, buf.len(), offset, |off, flags| {
            // SAFETY: `iov` describes `buf`, borrowed mutably for this call.
            unsafe { libc::preadv2(fd, &iov, 1, off, flags) }
        })
    }

    /// Writes inline if that cannot wait for a device; `None` if the
    /// caller must take the asynchronous path.
    pub(crate) fn write(&self, fd: RawFd, buf: &[u8], offset: u64) -> Option<io::Result<usize>> {
        let mode = self.mode(&self.write, fd);
        let iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        self.attempt(&self.write, mode, buf.len(), offset, |off, flags| {
            // SAFETY: `iov` describes `buf`, which the kernel only reads.
            unsafe { libc::pwritev2(fd, &iov, 1, off, flags) }
        })
    }

    fn attempt(
        &self,
        slot: &AtomicU8,
        mode: u8,
        len: usize,
        offset: u64,
        call: impl Fn(libc::off_t, libc::c_int) -> libc::ssize_t,
    ) -> Option<io::Result<usize>> {
        let flags = match mode {
            MEMORY => 0,
            NOWAIT => libc::RWF_NOWAIT,
            _ => return None,
        };
        let off = libc::off_t::try_from(offset).ok()?;
        budget::charge(1 + (len >> 16).min(budget::BUDGET as usize) as u32);
        let n = call(off, flags);
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Would wait for the device (or a signal came): go async.
            Some(libc::EAGAIN) | Some(libc::EINTR) => None,
            // No preadv2 (kernels before 4.6), or no RWF_NOWAIT here (or
            // an error the asynchronous path will report in its turn):
            // stop trying for this file and direction.
            Some(libc::ENOSYS) => {
                slot.store(NEVER, Ordering::Relaxed);
                None
            }
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == NOWAIT => {
                slot.store(NEVER, Ordering::Relaxed);
                None
            }
            _ => Some(Err(e)),
        }
    }
}
