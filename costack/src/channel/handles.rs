//! How a [`Sender`] and a [`Receiver`] take part in a select: the
//! [`SelectHandle`] of each flavor, and completing a picked operation.

use std::time::Instant;

use super::chan::{ReceiverFlavor, SenderFlavor};
use super::select::{RegSlot, SelectHandle, Token};
use super::sync::Arc;
use super::waiter::{Waiter, FIRST_OPER};
use super::{Receiver, RecvError, SendError, Sender};

impl<T> SelectHandle for Sender<T> {
    fn try_select(&self, token: &mut Token) -> bool {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.start_send(token),
            SenderFlavor::List(c) => c.chan.start_send(token),
            SenderFlavor::Zero(c) => c.chan.start_send(token),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn register(&self, oper: usize, waiter: &Arc<Waiter>, slot: &mut RegSlot) -> bool {
        match &self.flavor {
            SenderFlavor::Array(c) => {
                c.chan.senders.register(oper, waiter);
                !c.chan.is_full() || c.chan.is_disconnected()
            }
            SenderFlavor::List(_) => true,
            SenderFlavor::Zero(c) => c.chan.register(true, oper, waiter, slot),
        }
    }

    fn unregister(&self, oper: usize, waiter: &Arc<Waiter>, slot: &mut RegSlot) {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.senders.unregister(oper, waiter),
            SenderFlavor::List(_) => {}
            SenderFlavor::Zero(c) => c.chan.unregister(true, oper, waiter, slot),
        }
    }

    fn accept(&self, token: &mut Token, slot: &mut RegSlot) -> bool {
        match &self.flavor {
            SenderFlavor::Zero(c) => c.chan.accept(true, token, slot),
            _ => self.try_select(token),
        }
    }

    fn abandon(&self, slot: &mut RegSlot) {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.senders.notify_one_more(),
            SenderFlavor::List(_) => {}
            SenderFlavor::Zero(c) => c.chan.abandon(true, slot),
        }
    }

    fn is_ready(&self) -> bool {
        match &self.flavor {
            SenderFlavor::Array(c) => !c.chan.is_full() || c.chan.is_disconnected(),
            SenderFlavor::List(_) => true,
            SenderFlavor::Zero(c) => c.chan.is_ready(true),
        }
    }

    fn watch(&self, oper: usize, waiter: &Arc<Waiter>) -> bool {
        match &self.flavor {
            SenderFlavor::Array(c) => {
                c.chan.senders.watch(oper, waiter);
                self.is_ready()
            }
            SenderFlavor::List(_) => true,
            SenderFlavor::Zero(c) => c.chan.watch(true, oper, waiter),
        }
    }

    fn unwatch(&self, oper: usize, waiter: &Arc<Waiter>) {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.senders.unwatch(oper, waiter),
            SenderFlavor::List(_) => {}
            SenderFlavor::Zero(c) => c.chan.unwatch(true, oper, waiter),
        }
    }

    fn release(&self, token: &mut Token) {
        match &self.flavor {
            // SAFETY: the token is this channel's reservation, unused.
            SenderFlavor::Array(c) => unsafe { c.chan.cancel_write(token) },
            SenderFlavor::List(_) => {}
            SenderFlavor::Zero(c) => c.chan.cancel_write(token),
        }
    }
}

impl<T> Sender<T> {
    /// Completes a send that a select picked (see `SelectedOperation::send`).
    pub(crate) fn complete_send(&self, token: &mut Token, msg: T) -> Result<(), SendError<T>> {
        match &self.flavor {
            // SAFETY: the token is this channel's reservation, used once.
            SenderFlavor::Array(c) => unsafe { c.chan.write(token, msg) },
            SenderFlavor::List(c) => c.chan.write(token, msg),
            SenderFlavor::Zero(c) => c.chan.write(token, msg),
        }
        .map_err(SendError)
    }
}

impl<T> SelectHandle for Receiver<T> {
    fn try_select(&self, token: &mut Token) -> bool {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.start_recv(token),
            ReceiverFlavor::List(c) => c.chan.start_recv(token),
            ReceiverFlavor::Zero(c) => c.chan.start_recv(token),
            ReceiverFlavor::At(c, _) => c.start_recv(token),
            ReceiverFlavor::Tick(c, _) => c.start_recv(token),
            ReceiverFlavor::Never => false,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.flavor {
            ReceiverFlavor::At(c, _) => c.deadline(),
            ReceiverFlavor::Tick(c, _) => c.deadline(),
            _ => None,
        }
    }

    fn register(&self, oper: usize, waiter: &Arc<Waiter>, slot: &mut RegSlot) -> bool {
        match &self.flavor {
            ReceiverFlavor::Array(c) => {
                c.chan.receivers.register(oper, waiter);
                !c.chan.is_empty() || c.chan.is_disconnected()
            }
            ReceiverFlavor::List(c) => {
                c.chan.receivers.register(oper, waiter);
                c.chan.is_ready_to_recv()
            }
            ReceiverFlavor::Zero(c) => c.chan.register(false, oper, waiter, slot),
            _ => self.is_ready(),
        }
    }

    fn unregister(&self, oper: usize, waiter: &Arc<Waiter>, slot: &mut RegSlot) {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.receivers.unregister(oper, waiter),
            ReceiverFlavor::List(c) => c.chan.receivers.unregister(oper, waiter),
            ReceiverFlavor::Zero(c) => c.chan.unregister(false, oper, waiter, slot),
            _ => {}
        }
    }

    fn accept(&self, token: &mut Token, slot: &mut RegSlot) -> bool {
        match &self.flavor {
            ReceiverFlavor::Zero(c) => c.chan.accept(false, token, slot),
            _ => self.try_select(token),
        }
    }

    fn abandon(&self, slot: &mut RegSlot) {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.receivers.notify_one_more(),
            ReceiverFlavor::List(c) => c.chan.receivers.notify_one_more(),
            ReceiverFlavor::Zero(c) => c.chan.abandon(false, slot),
            _ => {}
        }
    }

    fn is_ready(&self) -> bool {
        match &self.flavor {
            ReceiverFlavor::Array(c) => !c.chan.is_empty() || c.chan.is_disconnected(),
            ReceiverFlavor::List(c) => c.chan.is_ready_to_recv(),
            ReceiverFlavor::Zero(c) => c.chan.is_ready(false),
            ReceiverFlavor::At(c, _) => !c.is_empty(),
            ReceiverFlavor::Tick(c, _) => !c.is_empty(),
            ReceiverFlavor::Never => false,
        }
    }

    fn watch(&self, oper: usize, waiter: &Arc<Waiter>) -> bool {
        match &self.flavor {
            ReceiverFlavor::Array(c) => {
                c.chan.receivers.watch(oper, waiter);
                self.is_ready()
            }
            ReceiverFlavor::List(c) => {
                c.chan.receivers.watch(oper, waiter);
                self.is_ready()
            }
            ReceiverFlavor::Zero(c) => c.chan.watch(false, oper, waiter),
            _ => self.is_ready(),
        }
    }

    fn unwatch(&self, oper: usize, waiter: &Arc<Waiter>) {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.receivers.unwatch(oper, waiter),
            ReceiverFlavor::List(c) => c.chan.receivers.unwatch(oper, waiter),
            ReceiverFlavor::Zero(c) => c.chan.unwatch(false, oper, waiter),
            _ => {}
        }
    }

    fn release(&self, token: &mut Token) {
        match &self.flavor {
            ReceiverFlavor::Array(c) => {
                if c.chan.cancel_stashed_read(token) {
                    return;
                }
                // A reserved ring slot must be emptied for the ring to go
                // on: take the message and give it back.
                // SAFETY: the token is this channel's reservation, unused.
                if let Ok(msg) = unsafe { c.chan.read(token) } {
                    c.chan.put_back(msg);
                }
            }
            ReceiverFlavor::List(c) => c.chan.cancel_read(token),
            ReceiverFlavor::Zero(c) => c.chan.cancel_read(token),
            ReceiverFlavor::At(c, _) => c.cancel_read(token),
            ReceiverFlavor::Tick(..) | ReceiverFlavor::Never => {}
        }
    }
}

impl<T> Receiver<T> {
    /// Completes a receive that a select picked (see `SelectedOperation::recv`).
    pub(crate) fn complete_recv(&self, token: &mut Token) -> Result<T, RecvError> {
        match &self.flavor {
            // SAFETY: the token is this channel's reservation, used once.
            ReceiverFlavor::Array(c) => unsafe { c.chan.read(token) }.map_err(|()| RecvError),
            ReceiverFlavor::List(c) => c.chan.read(token).map_err(|()| RecvError),
            ReceiverFlavor::Zero(c) => c.chan.read(token).map_err(|()| RecvError),
            ReceiverFlavor::At(_, wrap) | ReceiverFlavor::Tick(_, wrap) => {
                token.instant.take().map(*wrap).ok_or(RecvError)
            }
            ReceiverFlavor::Never => Err(RecvError),
        }
    }
}

/// The oper id of a select's arm `k`.
pub(crate) fn oper_of(k: usize) -> usize {
    FIRST_OPER + k
}
