//! Unix-domain stream sockets.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{self, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::sys::{connect, RawAddr};
use super::{impl_fd, impl_stream_io, retry, Timeout};
use crate::aio::io::{Direction, Registration};

/// A Unix-domain listening socket whose [`accept`](UnixListener::accept)
/// yields to the event loop (see the [module documentation](super)).
pub struct UnixListener {
    // Declared first: deregisters before the socket closes.
    reg: Registration,
    inner: net::UnixListener,
}

impl UnixListener {
    /// Binds a listening socket to `path` (which must not exist).
    ///
    /// # Errors
    /// As `std::os::unix::net::UnixListener::bind`.
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        Self::from_std(net::UnixListener::bind(path)?)
    }

    /// Wraps a std listener, making it non-blocking.
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(listener: net::UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(UnixListener {
            reg: Registration::default(),
            inner: listener,
        })
    }

    /// The std listener (non-blocking).
    pub fn into_std(self) -> net::UnixListener {
        drop(self.reg);
        self.inner
    }

    /// Accepts a connection, waiting for one.
    ///
    /// # Errors
    /// As `accept(2)`.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, addr) = retry(&self.reg, self.as_raw_fd(), Direction::Read, None, || {
            self.inner.accept()
        })?;
        Ok((UnixStream::from_std(s)?, addr))
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl_fd!(UnixListener);

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("addr", &self.inner.local_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

/// A Unix-domain stream whose reads, writes and connect yield to the
/// event loop (see the [module documentation](super)).
///
/// `Read` and `Write` are implemented for `UnixStream` and `&UnixStream`.
pub struct UnixStream {
    // Declared first: deregisters before the socket closes.
    reg: Registration,
    inner: net::UnixStream,
    read_timeout: Timeout,
    write_timeout: Timeout,
}

impl UnixStream {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// As `connect(2)`; `InvalidInput` for a path too long for a socket.
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        let fd = connect(&RawAddr::unix(path.as_ref())?, None)?;
        Ok(Self::from_nonblocking(net::UnixStream::from(fd)))
    }

    /// A connected pair of streams.
    ///
    /// # Errors
    /// As `socketpair(2)`.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = net::UnixStream::pair()?;
        Ok((Self::from_std(a)?, Self::from_std(b)?))
    }

    fn from_nonblocking(inner: net::UnixStream) -> UnixStream {
        UnixStream {
            reg: Registration::default(),
            inner,
            read_timeout: Timeout::default(),
            write_timeout: Timeout::default(),
        }
    }

    /// Wraps a std stream, making it non-blocking.
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    pub fn from_std(stream: net::UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::from_nonblocking(stream))
    }

    /// The std stream (non-blocking).
    pub fn into_std(self) -> net::UnixStream {
        drop(self.reg);
        self.inner
    }

    /// Shuts down the read half, write half or both. Coroutines waiting
    /// to read from the stream wake up and read EOF.
    ///
    /// # Errors
    /// As `shutdown(2)`.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// The local address.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    /// As `getpeername(2)`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Makes reads that wait longer than `timeout` fail with
    /// `ErrorKind::TimedOut` (`None`: wait as long as it takes).
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout)
    }

    /// Makes writes that wait longer than `timeout` fail with
    /// `ErrorKind::TimedOut`.
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(timeout)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout.get()
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.write_timeout.get()
    }

    fn read_impl(&self, buf: &mut [u8]) -> io::Result<usize> {
        // Not `retry_read`: a short read may leave data queued here (see
        // `ReadState`), so every read tries `recv` first.
        retry(
            &self.reg,
            self.as_raw_fd(),
            Direction::Read,
            self.read_timeout.get(),
            || (&self.inner).read(buf),
        )
    }

    fn write_impl(&self, buf: &[u8]) -> io::Result<usize> {
        retry(
            &self.reg,
            self.as_raw_fd(),
            Direction::Write,
            self.write_timeout.get(),
            || (&self.inner).write(buf),
        )
    }

    fn write_vectored_impl(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        retry(
            &self.reg,
            self.as_raw_fd(),
            Direction::Write,
            self.write_timeout.get(),
            || (&self.inner).write_vectored(bufs),
        )
    }
}

impl_stream_io!(UnixStream);

impl_fd!(UnixStream);

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream")
            .field("local", &self.inner.local_addr().ok())
            .field("peer", &self.inner.peer_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}
