//! Sockets whose calls look blocking but, in a coroutine on an event
//! loop, yield to the loop instead of blocking the thread.
//!
//! The sockets are non-blocking underneath. A call that would block
//! (`EAGAIN`) waits for readiness with the loop's epoll and retries. On a
//! loop on the io_uring backend ([`Backend::IoUring`](crate::aio::Backend),
//! Linux), stream sockets' reads and writes are io_uring requests instead,
//! which the loop submits together once per turn; a read or write that
//! is cancelled, times out or is unwound meanwhile is taken back from the
//! kernel before the call returns, so no data is lost. On a
//! thread with no event loop running (or in a coroutine entered outside
//! any loop), the same calls block the thread in `poll(2)`, like std's:
//! the types work everywhere, and never block a loop.
//!
//! Reads and writes (vectored writes too: one `writev` for several
//! buffers) are implemented for the types and for shared references to
//! them, so one coroutine can read while another writes the
//! same stream. Timeouts set with `set_read_timeout`/`set_write_timeout`
//! make a call that waits longer fail with `ErrorKind::TimedOut`.
//!
//! A stream shut down (by [`TcpStream::shutdown`] from another coroutine,
//! or by its peer) wakes the coroutines waiting on it: their reads return
//! EOF, their writes an error.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use costack::net::{TcpListener, TcpStream};
//! use std::io::{Read, Write};
//!
//! EventLoop::new().unwrap().block_on(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     aio::spawn(move || {
//!         let (mut s, _) = listener.accept().unwrap();
//!         let mut buf = [0; 5];
//!         s.read_exact(&mut buf).unwrap();
//!         s.write_all(&buf).unwrap();
//!     });
//!     let mut c = TcpStream::connect(addr).unwrap();
//!     c.write_all(b"hello").unwrap();
//!     let mut buf = [0; 5];
//!     c.read_exact(&mut buf).unwrap();
//!     assert_eq!(&buf, b"hello");
//! });
//! ```

#[cfg(unix)]
mod recv_slice;
#[cfg(unix)]
mod send_slice;
mod socket;
mod tcp;
mod udp;
#[cfg(unix)]
mod unix;

#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub use recv_slice::RecvSlice;
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub use send_slice::SendSlice;
pub use tcp::{ListenOptions, TcpListener, TcpStream};
pub use udp::UdpSocket;
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub use unix::{UnixListener, UnixStream};

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::aio::io::{wait_fd, Direction};
use crate::sys::socket::{start_connect, stream_socket, take_error, Connect, OwnedSock, RawAddr};
use crate::sys::{AsRawSock, RawSock};

/// Waits until `fd` is ready for `dir` (for sockets not yet wrapped):
/// on the loop from a coroutine on one, else by blocking the thread.
fn wait(fd: RawSock, dir: Direction, deadline: Option<Instant>) -> io::Result<()> {
    if let Some(inner) = crate::aio::io_loop("net") {
        return wait_fd(&inner, fd, dir, deadline);
    }
    crate::sys::poll_blocking(fd, dir.poll_events(), deadline)
}

/// A new non-blocking stream socket of `addr`'s family, connected to it;
/// waits for the connection (or `timeout`) like the other calls.
pub(crate) fn connect(addr: &RawAddr, timeout: Option<Duration>) -> io::Result<OwnedSock> {
    let fd = stream_socket(addr.family())?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match start_connect(&fd, addr)? {
            Connect::Done => return Ok(fd),
            Connect::InProgress => break,
            Connect::Busy => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let pause = Duration::from_millis(1);
                if crate::aio::io_loop("net::connect").is_some() {
                    crate::aio::sleep(pause);
                } else {
                    std::thread::sleep(pause);
                }
            }
        }
    }
    wait(fd.raw_sock(), Direction::Write, deadline)?;
    take_error(&fd)?;
    Ok(fd)
}

/// A read or write timeout, shared by a stream's users (0 = none).
#[derive(Debug, Default)]
pub(crate) struct Timeout(AtomicU64);

impl Timeout {
    pub(crate) fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sets the timeout; like std, a zero duration is an error.
    pub(crate) fn set(&self, t: Option<Duration>) -> io::Result<()> {
        let ns = match t {
            None => 0,
            Some(d) if d.is_zero() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot set a 0 duration timeout",
                ))
            }
            Some(d) => d.as_nanos().clamp(1, u64::MAX as u128) as u64,
        };
        self.0.store(ns, Ordering::Relaxed);
        Ok(())
    }
}

/// The descriptor traits of a socket type with a `sock` field (a
/// [`Socket`](socket::Socket)): giving the descriptor away deregisters it
/// from its loop first.
macro_rules! impl_fd {
    ($t:ty) => {
        #[cfg(unix)]
        impl std::os::fd::AsFd for $t {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self.sock.get())
            }
        }

        #[cfg(unix)]
        impl std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(self.sock.get())
            }
        }

        #[cfg(unix)]
        impl std::os::fd::IntoRawFd for $t {
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(self.sock.into_inner())
            }
        }

        #[cfg(unix)]
        impl From<$t> for std::os::fd::OwnedFd {
            fn from(s: $t) -> std::os::fd::OwnedFd {
                s.sock.into_inner().into()
            }
        }

        #[cfg(windows)]
        impl std::os::windows::io::AsSocket for $t {
            fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
                std::os::windows::io::AsSocket::as_socket(self.sock.get())
            }
        }

        #[cfg(windows)]
        impl std::os::windows::io::AsRawSocket for $t {
            fn as_raw_socket(&self) -> std::os::windows::io::RawSocket {
                std::os::windows::io::AsRawSocket::as_raw_socket(self.sock.get())
            }
        }

        #[cfg(windows)]
        impl std::os::windows::io::IntoRawSocket for $t {
            fn into_raw_socket(self) -> std::os::windows::io::RawSocket {
                std::os::windows::io::IntoRawSocket::into_raw_socket(self.sock.into_inner())
            }
        }

        #[cfg(windows)]
        impl From<$t> for std::os::windows::io::OwnedSocket {
            fn from(s: $t) -> std::os::windows::io::OwnedSocket {
                s.sock.into_inner().into()
            }
        }
    };
}

/// Implements `Read` and `Write` for a stream type and its shared
/// reference, through its `sock` field.
macro_rules! impl_stream_io {
    ($t:ty) => {
        impl std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.sock.read(buf)
            }
        }
        impl std::io::Read for &$t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.sock.read(buf)
            }
        }
        impl std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.sock.write(buf)
            }
            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                self.sock.write_vectored(bufs)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl std::io::Write for &$t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.sock.write(buf)
            }
            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                self.sock.write_vectored(bufs)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use impl_fd;
pub(crate) use impl_stream_io;
