//! The unbounded channel: a queue under a mutex (held for a push or a
//! pop only, never while waiting), and the receivers' wait list.
//!
//! `select` reserves a message by counting it (`reserved`), not by taking
//! it: other receivers see only the messages nobody reserved, and the
//! reservation's owner pops the front one when it completes. A
//! reservation given up (the `SelectedOperation` dropped) is uncounted
//! again, so no message is ever taken out and lost.

use std::collections::VecDeque;
use std::time::Instant;

use super::array::Registered;
use super::select::Token;
use super::sync::Mutex;
use super::waiter::{
    deliver_cancellation, lock, Backoff, SyncWaitList, Waiter, ABORTED, CANCELLED,
};
use super::{RecvTimeoutError, TryRecvError, TrySendError};

struct Queue<T> {
    messages: VecDeque<T>,
    /// Messages reserved by selects that have not completed yet.
    reserved: usize,
    disconnected: bool,
}

pub(crate) struct Channel<T> {
    queue: Mutex<Queue<T>>,
    pub(crate) receivers: SyncWaitList,
}

const PLAIN: usize = super::waiter::FIRST_OPER;

impl<T> Channel<T> {
    pub(crate) fn new() -> Self {
        Channel {
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                reserved: 0,
                disconnected: false,
            }),
            receivers: SyncWaitList::new(),
        }
    }

    /// A send never waits: `true`, with `token.reserved` false when the
    /// channel is disconnected.
    pub(crate) fn start_send(&self, token: &mut Token) -> bool {
        token.reserved = !lock(&self.queue).disconnected;
        true
    }

    /// Completes a send (`Err(msg)`: disconnected).
    pub(crate) fn write(&self, token: &mut Token, msg: T) -> Result<(), T> {
        if !token.reserved {
            return Err(msg);
        }
        self.try_send(msg).map_err(TrySendError::into_inner)
    }

    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        {
            let mut q = lock(&self.queue);
            if q.disconnected {
                return Err(TrySendError::Disconnected(msg));
            }
            q.messages.push_back(msg);
        }
        self.receivers.notify();
        Ok(())
    }

    /// Reserves a message: `true` with `token.reserved` (or without it:
    /// disconnected and empty), `false` when empty.
    pub(crate) fn start_recv(&self, token: &mut Token) -> bool {
        let mut q = lock(&self.queue);
        if q.messages.len() > q.reserved {
            q.reserved += 1;
            token.reserved = true;
            true
        } else if q.disconnected {
            token.reserved = false;
            true
        } else {
            false
        }
    }

    /// Completes a receive reservation (`Err`: disconnected).
    pub(crate) fn read(&self, token: &mut Token) -> Result<T, ()> {
        if !token.reserved {
            return Err(());
        }
        token.reserved = false;
        let mut q = lock(&self.queue);
        q.reserved -= 1;
        Ok(q.messages.pop_front().expect("a reserved message is there"))
    }

    /// Gives a receive reservation up: the message is free again.
    pub(crate) fn cancel_read(&self, token: &mut Token) {
        if std::mem::take(&mut token.reserved) {
            lock(&self.queue).reserved -= 1;
            self.receivers.notify();
        }
    }

    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut q = lock(&self.queue);
        if q.messages.len() > q.reserved {
            Ok(q.messages.pop_front().expect("counted"))
        } else if q.disconnected {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            let mut backoff = Backoff::new();
            loop {
                match self.try_recv() {
                    Ok(m) => return Ok(m),
                    Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                    Err(TryRecvError::Empty) => {}
                }
                if backoff.is_completed() || crate::in_coroutine() {
                    break;
                }
                backoff.snooze();
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            let waiter = Waiter::new();
            self.receivers.register(PLAIN, &waiter);
            let guard = Registered {
                list: &self.receivers,
                waiter: &waiter,
                oper: PLAIN,
            };
            if self.is_ready_to_recv() {
                let _ = waiter.try_select(ABORTED);
            }
            let r = waiter.wait("channel recv", deadline);
            guard.finish();
            Waiter::recycle(waiter);
            if r == CANCELLED {
                deliver_cancellation();
            }
        }
    }

    pub(crate) fn is_ready_to_recv(&self) -> bool {
        let q = lock(&self.queue);
        q.messages.len() > q.reserved || q.disconnected
    }

    /// Marks the channel disconnected and wakes the receivers; `true` if
    /// it was not already. With `discard`, the queued messages are dropped
    /// (the last receiver went: nobody can take them).
    pub(crate) fn disconnect(&self, discard: bool) -> bool {
        let (was, dropped) = {
            let mut q = lock(&self.queue);
            let was = q.disconnected;
            q.disconnected = true;
            let dropped = if discard && q.reserved == 0 {
                std::mem::take(&mut q.messages)
            } else {
                VecDeque::new()
            };
            (was, dropped)
        };
        // Messages' destructors run outside the lock: they may use channels.
        drop(dropped);
        if !was {
            self.receivers.disconnect();
        }
        !was
    }

    pub(crate) fn len(&self) -> usize {
        let q = lock(&self.queue);
        q.messages.len() - q.reserved
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
