//! The `-e/--shared` slots: how many clients may be in the transmission
//! phase at once.
//!
//! The limit is checked twice, here both times. The accept loop waits
//! while every slot is taken ([`Slots::wait_for_free`]), so that clients
//! beyond it wait in the listen backlog, as with qemu-nbd. But only
//! established clients take slots (sockets that never finish negotiating
//! must not lock real clients out), so clients accepted while one slot
//! was left may negotiate side by side and find it taken: each of them
//! waits in [`EstablishedSlot::take`] until one is given back, rather
//! than being dropped after its handshake.

use std::sync::atomic::{AtomicUsize, Ordering};

use costack::channel::{bounded, Receiver, Sender};

use super::Shared;

/// The `-e` slots of a server: the clients holding one, and the wake-ups
/// of those waiting for one.
pub struct Slots {
    /// Connections past their handshake: what `-e/--shared` bounds.
    established: AtomicUsize,
    /// A token per slot given back (at most one waits: the accept loop
    /// only needs to look again).
    freed: (Sender<()>, Receiver<()>),
    /// The same for clients that finished negotiating to find every slot
    /// taken (by others that negotiated at the same time): one token
    /// wakes one of them, which passes it on if room is left.
    for_waiter: (Sender<()>, Receiver<()>),
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            established: AtomicUsize::new(0),
            freed: bounded(1),
            for_waiter: bounded(1),
        }
    }
}

impl Slots {
    /// Connections past their handshake now.
    pub fn established(&self) -> usize {
        self.established.load(Ordering::SeqCst)
    }

    /// Waits (in a coroutine) while all `max_clients` slots are taken
    /// (`max_clients` 0: no limit): the accept loop's check.
    pub fn wait_for_free(&self, max_clients: usize) {
        while max_clients != 0 && self.established() >= max_clients {
            // A slot given back since the count above left a token; a
            // token may also be stale: look again.
            let _ = self.freed.1.recv();
        }
    }

    /// Tells one client waiting in [`EstablishedSlot::take`] to look again
    /// (a token already there says as much).
    fn wake_waiter(&self) {
        let _ = self.for_waiter.0.try_send(());
    }
}

/// An established connection's `-e` slot, given back when it ends.
pub(super) struct EstablishedSlot<'a>(&'a Shared);

impl<'a> EstablishedSlot<'a> {
    /// Takes a slot (`max_clients` 0: no limit). `-e` counts established
    /// clients only, so clients that negotiated at the same time may find
    /// them all taken: such a one waits for a slot, as it would have
    /// waited to be accepted, rather than being dropped after its
    /// handshake.
    pub(super) fn take(shared: &'a Shared, max_clients: usize, peer: &str) -> Self {
        let slots = &shared.slots;
        let mut waited = false;
        loop {
            let taken = slots.established.fetch_add(1, Ordering::SeqCst);
            if max_clients == 0 || taken < max_clients {
                if waited && taken + 1 < max_clients {
                    // Slots freed together woke one waiter: pass it on.
                    slots.wake_waiter();
                }
                return EstablishedSlot(shared);
            }
            slots.established.fetch_sub(1, Ordering::SeqCst);
            if !waited {
                tracing::info!(%peer, max_clients, "waiting for a free slot (-e)");
            }
            waited = true;
            // A slot freed since the count above left a token: not missed.
            let _ = slots.for_waiter.1.recv();
        }
    }
}

impl Drop for EstablishedSlot<'_> {
    fn drop(&mut self) {
        let slots = &self.0.slots;
        slots.established.fetch_sub(1, Ordering::SeqCst);
        // Counted as served before the slot's waiters hear of it (and
        // before the connection is counted gone).
        self.0.lifecycle.session_ended();
        let _ = slots.freed.0.try_send(());
        slots.wake_waiter();
    }
}
