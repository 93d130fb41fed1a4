//! [`EventLoop`]: the public face of a loop. The turn itself, and the
//! state it runs on, are in `turn.rs`.

use std::fmt;
use std::io;
use std::panic;
use std::rc::Rc;
use std::time::Duration;

use super::handle::LoopHandle;
use super::join::JoinHandle;
use super::reactor::{Backend, Reactor};
use super::turn::{CurrentGuard, Inner};
use super::uring::Uring;

struct Owner {
    inner: Rc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Destructors of unwound coroutines may call `aio` functions: they
        // find the loop (closed) rather than panic while unwinding.
        let _current = CurrentGuard::enter(&self.inner);
        self.inner.shutdown();
    }
}

/// A single-threaded event loop (QEMU's AioContext).
///
/// It runs coroutines and wakes them when the fds, timers or thread-pool
/// jobs they wait for are ready. Each thread runs its own loop; the loop
/// running [`block_on`](EventLoop::block_on) or [`poll`](EventLoop::poll)
/// is the *current* loop of its thread, the one the free functions of
/// [`aio`](crate::aio) use. Clones name the same loop.
///
/// Dropping the last clone unwinds the coroutines it spawned that have not
/// finished (their destructors run) and drops queued bottom halves.
///
/// A loop is bound to its thread (neither `Send` nor `Sync`); other threads
/// use its [`handle`](EventLoop::handle):
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// send(costack::aio::EventLoop::new().unwrap());
/// ```
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// let lp = EventLoop::new().unwrap();
/// let t = Instant::now();
/// let sum = lp.block_on(|| {
///     let a = aio::spawn(|| aio::sleep(Duration::from_millis(20)));
///     aio::sleep(Duration::from_millis(20)); // overlaps with `a`
///     while !a.is_finished() {
///         aio::sleep(Duration::from_millis(1));
///     }
///     1 + 1
/// });
/// assert_eq!(sum, 2);
/// assert!(t.elapsed() < Duration::from_millis(1000));
/// ```
#[derive(Clone)]
pub struct EventLoop {
    owner: Rc<Owner>,
}

impl EventLoop {
    /// Creates a loop on the backend that the environment variable
    /// `COSTACK_AIO` names (`io_uring`, `epoll` or `poll`; see
    /// [`with_backend`](EventLoop::with_backend)), or by default: epoll for
    /// descriptors, and io_uring for [`fs`](crate::fs) where the kernel
    /// allows it (probed on first use; `COSTACK_NO_IO_URING=1` turns it
    /// off), else the thread pool.
    ///
    /// ```
    /// use costack::aio::{Backend, EventLoop};
    ///
    /// let lp = EventLoop::new().unwrap();
    /// match std::env::var("COSTACK_AIO").ok().as_deref() {
    ///     Some("poll") => assert_eq!(lp.backend(), Backend::Poll),
    ///     Some("io_uring") => assert_eq!(lp.backend(), Backend::IoUring),
    ///     // Linux: epoll, with `fs` on io_uring where the kernel allows it.
    ///     _ => assert!(matches!(lp.backend(), Backend::Epoll | Backend::Poll)),
    /// }
    /// ```
    ///
    /// # Errors
    /// If `COSTACK_AIO` holds anything else, or a backend that is not
    /// available here (`ErrorKind::InvalidInput`, `Unsupported`): never a
    /// silent fallback. If the loop's descriptors cannot be created (fd
    /// limits).
    pub fn new() -> io::Result<EventLoop> {
        match Self::backend_from_env()? {
            Some(backend) => Self::with_backend(backend),
            #[cfg(target_os = "linux")]
            None => Self::build(Reactor::epoll()?, Uring::new(true, false)),
            #[cfg(not(target_os = "linux"))]
            None => Self::with_backend(Backend::Poll),
        }
    }

    /// Creates a loop on `backend`:
    ///
    /// - [`Backend::IoUring`]: io_uring for stream sockets' reads and
    ///   writes and for [`fs`](crate::fs), which must be available (Linux
    ///   5.6 for the socket opcodes); epoll for other descriptors;
    /// - [`Backend::Epoll`]: epoll, `fs` on the thread pool;
    /// - [`Backend::Poll`]: poll(2) (QEMU's fdmon-poll), `fs` on the
    ///   thread pool.
    ///
    /// # Errors
    /// `ErrorKind::Unsupported` if the kernel refuses io_uring (or
    /// `COSTACK_NO_IO_URING` is set) for `IoUring`; as
    /// [`new`](EventLoop::new) otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{Backend, EventLoop};
    ///
    /// let lp = EventLoop::with_backend(Backend::Poll).unwrap();
    /// assert_eq!(lp.block_on(|| 1 + 1), 2);
    /// ```
    pub fn with_backend(backend: Backend) -> io::Result<EventLoop> {
        match backend {
            #[cfg(target_os = "linux")]
            Backend::IoUring => {
                let lp = Self::build(Reactor::epoll()?, Uring::new(true, true))?;
                if !lp.uses_io_uring() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "costack: the io_uring backend is not available here (the kernel \
                         refused a ring or an opcode, io_uring_disabled is set, or \
                         COSTACK_NO_IO_URING is)",
                    ));
                }
                Ok(lp)
            }
            #[cfg(target_os = "linux")]
            Backend::Epoll => Self::build(Reactor::epoll()?, Uring::new(false, false)),
            Backend::Poll => Self::build(Reactor::poll(), Uring::new(false, false)),
            #[cfg(not(target_os = "linux"))]
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("costack: the {backend} backend is Linux-only; poll is this system's"),
            )),
        }
    }

    /// As [`new`](EventLoop::new), but [`fs`](crate::fs) I/O always goes
    /// to the thread pool, never to io_uring (`COSTACK_AIO=poll` still
    /// selects poll(2); anything else gives epoll).
    ///
    /// # Errors
    /// As [`new`](EventLoop::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::without_io_uring().unwrap();
    /// assert!(!lp.uses_io_uring());
    /// ```
    pub fn without_io_uring() -> io::Result<EventLoop> {
        match Self::backend_from_env()? {
            #[cfg(target_os = "linux")]
            Some(Backend::IoUring | Backend::Epoll) | None => Self::with_backend(Backend::Epoll),
            _ => Self::with_backend(Backend::Poll),
        }
    }

    /// The backend `COSTACK_AIO` asks for, if it is set (and not empty).
    fn backend_from_env() -> io::Result<Option<Backend>> {
        let value = match std::env::var("COSTACK_AIO") {
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Ok(v) if v.is_empty() => return Ok(None),
            Ok(v) => v,
            Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
        };
        match Backend::from_name(&value) {
            Some(b) => Ok(Some(b)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("costack: COSTACK_AIO={value:?} is not one of io_uring, epoll, poll"),
            )),
        }
    }

    fn build(reactor: Reactor, uring: Uring) -> io::Result<EventLoop> {
        Ok(EventLoop {
            owner: Rc::new(Owner {
                inner: Inner::new(reactor, uring)?,
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Rc<Inner> {
        &self.owner.inner
    }

    /// Runs `f` in a coroutine on this loop, and the loop until `f`
    /// returns; returns its value. A panic in `f` is resumed here. A panic
    /// in a spawned coroutine is caught at its boundary (see
    /// [`JoinHandle::join`]); one in a bottom half propagates out of
    /// `block_on` (the loop stays usable).
    ///
    /// If `f` waits for something that can never happen, `block_on` waits
    /// forever, as a thread would.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use std::time::Duration;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let v = lp.block_on(|| {
    ///     aio::sleep(Duration::from_millis(1)); // the loop runs meanwhile
    ///     "done"
    /// });
    /// assert_eq!(v, "done");
    /// ```
    pub fn block_on<T: 'static, F: FnOnce() -> T + 'static>(&self, f: F) -> T {
        self.spawn(f)
            .run_loop_until_done()
            .unwrap_or_else(|p| panic::resume_unwind(p))
    }

    /// Spawns a coroutine running `f` on this loop; it starts in a coming
    /// iteration. The loop owns it until it finishes: dropping the returned
    /// handle detaches it, as with `std::thread::spawn`. A panic in it is
    /// caught at its boundary: [`JoinHandle::join`] returns it as `Err`;
    /// with the handle dropped, the panic hook has reported it and the loop
    /// and its other coroutines go on (one bad connection handler never
    /// takes a server down).
    ///
    /// Coroutines spawned by destructors while the loop is being dropped
    /// never run (their handles report a [`Cancelled`](super::Cancelled) payload).
    ///
    /// # Panics
    /// If no coroutine stack can be allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let h = lp.spawn(|| 6 * 7); // starts in a coming iteration
    /// assert_eq!(h.join().unwrap(), 42); // runs the loop until it is done
    /// ```
    pub fn spawn<T: 'static, F: FnOnce() -> T + 'static>(&self, f: F) -> JoinHandle<T> {
        super::join::spawn_on(self.inner(), f)
    }

    /// Runs `f` on this loop, outside any coroutine, in a coming iteration
    /// (a bottom half); the thread-local counterpart of
    /// [`LoopHandle::call_soon`].
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let ran = Rc::new(Cell::new(false));
    /// let r = ran.clone();
    /// lp.call_soon(move || r.set(true));
    /// while !ran.get() {
    ///     lp.poll(true);
    /// }
    /// ```
    pub fn call_soon<F: FnOnce() + 'static>(&self, f: F) {
        self.inner().call_soon_local(Box::new(f));
    }

    /// Runs one iteration of the loop (aio_poll): due timers, bottom
    /// halves, runnable coroutines, and fd events. With `blocking`, waits
    /// until at least one of those made progress; without, never waits.
    /// Returns whether anything made progress.
    ///
    /// A panic in a coroutine or bottom half propagates out of `poll`;
    /// work not yet run stays queued for the next call.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// assert!(!lp.poll(false)); // nothing to do: returns at once
    /// let h = lp.spawn(|| ());
    /// while !h.is_finished() {
    ///     lp.poll(true); // runs what is ready, waits when nothing is
    /// }
    /// ```
    pub fn poll(&self, blocking: bool) -> bool {
        self.inner().poll(blocking)
    }

    /// A thread-safe handle to post work to this loop from other threads.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let handle = lp.handle(); // Send + Sync
    /// let t = std::thread::spawn(move || handle.spawn(|| std::thread::current().id()));
    /// let remote = t.join().unwrap();
    /// lp.block_on(move || assert_eq!(remote.join().unwrap(), std::thread::current().id()));
    /// ```
    pub fn handle(&self) -> LoopHandle {
        LoopHandle::new(self.inner().remote().clone())
    }

    /// How many spawned coroutines have not finished yet.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let h = lp.spawn(|| ());
    /// assert_eq!(lp.task_count(), 1);
    /// h.join().unwrap();
    /// assert_eq!(lp.task_count(), 0);
    /// ```
    pub fn task_count(&self) -> usize {
        self.inner().task_count()
    }

    /// Sets how long, at most, the loop busy-polls for events before it
    /// blocks in the reactor (QEMU's `poll-max-ns`); zero turns polling
    /// off. The window it polls adapts between zero and this maximum: it
    /// grows while events come a little later than it, and drops to zero
    /// after a wait longer than the maximum (see
    /// [`set_poll_factors`](EventLoop::set_poll_factors)), so an idle
    /// loop does not spin; it also drops to zero for a few waits after
    /// the poll was preempted (something else needs this CPU) or found an
    /// event at once (the rest of a burst, better left to pile up while
    /// the thread sleeps, so it is read in fewer, larger reads).
    ///
    /// Polling trades CPU time for latency: an event that arrives while
    /// the loop polls spares the thread a sleep and a wake-up. It pays off
    /// for request/reply traffic with one request outstanding (a few tens
    /// of microseconds cover a round trip over loopback).
    ///
    /// New loops take the maximum from the environment variable
    /// `COSTACK_POLL_MAX_NS` (nanoseconds), or zero: no polling.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use std::time::Duration;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// lp.set_poll_max(Duration::from_micros(50));
    /// assert_eq!(lp.poll_max(), Duration::from_micros(50));
    /// lp.block_on(|| aio::sleep(Duration::from_millis(1)));
    /// ```
    pub fn set_poll_max(&self, max: Duration) {
        self.inner().busy_poll().set_max(max);
    }

    /// The longest the loop busy-polls before blocking (zero: it never
    /// does); see [`set_poll_max`](EventLoop::set_poll_max).
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use std::time::Duration;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// lp.set_poll_max(Duration::from_micros(20));
    /// assert_eq!(lp.poll_max(), Duration::from_micros(20));
    /// ```
    pub fn poll_max(&self) -> Duration {
        self.inner().busy_poll().max()
    }

    /// Sets how the polling window adapts (QEMU's `poll-grow` and
    /// `poll-shrink`): after a wait that a longer window would have
    /// caught, it is multiplied by `grow` (at least 2; from zero it starts
    /// at 4 µs); after a wait longer than the maximum, divided by `shrink`
    /// (0 or 1: back to zero). The defaults are 2 and 0.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use std::time::Duration;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// lp.set_poll_max(Duration::from_micros(100));
    /// lp.set_poll_factors(4, 2); // grow fast, halve after a long wait
    /// ```
    pub fn set_poll_factors(&self, grow: u32, shrink: u32) {
        self.inner().busy_poll().set_factors(grow, shrink);
    }

    /// How long the loop would busy-poll if it had to wait now: the
    /// adaptive window, between zero and [`poll_max`](EventLoop::poll_max).
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// assert!(lp.poll_window() <= lp.poll_max());
    /// ```
    pub fn poll_window(&self) -> Duration {
        self.inner().busy_poll().window()
    }

    /// Whether [`fs`](crate::fs) I/O of this loop goes through io_uring
    /// (probing the kernel on first call), rather than the thread pool.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// println!("fs I/O through io_uring: {}", lp.uses_io_uring());
    /// ```
    pub fn uses_io_uring(&self) -> bool {
        self.inner().uring().is_some()
    }

    /// Whether stream sockets' reads and writes go through the ring.
    fn socket_ring(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.inner().socket_ring().is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// The backend the loop runs on (probing io_uring on first call, as
    /// [`uses_io_uring`](EventLoop::uses_io_uring)). A loop from
    /// [`new`](EventLoop::new) with `COSTACK_AIO` unset runs on
    /// [`Backend::Epoll`] on Linux, with its [`fs`](crate::fs) I/O on
    /// io_uring where the kernel allows it (which `uses_io_uring` tells).
    ///
    /// ```
    /// use costack::aio::{Backend, EventLoop};
    ///
    /// let lp = EventLoop::with_backend(Backend::Epoll).unwrap();
    /// assert_eq!(lp.backend(), Backend::Epoll);
    /// ```
    pub fn backend(&self) -> Backend {
        if !self.inner().readiness().is_epoll() {
            Backend::Poll
        } else if self.socket_ring() {
            Backend::IoUring
        } else {
            Backend::Epoll
        }
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner();
        f.debug_struct("EventLoop")
            // Not `backend()`: formatting must not probe for io_uring.
            .field("reactor", &inner.readiness().name())
            .field("reactor_fd", &inner.readiness().raw_fd())
            .field("tasks", &inner.task_count())
            .field("run_queue", &inner.run_queue_len())
            .finish()
    }
}
