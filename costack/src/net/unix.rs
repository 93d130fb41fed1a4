//! Unix-domain stream sockets.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{self, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::socket::Socket;
use super::{connect, impl_fd, impl_stream_io};
use crate::aio::io::Direction;
use crate::sys::socket::RawAddr;

/// A Unix-domain listening socket whose [`accept`](UnixListener::accept)
/// yields to the event loop (see the [module documentation](super)).
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use costack::net::{UnixListener, UnixStream};
/// use std::io::{Read, Write};
///
/// let path = std::env::temp_dir().join(format!("costack-doc-{}.sock", std::process::id()));
/// let p = path.clone();
/// EventLoop::new().unwrap().block_on(move || {
///     let listener = UnixListener::bind(&p).unwrap();
///     let client = aio::spawn(move || UnixStream::connect(&p).unwrap().write_all(b"hi").unwrap());
///     let (mut conn, _) = listener.accept().unwrap();
///     let mut buf = String::new();
///     conn.read_to_string(&mut buf).unwrap();
///     assert_eq!(buf, "hi");
///     client.join().unwrap();
/// });
/// std::fs::remove_file(path).unwrap();
/// ```
pub struct UnixListener {
    sock: Socket<net::UnixListener>,
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
            sock: Socket::new(listener, false),
        })
    }

    /// The std listener (non-blocking).
    pub fn into_std(self) -> net::UnixListener {
        self.sock.into_inner()
    }

    /// Accepts a connection, waiting for one.
    ///
    /// # Errors
    /// As `accept(2)`.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, addr) = self
            .sock
            .wait_for_untimed(Direction::Read, |l| l.accept())?;
        Ok((UnixStream::from_std(s)?, addr))
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().local_addr()
    }
}

impl_fd!(UnixListener);

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("addr", &self.sock.get().local_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

/// A Unix-domain stream whose reads, writes and connect yield to the
/// event loop (see the [module documentation](super)).
///
/// `Read` and `Write` are implemented for `UnixStream` and `&UnixStream`.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use costack::net::UnixStream;
/// use std::io::{Read, Write};
///
/// EventLoop::new().unwrap().block_on(|| {
///     let (mut a, mut b) = UnixStream::pair().unwrap();
///     let echo = aio::spawn(move || {
///         let mut buf = [0; 4];
///         b.read_exact(&mut buf).unwrap(); // yields until the bytes are there
///         b.write_all(&buf).unwrap();
///     });
///     a.write_all(b"ping").unwrap();
///     let mut back = [0; 4];
///     a.read_exact(&mut back).unwrap();
///     assert_eq!(&back, b"ping");
///     echo.join().unwrap();
/// });
/// ```
pub struct UnixStream {
    sock: Socket<net::UnixStream>,
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
            sock: Socket::new(inner, false),
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
        self.sock.into_inner()
    }

    /// Shuts down the read half, write half or both. Coroutines waiting
    /// to read from the stream wake up and read EOF.
    ///
    /// # Errors
    /// As `shutdown(2)`.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.get().shutdown(how)
    }

    /// The local address.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    /// As `getpeername(2)`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().peer_addr()
    }

    /// Makes reads that wait longer than `timeout` fail with
    /// `ErrorKind::TimedOut` (`None`: wait as long as it takes).
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.read_timeout().set(timeout)
    }

    /// Makes writes that wait longer than `timeout` fail with
    /// `ErrorKind::TimedOut`.
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.write_timeout().set(timeout)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.sock.read_timeout().get()
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.sock.write_timeout().get()
    }
}

impl_stream_io!(UnixStream);

impl_fd!(UnixStream);

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream")
            .field("local", &self.sock.get().local_addr().ok())
            .field("peer", &self.sock.get().peer_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}
