//! The io_uring driver, for file I/O (QEMU's io_uring.c LuringState),
//! probed at run time per loop.
//!
//! The ring's completions signal an eventfd that the loop's readiness
//! driver watches, so the loop sleeps in one place. A request is submitted
//! at once (one `io_uring_enter`) and its coroutine waits at a wait point
//! until the completion is reaped. The kernel writes into the caller's
//! buffer until then, so a request is never abandoned:
//! - cancelled, the coroutine submits an `IORING_OP_ASYNC_CANCEL` for it
//!   and goes on waiting for its completion; it unwinds only once the
//!   kernel has given the request back (`ECANCELED`), and returns normally
//!   if the request completed first;
//! - unwound otherwise meanwhile (its last handle or its loop dropped), it
//!   blocks the thread until the kernel is done with the buffer.
//!
//! A loop on [`Backend::IoUring`](super::Backend::IoUring) runs stream
//! sockets' reads and writes on its ring as well (see `socket`): those
//! requests are queued, not submitted one by one, and the loop hands each
//! turn's batch to the kernel in one `io_uring_enter` ([`Uring::flush`]).
//!
//! Not used (the thread pool is) when `COSTACK_NO_IO_URING` is set to
//! anything but `0`, when `/proc/sys/kernel/io_uring_disabled` is 2, when
//! creating a ring fails (`ENOSYS`, `EPERM`, seccomp...), or when the
//! kernel lacks one of the opcodes used.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, IoUring, Probe};

#[path = "uring_socket.rs"]
mod socket;
pub(crate) use socket::any_socket_ring;

use super::readiness::{Readiness, TOKEN_URING};
use super::wait::{Outcome, Wait};
use crate::coroutine::{self, cancel};
use crate::sys;

const ENTRIES: u32 = 256;

/// `user_data` of cancellation requests, whose completions are not ops'.
const CANCEL_DATA: u64 = u64::MAX;

struct Op {
    wait: Option<Rc<Wait>>,
    result: Option<i32>,
    /// A file request (of `run`), which an io-wq thread may complete.
    file: bool,
}

struct Ring {
    ring: IoUring,
    efd: OwnedFd,
    ops: Vec<Op>,
    free: Vec<usize>,
    /// Requests queued or submitted whose completion was not reaped yet
    /// (cancellation requests included).
    in_flight: usize,
    fallocate: bool,
    async_cancel: bool,
    /// Stream sockets' reads and writes go through the ring.
    sockets: bool,
    /// File requests not released yet. While there are any, completions
    /// always signal the eventfd (see `Uring::sleeping`).
    files: usize,
}

/// One loop's ring, created on first use.
pub(crate) struct Uring {
    allowed: bool,
    /// Stream sockets are asked for (the io_uring backend).
    want_sockets: bool,
    probed: Cell<bool>,
    ring: RefCell<Option<Ring>>,
    /// Counted among the process's socket rings while `want_sockets`.
    _socket_ring: Option<socket::Counted>,
}

fn disabled_by_env() -> bool {
    std::env::var_os("COSTACK_NO_IO_URING").is_some_and(|v| v != "0")
}

fn disabled_by_sysctl() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() == "2")
}

impl Uring {
    /// A ring to be created on first use, if `allowed`; carrying stream
    /// sockets' I/O too if `sockets` (and the kernel has what they need).
    pub(crate) fn new(allowed: bool, sockets: bool) -> Uring {
        Uring {
            allowed,
            want_sockets: sockets,
            probed: Cell::new(false),
            ring: RefCell::new(None),
            _socket_ring: sockets.then(socket::Counted::new),
        }
    }

    /// Whether the loop has a ring (creating it on first call; its eventfd
    /// is watched by `readiness`).
    pub(crate) fn available(&self, readiness: &Readiness) -> bool {
        if !self.probed.replace(true) && self.allowed && !disabled_by_env() && !disabled_by_sysctl()
        {
            *self.ring.borrow_mut() = Ring::new(readiness, self.want_sockets).ok();
        }
        self.ring.borrow().is_some()
    }

    /// Whether requests are in the kernel, whose completions will wake
    /// their coroutines.
    pub(crate) fn busy(&self) -> bool {
        self.ring.borrow().as_ref().is_some_and(|r| r.in_flight > 0)
    }

    /// Whether fallocate requests can go through the ring.
    pub(crate) fn has_fallocate(&self, readiness: &Readiness) -> bool {
        self.available(readiness) && self.ring.borrow().as_ref().is_some_and(|r| r.fallocate)
    }

    /// Runs one request and returns its result (`>= 0`), suspending the
    /// calling coroutine until it completes. A wait point: cancelled, the
    /// request is cancelled in the kernel and awaited first (see the module
    /// docs).
    ///
    /// # Safety
    /// The memory `entry` refers to must stay valid until this returns;
    /// this function does not return, even by unwinding, before the kernel
    /// is done with the request. The caller checked
    /// [`available`](Self::available).
    pub(crate) unsafe fn run(&self, what: &str, entry: squeue::Entry) -> io::Result<i32> {
        let me = crate::current().expect("io_uring requests are made from coroutines");
        let wait = Wait::new(&me);
        drop(me);
        // SAFETY: forwarded from our caller.
        let guard = unsafe { self.queue_op(&wait, entry, true) }?;
        let index = guard.index;
        let submitted = self.ring.borrow_mut().as_mut().expect("ring").submit();
        // On error the entry may still be queued: the guard submits it and
        // waits for it before the error is returned.
        submitted?;
        let (_, stopped) = coroutine::wait::wait_stopping(
            what,
            || (wait.outcome() != Outcome::Pending).then_some(()),
            || self.cancel_op(index),
        );
        let result = guard.finish();
        if stopped && result == -libc::ECANCELED {
            // Given back unperformed: the cancellation unwinds from here.
            cancel::checkpoint();
        }
        if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result)
        }
    }

    /// Queues request `entry` (not submitted yet), whose completion
    /// completes `wait`; the guard returned waits for the kernel if
    /// dropped before completion. `file`: a file request (see `Ring::files`).
    ///
    /// # Safety
    /// As [`run`](Self::run): the memory `entry` refers to stays valid
    /// until the guard is finished or dropped.
    unsafe fn queue_op(
        &self,
        wait: &Rc<Wait>,
        entry: squeue::Entry,
        file: bool,
    ) -> io::Result<InFlight<'_>> {
        let mut ring = self.ring.borrow_mut();
        let ring = ring.as_mut().expect("caller checked availability");
        let index = ring.alloc(wait.clone(), file);
        let entry = entry.user_data(index as u64);
        // SAFETY: our caller keeps the memory valid until completion, and
        // the guard waits for completion on every path.
        if let Err(e) = unsafe { ring.queue(&entry) } {
            ring.release(index);
            return Err(e);
        }
        Ok(InFlight { uring: self, index })
    }

    /// Asks the kernel to cancel request `index` (its completion still
    /// comes, with `ECANCELED` if it was cancelled).
    fn cancel_op(&self, index: usize) {
        let mut ring = self.ring.borrow_mut();
        let Some(ring) = ring.as_mut() else { return };
        if !ring.async_cancel {
            return; // no way to stop it: its completion is awaited
        }
        let entry = opcode::AsyncCancel::new(index as u64)
            .build()
            .user_data(CANCEL_DATA);
        // SAFETY: a cancellation request refers to no memory.
        if unsafe { ring.queue(&entry) }.is_ok() {
            // Failing to submit leaves it queued for the next submission:
            // the op completes on its own meanwhile.
            let _ = ring.submit();
        }
    }

    /// Reaps completions: the ring's eventfd fired.
    pub(crate) fn reap(&self) -> bool {
        let woken = {
            let mut ring = self.ring.borrow_mut();
            let Some(ring) = ring.as_mut() else {
                return false;
            };
            sys::eventfd_drain(ring.efd.as_raw_fd());
            ring.reap()
        };
        let any = !woken.is_empty();
        for w in woken {
            w.complete(Outcome::Ready);
        }
        any
    }

    /// The loop is being dropped: waits until the kernel is done with
    /// every request, since a coroutine the loop does not own may still
    /// wait for one (and its buffer must outlive it).
    pub(crate) fn shutdown(&self) {
        // Socket reads may wait for data for ever: ask for them back.
        let pending: Vec<usize> = match self.ring.borrow().as_ref() {
            Some(ring) if ring.sockets => (ring.ops.iter().enumerate())
                .filter(|(_, op)| op.wait.is_some())
                .map(|(i, _)| i)
                .collect(),
            _ => Vec::new(),
        };
        for index in pending {
            self.cancel_op(index);
        }
        loop {
            let woken = {
                let mut ring = self.ring.borrow_mut();
                let Some(ring) = ring.as_mut() else { return };
                if ring.in_flight == 0 {
                    return;
                }
                ring.wait_one();
                ring.reap()
            };
            for w in woken {
                w.complete(Outcome::Ready);
            }
        }
    }
}

/// A submitted request; waits for the kernel if dropped before completion.
struct InFlight<'a> {
    uring: &'a Uring,
    index: usize,
}

impl InFlight<'_> {
    fn finish(self) -> i32 {
        let mut ring = self.uring.ring.borrow_mut();
        let ring = ring.as_mut().expect("ring outlives its requests");
        let result = ring.ops[self.index].result.expect("completed");
        ring.release(self.index);
        std::mem::forget(self);
        result
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Unwinding before completion (a forced unwind): ask the kernel to
        // give the request back (a socket read might otherwise wait for
        // data for ever), then block until it is done with the buffer,
        // waking the waiters of whatever completes meanwhile.
        let done =
            (self.uring.ring.borrow().as_ref()).is_none_or(|r| r.ops[self.index].result.is_some());
        if !done {
            self.uring.cancel_op(self.index);
        }
        loop {
            let woken = {
                let mut ring = self.uring.ring.borrow_mut();
                let Some(ring) = ring.as_mut() else { return };
                if ring.ops[self.index].result.is_some() {
                    ring.release(self.index);
                    return;
                }
                ring.wait_one();
                ring.reap()
            };
            for w in woken {
                w.complete(Outcome::Ready);
            }
        }
    }
}

impl Ring {
    fn new(readiness: &Readiness, sockets: bool) -> io::Result<Ring> {
        let mut ring = if sockets {
            socket::new_ring()?
        } else {
            IoUring::new(ENTRIES)?
        };
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let mut needed = vec![opcode::Read::CODE, opcode::Write::CODE, opcode::Fsync::CODE];
        if sockets {
            needed.extend(socket::OPCODES);
        }
        if needed.into_iter().any(|code| !probe.is_supported(code)) {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let efd = sys::eventfd()?;
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        readiness.watch(efd.as_raw_fd(), TOKEN_URING)?;
        if sockets {
            // Completions signal the eventfd only while the loop sleeps.
            ring.completion().disable_eventfd();
        }
        Ok(Ring {
            fallocate: probe.is_supported(opcode::Fallocate::CODE),
            async_cancel: probe.is_supported(opcode::AsyncCancel::CODE),
            sockets,
            files: 0,
            ring,
            efd,
            ops: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
        })
    }

    fn alloc(&mut self, wait: Rc<Wait>, file: bool) -> usize {
        if file {
            self.files += 1;
            if self.sockets {
                // Before the request is submitted, so that whoever
                // completes it sees the eventfd enabled.
                self.ring.completion().enable_eventfd();
            }
        }
        let op = Op {
            wait: Some(wait),
            result: None,
            file,
        };
        match self.free.pop() {
            Some(i) => {
                self.ops[i] = op;
                i
            }
            None => {
                self.ops.push(op);
                self.ops.len() - 1
            }
        }
    }

    fn release(&mut self, index: usize) {
        if self.ops[index].file {
            self.files -= 1;
        }
        self.ops[index] = Op {
            wait: None,
            result: None,
            file: false,
        };
        self.free.push(index);
    }

    /// Puts one entry in the submission queue.
    ///
    /// # Safety
    /// As `io_uring`'s `push`: the entry's memory stays valid until it
    /// completes.
    unsafe fn queue(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from our caller.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            // Queue full: hand what is queued to the kernel and retry.
            self.ring.submit()?;
        }
    }

    /// Hands queued entries to the kernel.
    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The kernel is short of resources: let it finish some.
                Err(e)
                    if e.raw_os_error() == Some(libc::EAGAIN)
                        || e.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return self.ring.submit_and_wait(1).map(drop);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocks until at least one request completes (submitting queued
    /// ones first).
    fn wait_one(&mut self) {
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => {
                // Going on would let the kernel write into memory that
                // is freed next; there is no safe way on.
                eprintln!("costack: io_uring_enter failed with requests in flight: {e}");
                std::process::abort();
            }
        }
    }

    /// Records completions; returns the waits to complete.
    fn reap(&mut self) -> Vec<Rc<Wait>> {
        let mut woken = Vec::new();
        for cqe in self.ring.completion() {
            self.in_flight -= 1;
            let data = cqe.user_data();
            if data == CANCEL_DATA {
                continue;
            }
            if let Some(op) = self.ops.get_mut(data as usize) {
                op.result = Some(cqe.result());
                woken.extend(op.wait.take());
            }
        }
        woken
    }
}

#[cfg(test)]
#[path = "uring_tests.rs"]
mod tests;
