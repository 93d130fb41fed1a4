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
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixListener;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-u-{}-{}", std::process::id(), line!()));
    /// let listener = UnixListener::bind(&path).unwrap();
    /// assert!(path.exists());
    /// # drop(listener);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        Self::from_std(net::UnixListener::bind(path)?)
    }

    /// Wraps a std listener, making it non-blocking.
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{UnixListener, UnixStream};
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-u-{}-{}", std::process::id(), line!()));
    /// let listener = UnixListener::from_std(std::os::unix::net::UnixListener::bind(&path).unwrap()).unwrap();
    /// let _c = UnixStream::connect(&path).unwrap();
    /// listener.accept().unwrap();
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn from_std(listener: net::UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(UnixListener {
            sock: Socket::new(listener, false),
        })
    }

    /// The std listener (non-blocking).
    ///
    /// ```
    /// use costack::net::UnixListener;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-u-{}-{}", std::process::id(), line!()));
    /// let std_listener = UnixListener::bind(&path).unwrap().into_std();
    /// assert!(std_listener.accept().is_err()); // non-blocking: WouldBlock
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn into_std(self) -> net::UnixListener {
        self.sock.into_inner()
    }

    /// Accepts a connection, waiting for one.
    ///
    /// # Errors
    /// As `accept(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{UnixListener, UnixStream};
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-u-{}-{}", std::process::id(), line!()));
    /// use std::io::{Read, Write};
    ///
    /// let listener = UnixListener::bind(&path).unwrap();
    /// let mut c = UnixStream::connect(&path).unwrap();
    /// let (mut s, _) = listener.accept().unwrap();
    /// c.write_all(b"hi").unwrap();
    /// let mut buf = [0; 2];
    /// s.read_exact(&mut buf).unwrap();
    /// assert_eq!(&buf, b"hi");
    /// # std::fs::remove_file(&path).ok();
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixListener;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-u-{}-{}", std::process::id(), line!()));
    /// let listener = UnixListener::bind(&path).unwrap();
    /// assert_eq!(listener.local_addr().unwrap().as_pathname(), Some(path.as_path()));
    /// # std::fs::remove_file(&path).ok();
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{UnixListener, UnixStream};
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-u-{}-{}", std::process::id(), line!()));
    /// use costack::aio::EventLoop;
    ///
    /// let listener = UnixListener::bind(&path).unwrap();
    /// let p = path.clone();
    /// EventLoop::new().unwrap().block_on(move || {
    ///     let c = UnixStream::connect(&p).unwrap();
    ///     let (s, _) = listener.accept().unwrap();
    ///     # drop((c, s));
    /// });
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        let fd = connect(&RawAddr::unix(path.as_ref())?, None)?;
        Ok(Self::from_nonblocking(net::UnixStream::from(fd)))
    }

    /// A connected pair of streams.
    ///
    /// # Errors
    /// As `socketpair(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixStream;
    ///
    /// use std::io::{Read, Write};
    ///
    /// let (mut a, mut b) = UnixStream::pair().unwrap();
    /// a.write_all(b"ping").unwrap();
    /// let mut buf = [0; 4];
    /// b.read_exact(&mut buf).unwrap();
    /// assert_eq!(&buf, b"ping");
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixStream;
    ///
    /// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    /// let a = UnixStream::from_std(a).unwrap(); // non-blocking now
    /// # drop(a);
    /// ```
    pub fn from_std(stream: net::UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::from_nonblocking(stream))
    }

    /// The std stream (non-blocking).
    ///
    /// ```
    /// use costack::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// let std_stream: std::os::unix::net::UnixStream = a.into_std();
    /// # drop(std_stream);
    /// ```
    pub fn into_std(self) -> net::UnixStream {
        self.sock.into_inner()
    }

    /// Shuts down the read half, write half or both. Coroutines waiting
    /// to read from the stream wake up and read EOF.
    ///
    /// # Errors
    /// As `shutdown(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixStream;
    /// use std::io::Read;
    /// use std::net::Shutdown;
    ///
    /// let (a, mut b) = UnixStream::pair().unwrap();
    /// a.shutdown(Shutdown::Write).unwrap();
    /// assert_eq!(b.read(&mut [0; 4]).unwrap(), 0); // EOF
    /// ```
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.get().shutdown(how)
    }

    /// The local address.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// assert!(a.local_addr().unwrap().is_unnamed()); // a pair has no paths
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    /// As `getpeername(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("costack-doc-us-{}-{}", std::process::id(), line!()));
    /// use costack::net::{UnixListener, UnixStream};
    ///
    /// let _listener = UnixListener::bind(&path).unwrap();
    /// let c = UnixStream::connect(&path).unwrap();
    /// assert_eq!(c.peer_addr().unwrap().as_pathname(), Some(path.as_path()));
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().peer_addr()
    }

    /// Makes reads that wait longer than `timeout` fail with
    /// `ErrorKind::TimedOut` (`None`: wait as long as it takes).
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixStream;
    /// use std::io::{ErrorKind, Read};
    /// use std::time::Duration;
    ///
    /// let (mut a, _b) = UnixStream::pair().unwrap();
    /// a.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    /// assert_eq!(a.read(&mut [0; 4]).unwrap_err().kind(), ErrorKind::TimedOut);
    /// ```
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.read_timeout().set(timeout)
    }

    /// Makes writes that wait longer than `timeout` fail with
    /// `ErrorKind::TimedOut`.
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// a.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    /// assert_eq!(a.write_timeout(), Some(Duration::from_secs(5)));
    /// ```
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.write_timeout().set(timeout)
    }

    /// The read timeout.
    ///
    /// ```
    /// use costack::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// assert_eq!(a.read_timeout(), None);
    /// ```
    pub fn read_timeout(&self) -> Option<Duration> {
        self.sock.read_timeout().get()
    }

    /// The write timeout.
    ///
    /// ```
    /// use costack::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// assert_eq!(a.write_timeout(), None);
    /// ```
    pub fn write_timeout(&self) -> Option<Duration> {
        self.sock.write_timeout().get()
    }

    /// Writes from `bufs`, which may include ranges of a file mapping, in
    /// one `sendmsg`; see
    /// [`TcpStream::send_slices`](super::TcpStream::send_slices).
    ///
    /// ```
    /// use costack::net::{SendSlice, UnixStream};
    /// use std::io::Read;
    ///
    /// let (a, mut b) = UnixStream::pair().unwrap();
    /// assert_eq!(a.send_slices(&[SendSlice::new(b"hi")]).unwrap(), 2);
    /// let mut buf = [0; 2];
    /// b.read_exact(&mut buf).unwrap();
    /// assert_eq!(&buf, b"hi");
    /// ```
    pub fn send_slices(&self, bufs: &[super::SendSlice<'_>]) -> io::Result<usize> {
        self.sock.send_slices(bufs)
    }

    /// Reads into `buf`, which may be a range of a writable file
    /// mapping; see [`TcpStream::recv_slice`](super::TcpStream::recv_slice).
    ///
    /// ```
    /// use costack::net::{RecvSlice, UnixStream};
    /// use std::io::Write;
    ///
    /// let (mut a, b) = UnixStream::pair().unwrap();
    /// a.write_all(b"hi").unwrap();
    /// let mut buf = [0; 2];
    /// assert_eq!(b.recv_slice(&mut RecvSlice::new(&mut buf)).unwrap(), 2);
    /// assert_eq!(&buf, b"hi");
    /// ```
    pub fn recv_slice(&self, buf: &mut super::RecvSlice<'_>) -> io::Result<usize> {
        self.sock.recv_slice(buf)
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
