//! The event loops and the accept loop: connections are accepted on the
//! main thread's loop and spread round-robin over it and the worker loops
//! ([`IoThread`]s), each served by its own coroutine
//! ([`serve`]); a stop cancels the accept, then the loops
//! run until the last connection is gone ([`Server::run`]).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use costack::aio::{self, EventLoop, IoThread, LoopHandle};
use costack::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::{serve, Shared};

/// The listening socket.
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A Unix socket, with the path its clients are logged under.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

/// How the server's event loops run.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// Event loops in all (`--threads`): the main thread's and
    /// `threads - 1` workers (at least the main one).
    pub threads: u32,
    /// How long a loop busy-polls at most before sleeping
    /// ([`EventLoop::set_poll_max`]).
    pub poll_max: Duration,
    /// How the polling window grows and shrinks
    /// ([`EventLoop::set_poll_factors`]).
    pub poll_factors: (u32, u32),
}

impl LoopOptions {
    fn configure(&self, ev: &EventLoop) {
        ev.set_poll_max(self.poll_max);
        ev.set_poll_factors(self.poll_factors.0, self.poll_factors.1);
    }
}

/// A server ready to serve: its listener, its loops started.
pub struct Server {
    ev: EventLoop,
    listener: Listener,
    shared: Arc<Shared>,
    workers: Workers,
    max_clients: usize,
}

impl Server {
    /// Starts the worker loops (`loops.threads - 1` [`IoThread`]s named
    /// `nbd-loop-N`) and tunes them and `ev`, the main thread's loop, as
    /// `loops` says. Clients are accepted only by [`run`](Server::run);
    /// until then they wait in the listen backlog. `max_clients` is
    /// `-e/--shared` (0: no limit).
    ///
    /// # Errors
    /// If a worker loop cannot be started.
    pub fn start(
        ev: EventLoop,
        listener: Listener,
        shared: Arc<Shared>,
        max_clients: usize,
        loops: &LoopOptions,
    ) -> io::Result<Server> {
        let mut workers = Workers {
            threads: Vec::new(),
            shared: shared.clone(),
        };
        for i in 1..loops.threads {
            let options = loops.clone();
            let thread =
                IoThread::spawn_with(&format!("nbd-loop-{i}"), move |ev| options.configure(ev))
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot start the event loop: {e}"))
                    })?;
            workers.threads.push(thread);
        }
        loops.configure(&ev);
        Ok(Server {
            ev,
            listener,
            shared,
            workers,
            max_clients,
        })
    }

    /// Serves until the server stops ([`Lifecycle::request_stop`]) and its
    /// last connection is gone ([`Lifecycle::drained`]), then stops the
    /// worker loops.
    ///
    /// [`Lifecycle::request_stop`]: super::lifecycle::Lifecycle::request_stop
    /// [`Lifecycle::drained`]: super::lifecycle::Lifecycle::drained
    ///
    /// # Errors
    /// If the accept loop fails, or a worker loop panicked.
    pub fn run(self) -> io::Result<()> {
        let Server {
            ev,
            listener,
            shared,
            workers,
            max_clients,
        } = self;
        let handles = workers.threads.iter().map(IoThread::handle).collect();
        let accept_shared = shared.clone();
        ev.block_on(move || {
            let lifecycle = &shared.lifecycle;
            let accepting =
                aio::spawn(move || accept_loop(listener, accept_shared, handles, max_clients));
            // A stop cancels the accept wherever it waits (the listener is
            // dropped as it unwinds); then the connections finish.
            lifecycle.stop.wait();
            accepting.cancel();
            let accepted = match accepting.join() {
                Ok(r) => r,
                Err(p) if p.is::<aio::Cancelled>() => Ok(()),
                Err(p) => std::panic::resume_unwind(p),
            };
            lifecycle.drained.wait();
            accepted
        })?;
        workers.stop()
    }
}

/// The worker loops. Each runs until the server has drained (a stop came
/// and every connection is gone): stopping an [`IoThread`] unwinds the
/// coroutines still suspended on it, which then are none of its
/// connections.
struct Workers {
    threads: Vec<IoThread>,
    shared: Arc<Shared>,
}

impl Workers {
    /// Stops and joins every worker loop (the server has drained).
    fn stop(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in std::mem::take(&mut self.threads) {
            let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| thread.stop()));
            if stopped.is_err() {
                result = Err(io::Error::other("an event-loop thread panicked"));
            }
        }
        result
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Left without `stop` (an error, a panic): before the server has
        // drained, the loops may still serve connections; they are left
        // running, to end with the process.
        if !self.shared.lifecycle.drained.is_open() {
            for thread in self.threads.drain(..) {
                std::mem::forget(thread);
            }
        }
    }
}

/// Accepts clients until the server stops (its owner cancels it then).
fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    loops: Vec<LoopHandle>,
    max_clients: usize,
) -> io::Result<()> {
    let mut next = 0usize;
    while !shared.stopping.load(Ordering::SeqCst) {
        // As qemu-nbd, a client beyond -e waits (in the listen backlog)
        // for a slot rather than being turned away: once one is pending,
        // it is accepted only while a slot is free. Only established
        // clients count: sockets that never finish negotiating cannot
        // lock real clients out (they are bounded on their own, below).
        if max_clients != 0 {
            if let Err(e) = aio::wait_readable(listener.as_fd()) {
                tracing::warn!(error = %e, "waiting for a client failed");
                aio::sleep(Duration::from_millis(10));
                continue;
            }
            shared.slots.wait_for_free(max_clients);
        }
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Conn::Tcp(s), a.to_string())),
            Listener::Unix(l, path) => l
                .accept()
                .map(|(s, _)| (Conn::Unix(s), path.display().to_string())),
        };
        let (conn, peer) = match accepted {
            Ok(_) if shared.stopping.load(Ordering::SeqCst) => break,
            Ok(c) => c,
            Err(_) if shared.stopping.load(Ordering::SeqCst) => break,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                aio::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Negotiating connections are bounded: wait for one to end, or
        // to stall and be dropped (never one making progress).
        let dropped = shared.wait_for_room_to_negotiate();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped stalled negotiating connections to make room"
            );
        }
        shared.lifecycle.client_came(&shared);
        // Round-robin over this loop (index 0) and the worker loops.
        let target = next % (loops.len() + 1);
        next = next.wrapping_add(1);
        let slot = Slot(shared.clone());
        if target == 0 {
            aio::spawn(move || conn.serve(peer, slot, max_clients));
        } else {
            let conn = conn.into_std();
            loops[target - 1]
                .spawn(move || StdConn::into_costack(conn).serve(peer, slot, max_clients));
        }
    }
    Ok(())
}

/// A connection's place among the server's clients, given back however
/// its handler ends (or if it never starts: a loop dropped the work): a
/// panic is caught at the coroutine's boundary and the server goes on, so
/// the slot must not leak with it, nor hold up a clean stop.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lifecycle.client_left(&self.0);
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connection on its way to another loop thread.
enum StdConn {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Conn {
    fn into_std(self) -> StdConn {
        match self {
            Conn::Tcp(s) => StdConn::Tcp(s.into_std()),
            Conn::Unix(s) => StdConn::Unix(s.into_std()),
        }
    }

    fn serve(self, peer: String, slot: Slot, max_clients: usize) {
        let _here = LoopConnection::new();
        match self {
            Conn::Tcp(s) => {
                let _ = s.set_nodelay(true);
                serve(s, peer, slot.0.clone(), max_clients)
            }
            Conn::Unix(s) => serve(s, peer, slot.0.clone(), max_clients),
        }
    }
}

impl StdConn {
    fn into_costack(self) -> Conn {
        match self {
            StdConn::Tcp(s) => Conn::Tcp(TcpStream::from_std(s).expect("socket joins the loop")),
            StdConn::Unix(s) => Conn::Unix(UnixStream::from_std(s).expect("socket joins the loop")),
        }
    }
}

thread_local! {
    /// Connections served by this thread's event loop.
    static LOOP_CONNECTIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts a connection on its loop; when the loop's last one ends, gives
/// idle memory back to the system: the coroutine stacks its requests left
/// in the pool (up to `costack::pool::POOL_BYTES` a thread, each with the
/// pages it touched) and the heap that freed buffers left behind. A busy
/// server keeps both for the next requests; an idle one need not.
struct LoopConnection;

impl LoopConnection {
    fn new() -> Self {
        LOOP_CONNECTIONS.with(|n| n.set(n.get() + 1));
        LoopConnection
    }
}

impl Drop for LoopConnection {
    fn drop(&mut self) {
        let left = LOOP_CONNECTIONS.with(|n| {
            n.set(n.get() - 1);
            n.get()
        });
        if left == 0 {
            costack::pool::trim();
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only returns free heap pages to the
            // kernel; it takes glibc's own locks.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
