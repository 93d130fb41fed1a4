//! The Windows side of [`sys`](super): Winsock's `WSAPoll`, which takes
//! sockets only, so the loop's notifier is a socket too.

use std::io;
use std::net::UdpSocket;
use std::os::windows::io::{AsRawSocket, BorrowedSocket, RawSocket};

use windows_sys::Win32::Networking::WinSock::{WSAGetLastError, WSAPoll, SOCKET, WSAPOLLFD};

pub(crate) use windows_sys::Win32::Networking::WinSock::{
    POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI,
};
/// What a wait for reading asks `WSAPoll` for: normal data only (Winsock
/// refuses the priority-band flags).
pub(crate) const POLL_READ: i16 = windows_sys::Win32::Networking::WinSock::POLLRDNORM;

/// A socket, as the loop names it.
pub(crate) type RawSock = RawSocket;

/// The number of a borrowed socket.
pub(crate) fn raw_sock(s: BorrowedSocket<'_>) -> RawSock {
    s.as_raw_socket()
}

/// One entry of a [`poll`] set.
pub(crate) type PollFd = WSAPOLLFD;

/// A [`poll`] entry asking `fd` for `events`.
pub(crate) fn pollfd(fd: RawSock, events: i16) -> PollFd {
    WSAPOLLFD {
        fd: fd as SOCKET,
        events,
        revents: 0,
    }
}

/// `WSAPoll` over `fds`, at most `timeout_ms` (-1: forever); returns how
/// many have events.
pub(crate) fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    if fds.is_empty() {
        // WSAPoll refuses an empty set; the loop may wait on timers alone.
        if timeout_ms != 0 {
            let ms = if timeout_ms < 0 {
                u32::MAX
            } else {
                timeout_ms as u32
            };
            std::thread::sleep(std::time::Duration::from_millis(ms.into()));
        }
        return Ok(0);
    }
    // SAFETY: `fds` is a live, writable slice of WSAPOLLFD for Winsock to
    // fill in `revents`; its length is passed with it.
    let n = unsafe { WSAPoll(fds.as_mut_ptr(), fds.len() as u32, timeout_ms) };
    if n < 0 {
        // SAFETY: reads the calling thread's last Winsock error.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    Ok(n as usize)
}

/// A socket that becomes readable when another thread notifies the loop:
/// a UDP socket on loopback, connected to itself.
pub(crate) struct Notifier {
    sock: UdpSocket,
}

impl Notifier {
    pub(crate) fn new() -> io::Result<Notifier> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(sock.local_addr()?)?;
        sock.set_nonblocking(true)?;
        Ok(Notifier { sock })
    }

    /// The socket the loop watches for reads.
    pub(crate) fn fd(&self) -> RawSock {
        self.sock.as_raw_socket()
    }

    /// Makes the socket readable (a lost datagram is impossible on
    /// loopback; a full buffer is readable already).
    pub(crate) fn notify(&self) {
        let _ = self.sock.send(&[1]);
    }

    /// Consumes pending notifications.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 16];
        while self.sock.recv(&mut buf).is_ok() {}
    }
}

/// Lets other threads runnable on this CPU run first.
pub(crate) fn yield_cpu() {
    std::thread::yield_now();
}

/// Windows has no count of a thread's involuntary switches: polling then
/// never backs off for preemption (it still adapts to how long waits
/// take).
pub(crate) fn involuntary_switches() -> u64 {
    0
}
