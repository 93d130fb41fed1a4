//! Thin wrappers over the OS calls of the event loop and the sockets:
//! epoll, poll, the loop's notification descriptor, and sockets. Everything
//! above them is written against these; each system's side is one file
//! ([`unix`], [`windows`]).

use std::io;
use std::time::{Duration, Instant};

#[cfg(unix)]
pub(crate) mod socket;
#[cfg(windows)]
#[path = "socket_windows.rs"]
pub(crate) mod socket;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// The loop's name for a socket (a descriptor on unix).
pub(crate) trait AsRawSock {
    fn raw_sock(&self) -> RawSock;
}

#[cfg(unix)]
impl<T: std::os::fd::AsRawFd> AsRawSock for T {
    fn raw_sock(&self) -> RawSock {
        self.as_raw_fd()
    }
}

#[cfg(windows)]
impl<T: std::os::windows::io::AsRawSocket> AsRawSock for T {
    fn raw_sock(&self) -> RawSock {
        self.as_raw_socket()
    }
}

/// Whether `fd` has one of `events` (or a hang-up or error) right now.
pub(crate) fn is_ready(fd: RawSock, events: i16) -> io::Result<bool> {
    Ok(poll(&mut [pollfd(fd, events)], 0)? > 0)
}

/// Blocks the thread in poll until `fd` has one of `events` or the
/// deadline passes; used when no event loop runs on the thread.
pub(crate) fn poll_blocking(fd: RawSock, events: i16, deadline: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                ms_ceil(left)
            }
        };
        if poll(&mut [pollfd(fd, events)], timeout)? > 0 {
            return Ok(());
        }
    }
}

/// A duration in whole milliseconds, rounded up (so a timer never fires
/// early), clamped to what epoll/poll accept.
pub(crate) fn ms_ceil(d: Duration) -> i32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    ms.min(i32::MAX as u128) as i32
}
