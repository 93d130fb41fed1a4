//! systemd's socket activation, as qemu-nbd takes it: when `LISTEN_PID`
//! names this process and `LISTEN_FDS` is set, the listening socket is
//! already open as descriptor 3 (`SD_LISTEN_FDS_START`), and the server
//! accepts on it instead of binding one. systemd socket units start
//! servers this way, and so does libnbd for `nbdinfo -- [ costack-nbd
//! IMG ]`, `nbdcopy -- [ costack-nbd IMG ] OUT` and
//! `nbd_connect_systemd_socket_activation`.
//!
//! As in qemu-nbd (`check_socket_activation`): variables that do not name
//! this process, or do not parse, mean no activation; the variables are
//! removed so that no child inherits them; the descriptors passed get
//! `FD_CLOEXEC`; one socket only; `-k`, `-b` and `-p` are refused with
//! qemu-nbd's messages.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// The listening socket socket activation passed.
#[derive(Debug)]
pub enum Activated {
    /// A TCP (IPv4 or IPv6) listener.
    Tcp(std::net::TcpListener),
    /// A Unix stream listener.
    Unix(std::os::unix::net::UnixListener),
}

/// How many descriptors `LISTEN_PID`/`LISTEN_FDS` pass to process `me`
/// (0: socket activation is not in use), as qemu's
/// `check_socket_activation` reads them.
pub fn passed_fds(listen_pid: Option<&str>, listen_fds: Option<&str>, me: u32) -> u32 {
    let Some(pid) = listen_pid.and_then(|s| s.trim().parse::<u32>().ok()) else {
        return 0;
    };
    if pid != me {
        return 0;
    }
    listen_fds
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
}

/// Why the command line cannot go with socket activation, in qemu-nbd's
/// words: the listening socket is given, so none may be chosen.
pub fn conflicting_option(socket: bool, bind: bool, port: bool) -> Option<&'static str> {
    if socket {
        Some("Unix socket can't be set when using socket activation")
    } else if bind {
        Some("The interface can't be set when using socket activation")
    } else if port {
        Some("TCP port number can't be set when using socket activation")
    } else {
        None
    }
}

/// The listener socket activation passed to this process, if any.
///
/// Call it before any other thread starts: it removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment.
///
/// # Errors
/// When more than one socket is passed, when descriptor 3 is not open,
/// or when it is not a listening stream socket of a family we serve.
pub fn take_listener() -> io::Result<Option<Activated>> {
    let n = passed_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    if n == 0 {
        return Ok(None);
    }
    // Not for the children we might start (none today); the caller runs
    // before any other thread exists, so no one reads the environment
    // meanwhile.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    for i in 0..n {
        let fd = FIRST_FD.saturating_add(i as RawFd);
        // SAFETY: fcntl on a descriptor number only sets a flag; an fd
        // that is not open fails with EBADF, which is reported.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("socket activation: descriptor {fd} (LISTEN_FDS={n}) is unusable: {e}"),
            ));
        }
    }
    if n > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "costack-nbd does not support socket activation with LISTEN_FDS > 1",
        ));
    }
    // SAFETY: systemd's protocol hands descriptor 3 to the process that
    // LISTEN_PID names, which is this one; it was checked open above, and
    // nothing else in this process owns it (std opens nothing at 3 before
    // main, and this runs once: the variables are gone now).
    let fd = unsafe { OwnedFd::from_raw_fd(FIRST_FD) };
    listener_of(fd).map(Some)
}

/// `fd` as a listener of its family, once checked to be a listening
/// stream socket.
fn listener_of(fd: OwnedFd) -> io::Result<Activated> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket activation: descriptor {FIRST_FD} {what}"),
        )
    };
    let int_opt = |opt: libc::c_int| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, an int
        // the size of which `len` says.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(v)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let domain = int_opt(libc::SO_DOMAIN).map_err(|e| bad(format!("is not a socket ({e})")))?;
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("is not a stream socket".into()));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(bad("is not listening".into()));
    }
    match domain {
        libc::AF_UNIX => Ok(Activated::Unix(fd.into())),
        libc::AF_INET | libc::AF_INET6 => Ok(Activated::Tcp(fd.into())),
        other => Err(bad(format!("is a socket of address family {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_count_only_for_the_process_they_name() {
        assert_eq!(passed_fds(Some("42"), Some("1"), 42), 1);
        assert_eq!(passed_fds(Some(" 42\n"), Some("2"), 42), 2);
        assert_eq!(passed_fds(Some("41"), Some("1"), 42), 0);
        assert_eq!(passed_fds(None, Some("1"), 42), 0);
        assert_eq!(passed_fds(Some("42"), None, 42), 0);
        assert_eq!(passed_fds(Some("x"), Some("1"), 42), 0);
        assert_eq!(passed_fds(Some("42"), Some("-1"), 42), 0);
        assert_eq!(passed_fds(Some("42"), Some("0"), 42), 0);
    }

    #[test]
    fn listen_options_are_refused_with_qemu_nbds_words() {
        assert_eq!(conflicting_option(false, false, false), None);
        assert!(conflicting_option(true, true, true)
            .unwrap()
            .contains("Unix socket"));
        assert!(conflicting_option(false, true, false)
            .unwrap()
            .contains("interface"));
        assert!(conflicting_option(false, false, true)
            .unwrap()
            .contains("TCP port"));
    }

    #[test]
    fn a_listening_socket_is_taken_by_family() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(listener_of(tcp.into()), Ok(Activated::Tcp(_))));
        let dir = std::env::temp_dir().join(format!("act-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        assert!(matches!(listener_of(unix.into()), Ok(Activated::Unix(_))));
        let _ = std::fs::remove_file(&dir);
        // A connected (not listening) socket and a pipe are refused.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = listener_of(a.into()).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let (r, _w) = std::io::pipe().unwrap();
        let e = listener_of(r.into()).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
    }
}
