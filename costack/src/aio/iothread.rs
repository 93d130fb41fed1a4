//! QEMU's iothread: a named thread that runs an event loop until stopped.

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use super::{EventLoop, LoopHandle};

/// A named thread running an [`EventLoop`] (QEMU's iothread).
///
/// Work reaches it through its [`handle`](IoThread::handle):
/// [`LoopHandle::spawn`] starts coroutines on it, [`LoopHandle::call_soon`]
/// runs bottom halves. A panic in a bottom half is reported by the panic
/// hook and the loop goes on; panics of its coroutines are caught as on any
/// loop (see [`LoopHandle::spawn`]).
///
/// [`stop`](IoThread::stop) (or dropping the `IoThread`) stops the loop,
/// unwinds the coroutines still suspended on it, and joins the thread.
///
/// ```
/// use costack::aio::{self, IoThread};
/// use std::time::Duration;
///
/// let io = IoThread::spawn("disk-io").unwrap();
/// let jobs: Vec<_> = (0..4u64)
///     .map(|i| io.handle().spawn(move || { aio::sleep(Duration::from_millis(i)); i * i }))
///     .collect();
/// let squares: Vec<u64> = jobs.into_iter().map(|h| h.join().unwrap()).collect();
/// assert_eq!(squares, [0, 1, 4, 9]);
/// io.stop();
/// ```
pub struct IoThread {
    handle: LoopHandle,
    stopping: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl IoThread {
    /// Starts a thread named `name` with a new event loop on it.
    ///
    /// # Errors
    /// If the thread cannot be spawned or its loop cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::IoThread;
    ///
    /// let io = IoThread::spawn("disk").unwrap();
    /// assert_eq!(io.handle().spawn(|| 2 + 2).join().unwrap(), 4);
    /// // Dropped (or stopped): its loop stops and the thread is joined.
    /// ```
    pub fn spawn(name: &str) -> io::Result<IoThread> {
        Self::spawn_with(name, |_| {})
    }

    /// As [`spawn`](IoThread::spawn), running `configure` on the new loop,
    /// on its thread, before any work can reach it: to set what only the
    /// loop itself offers (its polling, say).
    ///
    /// # Errors
    /// If the thread cannot be spawned or its loop cannot be created
    /// (`configure` is not called then).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::IoThread;
    /// use std::time::Duration;
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let io = IoThread::spawn_with("polling", move |lp| {
    ///     lp.set_poll_max(Duration::from_micros(50));
    ///     lp.set_poll_factors(2, 4);
    ///     let on = std::thread::current().name().map(str::to_owned);
    ///     tx.send((on, lp.poll_max())).unwrap();
    /// })
    /// .unwrap();
    /// // Configured on its own thread, before `spawn_with` returned.
    /// let (on, max) = rx.try_recv().unwrap();
    /// assert_eq!(on.as_deref(), Some("polling"));
    /// assert_eq!(max, Duration::from_micros(50));
    /// assert_eq!(io.handle().spawn(|| 6 * 7).join().unwrap(), 42);
    /// io.stop();
    /// ```
    pub fn spawn_with(
        name: &str,
        configure: impl FnOnce(&EventLoop) + Send + 'static,
    ) -> io::Result<IoThread> {
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let lp = match EventLoop::new() {
                    Ok(lp) => lp,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                configure(&lp);
                if tx.send(Ok(lp.handle())).is_err() {
                    return;
                }
                while !flag.load(Ordering::Acquire) {
                    // A panicking bottom half was reported by the hook; an
                    // iothread serves everyone else on.
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| lp.poll(true)));
                }
                // Dropping the loop here unwinds its coroutines.
            })?;
        match rx.recv() {
            Ok(Ok(handle)) => Ok(IoThread {
                handle,
                stopping,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other(
                "costack: the iothread died while starting",
            )),
        }
    }

    /// A handle to post work to the thread's loop.
    ///
    /// ```
    /// use costack::aio::IoThread;
    ///
    /// let io = IoThread::spawn("bh").unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// io.handle().call_soon(move || tx.send(std::thread::current().name().map(str::to_owned)).unwrap());
    /// assert_eq!(rx.recv().unwrap().as_deref(), Some("bh"));
    /// ```
    pub fn handle(&self) -> LoopHandle {
        self.handle.clone()
    }

    /// Stops the loop (coroutines still suspended on it are unwound, so
    /// their destructors run) and joins the thread.
    ///
    /// ```
    /// use costack::aio::{self, IoThread};
    /// use std::time::Duration;
    ///
    /// let io = IoThread::spawn("stopping").unwrap();
    /// let never = io.handle().spawn(|| aio::sleep(Duration::from_secs(3600)));
    /// io.stop(); // unwinds the sleeper and joins the thread
    /// assert!(never.join().is_err()); // cancelled
    /// ```
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::Release);
        // Wakes the loop so that it sees the flag.
        self.handle.call_soon(|| {});
        if thread.join().is_err() && !thread::panicking() {
            panic!("costack: an iothread panicked while stopping");
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl fmt::Debug for IoThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.thread.as_ref().and_then(|t| t.thread().name());
        f.debug_struct("IoThread").field("name", &name).finish()
    }
}
