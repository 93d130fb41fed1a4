//! When the server stops, told to its event loops through costack's own
//! wake-ups.
//!
//! A stop is requested from a plain thread (the signal thread) and awaited
//! by coroutines on every loop: the accept loop's owner cancels the accept
//! when the stop comes, and each loop ends once the last connection is
//! gone. Both moments are [`Gate`]s, costack channels whose sender is
//! dropped to open them: the waiting coroutine is woken through its loop's
//! notifier (an eventfd write), whatever the loop waits for and however
//! long it has slept. Nothing depends on reaching the listening socket
//! (a Unix socket's path can be removed or replaced while the server
//! runs, a TCP address filtered, a socket-activated listener has no
//! address we chose), and no loop polls a flag on a timer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use costack::channel::{bounded, Receiver, Sender};

use super::Shared;

/// A one-way door: closed until [`open`](Gate::open), then open for good.
/// [`wait`](Gate::wait) suspends a coroutine (or blocks a plain thread)
/// until it opens.
pub struct Gate {
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

impl Default for Gate {
    fn default() -> Self {
        let (sender, receiver) = bounded(0);
        Gate {
            sender: Mutex::new(Some(sender)),
            receiver,
        }
    }
}

impl Gate {
    /// Opens the gate: every waiter, now and later, goes through.
    pub fn open(&self) {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Dropping the only sender disconnects the channel, which wakes
        // every receiver blocked on it.
        drop(sender);
    }

    /// Whether [`open`](Gate::open) was called.
    pub fn is_open(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Waits until the gate is open (nothing is ever sent: a receive
    /// returns only once the channel is disconnected).
    pub fn wait(&self) {
        let _ = self.receiver.recv();
    }
}

/// The server's two moments: a stop was requested, and (after it) the
/// last connection is gone; and what leads to a stop besides a signal.
pub struct Lifecycle {
    /// Opened by [`request_stop`](Lifecycle::request_stop).
    pub stop: Gate,
    /// Opened once the server is stopping and has no connection left.
    pub drained: Gate,
    /// `-t/--persistent`: keep serving when the last client leaves.
    persistent: AtomicBool,
    /// A client that reached the transmission phase ended since the
    /// server last had no connection.
    served: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            stop: Gate::default(),
            drained: Gate::default(),
            persistent: AtomicBool::new(true),
            served: AtomicBool::new(false),
        }
    }
}

impl Lifecycle {
    /// Stops `shared` (no new requests, see [`Shared::stop`]) and tells
    /// the loops. Callable from any thread, any number of times.
    pub fn request_stop(&self, shared: &Shared) {
        shared.stop();
        self.stop.open();
        // A connection that leaves from now on sees `stopping`; one that
        // left before is not counted any more (both orders are SeqCst).
        if shared.clients.load(Ordering::SeqCst) == 0 {
            self.drained.open();
        }
    }

    /// Counts a new connection (before it is handed to a loop).
    pub fn client_came(&self, shared: &Shared) {
        shared.clients.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a connection gone; the last one gone after a stop opens
    /// [`drained`](Lifecycle::drained). Without `--persistent`, the last
    /// one gone after a client was served stops the server, as qemu-nbd
    /// exits after its last client (one that only listed the exports, or
    /// never finished its handshake, does not count).
    pub fn client_left(&self, shared: &Shared) {
        let left = shared.clients.fetch_sub(1, Ordering::SeqCst) - 1;
        if left != 0 {
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            self.drained.open();
        } else if !self.persistent.load(Ordering::SeqCst)
            && self.served.swap(false, Ordering::SeqCst)
        {
            tracing::info!("the last client left: stopping (no --persistent)");
            self.request_stop(shared);
        }
    }

    /// Sets `-t/--persistent` (the default here is to keep serving; the
    /// command line's is qemu-nbd's, to stop after the last client).
    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::SeqCst);
    }

    /// A client in the transmission phase ended: it counts as served.
    /// Called (as its `-e` slot is given back, see
    /// [`Slots`](super::Slots)) before its connection is counted gone.
    pub fn session_ended(&self) {
        self.served.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use costack::aio::{self, EventLoop};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_gate_opened_from_another_thread_wakes_a_sleeping_loop() {
        let gate = Arc::new(Gate::default());
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                gate.open();
            })
        };
        let start = Instant::now();
        // No timer on the loop: only the gate's wake can end the wait.
        EventLoop::new().unwrap().block_on({
            let gate = gate.clone();
            move || gate.wait()
        });
        assert!(gate.is_open());
        assert!(start.elapsed() >= Duration::from_millis(100));
        opener.join().unwrap();
    }

    #[test]
    fn an_open_gate_lets_every_later_waiter_through() {
        let gate = Gate::default();
        assert!(!gate.is_open());
        gate.open();
        gate.open();
        gate.wait();
        EventLoop::new().unwrap().block_on(move || {
            let a = aio::spawn(move || gate.wait());
            a.join().unwrap();
        });
    }
}
