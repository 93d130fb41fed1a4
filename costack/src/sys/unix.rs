//! The unix side of [`sys`](super): libc calls.

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

#[cfg(target_os = "linux")]
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(op)` for `fd` with `events`; the event's data is `data`.
#[cfg(target_os = "linux")]
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

/// Waits for events, at most `timeout` (`None`: forever). EINTR counts as
/// no events. Sub-millisecond timeouts are kept where the kernel has
/// `epoll_pwait2` (Linux 5.11); elsewhere they round up to whole
/// milliseconds, so a timer never fires early.
#[cfg(target_os = "linux")]
pub(crate) fn epoll_wait(
    ep: &OwnedFd,
    events: &mut Vec<libc::epoll_event>,
    timeout: Option<std::time::Duration>,
) -> io::Result<()> {
    events.clear();
    let (ptr, cap) = (events.as_mut_ptr(), events.capacity() as i32);
    let n = match timeout {
        Some(t) if !t.is_zero() && t.subsec_nanos() % 1_000_000 != 0 && has_epoll_pwait2() => {
            precise_timer_slack();
            let ts = libc::timespec {
                tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
            };
            // SAFETY: the kernel writes at most `cap` entries into the
            // vector's spare capacity and reads the timespec; no signal
            // mask is given.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    ep.as_raw_fd(),
                    ptr,
                    cap,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                EPOLL_PWAIT2.store(NO, std::sync::atomic::Ordering::Relaxed);
                return epoll_wait(ep, events, timeout);
            }
            n as i32
        }
        // SAFETY: as above, with a timeout in milliseconds.
        _ => unsafe {
            libc::epoll_wait(ep.as_raw_fd(), ptr, cap, timeout.map_or(-1, super::ms_ceil))
        },
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

/// Sets the calling thread's timer slack to 1 ns, once per thread, before
/// its first wait with a deadline finer than a millisecond. Linux lets a
/// thread's timed waits end up to its slack late (50 µs by default) to
/// batch wake-ups; a loop whose coroutines sleep for a millisecond would
/// lose up to 5 % to that. QEMU's timers ask the same of the whole
/// process (`PR_SET_TIMERSLACK`, 1 ns).
#[cfg(target_os = "linux")]
fn precise_timer_slack() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if cfg!(miri) || DONE.with(|d| d.replace(true)) {
        return;
    }
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory of
    // ours; a failure leaves the default slack, which is only less precise.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Whether `epoll_pwait2` may be tried: not known to be missing, and not
/// under Miri (which has no raw system calls).
#[cfg(target_os = "linux")]
fn has_epoll_pwait2() -> bool {
    !cfg!(miri) && EPOLL_PWAIT2.load(std::sync::atomic::Ordering::Relaxed) != NO
}

#[cfg(target_os = "linux")]
static EPOLL_PWAIT2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
#[cfg(target_os = "linux")]
const NO: u8 = 1;

#[cfg(target_os = "linux")]
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resets an eventfd counter to zero.
#[cfg(target_os = "linux")]
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut buf: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN (already zero) is fine.
    unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
}

/// A descriptor that becomes readable when another thread notifies the
/// loop (QEMU's EventNotifier): an eventfd for the epoll backends, a pipe
/// for poll(2), so the pipe that other unix systems use is the one the
/// poll backend runs on Linux too.
pub(crate) struct Notifier {
    read: OwnedFd,
    /// The pipe's write end; `None` for an eventfd (one fd for both).
    write: Option<OwnedFd>,
}

impl Notifier {
    #[cfg(target_os = "linux")]
    pub(crate) fn eventfd() -> io::Result<Notifier> {
        Ok(Notifier {
            read: eventfd()?,
            write: None,
        })
    }

    /// A pipe: what every unix has.
    pub(crate) fn new() -> io::Result<Notifier> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid out-array of two ints.
        cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
        // SAFETY: both were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            set_nonblocking_cloexec(fd.as_raw_fd())?;
        }
        Ok(Notifier {
            read,
            write: Some(write),
        })
    }

    /// The descriptor the loop watches for reads.
    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Makes the descriptor readable (never blocks: a full pipe or an
    /// eventfd counter near its maximum is readable already, which is all
    /// a notification needs).
    pub(crate) fn notify(&self) {
        let (fd, buf) = match &self.write {
            Some(w) => (w.as_raw_fd(), &[1u8][..]),
            None => (self.read.as_raw_fd(), &1u64.to_ne_bytes()[..]),
        };
        // SAFETY: writes `buf.len()` bytes from a live buffer; failures
        // leave the fd readable, as said above.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    }

    /// Consumes pending notifications, so the descriptor stops being
    /// readable.
    pub(crate) fn drain(&self) {
        let fd = self.read.as_raw_fd();
        if self.write.is_none() {
            let mut counter = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer; EAGAIN (already
            // zero) is fine.
            unsafe { libc::read(fd, counter.as_mut_ptr().cast(), 8) };
            return;
        }
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live buffer of its length; stops at EAGAIN
        // (empty) or a short read.
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } == buf.len() as isize {}
    }
}

/// Sets `O_NONBLOCK` and `FD_CLOEXEC` on `fd` (for calls that cannot set
/// them at creation everywhere).
pub(crate) fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; reads and sets flags.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
        let fd_fl = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, fd_fl | libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// A socket or other descriptor, as the loop names it.
pub(crate) type RawSock = RawFd;

/// The number of a borrowed descriptor.
pub(crate) fn raw_sock(fd: std::os::fd::BorrowedFd<'_>) -> RawSock {
    fd.as_raw_fd()
}

/// One entry of a [`poll`] set.
pub(crate) type PollFd = libc::pollfd;

pub(crate) use libc::{POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI};
/// What a wait for reading asks poll for.
pub(crate) const POLL_READ: i16 = POLLIN | POLLPRI;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use libc::POLLRDHUP;

/// A [`poll`] entry asking `fd` for `events`.
pub(crate) fn pollfd(fd: RawSock, events: libc::c_short) -> PollFd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// poll(2) over `fds`, at most `timeout_ms` (-1: forever); returns how
/// many have events. EINTR counts as none.
pub(crate) fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
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

/// Lets other threads runnable on this CPU run first (`sched_yield`);
/// returns at once if there are none.
pub(crate) fn yield_cpu() {
    // SAFETY: no arguments, no memory touched; it cannot fail.
    unsafe { libc::sched_yield() };
}

/// How many times the calling thread was switched out while runnable
/// (preempted, or after yielding to another thread): `ru_nivcsw` of
/// `getrusage(RUSAGE_THREAD)`. macOS has no per-thread count: there it
/// is the process's, which still changes when this thread is preempted.
pub(crate) fn involuntary_switches() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    const WHO: libc::c_int = libc::RUSAGE_THREAD;
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    const WHO: libc::c_int = libc::RUSAGE_SELF;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage for the kernel to fill; the
    // call cannot fail with a valid pointer and a valid `who`.
    unsafe { libc::getrusage(WHO, &mut ru) };
    ru.ru_nivcsw as u64
}

/// A `msghdr` that sends `iovecs` (no address, no control data). It points
/// into `iovecs`, which must outlive its use.
pub(crate) fn msghdr(iovecs: &[libc::iovec]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid: no name, no control data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_ptr().cast_mut();
    msg.msg_iovlen = iovecs.len() as _;
    msg
}
