//! The bounded channel (`bounded(n)`, `n > 0`): a ring of slots claimed
//! with compare-and-swap on a head and a tail position, each slot carrying
//! a stamp that says whose turn it is (Dmitry Vyukov's bounded MPMC
//! queue, as crossbeam's array flavor).
//!
//! A position is a lap count above the slot index. A slot whose stamp is
//! `pos` is free for the sender at `pos`; `pos + 1` holds the message for
//! the receiver at `pos`, who then sets it to `pos + one_lap`, free for the
//! next lap. The tail's mark bit says the channel is disconnected.
//!
//! `select` reserves a slot when it picks an operation and completes it
//! when the caller does. A send reservation whose message never comes (a
//! panic or a cancellation while the `select!` arm computes it) is written
//! as a hole that receivers skip, so nobody waits for it for ever.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::time::Instant;

use super::select::Token;
use super::sync::{fence, Arc, AtomicUsize, Mutex, Ordering};
use super::waiter::{
    deliver_cancellation, lock, Backoff, SyncWaitList, Waiter, ABORTED, CANCELLED,
};
use super::{RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

/// Keeps the head and the tail on cache lines of their own.
#[repr(align(128))]
struct Padded<T>(T);

struct Slot<T> {
    stamp: AtomicUsize,
    /// Written with the message, before the stamp is published: the slot
    /// holds no message (a cancelled send reservation).
    hole: UnsafeCell<bool>,
    msg: UnsafeCell<MaybeUninit<T>>,
}

/// Given-back messages, and how many of them selects have reserved.
struct Stash<T> {
    msgs: VecDeque<T>,
    reserved: usize,
}

pub(crate) struct Channel<T> {
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    buffer: Box<[Slot<T>]>,
    cap: usize,
    one_lap: usize,
    mark_bit: usize,
    /// Messages given back by selects that had reserved them (see
    /// [`put_back`](Channel::put_back)); received before the ring's.
    stash: Mutex<Stash<T>>,
    /// How many stashed messages are free to take (read without the lock).
    stashed: AtomicUsize,
    /// Senders waiting for room.
    pub(crate) senders: SyncWaitList,
    /// Receivers waiting for a message.
    pub(crate) receivers: SyncWaitList,
}

// SAFETY: a slot's message is written only by the sender that won its
// position and read only by the receiver that won it, the stamp (Release
// store, Acquire load) ordering the two; so the channel hands `T`s across
// threads and needs no more than `T: Send`.
unsafe impl<T: Send> Send for Channel<T> {}
// SAFETY: as above; no `&T` is ever shared.
unsafe impl<T: Send> Sync for Channel<T> {}

/// The oper id of a plain (non-select) blocking operation.
const PLAIN: usize = super::waiter::FIRST_OPER;

impl<T> Channel<T> {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        assert!(cap > 0, "capacity must be positive");
        assert!(cap <= usize::MAX / 4, "capacity is too large");
        let mark_bit = (cap + 1).next_power_of_two();
        let one_lap = mark_bit * 2;
        let buffer = (0..cap)
            .map(|i| Slot {
                stamp: AtomicUsize::new(i),
                hole: UnsafeCell::new(false),
                msg: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Channel {
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            buffer,
            cap,
            one_lap,
            mark_bit,
            stash: Mutex::new(Stash {
                msgs: VecDeque::new(),
                reserved: 0,
            }),
            stashed: AtomicUsize::new(0),
            senders: SyncWaitList::new(),
            receivers: SyncWaitList::new(),
        }
    }

    /// The position after `pos`.
    #[inline]
    fn next(&self, pos: usize) -> usize {
        let index = pos & (self.mark_bit - 1);
        if index + 1 < self.cap {
            pos + 1
        } else {
            (pos & !(self.one_lap - 1)).wrapping_add(self.one_lap)
        }
    }

    /// Reserves a slot for a send: `true` with the slot in `token` (or a
    /// null slot: disconnected), `false` when full.
    pub(crate) fn start_send(&self, token: &mut Token) -> bool {
        self.reserve_send(token, false)
    }

    /// [`start_send`](Channel::start_send); with `even_disconnected` a
    /// slot is reserved in a disconnected channel too (for putting a
    /// message back).
    fn reserve_send(&self, token: &mut Token, even_disconnected: bool) -> bool {
        let mut backoff = Backoff::new();
        let mut tail = self.tail.0.load(Ordering::Relaxed);
        loop {
            if tail & self.mark_bit != 0 && !even_disconnected {
                token.ptr = std::ptr::null();
                return true;
            }
            let mark = tail & self.mark_bit;
            let tail_pos = tail & !self.mark_bit;
            let slot = &self.buffer[tail_pos & (self.mark_bit - 1)];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if tail_pos == stamp {
                // Free for this position: try to take it.
                match self.tail.0.compare_exchange_weak(
                    tail,
                    self.next(tail_pos) | mark,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        token.ptr = (slot as *const Slot<T>).cast();
                        token.stamp = tail_pos + 1;
                        return true;
                    }
                    Err(t) => {
                        tail = t;
                        backoff.spin();
                    }
                }
            } else if stamp.wrapping_add(self.one_lap) == tail_pos + 1 {
                // Still holds last lap's message: full, unless a receiver
                // has just moved on.
                fence(Ordering::SeqCst);
                let head = self.head.0.load(Ordering::Relaxed);
                if head.wrapping_add(self.one_lap) == tail_pos {
                    return false;
                }
                // A receiver has moved on but not emptied the slot yet (a
                // select holding it may take a while): wait, yielding.
                backoff.snooze();
                tail = self.tail.0.load(Ordering::Relaxed);
            } else {
                // A receiver is still reading this slot (a select that
                // reserved it): let it finish.
                backoff.snooze();
                tail = self.tail.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Completes a send reservation (`Err(msg)`: disconnected).
    ///
    /// # Safety
    /// `token` must come from a successful [`start_send`] of this channel
    /// and be used once.
    pub(crate) unsafe fn write(&self, token: &mut Token, msg: T) -> Result<(), T> {
        if token.ptr.is_null() {
            return Err(msg);
        }
        // SAFETY: the caller passes our reservation: the slot is ours to
        // write until we publish the stamp.
        let slot = unsafe { &*token.ptr.cast::<Slot<T>>() };
        // SAFETY: as above.
        unsafe {
            slot.msg.get().write(MaybeUninit::new(msg));
            *slot.hole.get() = false;
        }
        slot.stamp.store(token.stamp, Ordering::Release);
        self.receivers.notify();
        Ok(())
    }

    /// Gives up a send reservation: the slot becomes a hole.
    ///
    /// # Safety
    /// As [`write`](Channel::write).
    pub(crate) unsafe fn cancel_write(&self, token: &mut Token) {
        if token.ptr.is_null() {
            return;
        }
        // SAFETY: our reservation, as in `write`.
        let slot = unsafe { &*token.ptr.cast::<Slot<T>>() };
        // SAFETY: as above.
        unsafe { *slot.hole.get() = true };
        slot.stamp.store(token.stamp, Ordering::Release);
        self.receivers.notify();
    }

    /// Reserves a message for a receive: `true` with its slot in `token`
    /// (or a null slot: disconnected and empty), `false` when empty.
    pub(crate) fn start_recv(&self, token: &mut Token) -> bool {
        token.reserved = false;
        if self.stashed.load(Ordering::Relaxed) > 0 && self.reserve_stashed() {
            token.reserved = true;
            return true;
        }
        let mut backoff = Backoff::new();
        let mut head = self.head.0.load(Ordering::Relaxed);
        loop {
            let slot = &self.buffer[head & (self.mark_bit - 1)];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if head + 1 == stamp {
                // A message (or a hole) for this position.
                match self.head.0.compare_exchange_weak(
                    head,
                    self.next(head),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let next_lap = head.wrapping_add(self.one_lap);
                        // SAFETY: we won the position and the stamp's
                        // Acquire made the sender's writes visible.
                        if unsafe { *slot.hole.get() } {
                            slot.stamp.store(next_lap, Ordering::Release);
                            self.senders.notify();
                            head = self.head.0.load(Ordering::Relaxed);
                            continue;
                        }
                        token.ptr = (slot as *const Slot<T>).cast();
                        token.stamp = next_lap;
                        return true;
                    }
                    Err(h) => {
                        head = h;
                        backoff.spin();
                    }
                }
            } else if stamp == head {
                // Not written for this position yet: empty, unless a
                // sender has reserved it.
                fence(Ordering::SeqCst);
                let tail = self.tail.0.load(Ordering::Relaxed);
                if tail & !self.mark_bit == head {
                    if tail & self.mark_bit != 0 {
                        token.ptr = std::ptr::null();
                        return true;
                    }
                    return false;
                }
                backoff.snooze();
                head = self.head.0.load(Ordering::Relaxed);
            } else {
                backoff.snooze();
                head = self.head.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Completes a receive reservation (`Err`: disconnected).
    ///
    /// # Safety
    /// `token` must come from a successful [`start_recv`] of this channel
    /// and be used once.
    pub(crate) unsafe fn read(&self, token: &mut Token) -> Result<T, ()> {
        if std::mem::take(&mut token.reserved) {
            let mut st = lock(&self.stash);
            st.reserved -= 1;
            return Ok(st.msgs.pop_front().expect("a reserved message is there"));
        }
        if token.ptr.is_null() {
            return Err(());
        }
        // SAFETY: our reservation: the slot holds a message (not a hole,
        // checked by start_recv) that only we may take.
        let slot = unsafe { &*token.ptr.cast::<Slot<T>>() };
        // SAFETY: as above; the stamp store below hands the slot on.
        let msg = unsafe { slot.msg.get().read().assume_init() };
        slot.stamp.store(token.stamp, Ordering::Release);
        self.senders.notify();
        Ok(msg)
    }

    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let token = &mut Token::default();
        if self.start_send(token) {
            // SAFETY: a fresh reservation.
            unsafe { self.write(token, msg) }.map_err(TrySendError::Disconnected)
        } else {
            Err(TrySendError::Full(msg))
        }
    }

    pub(crate) fn send(
        &self,
        msg: T,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<T>> {
        let token = &mut Token::default();
        let mut msg = Some(msg);
        loop {
            let mut backoff = Backoff::new();
            loop {
                if self.start_send(token) {
                    let m = msg.take().expect("message kept until sent");
                    // SAFETY: a fresh reservation.
                    return unsafe { self.write(token, m) }.map_err(SendTimeoutError::Disconnected);
                }
                if backoff.is_completed() || crate::in_coroutine() {
                    break;
                }
                backoff.snooze();
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SendTimeoutError::Timeout(msg.take().expect("kept")));
            }
            let r = self.block(&self.senders, "channel send", deadline, || {
                !self.is_full() || self.is_disconnected()
            });
            if r == CANCELLED {
                deliver_cancellation();
            }
        }
    }

    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let token = &mut Token::default();
        if self.start_recv(token) {
            // SAFETY: a fresh reservation.
            unsafe { self.read(token) }.map_err(|()| TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let token = &mut Token::default();
        loop {
            let mut backoff = Backoff::new();
            loop {
                if self.start_recv(token) {
                    // SAFETY: a fresh reservation.
                    return unsafe { self.read(token) }
                        .map_err(|()| RecvTimeoutError::Disconnected);
                }
                if backoff.is_completed() || crate::in_coroutine() {
                    break;
                }
                backoff.snooze();
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            let r = self.block(&self.receivers, "channel recv", deadline, || {
                !self.is_empty() || self.is_disconnected()
            });
            if r == CANCELLED {
                deliver_cancellation();
            }
        }
    }

    /// One blocking round of a plain send or receive: registers in `list`,
    /// aborts if `ready` turned true meanwhile, waits, unregisters.
    fn block(
        &self,
        list: &SyncWaitList,
        what: &str,
        deadline: Option<Instant>,
        ready: impl Fn() -> bool,
    ) -> usize {
        let waiter = Waiter::new();
        list.register(PLAIN, &waiter);
        let guard = Registered {
            list,
            waiter: &waiter,
            oper: PLAIN,
        };
        if ready() {
            let _ = waiter.try_select(ABORTED);
        }
        let r = waiter.wait(what, deadline);
        guard.finish();
        Waiter::recycle(waiter);
        r
    }

    /// Marks the channel disconnected (the last sender or receiver went)
    /// and wakes everybody; `true` if it was not already.
    pub(crate) fn disconnect(&self) -> bool {
        let tail = self.tail.0.fetch_or(self.mark_bit, Ordering::SeqCst);
        if tail & self.mark_bit == 0 {
            self.senders.disconnect();
            self.receivers.disconnect();
            true
        } else {
            false
        }
    }

    pub(crate) fn is_disconnected(&self) -> bool {
        self.tail.0.load(Ordering::SeqCst) & self.mark_bit != 0
    }

    pub(crate) fn len(&self) -> usize {
        self.ring_len() + self.stashed.load(Ordering::SeqCst)
    }

    fn ring_len(&self) -> usize {
        loop {
            let tail = self.tail.0.load(Ordering::SeqCst);
            let head = self.head.0.load(Ordering::SeqCst);
            // A consistent pair: the tail did not move while we read.
            if self.tail.0.load(Ordering::SeqCst) == tail {
                let hix = head & (self.mark_bit - 1);
                let tix = tail & (self.mark_bit - 1);
                return if hix < tix {
                    tix - hix
                } else if hix > tix {
                    self.cap - hix + tix
                } else if (tail & !self.mark_bit) == head {
                    0
                } else {
                    self.cap
                };
            }
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn is_empty(&self) -> bool {
        if self.stashed.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let head = self.head.0.load(Ordering::SeqCst);
        let tail = self.tail.0.load(Ordering::SeqCst);
        (tail & !self.mark_bit) == head
    }

    pub(crate) fn is_full(&self) -> bool {
        let tail = self.tail.0.load(Ordering::SeqCst);
        let head = self.head.0.load(Ordering::SeqCst);
        head.wrapping_add(self.one_lap) == tail & !self.mark_bit
    }
}

/// A plain operation's registration: withdraws it however the wait ends.
/// Dropped without [`finish`](Registered::finish) (the coroutine unwound
/// while waiting, its loop dropped), a notification it had received is
/// passed on, so the message or room it announced is not left unseen.
pub(crate) struct Registered<'a> {
    pub(crate) list: &'a SyncWaitList,
    pub(crate) waiter: &'a Arc<Waiter>,
    pub(crate) oper: usize,
}

impl Registered<'_> {
    /// The wait is over and its outcome was seen: unregister only (unless
    /// a notifier claimed the entry, which removed it).
    pub(crate) fn finish(self) {
        if self.waiter.selected() != self.oper {
            self.list.unregister(self.oper, self.waiter);
        }
        std::mem::forget(self);
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let sel = self.waiter.claim_or_current(ABORTED);
        self.list.unregister(self.oper, self.waiter);
        if sel == self.oper {
            self.list.notify_one_more();
        }
    }
}

impl<T> Drop for Channel<T> {
    fn drop(&mut self) {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.tail.0.load(Ordering::Relaxed) & !self.mark_bit;
        let mut pos = head;
        while pos != tail {
            let slot = &mut self.buffer[pos & (self.mark_bit - 1)];
            // A slot holds a message if its send completed (a forgotten
            // select reservation never did) and it is no hole.
            if slot.stamp.load(Ordering::Relaxed) == pos + 1 && !*slot.hole.get_mut() {
                // SAFETY: written by a completed send, not yet read.
                unsafe { slot.msg.get_mut().assume_init_drop() };
            }
            pos = self.next(pos);
        }
    }
}

impl<T> Channel<T> {
    /// A message a select reserved (and took out of the ring) but never
    /// completed goes back, to be received first. It never waits (the
    /// ring may be full again: its receiver could be the one giving back)
    /// and never drops the message (this may run on a thread a `Select`
    /// was sent to). The channel may then hold one more than its capacity.
    pub(crate) fn put_back(&self, msg: T) {
        {
            let mut st = lock(&self.stash);
            st.msgs.push_front(msg);
            self.stashed
                .store(st.msgs.len() - st.reserved, Ordering::SeqCst);
        }
        self.receivers.notify();
    }

    /// Reserves a stashed message for a select (`false`: none left).
    fn reserve_stashed(&self) -> bool {
        let mut st = lock(&self.stash);
        if st.msgs.len() > st.reserved {
            st.reserved += 1;
            self.stashed
                .store(st.msgs.len() - st.reserved, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Gives a receive reservation back without moving its message.
    /// Returns `false` if the reservation is a ring slot (the caller then
    /// reads it and puts it back).
    pub(crate) fn cancel_stashed_read(&self, token: &mut Token) -> bool {
        if !std::mem::take(&mut token.reserved) {
            return false;
        }
        {
            let mut st = lock(&self.stash);
            st.reserved -= 1;
            self.stashed
                .store(st.msgs.len() - st.reserved, Ordering::SeqCst);
        }
        self.receivers.notify();
        true
    }
}
