//! UDP sockets.

use std::fmt;
use std::io;
use std::net::{self, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::impl_fd;
use super::socket::Socket;
use crate::aio::io::Direction;

/// A UDP socket whose calls yield to the event loop instead of blocking
/// (std's `UdpSocket`, see the [module documentation](super)).
///
/// Every call takes `&self`, so one coroutine may send while another
/// receives on the same socket (share it with an `Rc`, or an `Arc`
/// between threads). A call that would block is a wait point: in a
/// coroutine on a loop it suspends until the socket is ready (or its
/// timeout passes: `ErrorKind::TimedOut`); elsewhere it blocks like std's.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use costack::net::UdpSocket;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let server = UdpSocket::bind("127.0.0.1:0").unwrap();
///     let addr = server.local_addr().unwrap();
///     let echo = aio::spawn(move || {
///         let mut buf = [0; 64];
///         let (n, from) = server.recv_from(&mut buf).unwrap(); // yields until a datagram comes
///         server.send_to(&buf[..n], from).unwrap();
///     });
///     let client = UdpSocket::bind("127.0.0.1:0").unwrap();
///     client.connect(addr).unwrap();
///     client.send(b"ping").unwrap();
///     let mut buf = [0; 64];
///     let n = client.recv(&mut buf).unwrap();
///     assert_eq!(&buf[..n], b"ping");
///     echo.join().unwrap();
/// });
/// ```
pub struct UdpSocket {
    sock: Socket<net::UdpSocket>,
}

impl UdpSocket {
    /// Binds a socket to the first of `addr`'s addresses that works (as
    /// std; resolving a host name may block the thread).
    ///
    /// # Errors
    /// As `std::net::UdpSocket::bind`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap(); // port 0: any free one
    /// assert!(s.local_addr().unwrap().port() > 0);
    /// ```
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
        Self::from_std(net::UdpSocket::bind(addr)?)
    }

    /// Wraps a std socket, making it non-blocking.
    ///
    /// # Errors
    /// If it cannot be made non-blocking.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let s = UdpSocket::from_std(std_socket).unwrap();
    /// assert!(s.local_addr().is_ok());
    /// ```
    pub fn from_std(socket: net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        Ok(UdpSocket {
            sock: Socket::new(socket, false),
        })
    }

    /// The std socket (non-blocking).
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap().into_std();
    /// let mut buf = [0; 1];
    /// assert!(s.recv(&mut buf).is_err()); // WouldBlock: nothing came
    /// ```
    pub fn into_std(self) -> net::UdpSocket {
        self.sock.into_inner()
    }

    /// Sets the peer that [`send`](UdpSocket::send) sends to and the only
    /// one [`recv`](UdpSocket::recv) receives from.
    ///
    /// # Errors
    /// As `std::net::UdpSocket::connect`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.connect(b.local_addr().unwrap()).unwrap();
    /// assert_eq!(a.peer_addr().unwrap(), b.local_addr().unwrap());
    /// ```
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        self.sock.get().connect(addr)
    }

    /// Sends `buf` as one datagram to `addr`; returns the bytes sent.
    ///
    /// # Errors
    /// As `sendto(2)`; `TimedOut` past the write timeout.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_eq!(a.send_to(b"hey", b.local_addr().unwrap()).unwrap(), 3);
    /// ```
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], addr: A) -> io::Result<usize> {
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no addresses to send data to")
        })?;
        self.sock
            .wait_for(Direction::Write, |s| s.send_to(buf, addr))
    }

    /// Receives one datagram; returns its length (what did not fit in
    /// `buf` is lost) and who sent it.
    ///
    /// # Errors
    /// As `recvfrom(2)`; `TimedOut` past the read timeout.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.send_to(b"hey", b.local_addr().unwrap()).unwrap();
    /// let mut buf = [0; 16];
    /// let (n, from) = b.recv_from(&mut buf).unwrap();
    /// assert_eq!((&buf[..n], from), (&b"hey"[..], a.local_addr().unwrap()));
    /// ```
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.sock.wait_for(Direction::Read, |s| s.recv_from(buf))
    }

    /// As [`recv_from`](UdpSocket::recv_from), but leaves the datagram
    /// queued.
    ///
    /// # Errors
    /// As `recvfrom(2)` with `MSG_PEEK`; `TimedOut` past the read timeout.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.send_to(b"x", b.local_addr().unwrap()).unwrap();
    /// let mut buf = [0; 4];
    /// assert_eq!(b.peek_from(&mut buf).unwrap().0, 1);
    /// assert_eq!(b.recv_from(&mut buf).unwrap().0, 1); // still there
    /// ```
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.sock.wait_for(Direction::Read, |s| s.peek_from(buf))
    }

    /// Sends `buf` as one datagram to the connected peer.
    ///
    /// # Errors
    /// As `send(2)` (not connected: an error); `TimedOut` past the write
    /// timeout.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.connect(b.local_addr().unwrap()).unwrap();
    /// assert_eq!(a.send(b"hi").unwrap(), 2);
    /// ```
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.wait_for(Direction::Write, |s| s.send(buf))
    }

    /// Receives one datagram from the connected peer.
    ///
    /// # Errors
    /// As `recv(2)`; `TimedOut` past the read timeout.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// b.connect(a.local_addr().unwrap()).unwrap();
    /// a.send_to(b"hi", b.local_addr().unwrap()).unwrap();
    /// let mut buf = [0; 8];
    /// assert_eq!(b.recv(&mut buf).unwrap(), 2);
    /// ```
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.wait_for(Direction::Read, |s| s.recv(buf))
    }

    /// As [`recv`](UdpSocket::recv), but leaves the datagram queued.
    ///
    /// # Errors
    /// As `recv(2)` with `MSG_PEEK`; `TimedOut` past the read timeout.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// b.connect(a.local_addr().unwrap()).unwrap();
    /// a.send_to(b"hi", b.local_addr().unwrap()).unwrap();
    /// let mut buf = [0; 8];
    /// assert_eq!(b.peek(&mut buf).unwrap(), 2);
    /// assert_eq!(b.recv(&mut buf).unwrap(), 2);
    /// ```
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.wait_for(Direction::Read, |s| s.peek(buf))
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(s.local_addr().unwrap().ip().is_loopback());
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().local_addr()
    }

    /// The connected peer's address.
    ///
    /// # Errors
    /// `NotConnected` if there is none.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(s.peer_addr().is_err());
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get().peer_addr()
    }

    /// How long a receive may wait (`None`: for ever, the default); a
    /// receive that waits longer fails with `ErrorKind::TimedOut`.
    ///
    /// # Errors
    /// A zero duration (as std).
    ///
    /// ```
    /// use costack::net::UdpSocket;
    /// use std::time::Duration;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    /// let mut buf = [0; 1];
    /// assert_eq!(s.recv_from(&mut buf).unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    /// ```
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.read_timeout().set(timeout)
    }

    /// How long a send may wait (`None`: for ever, the default).
    ///
    /// # Errors
    /// A zero duration (as std).
    ///
    /// ```
    /// use costack::net::UdpSocket;
    /// use std::time::Duration;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    /// assert_eq!(s.write_timeout().unwrap(), Some(Duration::from_secs(1)));
    /// ```
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.write_timeout().set(timeout)
    }

    /// The read timeout.
    ///
    /// # Errors
    /// None; `io::Result` as std's.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_eq!(s.read_timeout().unwrap(), None);
    /// ```
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.sock.read_timeout().get())
    }

    /// The write timeout.
    ///
    /// # Errors
    /// None; `io::Result` as std's.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_eq!(s.write_timeout().unwrap(), None);
    /// ```
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.sock.write_timeout().get())
    }

    /// Allows sending to broadcast addresses (`SO_BROADCAST`).
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_broadcast(true).unwrap();
    /// assert!(s.broadcast().unwrap());
    /// ```
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.sock.get().set_broadcast(on)
    }

    /// Whether `SO_BROADCAST` is set.
    ///
    /// # Errors
    /// As `getsockopt(2)`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(!s.broadcast().unwrap());
    /// ```
    pub fn broadcast(&self) -> io::Result<bool> {
        self.sock.get().broadcast()
    }

    /// Sets the time-to-live of outgoing datagrams (`IP_TTL`).
    ///
    /// # Errors
    /// As `setsockopt(2)`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_ttl(42).unwrap();
    /// assert_eq!(s.ttl().unwrap(), 42);
    /// ```
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock.get().set_ttl(ttl)
    }

    /// The time-to-live of outgoing datagrams.
    ///
    /// # Errors
    /// As `getsockopt(2)`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(s.ttl().unwrap() > 0);
    /// ```
    pub fn ttl(&self) -> io::Result<u32> {
        self.sock.get().ttl()
    }

    /// Takes the socket's pending error (`SO_ERROR`), if any.
    ///
    /// # Errors
    /// As `getsockopt(2)`.
    ///
    /// ```
    /// use costack::net::UdpSocket;
    ///
    /// let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(s.take_error().unwrap().is_none());
    /// ```
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.get().take_error()
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local_addr", &self.local_addr().ok())
            .field("peer_addr", &self.peer_addr().ok())
            .finish()
    }
}

impl_fd!(UdpSocket);
