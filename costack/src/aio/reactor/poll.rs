//! The poll(2) reactor (QEMU's fdmon-poll): the fd set is rebuilt from the
//! loop's interests on every wait, which costs O(fds watched) per wait and
//! needs nothing of the OS beyond POSIX.
//!
//! poll(2) is level-triggered, so every interest here lasts only until it
//! fires: one-shot arms are dropped, and a registered socket is watched
//! only for the directions that coroutines [expect](Poll::expect), until
//! an event for them comes. A socket nobody waits on is not in the set, so
//! a writable or readable socket cannot keep the loop spinning.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::time::Duration;

use super::{
    Event, ANY_END, ERROR, HANGUP, PRIORITY, READABLE, READ_EVENTS, WRITABLE, WRITE_EVENTS,
};
use crate::sys::{self, RawSock};

#[derive(Clone, Copy)]
enum Kind {
    /// The loop's own fds: readable for good.
    Watched,
    /// One-shot: dropped after its first event.
    Armed,
    /// A socket's registration: watched for the directions expected.
    Registered,
}

#[derive(Clone, Copy)]
struct Entry {
    token: u64,
    interest: u32,
    kind: Kind,
}

/// The set handed to poll, and the fd and token of each entry.
type Scratch = (Vec<sys::PollFd>, Vec<(RawSock, u64)>);

#[derive(Default)]
pub(crate) struct Poll {
    entries: RefCell<HashMap<RawSock, Entry>>,
    scratch: RefCell<Scratch>,
}

impl Poll {
    fn set(&self, fd: RawSock, entry: Entry) {
        self.entries.borrow_mut().insert(fd, entry);
    }

    pub(super) fn watch(&self, fd: RawSock, token: u64) -> io::Result<()> {
        self.set(
            fd,
            Entry {
                token,
                interest: READABLE,
                kind: Kind::Watched,
            },
        );
        Ok(())
    }

    pub(super) fn arm(&self, fd: RawSock, token: u64, interest: u32) -> io::Result<()> {
        self.set(
            fd,
            Entry {
                token,
                interest,
                kind: Kind::Armed,
            },
        );
        Ok(())
    }

    pub(super) fn register(&self, fd: RawSock, token: u64) -> io::Result<()> {
        self.set(
            fd,
            Entry {
                token,
                interest: 0,
                kind: Kind::Registered,
            },
        );
        Ok(())
    }

    pub(super) fn expect(&self, fd: RawSock, token: u64, interest: u32) {
        if let Some(e) = self.entries.borrow_mut().get_mut(&fd) {
            if e.token == token {
                e.interest |= interest;
            }
        }
    }

    pub(super) fn forget(&self, fd: RawSock, token: u64) {
        let mut entries = self.entries.borrow_mut();
        if entries.get(&fd).is_some_and(|e| e.token == token) {
            entries.remove(&fd);
        }
    }

    pub(super) fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        let (pollfds, tokens) = &mut *scratch;
        pollfds.clear();
        tokens.clear();
        for (&fd, e) in self.entries.borrow().iter() {
            if e.interest != 0 {
                pollfds.push(sys::pollfd(fd, to_poll(e.interest)));
                tokens.push((fd, e.token));
            }
        }
        if sys::poll(pollfds, timeout.map_or(-1, sys::ms_ceil))? == 0 {
            return Ok(());
        }
        let mut entries = self.entries.borrow_mut();
        for (pfd, &(fd, token)) in pollfds.iter().zip(tokens.iter()) {
            if pfd.revents == 0 {
                continue;
            }
            let bits = from_poll(pfd.revents);
            out.push(Event { token, bits });
            let Some(e) = entries.get_mut(&fd) else {
                continue;
            };
            match e.kind {
                Kind::Watched => {}
                Kind::Armed => {
                    entries.remove(&fd);
                }
                Kind::Registered => {
                    // The directions that fired are served; the others
                    // stay watched for their waiters.
                    let mut served = 0;
                    if bits & (READ_EVENTS | ANY_END) != 0 {
                        served |= READ_EVENTS;
                    }
                    if bits & (WRITE_EVENTS | ANY_END) != 0 {
                        served |= WRITE_EVENTS;
                    }
                    e.interest &= !served;
                }
            }
        }
        Ok(())
    }
}

fn to_poll(interest: u32) -> i16 {
    let mut ev = 0;
    if interest & READ_EVENTS != 0 {
        ev |= sys::POLL_READ;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            ev |= sys::POLLRDHUP;
        }
    }
    if interest & WRITE_EVENTS != 0 {
        ev |= sys::POLLOUT;
    }
    ev
}

fn from_poll(revents: i16) -> u32 {
    let mut bits = 0;
    for (flag, bit) in [
        (sys::POLLIN, READABLE),
        (sys::POLLOUT, WRITABLE),
        (sys::POLLPRI, PRIORITY),
        (sys::POLLHUP, HANGUP),
        (sys::POLLERR, ERROR),
        // A closed fd: its waiters wake to find out from their own call.
        (sys::POLLNVAL, ERROR),
    ] {
        if revents & flag != 0 {
            bits |= bit;
        }
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if revents & sys::POLLRDHUP != 0 {
        bits |= super::READ_HANGUP;
    }
    bits
}
