//! [`SelectedOperation`]: the one operation a [`Select`](super::Select)
//! picked, held reserved until it is completed on the handle it was added
//! with, or given back if it is dropped instead.

use std::fmt;
use std::marker::PhantomData;

use super::select::{SelectHandle, Token};
use super::{Receiver, RecvError, SendError, Sender};

/// The operation a [`Select`](super::Select) picked. Complete it with
/// [`send`](SelectedOperation::send) or [`recv`](SelectedOperation::recv)
/// on the same handle that was added.
///
/// # Panics
/// Dropped without completing (outside an unwind), it panics, as
/// crossbeam's does; what it reserved is given back first (a message goes
/// back into the channel, a rendezvous peer tries again), so the channel
/// stays usable.
///
/// ```
/// use costack::channel::{unbounded, Select};
///
/// let (s, r) = unbounded();
/// s.send(1).unwrap();
/// let mut sel = Select::new();
/// sel.recv(&r);
/// let oper = sel.select();
/// assert_eq!(oper.index(), 0);
/// assert_eq!(oper.recv(&r), Ok(1));
/// ```
#[must_use]
pub struct SelectedOperation<'a> {
    token: Token,
    index: usize,
    ptr: *const u8,
    handle: Option<&'a dyn SelectHandle>,
    _marker: PhantomData<fn(&'a ())>,
}

impl<'a> SelectedOperation<'a> {
    pub(super) fn new(
        (token, index, ptr, handle): (Token, usize, *const u8, &'a dyn SelectHandle),
    ) -> Self {
        SelectedOperation {
            token,
            index,
            ptr,
            handle: Some(handle),
            _marker: PhantomData,
        }
    }

    /// The index of the picked operation (as returned when it was added).
    ///
    /// ```
    /// use costack::channel::{bounded, Select};
    ///
    /// let (s, r) = bounded::<i32>(1);
    /// let mut sel = Select::new();
    /// let i = sel.send(&s);
    /// let oper = sel.select();
    /// assert_eq!(oper.index(), i);
    /// oper.send(&s, 1).unwrap();
    /// # drop(r);
    /// ```
    pub fn index(&self) -> usize {
        self.index
    }

    /// Completes a picked send with `msg`.
    ///
    /// # Panics
    /// If `s` is not the sender the picked operation was added with.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s, r) = unbounded();
    /// let mut sel = Select::new();
    /// sel.send(&s);
    /// sel.select().send(&s, "sent").unwrap();
    /// assert_eq!(r.recv(), Ok("sent"));
    /// ```
    pub fn send<T>(mut self, s: &Sender<T>, msg: T) -> Result<(), SendError<T>> {
        assert!(
            std::ptr::eq((s as *const Sender<T>).cast::<u8>(), self.ptr),
            "passed a sender that wasn't selected",
        );
        self.handle = None;
        s.complete_send(&mut self.token, msg)
    }

    /// Completes a picked receive.
    ///
    /// # Panics
    /// If `r` is not the receiver the picked operation was added with.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s, r) = unbounded::<i32>();
    /// drop(s);
    /// let mut sel = Select::new();
    /// sel.recv(&r);
    /// assert!(sel.select().recv(&r).is_err()); // disconnected
    /// ```
    pub fn recv<T>(mut self, r: &Receiver<T>) -> Result<T, RecvError> {
        assert!(
            std::ptr::eq((r as *const Receiver<T>).cast::<u8>(), self.ptr),
            "passed a receiver that wasn't selected",
        );
        self.handle = None;
        r.complete_recv(&mut self.token)
    }
}

impl fmt::Debug for SelectedOperation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("SelectedOperation { .. }")
    }
}

impl Drop for SelectedOperation<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.release(&mut self.token);
            if !std::thread::panicking() {
                panic!("dropped `SelectedOperation` without completing the operation");
            }
        }
    }
}
