//! Sockets on Windows, through socket2 (Winsock's calls and address
//! layouts): the same small surface as the unix `socket.rs`.

use std::io;
use std::net::SocketAddr;
use std::os::windows::io::OwnedSocket;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// An owned socket.
pub(crate) type OwnedSock = OwnedSocket;

/// A socket address in Winsock's layout.
pub(crate) struct RawAddr(SockAddr);

impl RawAddr {
    pub(crate) fn inet(addr: &SocketAddr) -> RawAddr {
        RawAddr(SockAddr::from(*addr))
    }

    pub(crate) fn family(&self) -> Domain {
        self.0.domain()
    }
}

/// A new non-blocking, non-inheritable stream socket of `family`.
pub(crate) fn stream_socket(family: Domain) -> io::Result<OwnedSock> {
    let s = Socket::new(family, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A new non-blocking stream socket bound to `addr` and listening with
/// `backlog`. Windows has no `SO_REUSEPORT`: asking for it is an error.
pub(crate) fn listen(addr: &RawAddr, backlog: i32, reuse_port: bool) -> io::Result<OwnedSock> {
    if reuse_port {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT does not exist on Windows",
        ));
    }
    let s = Socket::new(addr.family(), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.0)?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// What one `connect` call on a non-blocking socket did.
pub(crate) enum Connect {
    /// Connected.
    Done,
    /// Under way: the socket becomes writable when it is done.
    InProgress,
    /// Never on Windows (a unix socket's full backlog on unix).
    #[allow(dead_code)]
    Busy,
}

/// Starts connecting `fd` to `addr`.
pub(crate) fn start_connect(fd: &OwnedSock, addr: &RawAddr) -> io::Result<Connect> {
    match SockRef::from(fd).connect(&addr.0) {
        Ok(()) => Ok(Connect::Done),
        // WSAEWOULDBLOCK: the connection is under way.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Connect::InProgress),
        Err(e) => Err(e),
    }
}

/// The error a finished non-blocking connect left (`SO_ERROR`).
pub(crate) fn take_error(fd: &OwnedSock) -> io::Result<()> {
    match SockRef::from(fd).take_error()? {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
