//! Thin wrappers over the OS calls the loop makes: epoll, poll and eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Turns a `-1` return into the thread's `errno`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(op)` for `fd` with `events`; the event's data is `data`.
pub(crate) fn epoll_ctl(
    ep: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call; a
    // bad fd is reported as an error, not undefined behaviour.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) }).map(drop)
}

/// Waits for events, at most `timeout_ms` (-1: forever). EINTR counts as
/// no events.
pub(crate) fn epoll_wait(
    ep: &OwnedFd,
    events: &mut Vec<libc::epoll_event>,
    timeout_ms: i32,
) -> io::Result<()> {
    events.clear();
    // SAFETY: the kernel writes at most `capacity` entries into the vector's
    // spare capacity; we set the length to what it reports.
    let n = unsafe {
        libc::epoll_wait(
            ep.as_raw_fd(),
            events.as_mut_ptr(),
            events.capacity() as i32,
            timeout_ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: the first `n` entries were initialised by the kernel.
    unsafe { events.set_len(n as usize) };
    Ok(())
}

pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd counter (never blocks: the counter cannot
/// overflow from our few writes).
pub(crate) fn eventfd_write(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. A failure (EAGAIN at a
    // counter near u64::MAX) still leaves the fd readable, which is all a
    // notification needs.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd counter to zero.
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut buf: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN (already zero) is fine.
    unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
}

/// poll(2) over `fds`, at most `timeout_ms` (-1: forever); returns how
/// many have events. EINTR counts as none.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a live, writable slice of pollfd for the kernel to
    // fill in `revents`; its length is passed with it.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// Whether `fd` has one of `events` (or a hang-up or error) right now.
pub(crate) fn is_ready(fd: RawFd, events: libc::c_short) -> io::Result<bool> {
    let mut pfd = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    Ok(poll(&mut pfd, 0)? > 0)
}

/// Blocks the thread in poll(2) until `fd` has one of `events` or the
/// deadline passes; used when no event loop runs on the thread.
pub(crate) fn poll_blocking(
    fd: RawFd,
    events: libc::c_short,
    deadline: Option<std::time::Instant>,
) -> io::Result<()> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                ms_ceil(left)
            }
        };
        let mut pfd = [libc::pollfd {
            fd,
            events,
            revents: 0,
        }];
        if poll(&mut pfd, timeout)? > 0 {
            return Ok(());
        }
    }
}

/// A duration in whole milliseconds, rounded up (so a timer never fires
/// early), clamped to what epoll/poll accept.
pub(crate) fn ms_ceil(d: std::time::Duration) -> i32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    ms.min(i32::MAX as u128) as i32
}

/// Lets other threads runnable on this CPU run first (`sched_yield`);
/// returns at once if there are none.
pub(crate) fn yield_cpu() {
    // SAFETY: no arguments, no memory touched; it cannot fail on Linux.
    unsafe { libc::sched_yield() };
}

/// How many times the calling thread was switched out while runnable
/// (preempted, or after yielding to another thread): `ru_nivcsw` of
/// `getrusage(RUSAGE_THREAD)`.
pub(crate) fn involuntary_switches() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage for the kernel to fill; the
    // call cannot fail with a valid pointer and RUSAGE_THREAD.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_nivcsw as u64
}
