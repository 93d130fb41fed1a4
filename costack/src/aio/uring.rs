//! io_uring for file I/O (QEMU's io_uring.c LuringState), probed at run
//! time per loop.
//!
//! The ring's completions signal an eventfd that the loop's reactor
//! watches, so the loop sleeps in one place. A request is submitted at once
//! (one `io_uring_enter`) and its coroutine yields until the completion is
//! reaped. The kernel writes into the caller's buffer until then, so a
//! request is never abandoned: if its coroutine is unwound meanwhile, the
//! unwinding blocks until the kernel is done with the buffer.
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

use super::event_loop::{Inner, TOKEN_URING};
use crate::sys;
use super::wait::{Outcome, Wait};

const ENTRIES: u32 = 256;

struct Op {
    wait: Option<Rc<Wait>>,
    result: Option<i32>,
}

struct Ring {
    ring: IoUring,
    efd: OwnedFd,
    ops: Vec<Op>,
    free: Vec<usize>,
    /// Requests queued or submitted whose completion was not reaped yet.
    in_flight: usize,
    fallocate: bool,
}

pub(crate) struct UringState {
    allowed: bool,
    probed: Cell<bool>,
    ring: RefCell<Option<Ring>>,
}

fn disabled_by_env() -> bool {
    std::env::var_os("COSTACK_NO_IO_URING").is_some_and(|v| v != "0")
}

fn disabled_by_sysctl() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() == "2")
}

impl UringState {
    pub(crate) fn new(allowed: bool) -> UringState {
        UringState {
            allowed,
            probed: Cell::new(false),
            ring: RefCell::new(None),
        }
    }

    /// Whether the loop has a ring (creating it on first call).
    pub(crate) fn available(&self, inner: &Inner) -> bool {
        if !self.probed.replace(true) && self.allowed && !disabled_by_env() && !disabled_by_sysctl()
        {
            *self.ring.borrow_mut() = Ring::new(inner).ok();
        }
        self.ring.borrow().is_some()
    }

    /// Whether requests are in the kernel, whose completions will wake
    /// their coroutines.
    pub(crate) fn busy(&self) -> bool {
        self.ring.borrow().as_ref().is_some_and(|r| r.in_flight > 0)
    }

    /// Whether fallocate requests can go through the ring.
    pub(crate) fn has_fallocate(&self, inner: &Inner) -> bool {
        self.available(inner) && self.ring.borrow().as_ref().is_some_and(|r| r.fallocate)
    }

    /// Runs one request and returns its result (`>= 0`), suspending the
    /// calling coroutine until it completes.
    ///
    /// # Safety
    /// The memory `entry` refers to must stay valid until this returns;
    /// this function does not return, even by unwinding, before the kernel
    /// is done with the request. The caller checked [`available`].
    pub(crate) unsafe fn run(&self, inner: &Rc<Inner>, entry: squeue::Entry) -> io::Result<i32> {
        let me = crate::current().expect("io_uring requests are made from coroutines");
        inner.adopt(&me);
        let wait = Wait::new(&me);
        drop(me);
        let index = {
            let mut ring = self.ring.borrow_mut();
            let ring = ring.as_mut().expect("caller checked availability");
            let index = ring.alloc(wait.clone());
            let entry = entry.user_data(index as u64);
            // SAFETY: our caller keeps the memory valid until completion,
            // and the guard below waits for completion on every path.
            if let Err(e) = unsafe { ring.queue(&entry) } {
                ring.release(index);
                return Err(e);
            }
            index
        };
        let guard = InFlight {
            state: self,
            inner,
            index,
        };
        let submitted = self.ring.borrow_mut().as_mut().expect("ring").submit();
        // On error the entry may still be queued: the guard submits it and
        // waits for it before the error is returned.
        submitted?;
        wait.suspend("fs");
        let result = guard.finish();
        if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result)
        }
    }

    /// Reaps completions: the loop's eventfd for the ring fired.
    pub(crate) fn reap(&self, inner: &Inner) -> bool {
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
            w.complete(Outcome::Ready, inner);
        }
        any
    }

    /// The loop is being dropped: waits until the kernel is done with
    /// every request, since a coroutine the loop does not own may still
    /// wait for one (and its buffer must outlive it). The ring itself
    /// lives as long as the loop's state.
    pub(crate) fn shutdown(&self, inner: &Inner) {
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
                w.complete(Outcome::Ready, inner);
            }
        }
    }
}

/// A submitted request; waits for the kernel if dropped before completion.
struct InFlight<'a> {
    state: &'a UringState,
    inner: &'a Inner,
    index: usize,
}

impl InFlight<'_> {
    fn finish(self) -> i32 {
        let mut ring = self.state.ring.borrow_mut();
        let ring = ring.as_mut().expect("ring outlives its requests");
        let result = ring.ops[self.index].result.expect("completed");
        ring.release(self.index);
        std::mem::forget(self);
        result
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Unwinding before completion: block until the kernel is done with
        // the buffer, waking the waiters of whatever completes meanwhile.
        loop {
            let woken = {
                let mut ring = self.state.ring.borrow_mut();
                let Some(ring) = ring.as_mut() else { return };
                if ring.ops[self.index].result.is_some() {
                    ring.release(self.index);
                    return;
                }
                ring.wait_one();
                ring.reap()
            };
            for w in woken {
                w.complete(Outcome::Ready, self.inner);
            }
        }
    }
}

impl Ring {
    fn new(inner: &Inner) -> io::Result<Ring> {
        let ring = IoUring::new(ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Read::CODE, opcode::Write::CODE, opcode::Fsync::CODE] {
            if !probe.is_supported(code) {
                return Err(io::ErrorKind::Unsupported.into());
            }
        }
        let efd = sys::eventfd()?;
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        inner.reactor.watch(efd.as_raw_fd(), TOKEN_URING)?;
        Ok(Ring {
            fallocate: probe.is_supported(opcode::Fallocate::CODE),
            ring,
            efd,
            ops: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
        })
    }

    fn alloc(&mut self, wait: Rc<Wait>) -> usize {
        let op = Op {
            wait: Some(wait),
            result: None,
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
        self.ops[index] = Op {
            wait: None,
            result: None,
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
            let index = cqe.user_data() as usize;
            if let Some(op) = self.ops.get_mut(index) {
                self.in_flight -= 1;
                op.result = Some(cqe.result());
                woken.extend(op.wait.take());
            }
        }
        woken
    }
}
