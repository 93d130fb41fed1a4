//! The rendezvous channel (`bounded(0)`): a sender and a receiver meet,
//! and the message passes from one to the other.
//!
//! Each waiting operation registers an entry with a *packet*, the place
//! where its message is handed over. A waiting sender's packet holds its
//! message; a waiting receiver's packet is empty and names the receiver
//! (`reader`) to wake once filled. Whoever finds a waiting counterpart
//! claims it under the channel's lock (one compare-and-swap on its
//! waiter), then completes the hand-off through the packet:
//!
//! - a claimed sender is done at once: its message now belongs to the
//!   claimer, who holds the packet;
//! - a claimed receiver waits until its packet is filled. A `select` that
//!   claims a receiver for a send arm fills the packet only when its
//!   caller completes the send (the message expression runs after the
//!   choice), or marks it `CANCELLED`, and the receiver tries again.
//!
//! A waiter that leaves while a hand-off to it is under way (a cancelled
//! or unwound coroutine, a dropped `SelectedOperation`) marks the packet
//! `GONE`, or passes a message that already arrived on: the message then
//! goes to another waiting receiver, or back into the channel as an
//! *orphan* that the next receiver takes first. So a message is never
//! lost or delivered twice, whatever leaves when.

use std::collections::VecDeque;
use std::time::Instant;

use super::select::Token;
use super::sync::{Arc, Mutex};
use super::waiter::{
    deliver_cancellation, lock, wait_for, WaitList, Waiter, ABORTED, CANCELLED, DISCONNECTED,
    WAITING,
};
use super::{RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

/// The packet has no message yet (a receiver's), or its message has not
/// been taken (a sender's).
const OPEN: u8 = 0;
/// A receiver's packet was filled, or a sender's message was taken.
const DONE: u8 = 1;
/// The select that claimed this receiver gave the send up: retry.
const BACKED_OUT: u8 = 2;
/// The receiver left: a message that comes now goes back to the channel.
const GONE: u8 = 3;

pub(crate) struct Packet<T> {
    hand: Mutex<Hand<T>>,
}

struct Hand<T> {
    msg: Option<T>,
    state: u8,
    /// Who waits for the message (woken when it comes or the claim is
    /// backed out).
    reader: Option<Arc<Waiter>>,
}

impl<T> Packet<T> {
    fn new(msg: Option<T>, reader: Option<&Arc<Waiter>>) -> Arc<Packet<T>> {
        Arc::new(Packet {
            hand: Mutex::new(Hand {
                msg,
                state: OPEN,
                reader: reader.cloned(),
            }),
        })
    }
}

struct Inner<T> {
    senders: WaitList<Arc<Packet<T>>>,
    receivers: WaitList<Arc<Packet<T>>>,
    /// Messages whose receiver left mid-hand-off.
    orphans: VecDeque<T>,
    disconnected: bool,
    receivers_gone: bool,
}

pub(crate) struct Channel<T> {
    inner: Mutex<Inner<T>>,
}

const PLAIN: usize = super::waiter::FIRST_OPER;

/// A message found without waiting: an orphan, or a claimed sender's
/// packet and waiter.
type Found<T> = Result<T, (Arc<Packet<T>>, Arc<Waiter>)>;

/// How taking a message out of a packet ended.
pub(crate) enum Take<T> {
    Got(T),
    /// The claimed sender backed out: try again.
    Retry,
    /// Our coroutine is being cancelled (the packet was marked gone).
    Cancelled,
}

impl<T> Channel<T> {
    pub(crate) fn new() -> Self {
        Channel {
            inner: Mutex::new(Inner {
                senders: WaitList::new(),
                receivers: WaitList::new(),
                orphans: VecDeque::new(),
                disconnected: false,
                receivers_gone: false,
            }),
        }
    }

    /// Fills a claimed receiver's packet; if that receiver left, the
    /// message goes back to the channel.
    fn fill(&self, packet: &Packet<T>, msg: T) {
        let reader = {
            let mut h = lock(&packet.hand);
            if h.state == GONE {
                drop(h);
                return self.redeliver(msg);
            }
            h.msg = Some(msg);
            h.state = DONE;
            h.reader.take()
        };
        if let Some(r) = reader {
            r.wake();
        }
    }

    /// A message whose receiver left: to another waiting receiver, or
    /// into the orphans.
    fn redeliver(&self, msg: T) {
        let mut wakes = Vec::new();
        let mut inner = lock(&self.inner);
        if let Some(e) = inner.receivers.try_select() {
            drop(inner);
            return self.fill(&e.packet, msg);
        }
        // Kept even when no receiver is left (dropped with the channel):
        // this may run on a thread a `Select` was sent to, where a message
        // must not be dropped.
        inner.orphans.push_back(msg);
        inner.receivers.take_observers(&mut wakes);
        drop(inner);
        wakes.iter().for_each(|w| w.wake());
    }

    /// Waits (if a select sender has yet to write it) for the message of
    /// a claimed sender's packet, and takes it.
    fn take(&self, packet: &Packet<T>) -> Take<T> {
        {
            let mut h = lock(&packet.hand);
            if let Some(m) = h.msg.take() {
                h.state = DONE;
                return Take::Got(m);
            }
            if h.state == BACKED_OUT {
                return Take::Retry;
            }
        }
        let waiter = Waiter::new();
        lock(&packet.hand).reader = Some(waiter.clone());
        let guard = Taking {
            chan: self,
            packet,
            armed: true,
        };
        let r = wait_for(
            &waiter,
            "channel recv",
            None,
            || {
                let mut h = lock(&packet.hand);
                if let Some(m) = h.msg.take() {
                    h.state = DONE;
                    return Some(Take::Got(m));
                }
                (h.state == BACKED_OUT).then_some(Take::Retry)
            },
            |why| {
                let mut h = lock(&packet.hand);
                if let Some(m) = h.msg.take() {
                    h.state = DONE;
                    return Some(Take::Got(m));
                }
                if h.state == BACKED_OUT {
                    return Some(Take::Retry);
                }
                (why == CANCELLED).then(|| {
                    h.state = GONE;
                    Take::Cancelled
                })
            },
        );
        let mut guard = guard;
        guard.armed = false;
        r
    }

    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let mut inner = lock(&self.inner);
        if let Some(e) = inner.receivers.try_select() {
            drop(inner);
            self.fill(&e.packet, msg);
            Ok(())
        } else if inner.disconnected {
            Err(TrySendError::Disconnected(msg))
        } else {
            Err(TrySendError::Full(msg))
        }
    }

    pub(crate) fn send(
        &self,
        msg: T,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<T>> {
        let mut msg = msg;
        loop {
            let mut inner = lock(&self.inner);
            if let Some(e) = inner.receivers.try_select() {
                drop(inner);
                self.fill(&e.packet, msg);
                return Ok(());
            }
            if inner.disconnected {
                return Err(SendTimeoutError::Disconnected(msg));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SendTimeoutError::Timeout(msg));
            }
            let waiter = Waiter::new();
            let packet = Packet::new(Some(msg), None);
            inner.senders.register(PLAIN, &waiter, packet.clone());
            let mut wakes = Vec::new();
            inner.receivers.take_observers(&mut wakes);
            drop(inner);
            wakes.iter().for_each(|w| w.wake());

            // Unwound while registered: withdraw (the message is dropped
            // with us) unless a receiver took it already.
            let guard = Withdraw {
                chan: self,
                waiter: &waiter,
                packet: &packet,
                senders: true,
            };
            let sel = waiter.wait("channel send", deadline);
            std::mem::forget(guard);
            if sel == PLAIN {
                // A receiver claimed us (and removed our entry): the
                // message is its now.
                drop(packet);
                Waiter::recycle(waiter);
                return Ok(());
            }
            lock(&self.inner).senders.unregister(PLAIN, &waiter);
            msg = lock(&packet.hand)
                .msg
                .take()
                .expect("unclaimed: still ours");
            match sel {
                DISCONNECTED => return Err(SendTimeoutError::Disconnected(msg)),
                CANCELLED => deliver_cancellation(),
                _ => {} // ABORTED: the loop checks the deadline
            }
        }
    }

    /// Takes a message without waiting for a sender: an orphan, or a
    /// waiting sender's packet (`Err`), whose waiter the caller wakes once
    /// the lock is released.
    fn find_message(inner: &mut Inner<T>) -> Option<Found<T>> {
        if let Some(m) = inner.orphans.pop_front() {
            return Some(Ok(m));
        }
        let e = inner.senders.try_select()?;
        Some(Err((e.packet, e.waiter)))
    }

    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        loop {
            let mut inner = lock(&self.inner);
            match Self::find_message(&mut inner) {
                Some(Ok(m)) => return Ok(m),
                Some(Err((packet, sender))) => {
                    drop(inner);
                    sender.wake();
                    match self.take(&packet) {
                        Take::Got(m) => return Ok(m),
                        Take::Retry => continue,
                        Take::Cancelled => deliver_cancellation(),
                    }
                }
                None if inner.disconnected => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        }
    }

    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            let mut inner = lock(&self.inner);
            match Self::find_message(&mut inner) {
                Some(Ok(m)) => return Ok(m),
                Some(Err((packet, sender))) => {
                    drop(inner);
                    sender.wake();
                    match self.take(&packet) {
                        Take::Got(m) => return Ok(m),
                        Take::Retry => continue,
                        Take::Cancelled => {
                            deliver_cancellation();
                            continue;
                        }
                    }
                }
                None => {}
            }
            if inner.disconnected {
                return Err(RecvTimeoutError::Disconnected);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            let waiter = Waiter::new();
            let packet = Packet::new(None, Some(&waiter));
            inner.receivers.register(PLAIN, &waiter, packet.clone());
            let mut wakes = Vec::new();
            inner.senders.take_observers(&mut wakes);
            drop(inner);
            wakes.iter().for_each(|w| w.wake());

            let guard = Withdraw {
                chan: self,
                waiter: &waiter,
                packet: &packet,
                senders: false,
            };
            let r = wait_for(
                &waiter,
                "channel recv",
                deadline,
                || match waiter.selected() {
                    WAITING => None,
                    PLAIN => Self::poll_filled(&packet, false),
                    s => Some(Err(s)),
                },
                |why| match waiter.claim_or_current(why) {
                    PLAIN => Self::poll_filled(&packet, why == CANCELLED),
                    s => Some(Err(s)),
                },
            );
            std::mem::forget(guard);
            if waiter.selected() != PLAIN {
                // Not claimed by a sender (who would have removed it).
                lock(&self.inner).receivers.unregister(PLAIN, &waiter);
            }
            drop(packet);
            Waiter::recycle(waiter);
            match r {
                Ok(m) => return Ok(m),
                Err(CANCELLED) => {
                    deliver_cancellation();
                }
                Err(_) => {} // backed out, timed out or disconnected: the loop decides
            }
        }
    }

    /// A claimed receiver's packet: `Some(Ok(msg))` once filled,
    /// `Some(Err(ABORTED))` if the claim was backed out, `None` while the
    /// hand-off is under way. With `leave`, a hand-off under way is given
    /// up (`GONE`: its message will go back to the channel) and
    /// `Some(Err(CANCELLED))` returned.
    fn poll_filled(packet: &Packet<T>, leave: bool) -> Option<Result<T, usize>> {
        let mut h = lock(&packet.hand);
        if let Some(m) = h.msg.take() {
            return Some(Ok(m));
        }
        match h.state {
            BACKED_OUT => Some(Err(ABORTED)),
            _ if leave => {
                h.state = GONE;
                Some(Err(CANCELLED))
            }
            _ => None,
        }
    }

    /// A receiver that leaves while claimed: its message goes on.
    fn leave_claimed(&self, packet: &Packet<T>) {
        let msg = {
            let mut h = lock(&packet.hand);
            match h.msg.take() {
                Some(m) => Some(m),
                None => {
                    if h.state == OPEN {
                        h.state = GONE;
                    }
                    None
                }
            }
        };
        if let Some(m) = msg {
            self.redeliver(m);
        }
    }

    /// A select's claim on a receiver (a send arm) that is given up: the
    /// receiver tries again.
    fn back_out(packet: &Packet<T>) {
        let reader = {
            let mut h = lock(&packet.hand);
            if h.state != OPEN {
                return;
            }
            h.state = BACKED_OUT;
            h.reader.take()
        };
        if let Some(r) = reader {
            r.wake();
        }
    }

    pub(crate) fn disconnect(&self, receivers_gone: bool) -> bool {
        let mut wakes = Vec::new();
        let (first, orphans) = {
            let mut inner = lock(&self.inner);
            let first = !inner.disconnected;
            if first {
                inner.disconnected = true;
                inner.senders.disconnect(&mut wakes);
                inner.receivers.disconnect(&mut wakes);
            }
            let orphans = if receivers_gone {
                inner.receivers_gone = true;
                std::mem::take(&mut inner.orphans)
            } else {
                VecDeque::new()
            };
            (first, orphans)
        };
        wakes.iter().for_each(|w| w.wake());
        drop(orphans);
        first
    }

    // --- select ---------------------------------------------------------

    pub(crate) fn start_send(&self, token: &mut Token) -> bool {
        let mut inner = lock(&self.inner);
        if let Some(e) = inner.receivers.try_select() {
            token.ptr = Arc::into_raw(e.packet).cast();
            true
        } else if inner.disconnected {
            token.ptr = std::ptr::null();
            true
        } else {
            false
        }
    }

    /// Completes a send picked by a select (`Err(msg)`: disconnected).
    pub(crate) fn write(&self, token: &mut Token, msg: T) -> Result<(), T> {
        match take_packet::<T>(token) {
            None => Err(msg),
            Some(p) => {
                self.fill(&p, msg);
                Ok(())
            }
        }
    }

    pub(crate) fn cancel_write(&self, token: &mut Token) {
        if let Some(p) = take_packet::<T>(token) {
            Self::back_out(&p);
        }
    }

    pub(crate) fn start_recv(&self, token: &mut Token) -> bool {
        let mut inner = lock(&self.inner);
        match Self::find_message(&mut inner) {
            Some(Ok(m)) => {
                let p = Packet::new(Some(m), None);
                token.ptr = Arc::into_raw(p).cast();
                true
            }
            Some(Err((p, sender))) => {
                drop(inner);
                sender.wake();
                token.ptr = Arc::into_raw(p).cast();
                true
            }
            None if inner.disconnected => {
                token.ptr = std::ptr::null();
                true
            }
            None => false,
        }
    }

    /// Completes a receive picked by a select. A claimed select sender
    /// that backs out leaves nothing to take: the receive then waits as a
    /// plain one (`Err(())` only when disconnected).
    pub(crate) fn read(&self, token: &mut Token) -> Result<T, ()> {
        let Some(p) = take_packet::<T>(token) else {
            return Err(());
        };
        match self.take(&p) {
            Take::Got(m) => Ok(m),
            Take::Retry => self.recv(None).map_err(drop),
            Take::Cancelled => {
                deliver_cancellation();
                self.recv(None).map_err(drop)
            }
        }
    }

    pub(crate) fn cancel_read(&self, token: &mut Token) {
        if let Some(p) = take_packet::<T>(token) {
            self.leave_claimed(&p);
        }
    }

    /// Registers a select's arm; the packet goes to `slot`.
    pub(crate) fn register(
        &self,
        send: bool,
        oper: usize,
        waiter: &Arc<Waiter>,
        slot: &mut *const (),
    ) -> bool {
        let mut wakes = Vec::new();
        let mut inner = lock(&self.inner);
        let ready = if send {
            let p = Packet::new(None, None);
            inner.senders.register(oper, waiter, p.clone());
            *slot = Arc::into_raw(p).cast();
            inner.receivers.take_observers(&mut wakes);
            inner.receivers.can_select(Some(waiter)) || inner.disconnected
        } else {
            let p = Packet::new(None, Some(waiter));
            inner.receivers.register(oper, waiter, p.clone());
            *slot = Arc::into_raw(p).cast();
            inner.senders.take_observers(&mut wakes);
            inner.senders.can_select(Some(waiter))
                || inner.disconnected
                || !inner.orphans.is_empty()
        };
        drop(inner);
        wakes.iter().for_each(|w| w.wake());
        ready
    }

    pub(crate) fn unregister(
        &self,
        send: bool,
        oper: usize,
        waiter: &Arc<Waiter>,
        slot: &mut *const (),
    ) {
        {
            let mut inner = lock(&self.inner);
            let list = if send {
                &mut inner.senders
            } else {
                &mut inner.receivers
            };
            list.unregister(oper, waiter);
        }
        drop(take_slot::<T>(slot));
    }

    /// After a select was claimed on this arm: the token for completing
    /// it. A receive arm waits for its packet to be filled (`false`: the
    /// claim was backed out, select again).
    pub(crate) fn accept(&self, send: bool, token: &mut Token, slot: &mut *const ()) -> bool {
        let Some(p) = take_slot::<T>(slot) else {
            return false;
        };
        if !send {
            let waiter = Waiter::new();
            lock(&p.hand).reader = Some(waiter.clone());
            let guard = Taking {
                chan: self,
                packet: &p,
                armed: true,
            };
            let r = wait_for(
                &waiter,
                "channel select",
                None,
                || Self::poll_ready(&p, false),
                |why| Self::poll_ready(&p, why == CANCELLED),
            );
            let mut guard = guard;
            guard.armed = false;
            match r {
                DONE => {}
                BACKED_OUT => return false,
                _ => {
                    deliver_cancellation();
                    return false;
                }
            }
        }
        token.ptr = Arc::into_raw(p).cast();
        true
    }

    /// A receive arm's packet: `Some(DONE)` once filled, `Some(BACKED_OUT)`,
    /// or with `leave` `Some(GONE)` after marking it so.
    fn poll_ready(p: &Packet<T>, leave: bool) -> Option<u8> {
        let mut h = lock(&p.hand);
        if h.msg.is_some() {
            return Some(DONE);
        }
        match h.state {
            BACKED_OUT => Some(BACKED_OUT),
            _ if leave => {
                h.state = GONE;
                Some(GONE)
            }
            _ => None,
        }
    }

    /// A select claimed on this arm leaves without accepting.
    pub(crate) fn abandon(&self, send: bool, slot: &mut *const ()) {
        if let Some(p) = take_slot::<T>(slot) {
            if send {
                Self::back_out(&p);
            } else {
                self.leave_claimed(&p);
            }
        }
    }

    pub(crate) fn is_ready(&self, send: bool) -> bool {
        let inner = lock(&self.inner);
        if send {
            inner.receivers.can_select(None) || inner.disconnected
        } else {
            inner.senders.can_select(None) || inner.disconnected || !inner.orphans.is_empty()
        }
    }

    pub(crate) fn watch(&self, send: bool, oper: usize, waiter: &Arc<Waiter>) -> bool {
        let mut inner = lock(&self.inner);
        if send {
            inner.senders.watch(oper, waiter);
            inner.receivers.can_select(None) || inner.disconnected
        } else {
            inner.receivers.watch(oper, waiter);
            inner.senders.can_select(None) || inner.disconnected || !inner.orphans.is_empty()
        }
    }

    pub(crate) fn unwatch(&self, send: bool, oper: usize, waiter: &Arc<Waiter>) {
        let mut inner = lock(&self.inner);
        if send {
            inner.senders.unwatch(oper, waiter);
        } else {
            inner.receivers.unwatch(oper, waiter);
        }
    }
}

/// Takes the packet a token holds (null: disconnected).
fn take_packet<T>(token: &mut Token) -> Option<Arc<Packet<T>>> {
    take_slot(&mut token.ptr)
}

/// Takes back an `Arc<Packet<T>>` erased into `slot` (null: none).
fn take_slot<T>(slot: &mut *const ()) -> Option<Arc<Packet<T>>> {
    let p = std::mem::replace(slot, std::ptr::null());
    // SAFETY: non-null slots and token pointers of a rendezvous channel of
    // `T` hold exactly one `Arc::into_raw` of an `Arc<Packet<T>>` (the
    // handles that fill them are typed by the channel they belong to),
    // and replacing the pointer with null above makes this the only
    // `from_raw` of it.
    (!p.is_null()).then(|| unsafe { Arc::from_raw(p.cast::<Packet<T>>()) })
}

/// A plain waiter's registration, withdrawn if its owner unwinds while
/// waiting (a coroutine dropped with its loop). A receiver that was
/// claimed passes its message (or the hand-off under way) on; a sender
/// that was claimed has handed its message over already.
struct Withdraw<'a, T> {
    chan: &'a Channel<T>,
    waiter: &'a Arc<Waiter>,
    packet: &'a Packet<T>,
    senders: bool,
}

impl<T> Drop for Withdraw<'_, T> {
    fn drop(&mut self) {
        let sel = self.waiter.claim_or_current(ABORTED);
        let entry = {
            let mut inner = lock(&self.chan.inner);
            let list = if self.senders {
                &mut inner.senders
            } else {
                &mut inner.receivers
            };
            list.unregister(PLAIN, self.waiter)
        };
        drop(entry);
        if sel == PLAIN && !self.senders {
            self.chan.leave_claimed(self.packet);
        }
    }
}

/// A receiver waiting for a claimed select sender's message (or a select
/// receive arm for its packet), unwound meanwhile: leave the hand-off so
/// the message goes back to the channel.
struct Taking<'a, T> {
    chan: &'a Channel<T>,
    packet: &'a Packet<T>,
    armed: bool,
}

impl<T> Drop for Taking<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            self.chan.leave_claimed(self.packet);
        }
    }
}
