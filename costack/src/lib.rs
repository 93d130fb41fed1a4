//! Stackful coroutines after QEMU's, with the event loop, coroutine locks and
//! I/O that make them useful.
//!
//! A coroutine has its own stack, so code can look synchronous (`read()`,
//! `lock()`, `sleep()`) while under the covers it yields to a
//! single-threaded event loop and is entered again when its I/O completes.
//! Coroutines of one thread never run at the same time: races can only
//! happen across a yield.
//!
//! # A tour
//!
//! **Coroutines.** [`Coroutine::new`] creates one and runs nothing;
//! [`enter`](Coroutine::enter) runs it on its own stack until it calls
//! [`yield_now`] or returns, then returns to the caller.
//!
//! ```
//! use costack::{yield_now, Coroutine};
//! use std::cell::RefCell;
//! use std::rc::Rc;
//!
//! let log = Rc::new(RefCell::new(Vec::new()));
//! let l = log.clone();
//! let co = Coroutine::new(move || {
//!     l.borrow_mut().push("one");
//!     yield_now();
//!     l.borrow_mut().push("three");
//! });
//! co.enter();
//! log.borrow_mut().push("two");
//! co.enter();
//! assert_eq!(*log.borrow(), ["one", "two", "three"]);
//! assert!(co.is_finished());
//! ```
//!
//! **Generators.** A [`Generator`] is a coroutine that hands out values:
//! an `Iterator` written as a plain loop.
//!
//! ```
//! use costack::Generator;
//!
//! let fib = Generator::new(|y| {
//!     let (mut a, mut b) = (0u64, 1);
//!     loop {
//!         y.suspend(a);
//!         (a, b) = (b, a + b);
//!     }
//! });
//! assert_eq!(fib.take(8).collect::<Vec<_>>(), [0, 1, 1, 2, 3, 5, 8, 13]);
//! ```
//!
//! **The event loop.** An [`aio::EventLoop`] runs coroutines on one thread
//! and enters them again when what they wait for is there: a timer, a
//! descriptor, a thread-pool job, a future. [`block_on`](aio::EventLoop::block_on)
//! runs a closure as the first coroutine; [`aio::spawn`] adds more.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use std::time::{Duration, Instant};
//!
//! let t = Instant::now();
//! let sum = EventLoop::new().unwrap().block_on(|| {
//!     let jobs: Vec<_> = (1..=3u64)
//!         .map(|i| aio::spawn(move || { aio::sleep(Duration::from_millis(10)); i }))
//!         .collect();
//!     jobs.into_iter().map(|j| j.join().unwrap()).sum::<u64>()
//! });
//! assert_eq!(sum, 6);
//! assert!(t.elapsed() < Duration::from_millis(500)); // the sleeps overlapped
//! ```
//!
//! **I/O.** [`net`] sockets and [`fs`] files (unix; `fs` on Linux) are
//! `Read`/`Write` types whose calls yield instead of blocking (the `net`
//! module shows an echo server and client). Outside a loop they block
//! like std's, so the same types work everywhere.
//!
//! **Locks.** [`sync`] has [`CoMutex`](sync::CoMutex),
//! [`CoRwLock`](sync::CoRwLock), [`CoQueue`](sync::CoQueue) and
//! [`CoSemaphore`](sync::CoSemaphore): a contended lock suspends the
//! coroutine, not the thread. They are `Send + Sync` and work between
//! loops on different threads.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use costack::sync::CoMutex;
//! use std::rc::Rc;
//! use std::time::Duration;
//!
//! let total = EventLoop::new().unwrap().block_on(|| {
//!     let m = Rc::new(CoMutex::new(0));
//!     let workers: Vec<_> = (0..4)
//!         .map(|_| {
//!             let m = m.clone();
//!             aio::spawn(move || {
//!                 let mut g = m.lock();
//!                 aio::sleep(Duration::from_millis(1)); // others queue meanwhile
//!                 *g += 1;
//!             })
//!         })
//!         .collect();
//!     workers.into_iter().for_each(|w| w.join().unwrap());
//!     let v = *m.lock();
//!     v
//! });
//! assert_eq!(total, 4);
//! ```
//!
//! **Several threads.** An [`aio::IoThread`] (QEMU's iothread) is a named
//! thread running its own loop; its [`LoopHandle`](aio::LoopHandle) starts
//! coroutines there from anywhere and [`RemoteJoinHandle`](aio::RemoteJoinHandle)s
//! bring their results back. Work crosses threads only this way (and
//! through [`aio::Waker`]): a coroutine never moves.
//!
//! ```
//! use costack::aio::IoThread;
//!
//! let io = IoThread::spawn("worker").unwrap();
//! let h = io.handle().spawn(|| std::thread::current().name().map(str::to_owned));
//! assert_eq!(h.join().unwrap().as_deref(), Some("worker"));
//! ```
//!
//! **Channels.** [`channel`] has crossbeam-channel's API (see
//! [Passing messages](#passing-messages) below).
//!
//! **Async Rust.** A [`future::CoFuture`] is a coroutine polled as a
//! `Future` by any executor (tokio, `futures`), and
//! [`aio::wait_future`] waits for a future from coroutine code; see the
//! [`future`] module and `examples/tokio_interop.rs`.
//!
//! # Passing messages
//!
//! [`channel`] is crossbeam-channel 0.5's API: [`bounded`](channel::bounded)
//! (`bounded(0)` is a rendezvous), [`unbounded`](channel::unbounded),
//! timer channels, [`select!`] and [`Select`](channel::Select). Code
//! written for crossbeam compiles against it unchanged
//! (`use costack::channel as crossbeam_channel;`), and crossbeam's own
//! test suite passes against it.
//!
//! **What "yields instead of blocking" means.** On a plain thread a
//! `recv()` on an empty channel blocks the thread, exactly as crossbeam's
//! does. In a coroutine on an event loop the same call *suspends the
//! coroutine*: the loop goes on running its other coroutines, timers and
//! I/O, and enters the coroutine again when a message arrives, whether
//! it comes from a coroutine of the same loop, one on another loop's
//! thread, or a plain thread. So crossbeam-style code (a worker that loops
//! on `recv()`, a pipeline stage) can run as thousands of coroutines on
//! one thread, where with crossbeam each would need a thread. Two things
//! change: a blocked operation is a wait point (a cancelled coroutine
//! unwinds from it, with no effect on the channel), and inside a
//! [`CoFuture`](future::CoFuture) the `*_timeout` calls and timer channels
//! need costack's own loop, as [`aio::sleep`] does.
//!
//! A worker pool: coroutines share one receiver (each job goes to one of
//! them) and report on another channel.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use costack::channel::{bounded, unbounded};
//! use std::time::Duration;
//!
//! let total = EventLoop::new().unwrap().block_on(|| {
//!     let (jobs, queue) = bounded::<u64>(8);
//!     let (done, results) = unbounded::<u64>();
//!     for _ in 0..4 {
//!         let (queue, done) = (queue.clone(), done.clone());
//!         aio::spawn(move || {
//!             for job in queue.iter() {
//!                 aio::sleep(Duration::from_millis(1)); // I/O, say: the others run
//!                 done.send(job * job).unwrap();
//!             }
//!         });
//!     }
//!     drop(done); // `results` ends when every worker has finished
//!     for job in 1..=20 {
//!         jobs.send(job).unwrap(); // yields while the queue is full
//!     }
//!     drop(jobs); // the workers' loops end
//!     results.iter().sum::<u64>()
//! });
//! assert_eq!(total, (1..=20).map(|j| j * j).sum::<u64>());
//! ```
//!
//! Fan-in from several threads and loops into one coroutine, and a select
//! with a timeout: whichever comes first wins, and exactly one operation
//! happens.
//!
//! ```
//! use costack::aio::{EventLoop, IoThread};
//! use costack::channel::{after, select, unbounded};
//! use std::time::Duration;
//!
//! let (events, inbox) = unbounded::<String>();
//! let io = IoThread::spawn("io").unwrap();
//! let from_loop = events.clone();
//! io.handle().spawn(move || from_loop.send("from a coroutine on another loop".into()).unwrap());
//! let from_thread = events.clone();
//! std::thread::spawn(move || from_thread.send("from a plain thread".into()).unwrap());
//! drop(events);
//!
//! let got = EventLoop::new().unwrap().block_on(move || {
//!     let mut got = Vec::new();
//!     let deadline = after(Duration::from_secs(10));
//!     loop {
//!         select! {
//!             recv(inbox) -> msg => match msg {
//!                 Ok(m) => got.push(m),
//!                 Err(_) => break, // every sender is gone
//!             },
//!             recv(deadline) -> _ => panic!("timed out"),
//!             // Or: default(Duration::from_millis(100)) => ...,
//!         }
//!     }
//!     got
//! });
//! assert_eq!(got.len(), 2);
//! ```
//!
//! # When to use it, and what it costs
//!
//! Use costack for code that waits a lot and reads best as straight-line
//! code: protocol servers and clients, storage stacks, deep recursion that
//! waits at the leaves (a parser fed by a socket, a tree walk over remote
//! data), or for porting blocking code without rewriting it as `async`.
//! Async Rust keeps each task's state in a compiler-sized struct, so a
//! million idle tasks cost little; a coroutine owns a whole stack. Here a
//! stack's address space is reserved (1 MiB by default) but only the pages
//! it touches are memory: about 4 KiB for a small coroutine, and guard
//! pages cost no extra mappings on recent kernels. Switching is a few
//! nanoseconds. Compared with corosensei or generator, costack adds the
//! event loop, the locks, I/O and async interop around the same kind of
//! switch.
//!
//! # Threads: why the types are `!Send`
//!
//! [`Coroutine`], [`aio::EventLoop`], [`aio::JoinHandle`] and the lock
//! guards are `!Send`: a coroutine runs on the thread that created it, for
//! ever, so a thread-local read before a yield is the same one after it,
//! and `Rc`/`RefCell` are safe to share between the coroutines of a
//! thread. To use another thread, post work to its loop
//! ([`aio::LoopHandle`]) or wake a coroutine from there ([`aio::Waker`]).
//!
//! # Stacks
//!
//! The default size is [`pool::DEFAULT_STACK_SIZE`] (1 MiB, as QEMU's and
//! corosensei's); [`Builder::stack_size`] picks another (at least
//! [`pool::MIN_STACK_SIZE`]). Size a stack for the deepest call chain the
//! coroutine makes, with room for what it calls (formatting, TLS
//! libraries and the like want tens of KiB). Every stack has a guard page
//! below it: overflowing it aborts the process with `stack overflow in
//! coroutine '<name>'` on stderr, never memory corruption. Finished
//! coroutines' stacks are pooled per thread ([`pool`]), so creating one is
//! cheap after the first few.
//!
//! # Panics, in one place
//!
//! - A panic inside a coroutine finishes it and comes out of the
//!   [`enter`](Coroutine::enter) (or wake, or loop poll) that resumed it,
//!   with the same payload.
//! - [`aio::spawn`] and friends catch a spawned coroutine's panic at its
//!   boundary, as `std::thread` does: [`join`](aio::JoinHandle::join)
//!   returns it as `Err`, and with the handle dropped the panic hook reports
//!   it and the loop goes on.
//! - [`block_on`](aio::EventLoop::block_on) resumes its own closure's panic.
//! - A [`Generator`]'s body panicking makes `next()` panic.
//! - Misuse panics with a clear message: entering a running coroutine
//!   (`re-entered recursively`), a finished one (`finished`), yielding
//!   outside one (`not in a coroutine`).
//! - Dropping a suspended coroutine unwinds its stack, so its destructors
//!   run. A destructor that then waits (a contended lock, a sleep) cannot
//!   be resumed by anyone: the process aborts naming the coroutine
//!   (`yielded while being dropped`). An event loop that is dropped drives
//!   such waits to their end instead.
//!
//! # Cancellation and deadlines
//!
//! A coroutine is cancelled the way dropping a future cancels it at its
//! `.await`: it unwinds from the point where it waits.
//! [`JoinHandle::cancel`](aio::JoinHandle::cancel) (or
//! [`RemoteJoinHandle::cancel`](aio::RemoteJoinHandle::cancel), from any
//! thread) asks for it; [`aio::timeout`] runs a closure in the calling
//! coroutine and cancels it up to the `timeout` when the deadline passes;
//! [`aio::scope`] starts children that may borrow from the caller's stack
//! and never outlive it.
//!
//! ```
//! use costack::aio::{self, Cancelled, EventLoop};
//! use std::time::Duration;
//!
//! EventLoop::new().unwrap().block_on(|| {
//!     // A deadline on anything that waits: a read, a lock, a join.
//!     let r = aio::timeout(Duration::from_millis(10), || aio::sleep(Duration::from_secs(60)));
//!     assert!(r.is_err());
//!
//!     // Stopping something started.
//!     let worker = aio::spawn(|| loop {
//!         aio::sleep(Duration::from_millis(1)); // a wait point
//!     });
//!     aio::sleep(Duration::from_millis(5));
//!     worker.cancel();
//!     assert!(worker.join().unwrap_err().is::<Cancelled>());
//!
//!     // Children that borrow, and are all done when the scope returns.
//!     let names = ["a", "b", "c"];
//!     let lengths = aio::scope(|s| {
//!         let handles: Vec<_> = names.iter().map(|n| s.spawn(move || n.len())).collect();
//!         handles.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
//!     });
//!     assert_eq!(lengths, 3);
//! });
//! ```
//!
//! **Wait points.** A cancellation is delivered at the calls that may
//! suspend: [`aio::yield_now`], [`aio::sleep`], the descriptor waits, every
//! [`net`] and [`fs`] call, [`aio::run_blocking`], [`aio::wait_future`],
//! `join` in a coroutine, and the waiting calls of [`sync`]. The I/O calls,
//! `sleep` and `yield_now` deliver it even when they would not have waited,
//! and a coroutine whose I/O keeps completing without waiting still yields
//! to its loop now and then (a fair share, like tokio's coop budget), so a
//! hot connection cannot starve a timer or a `cancel()`. An uncontended
//! lock never yields, and is no wait point then. A coroutine that computes
//! without waiting is not interrupted: nothing is pre-empted.
//!
//! **What unwinding means for your code.** The coroutine unwinds with the
//! payload [`aio::Cancelled`], raised without the panic hook (nothing is
//! printed), and its destructors run: guards unlock, files close. Nothing
//! is lost or done twice: a lock, a permit or a message handed to a waiter
//! that is being cancelled goes to the next one, and an I/O request in
//! flight is cancelled and its end awaited before the call unwinds (a
//! cancelled read consumes no data). An operation that completed before
//! the cancellation reached it returns normally; the cancellation comes at
//! the next wait point. While a coroutine unwinds, its wait points deliver
//! nothing, so destructors may lock, sleep and do I/O to clean up; for
//! cleanup that must wait outside a destructor, [`aio::shield`] runs a
//! closure whose wait points deliver nothing. A cancellation is sticky:
//! `catch_unwind` can catch the unwind, but the next wait point raises it
//! again, and a value the coroutine returns after that does not count
//! (`join` gives `Err`). Cancellations unwind to their own scope: an outer
//! deadline or a `cancel()` passes through inner `timeout`s, and a panic
//! passes through `timeout` unchanged.
//!
//! **Scopes.** Children of [`aio::scope`] may borrow anything that
//! outlives the scope, which tokio's tasks cannot do soundly: the scope
//! returns, or unwinds, only once every child has finished. A child's
//! panic cancels the body and the other children, then `scope` resumes
//! that panic; a panic or cancellation of the body cancels the children
//! and waits for them before leaving.
//!
//! **Compared with tokio.** `JoinHandle::cancel` is tokio's `abort`, but
//! the coroutine's stack unwinds from where it waits instead of a future
//! being dropped between polls; `aio::timeout(d, || f())` is
//! `tokio::time::timeout(d, f)` on a closure; `aio::scope` is a `JoinSet`
//! whose tasks may borrow and that waits for its tasks even when the body
//! panics. Unwinding costs more than dropping a future (the unwinder walks
//! the coroutine's frames twice; see BENCHMARKS.md for the figures), a
//! timeout that does not expire less (its timer is armed only if its body
//! waits).
//!
//! **`panic = "abort"`.** A build that cannot unwind cannot cancel: a
//! cancellation that reaches a wait point there aborts the process with a
//! message naming the coroutine (never undefined behaviour). Such builds
//! can use timeouts on I/O ([`net`] timeouts, [`aio::wait_readable_timeout`])
//! instead.
//!
//! # Pitfalls
//!
//! - **Blocking the loop.** A loop runs one coroutine at a time: std I/O,
//!   `std::thread::sleep`, a blocking mutex held across a long wait, or a
//!   CPU-bound loop stalls every other coroutine of that thread. Use
//!   [`net`]/[`fs`], [`aio::sleep`], the [`sync`] locks, and
//!   [`aio::run_blocking`] for work that must block or compute for long.
//! - **`costack::yield_now` is not `aio::yield_now`.** [`yield_now`]
//!   suspends the coroutine until *someone* enters or wakes it; in a
//!   coroutine of a loop, nobody will unless you arranged it.
//!   [`aio::yield_now`] lets the loop's other work run and then continues.
//!   When a loop's [`block_on`](aio::EventLoop::block_on) (or a
//!   [`join`](aio::JoinHandle::join) outside a coroutine) sees that
//!   nothing could ever wake its coroutine again (no timers, descriptors,
//!   bottom halves, I/O in flight, [`aio::Waker`]s or
//!   [`LoopHandle`](aio::LoopHandle)s left), it panics with a message
//!   saying so instead of hanging:
//!
//! ```should_panic
//! use costack::aio::EventLoop;
//!
//! // Panics: "the event loop would wait forever: ..."
//! EventLoop::new().unwrap().block_on(costack::yield_now);
//! ```
//!
//! - **Tokio futures on costack's loop** need a runtime whose driver runs
//!   elsewhere: see [`aio::wait_future`].
//!
//! # Cargo features
//!
//! | feature | what it does |
//! |---|---|
//! | `tracing` | emits `tracing` events at create, enter, yield and terminate (QEMU's trace points); nothing is compiled in without it |
//! | `tokio` | lets [`aio::wait_future`] detect a tokio `current_thread` runtime entered on the loop's thread, which could never wake it, and panic instead of hanging |
//! | `ucontext` | switches with glibc's `makecontext`/`swapcontext` instead of assembly (x86_64 Linux) |
//! | `fibers` | switches with Windows fibers (`CreateFiberEx`/`SwitchToFiber`) instead of assembly |
//! | `thread-backend` | runs each coroutine on an OS thread handed a baton (portable and slow; always on under Miri) |
//! | `asan`, `tsan` | tell AddressSanitizer/ThreadSanitizer about stack switches (nightly, with `-Zsanitizer`) |
//!
//! # Platforms
//!
//! Everything but [`fs`] builds on Linux (x86_64, aarch64, riscv64), macOS
//! (x86_64, aarch64), FreeBSD and Windows (x86_64); [`fs`] needs Linux. The
//! event loop waits in epoll, io_uring or poll(2) on Linux (chosen with
//! [`aio::Backend`]), in poll(2) on the other unix systems and in `WSAPoll`
//! on Windows, where [`aio::wait_readable`] and friends take a
//! `BorrowedSocket` and [`net`] has TCP and UDP only.
//!
//! # Glossary: QEMU's names and costack's
//!
//! | QEMU | costack |
//! |---|---|
//! | `qemu_coroutine_create` / `_enter` / `_yield` / `_self` | [`Coroutine::new`], [`Coroutine::enter`], [`yield_now`], [`current`] |
//! | `qemu_in_coroutine`, `qemu_coroutine_entered` | [`in_coroutine`], [`Coroutine::is_entered`] |
//! | `aio_co_wake`, `aio_co_schedule` | [`Coroutine::wake`], [`aio::Waker`], [`aio::schedule`] |
//! | `AioContext`, `aio_poll` | [`aio::EventLoop`], [`EventLoop::poll`](aio::EventLoop::poll) |
//! | bottom half (`aio_bh_schedule_oneshot`) | [`LoopHandle::call_soon`](aio::LoopHandle::call_soon) |
//! | `qemu_co_sleep_ns` | [`aio::sleep`] |
//! | `thread_pool_submit_co` | [`aio::run_blocking`] |
//! | fdmon-epoll / fdmon-poll / io_uring | [`aio::Backend`] |
//! | iothread | [`aio::IoThread`] |
//! | Go's channels and `select` (no QEMU counterpart) | [`channel`], [`select!`] |
//! | `CoMutex`, `CoRwlock`, `CoQueue`, co-shared-resource | [`sync::CoMutex`], [`sync::CoRwLock`], [`sync::CoQueue`], [`sync::CoSemaphore`] |
//! | `qemu_co_queue_next` / `_restart_all` / `qemu_co_enter_next` | [`CoQueue::restart_next`](sync::CoQueue::restart_next), [`restart_all`](sync::CoQueue::restart_all), [`enter_next`](sync::CoQueue::enter_next) |
//! | `poll-max-ns` | [`EventLoop::set_poll_max`](aio::EventLoop::set_poll_max) |
//!
//! Layers, each depending only on those below: `net`/`fs` (coroutine I/O) →
//! [`aio`] (event loop), [`sync`] (locks) and [`channel`] → the coroutine core (this
//! crate's root) → stacks and the per-architecture switch.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Without the event loop (unix only for now), its hooks in the core and
// the mailbox are unused.
#![cfg_attr(not(any(unix, windows)), allow(dead_code))]

/// Emits a `tracing` event for a coroutine life-cycle point when the
/// `tracing` feature is on; nothing otherwise.
macro_rules! trace_event {
    ($what:literal, $co:expr) => {{
        #[cfg(feature = "tracing")]
        {
            let co = $co;
            tracing::trace!(
                target: "costack::coroutine",
                co = ?(co as *const _),
                name = co.name().unwrap_or(""),
                $what
            );
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = &$co;
        }
    }};
}

pub mod aio;
mod arch;
pub mod channel;
mod coroutine;
pub mod debug;
#[cfg(target_os = "linux")]
#[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
pub mod fs;
pub mod future;
mod generator;
#[cfg(any(unix, windows))]
#[cfg_attr(docsrs, doc(cfg(any(unix, windows))))]
pub mod net;
mod stack;
pub mod sync;
#[cfg(any(unix, windows))]
mod sys;

pub use coroutine::{current, in_coroutine, yield_now, Builder, Coroutine};
pub use generator::{Generator, Yielder};

/// The per-thread stack pool.
pub mod pool {
    pub use crate::stack::pool::{pooled, trim, POOL_BYTES};
    pub use crate::stack::{DEFAULT_STACK_SIZE, MIN_STACK_SIZE};
}
