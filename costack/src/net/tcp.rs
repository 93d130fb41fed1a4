//! TCP sockets.

use std::fmt;
use std::io;
use std::net::{self, Shutdown, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::socket::Socket;
use super::{connect, impl_fd, impl_stream_io};
use crate::aio::io::Direction;
use crate::sys::socket::{listen, RawAddr};
use crate::sys::AsRawSock;

/// A TCP listening socket whose [`accept`](TcpListener::accept) yields to
/// the event loop (see the [module documentation](super)).
///
/// `Send + Sync`: a listener may be created on one thread and moved to
/// another; accept calls then use that thread's loop.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use costack::net::{TcpListener, TcpStream};
/// use std::io::{Read, Write};
///
/// EventLoop::new().unwrap().block_on(|| {
///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = listener.local_addr().unwrap();
///     let client = aio::spawn(move || {
///         let mut s = TcpStream::connect(addr).unwrap();
///         s.write_all(b"hi").unwrap();
///     });
///     let (mut conn, peer) = listener.accept().unwrap(); // yields until a client comes
///     assert!(peer.ip().is_loopback());
///     let mut buf = String::new();
///     conn.read_to_string(&mut buf).unwrap();
///     assert_eq!(buf, "hi");
///     client.join().unwrap();
/// });
/// ```
pub struct TcpListener {
    sock: Socket<net::TcpListener>,
}

impl TcpListener {
    /// Binds a listening socket to the first of `addr`'s addresses that
    /// works (as std; resolving a host name may block the thread).
    ///
    /// # Errors
    /// As `std::net::TcpListener::bind`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::TcpListener;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap(); // port 0: any free one
    /// assert!(listener.local_addr().unwrap().port() > 0);
    /// ```
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<Self> {
        Self::from_std(net::TcpListener::bind(addr)?)
    }

    /// Binds a listening socket with `options` (a backlog, `SO_REUSEPORT`)
    /// to the first of `addr`'s addresses that works.
    ///
    /// With [`reuse_port`](ListenOptions::reuse_port), several listeners
    /// (one per event loop, typically one loop per core) bind the same
    /// address and the kernel spreads incoming connections among them.
    ///
    /// ```
    /// use costack::net::{ListenOptions, TcpListener};
    ///
    /// let opts = ListenOptions::new().reuse_port(true).backlog(4096);
    /// let a = TcpListener::bind_with("127.0.0.1:0", &opts).unwrap();
    /// let b = TcpListener::bind_with(a.local_addr().unwrap(), &opts).unwrap();
    /// assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    /// ```
    ///
    /// # Errors
    /// As `socket(2)`, `setsockopt(2)`, `bind(2)` and `listen(2)`; the last
    /// address's error if none works.
    pub fn bind_with<A: ToSocketAddrs>(addr: A, options: &ListenOptions) -> io::Result<Self> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match listen(&RawAddr::inet(&a), options.backlog, options.reuse_port) {
                Ok(fd) => return Self::from_std(net::TcpListener::from(fd)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no addresses to bind to")
        }))
    }

    /// Wraps a std listener, making it non-blocking.
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let listener = TcpListener::from_std(std_listener).unwrap();
    /// let _c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// listener.accept().unwrap();
    /// ```
    pub fn from_std(listener: net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            sock: Socket::new(listener, false),
        })
    }

    /// The std listener (non-blocking).
    ///
    /// ```
    /// use costack::net::TcpListener;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let std_listener = listener.into_std(); // still non-blocking
    /// assert!(std_listener.accept().is_err()); // WouldBlock: nobody connected
    /// ```
    pub fn into_std(self) -> net::TcpListener {
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
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// // Outside an event loop the same calls block the thread, like std's.
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let (s, peer) = listener.accept().unwrap();
    /// assert_eq!(peer, c.local_addr().unwrap());
    /// assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
    /// ```
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, addr) = self
            .sock
            .wait_for_untimed(Direction::Read, |l| l.accept())?;
        Ok((TcpStream::from_std(s)?, addr))
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::TcpListener;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// assert!(listener.local_addr().unwrap().ip().is_loopback());
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().local_addr()
    }

    /// Sets the IP time-to-live of accepted sockets.
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::TcpListener;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// listener.set_ttl(64).unwrap();
    /// ```
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock.get().set_ttl(ttl)
    }
}

impl_fd!(TcpListener);

/// How [`TcpListener::bind_with`] sets up a listening socket.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    backlog: i32,
    reuse_port: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: 1024,
            reuse_port: false,
        }
    }
}

impl ListenOptions {
    /// A backlog of 1024 (the kernel caps it at `net.core.somaxconn`) and
    /// no `SO_REUSEPORT`, as `TcpListener::bind`; `SO_REUSEADDR` is always
    /// set, as std does.
    ///
    /// ```
    /// use costack::net::{ListenOptions, TcpListener};
    ///
    /// let opts = ListenOptions::new().backlog(128);
    /// let listener = TcpListener::bind_with("127.0.0.1:0", &opts).unwrap();
    /// # drop(listener);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How many connections not yet accepted the kernel queues.
    ///
    /// ```
    /// use costack::net::{ListenOptions, TcpListener};
    ///
    /// let listener = TcpListener::bind_with("127.0.0.1:0", &ListenOptions::new().backlog(4096)).unwrap();
    /// # drop(listener);
    /// ```
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog.min(i32::MAX as u32) as i32;
        self
    }

    /// Sets `SO_REUSEPORT`: listeners that all set it may bind the same
    /// address, and the kernel balances connections among them.
    ///
    /// ```
    /// use costack::net::{ListenOptions, TcpListener};
    ///
    /// // Two listeners, say one per event-loop thread, on one port.
    /// let opts = ListenOptions::new().reuse_port(true);
    /// let a = TcpListener::bind_with("127.0.0.1:0", &opts).unwrap();
    /// let b = TcpListener::bind_with(a.local_addr().unwrap(), &opts).unwrap();
    /// assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    /// ```
    pub fn reuse_port(mut self, reuse: bool) -> Self {
        self.reuse_port = reuse;
        self
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.sock.get().local_addr().ok())
            .field("socket", &self.raw_sock())
            .finish()
    }
}

/// A TCP connection whose reads, writes and connect yield to the event
/// loop (see the [module documentation](super)).
///
/// `Read` and `Write` are implemented for `TcpStream` and `&TcpStream`.
/// `Send + Sync`, like std's.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use costack::net::{TcpListener, TcpStream};
/// use std::io::{BufRead, BufReader, Write};
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = listener.local_addr().unwrap();
///     let server = aio::spawn(move || {
///         let (s, _) = listener.accept().unwrap();
///         // One coroutine may read while another writes the same stream.
///         let mut lines = BufReader::new(&s).lines();
///         let line = lines.next().unwrap().unwrap();
///         (&s).write_all(format!("echo: {line}\n").as_bytes()).unwrap();
///     });
///     let mut c = TcpStream::connect(addr).unwrap();
///     c.set_nodelay(true).unwrap();
///     c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
///     c.write_all(b"hello\n").unwrap();
///     let mut reply = String::new();
///     BufReader::new(&c).read_line(&mut reply).unwrap();
///     assert_eq!(reply, "echo: hello\n");
///     server.join().unwrap();
/// });
/// ```
pub struct TcpStream {
    sock: Socket<net::TcpStream>,
}

impl TcpStream {
    /// Connects to the first of `addr`'s addresses that accepts, waiting
    /// for the connection to be established.
    ///
    /// # Errors
    /// The last address's error; `InvalidInput` if there were none.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// use costack::aio::EventLoop;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let addr = listener.local_addr().unwrap();
    /// EventLoop::new().unwrap().block_on(move || {
    ///     let c = TcpStream::connect(addr).unwrap(); // yields until connected
    ///     let (s, _) = listener.accept().unwrap();
    ///     assert_eq!(c.local_addr().unwrap(), s.peer_addr().unwrap());
    /// });
    /// ```
    pub fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<Self> {
        Self::connect_each(addr, None)
    }

    /// As [`connect`](TcpStream::connect), giving up on each address after
    /// `timeout` with `ErrorKind::TimedOut`.
    ///
    /// # Errors
    /// As `connect`, or `TimedOut`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// use std::time::Duration;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect_timeout(&listener.local_addr().unwrap(), Duration::from_secs(1));
    /// assert!(c.is_ok());
    /// ```
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<Self> {
        Self::connect_each(addr, Some(timeout))
    }

    fn connect_each<A: ToSocketAddrs>(addr: A, timeout: Option<Duration>) -> io::Result<Self> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no addresses to connect to");
        for a in addr.to_socket_addrs()? {
            match connect(&RawAddr::inet(&a), timeout) {
                Ok(fd) => return Ok(Self::from_nonblocking(net::TcpStream::from(fd))),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn from_nonblocking(inner: net::TcpStream) -> TcpStream {
        TcpStream {
            sock: Socket::new(inner, true),
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
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let s = TcpStream::from_std(std_stream).unwrap(); // now non-blocking, yields on a loop
    /// # drop(s);
    /// ```
    pub fn from_std(stream: net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::from_nonblocking(stream))
    }

    /// The std stream (non-blocking).
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let std_stream: std::net::TcpStream = c.into_std();
    /// # drop(std_stream);
    /// ```
    pub fn into_std(self) -> net::TcpStream {
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
    /// use costack::aio::{self, EventLoop};
    /// use costack::net::{TcpListener, TcpStream};
    /// use std::io::Read;
    /// use std::net::Shutdown;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    ///     let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    ///     let (s, _) = listener.accept().unwrap();
    ///     let reader = aio::spawn(move || (&s).read(&mut [0; 8]).unwrap());
    ///     aio::yield_now(); // the reader waits now
    ///     c.shutdown(Shutdown::Write).unwrap(); // ...and wakes to read EOF
    ///     assert_eq!(reader.join().unwrap(), 0);
    /// });
    /// ```
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.get().shutdown(how)
    }

    /// The peer's address.
    ///
    /// # Errors
    /// As `getpeername(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.peer_addr().unwrap(), listener.local_addr().unwrap());
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let (s, peer) = listener.accept().unwrap();
    /// assert_eq!(c.local_addr().unwrap(), peer);
    /// # drop(s);
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().local_addr()
    }

    /// Sets `TCP_NODELAY` (no Nagle delay for small writes).
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// c.set_nodelay(true).unwrap(); // small request/reply messages go out at once
    /// assert!(c.nodelay().unwrap());
    /// ```
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.sock.get().set_nodelay(nodelay)
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// # Errors
    /// As `getsockopt(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// assert!(!c.nodelay().unwrap()); // the kernel's default
    /// ```
    pub fn nodelay(&self) -> io::Result<bool> {
        self.sock.get().nodelay()
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
    /// use costack::aio::EventLoop;
    /// use costack::net::{TcpListener, TcpStream};
    /// use std::io::{ErrorKind, Read};
    /// use std::time::Duration;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    ///     let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    ///     let _server_side = listener.accept().unwrap(); // says nothing
    ///     c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    ///     let err = c.read(&mut [0; 8]).unwrap_err();
    ///     assert_eq!(err.kind(), ErrorKind::TimedOut);
    /// });
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
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// use std::time::Duration;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    /// assert_eq!(c.write_timeout(), Some(Duration::from_secs(30)));
    /// assert!(c.set_write_timeout(Some(Duration::ZERO)).is_err()); // as std
    /// ```
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.write_timeout().set(timeout)
    }

    /// The read timeout.
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// use std::time::Duration;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.read_timeout(), None);
    /// c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    /// assert_eq!(c.read_timeout(), Some(Duration::from_secs(1)));
    /// ```
    pub fn read_timeout(&self) -> Option<Duration> {
        self.sock.read_timeout().get()
    }

    /// The write timeout.
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.write_timeout(), None);
    /// ```
    pub fn write_timeout(&self) -> Option<Duration> {
        self.sock.write_timeout().get()
    }

    /// Reads without consuming (`MSG_PEEK`), waiting for data.
    ///
    /// # Errors
    /// As `recv(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::net::{TcpListener, TcpStream};
    ///
    /// use std::io::{Read, Write};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let (mut s, _) = listener.accept().unwrap();
    /// c.write_all(b"GET").unwrap();
    /// let mut buf = [0; 3];
    /// s.peek(&mut buf).unwrap(); // waits for data, leaves it queued
    /// s.read_exact(&mut buf).unwrap();
    /// assert_eq!(&buf, b"GET");
    /// ```
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.wait_for(Direction::Read, |s| s.peek(buf))
    }

    /// Writes from `bufs` in one `sendmsg`, as `write_vectored` does, but
    /// the buffers may also be ranges of a [`FileMap`], which the kernel
    /// copies from the page cache without the program reading them (see
    /// [`SendSlice`]). Returns how many bytes were sent (possibly fewer
    /// than all: advance with [`SendSlice::advance_slices`] and send
    /// again). At most 1,024 buffers are sent per call. A wait point.
    ///
    /// # Errors
    /// As a write's; `EFAULT` (`raw_os_error() == Some(libc::EFAULT)`)
    /// if a mapped page is gone, the file having been truncated under the
    /// mapping.
    ///
    /// ```
    /// use costack::net::{SendSlice, TcpListener, TcpStream};
    /// use std::io::Read;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let (mut s, _) = listener.accept().unwrap();
    /// let n = c.send_slices(&[SendSlice::new(b"GE"), SendSlice::new(b"T")]).unwrap();
    /// assert_eq!(n, 3);
    /// let mut buf = [0; 3];
    /// s.read_exact(&mut buf).unwrap();
    /// assert_eq!(&buf, b"GET");
    /// ```
    ///
    /// [`FileMap`]: crate::fs::FileMap
    /// [`SendSlice`]: super::SendSlice
    /// [`SendSlice::advance_slices`]: super::SendSlice::advance_slices
    #[cfg(unix)]
    #[cfg_attr(docsrs, doc(cfg(unix)))]
    pub fn send_slices(&self, bufs: &[super::SendSlice<'_>]) -> io::Result<usize> {
        self.sock.send_slices(bufs)
    }

    /// Reads into `buf`, as `read` does, but `buf` may also be a range of
    /// a writable [`FileMap`], into which the kernel copies the bytes
    /// straight from the socket to the page cache (see [`RecvSlice`]).
    /// Returns how many bytes came (0 at the end of the stream, or for an
    /// empty `buf`); it does not advance `buf`. A wait point.
    ///
    /// # Errors
    /// As a read's; `EFAULT` (`raw_os_error() == Some(libc::EFAULT)`) if
    /// a mapped page is gone or cannot be allocated (the file was
    /// truncated, or a full file system under a sparse file). The bytes
    /// not received stay in the socket.
    ///
    /// ```
    /// use costack::fs::FileMap;
    /// use costack::net::{TcpListener, TcpStream};
    /// use std::io::Write;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-recv-doc-{}", std::process::id()));
    /// std::fs::write(&path, b"........").unwrap();
    /// let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    /// let map = FileMap::new_writable(&file).unwrap();
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let (s, _) = listener.accept().unwrap();
    /// c.write_all(b"data").unwrap();
    /// let mut into = map.slice_mut(2, 4).unwrap();
    /// while !into.is_empty() {
    ///     let n = s.recv_slice(&mut into).unwrap();
    ///     into.advance(n);
    /// }
    /// assert_eq!(std::fs::read(&path).unwrap(), b"..data..");
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// [`FileMap`]: crate::fs::FileMap
    /// [`RecvSlice`]: super::RecvSlice
    #[cfg(unix)]
    #[cfg_attr(docsrs, doc(cfg(unix)))]
    pub fn recv_slice(&self, buf: &mut super::RecvSlice<'_>) -> io::Result<usize> {
        self.sock.recv_slice(buf)
    }
}

impl_stream_io!(TcpStream);

impl_fd!(TcpStream);

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.sock.get().local_addr().ok())
            .field("peer", &self.sock.get().peer_addr().ok())
            .field("socket", &self.raw_sock())
            .finish()
    }
}
