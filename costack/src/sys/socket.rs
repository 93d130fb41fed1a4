//! Sockets: addresses in the C layout, creation, listen and connect calls.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cvt;

/// An owned socket.
pub(crate) type OwnedSock = OwnedFd;

/// A socket address in the C layout, with its length.
pub(crate) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub(crate) fn inet(addr: &SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_in is plain data; all zeroes is valid
                // (and fills the fields some systems add, `sin_len`).
                let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for
                // any sockaddr type.
                unsafe {
                    (&mut storage as *mut libc::sockaddr_storage)
                        .cast::<libc::sockaddr_in>()
                        .write(sin)
                };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_scope_id = a.scope_id();
                // SAFETY: as above.
                unsafe {
                    (&mut storage as *mut libc::sockaddr_storage)
                        .cast::<libc::sockaddr_in6>()
                        .write(sin6)
                };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub(crate) fn unix(path: &Path) -> io::Result<RawAddr> {
        // SAFETY: plain data; all zeroes is valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let sun = unsafe {
            &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>()
        };
        let bytes = path.as_os_str().as_bytes();
        if bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path contains a NUL byte",
            ));
        }
        if bytes.len() >= sun.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path too long for a Unix socket",
            ));
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
        Ok(RawAddr {
            storage,
            len: len as libc::socklen_t,
        })
    }

    pub(crate) fn family(&self) -> libc::c_int {
        self.storage.ss_family as libc::c_int
    }
}

/// Sets an integer socket option.
fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed with it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A new non-blocking, close-on-exec stream socket of `family`.
pub(crate) fn stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    const FLAGS: libc::c_int = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // Elsewhere (macOS) the flags are set after creation.
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    const FLAGS: libc::c_int = 0;
    // SAFETY: plain syscall; on success we own the new descriptor.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | FLAGS, 0) })?;
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    super::set_nonblocking_cloexec(fd.as_raw_fd())?;
    Ok(fd)
}

/// A new non-blocking stream socket of `addr`'s family, bound to it and
/// listening with `backlog`; `SO_REUSEADDR` (as std sets it) and, with
/// `reuse_port`, `SO_REUSEPORT`, set before the bind.
pub(crate) fn listen(addr: &RawAddr, backlog: i32, reuse_port: bool) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr.family())?;
    set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    // SAFETY: `addr` holds a valid sockaddr of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr.storage as *const libc::sockaddr_storage).cast(),
            addr.len,
        )
    })?;
    // SAFETY: plain syscall on our socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// What one `connect(2)` call on a non-blocking socket did.
pub(crate) enum Connect {
    /// Connected.
    Done,
    /// Under way: the socket becomes writable when it is done.
    InProgress,
    /// A Unix socket whose listener's backlog is full: nothing to wait
    /// for, try again shortly.
    Busy,
}

/// Starts connecting `fd` to `addr` (EINTR retried).
pub(crate) fn start_connect(fd: &OwnedFd, addr: &RawAddr) -> io::Result<Connect> {
    loop {
        // SAFETY: `addr` holds a valid sockaddr of `len` bytes.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr.storage as *const libc::sockaddr_storage).cast(),
                addr.len,
            )
        };
        if r == 0 {
            return Ok(Connect::Done);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EINPROGRESS) => return Ok(Connect::InProgress),
            Some(libc::EAGAIN) if addr.family() == libc::AF_UNIX => return Ok(Connect::Busy),
            _ => return Err(e),
        }
    }
}

/// The error a finished non-blocking connect left (`SO_ERROR`).
pub(crate) fn take_error(fd: &OwnedFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err`/`len` are a valid out-buffer for SO_ERROR.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    match err {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
