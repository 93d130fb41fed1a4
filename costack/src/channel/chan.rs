//! [`Sender`] and [`Receiver`]: handles to one of the channel kinds
//! (flavors), counted so the last one of a side disconnects the channel.

use std::fmt;
use std::iter::FusedIterator;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::time::{Duration, Instant};

use super::sync::{Arc, AtomicUsize, Ordering};
use super::{array, list, timer, zero};
use super::{RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};

/// A channel and how many senders and receivers it has.
pub(crate) struct Counted<C> {
    senders: AtomicUsize,
    receivers: AtomicUsize,
    pub(crate) chan: C,
}

impl<C> Counted<C> {
    /// Counts a sender out; the last one runs `disconnect`.
    fn sender_gone(&self, disconnect: impl FnOnce(&C)) {
        if self.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            disconnect(&self.chan);
        }
    }

    /// Counts a receiver out; the last one runs `disconnect`.
    fn receiver_gone(&self, disconnect: impl FnOnce(&C)) {
        if self.receivers.fetch_sub(1, Ordering::AcqRel) == 1 {
            disconnect(&self.chan);
        }
    }

    pub(crate) fn new(chan: C) -> Arc<Counted<C>> {
        Arc::new(Counted {
            senders: AtomicUsize::new(1),
            receivers: AtomicUsize::new(1),
            chan,
        })
    }
}

pub(crate) enum SenderFlavor<T> {
    Array(Arc<Counted<array::Channel<T>>>),
    List(Arc<Counted<list::Channel<T>>>),
    Zero(Arc<Counted<zero::Channel<T>>>),
}

pub(crate) enum ReceiverFlavor<T> {
    Array(Arc<Counted<array::Channel<T>>>),
    List(Arc<Counted<list::Channel<T>>>),
    Zero(Arc<Counted<zero::Channel<T>>>),
    /// `after`/`at`; the function turns the instant into `T` (which is
    /// `Instant`: only those constructors make this flavor).
    At(Arc<timer::At>, fn(Instant) -> T),
    Tick(Arc<timer::Tick>, fn(Instant) -> T),
    Never,
}

/// The sending side of a channel. Cloning makes another sender of the same
/// channel; the channel is disconnected for its receivers when the last
/// sender is dropped.
///
/// ```
/// use costack::channel::unbounded;
/// use std::thread;
///
/// let (s, r) = unbounded();
/// let s2 = s.clone();
/// thread::spawn(move || s.send(1).unwrap());
/// thread::spawn(move || s2.send(2).unwrap());
/// let mut got = [r.recv().unwrap(), r.recv().unwrap()];
/// got.sort();
/// assert_eq!(got, [1, 2]);
/// assert!(r.recv().is_err()); // both senders are gone
/// ```
pub struct Sender<T> {
    pub(crate) flavor: SenderFlavor<T>,
}

/// The receiving side of a channel. Cloning makes another receiver of the
/// same channel (each message goes to one of them); the channel is
/// disconnected for its senders when the last receiver is dropped.
///
/// ```
/// use costack::channel::bounded;
/// use std::thread;
///
/// let (s, r) = bounded(1);
/// let t = thread::spawn(move || for i in 0..3 { s.send(i).unwrap() });
/// assert_eq!(r.iter().collect::<Vec<_>>(), [0, 1, 2]);
/// t.join().unwrap();
/// ```
pub struct Receiver<T> {
    pub(crate) flavor: ReceiverFlavor<T>,
}

// Send + Sync when T: Send, as crossbeam's: the handles only move `T`s
// between threads, never share `&T`. Automatic for the buffered flavors'
// Arcs (their channels are Send + Sync for T: Send); the timer flavors
// hold fn pointers, which are both.

impl<T> UnwindSafe for Sender<T> {}
impl<T> RefUnwindSafe for Sender<T> {}
impl<T> UnwindSafe for Receiver<T> {}
impl<T> RefUnwindSafe for Receiver<T> {}

/// The address that names a channel (for `same_channel` and `Select`).
fn addr<C>(a: &Arc<C>) -> *const u8 {
    Arc::as_ptr(a).cast()
}

impl<T> Sender<T> {
    /// Sends without waiting: fails if the channel is full (a rendezvous
    /// channel: if no receiver is waiting) or disconnected.
    ///
    /// ```
    /// use costack::channel::{bounded, TrySendError};
    ///
    /// let (s, _r) = bounded(1);
    /// assert_eq!(s.try_send(1), Ok(()));
    /// assert_eq!(s.try_send(2), Err(TrySendError::Full(2)));
    /// ```
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.try_send(msg),
            SenderFlavor::List(c) => c.chan.try_send(msg),
            SenderFlavor::Zero(c) => c.chan.try_send(msg),
        }
    }

    /// Sends, waiting for room (a rendezvous channel: for a receiver). In
    /// a coroutine the wait yields; on a thread it blocks. Fails only when
    /// every receiver is gone, giving the message back.
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, r) = unbounded();
    /// s.send("hi").unwrap();
    /// assert_eq!(r.recv(), Ok("hi"));
    /// drop(r);
    /// assert!(s.send("lost").is_err());
    /// ```
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.send_until(msg, None).map_err(|e| match e {
            SendTimeoutError::Disconnected(m) => SendError(m),
            SendTimeoutError::Timeout(_) => unreachable!("no deadline"),
        })
    }

    /// As [`send`](Sender::send), giving up after `timeout`.
    ///
    /// ```
    /// use costack::channel::{bounded, SendTimeoutError};
    /// use std::time::Duration;
    ///
    /// let (s, _r) = bounded(1);
    /// s.send(1).unwrap();
    /// let e = s.send_timeout(2, Duration::from_millis(5));
    /// assert_eq!(e, Err(SendTimeoutError::Timeout(2)));
    /// ```
    pub fn send_timeout(&self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.send_deadline(msg, deadline),
            None => self.send(msg).map_err(SendTimeoutError::from),
        }
    }

    /// As [`send`](Sender::send), giving up at `deadline`.
    ///
    /// ```
    /// use costack::channel::bounded;
    /// use std::time::{Duration, Instant};
    ///
    /// let (s, r) = bounded(1);
    /// let soon = Instant::now() + Duration::from_millis(5);
    /// assert!(s.send_deadline(1, soon).is_ok());
    /// assert!(s.send_deadline(2, soon).unwrap_err().is_timeout());
    /// assert_eq!(r.recv(), Ok(1));
    /// ```
    pub fn send_deadline(&self, msg: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        self.send_until(msg, Some(deadline))
    }

    fn send_until(&self, msg: T, deadline: Option<Instant>) -> Result<(), SendTimeoutError<T>> {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.send(msg, deadline),
            SenderFlavor::List(c) => c
                .chan
                .try_send(msg)
                .map_err(|e| SendTimeoutError::Disconnected(e.into_inner())),
            SenderFlavor::Zero(c) => c.chan.send(msg, deadline),
        }
    }

    /// Whether the channel holds no message (always true for a rendezvous
    /// channel).
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, _r) = unbounded();
    /// assert!(s.is_empty());
    /// s.send(0).unwrap();
    /// assert!(!s.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.is_empty(),
            SenderFlavor::List(c) => c.chan.is_empty(),
            SenderFlavor::Zero(_) => true,
        }
    }

    /// Whether the channel is full (always true for a rendezvous channel,
    /// never for an unbounded one).
    ///
    /// ```
    /// use costack::channel::bounded;
    ///
    /// let (s, _r) = bounded(1);
    /// assert!(!s.is_full());
    /// s.send(0).unwrap();
    /// assert!(s.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.is_full(),
            SenderFlavor::List(_) => false,
            SenderFlavor::Zero(_) => true,
        }
    }

    /// How many messages the channel holds.
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, _r) = unbounded();
    /// s.send(1).unwrap();
    /// s.send(2).unwrap();
    /// assert_eq!(s.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        match &self.flavor {
            SenderFlavor::Array(c) => c.chan.len(),
            SenderFlavor::List(c) => c.chan.len(),
            SenderFlavor::Zero(_) => 0,
        }
    }

    /// The channel's capacity: `None` if unbounded.
    ///
    /// ```
    /// use costack::channel::{bounded, unbounded};
    ///
    /// assert_eq!(bounded::<i32>(5).0.capacity(), Some(5));
    /// assert_eq!(bounded::<i32>(0).0.capacity(), Some(0));
    /// assert_eq!(unbounded::<i32>().0.capacity(), None);
    /// ```
    pub fn capacity(&self) -> Option<usize> {
        match &self.flavor {
            SenderFlavor::Array(c) => Some(c.chan.capacity()),
            SenderFlavor::List(_) => None,
            SenderFlavor::Zero(_) => Some(0),
        }
    }

    /// Whether both senders belong to the same channel.
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, _r) = unbounded::<i32>();
    /// let (other, _r2) = unbounded::<i32>();
    /// assert!(s.same_channel(&s.clone()));
    /// assert!(!s.same_channel(&other));
    /// ```
    pub fn same_channel(&self, other: &Sender<T>) -> bool {
        self.channel_addr() == other.channel_addr()
    }

    pub(crate) fn channel_addr(&self) -> *const u8 {
        match &self.flavor {
            SenderFlavor::Array(c) => addr(c),
            SenderFlavor::List(c) => addr(c),
            SenderFlavor::Zero(c) => addr(c),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        match &self.flavor {
            SenderFlavor::Array(c) => c.sender_gone(|ch| {
                ch.disconnect();
            }),
            SenderFlavor::List(c) => c.sender_gone(|ch| {
                ch.disconnect(false);
            }),
            SenderFlavor::Zero(c) => c.sender_gone(|ch| {
                ch.disconnect(false);
            }),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        let flavor = match &self.flavor {
            SenderFlavor::Array(c) => {
                c.senders.fetch_add(1, Ordering::Relaxed);
                SenderFlavor::Array(c.clone())
            }
            SenderFlavor::List(c) => {
                c.senders.fetch_add(1, Ordering::Relaxed);
                SenderFlavor::List(c.clone())
            }
            SenderFlavor::Zero(c) => {
                c.senders.fetch_add(1, Ordering::Relaxed);
                SenderFlavor::Zero(c.clone())
            }
        };
        Sender { flavor }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Sender { .. }")
    }
}

impl<T> Receiver<T> {
    /// Receives without waiting: fails if the channel is empty, or empty
    /// and disconnected.
    ///
    /// ```
    /// use costack::channel::{unbounded, TryRecvError};
    ///
    /// let (s, r) = unbounded();
    /// assert_eq!(r.try_recv(), Err(TryRecvError::Empty));
    /// s.send(5).unwrap();
    /// assert_eq!(r.try_recv(), Ok(5));
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.try_recv(),
            ReceiverFlavor::List(c) => c.chan.try_recv(),
            ReceiverFlavor::Zero(c) => c.chan.try_recv(),
            ReceiverFlavor::At(c, wrap) => c.try_recv().map(*wrap),
            ReceiverFlavor::Tick(c, wrap) => c.try_recv().map(*wrap),
            ReceiverFlavor::Never => Err(TryRecvError::Empty),
        }
    }

    /// Receives, waiting for a message. In a coroutine the wait yields; on
    /// a thread it blocks. Fails when the channel is empty and every
    /// sender is gone.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::channel::bounded;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let (s, r) = bounded(0);
    ///     aio::spawn(move || s.send("from a coroutine").unwrap());
    ///     assert_eq!(r.recv(), Ok("from a coroutine")); // yields meanwhile
    /// });
    /// ```
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None).map_err(|e| match e {
            RecvTimeoutError::Disconnected => RecvError,
            RecvTimeoutError::Timeout => unreachable!("no deadline"),
        })
    }

    /// As [`recv`](Receiver::recv), giving up after `timeout`.
    ///
    /// ```
    /// use costack::channel::{unbounded, RecvTimeoutError};
    /// use std::time::Duration;
    ///
    /// let (_s, r) = unbounded::<i32>();
    /// assert_eq!(r.recv_timeout(Duration::from_millis(5)), Err(RecvTimeoutError::Timeout));
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.recv_deadline(deadline),
            None => self.recv().map_err(RecvTimeoutError::from),
        }
    }

    /// As [`recv`](Receiver::recv), giving up at `deadline`.
    ///
    /// ```
    /// use costack::channel::unbounded;
    /// use std::time::{Duration, Instant};
    ///
    /// let (s, r) = unbounded();
    /// s.send(1).unwrap();
    /// let soon = Instant::now() + Duration::from_millis(5);
    /// assert_eq!(r.recv_deadline(soon), Ok(1));
    /// assert!(r.recv_deadline(soon).unwrap_err().is_timeout());
    /// ```
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        self.recv_until(Some(deadline))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.recv(deadline),
            ReceiverFlavor::List(c) => c.chan.recv(deadline),
            ReceiverFlavor::Zero(c) => c.chan.recv(deadline),
            ReceiverFlavor::At(c, wrap) => c.recv(deadline).map(*wrap),
            ReceiverFlavor::Tick(c, wrap) => c.recv(deadline).map(*wrap),
            ReceiverFlavor::Never => Err(timer::never_recv(deadline)),
        }
    }

    /// Whether the channel holds no message now.
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, r) = unbounded();
    /// assert!(r.is_empty());
    /// s.send(0).unwrap();
    /// assert!(!r.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.is_empty(),
            ReceiverFlavor::List(c) => c.chan.is_empty(),
            ReceiverFlavor::Zero(_) | ReceiverFlavor::Never => true,
            ReceiverFlavor::At(c, _) => c.is_empty(),
            ReceiverFlavor::Tick(c, _) => c.is_empty(),
        }
    }

    /// Whether the channel is full (a timer channel: whether its instant
    /// is due).
    ///
    /// ```
    /// use costack::channel::bounded;
    ///
    /// let (s, r) = bounded(1);
    /// assert!(!r.is_full());
    /// s.send(0).unwrap();
    /// assert!(r.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.is_full(),
            ReceiverFlavor::List(_) => false,
            ReceiverFlavor::Zero(_) | ReceiverFlavor::Never => true,
            ReceiverFlavor::At(c, _) => !c.is_empty(),
            ReceiverFlavor::Tick(c, _) => !c.is_empty(),
        }
    }

    /// How many messages the channel holds.
    ///
    /// ```
    /// use costack::channel::bounded;
    ///
    /// let (s, r) = bounded(3);
    /// s.send(1).unwrap();
    /// assert_eq!(r.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.chan.len(),
            ReceiverFlavor::List(c) => c.chan.len(),
            ReceiverFlavor::Zero(_) | ReceiverFlavor::Never => 0,
            ReceiverFlavor::At(c, _) => usize::from(!c.is_empty()),
            ReceiverFlavor::Tick(c, _) => usize::from(!c.is_empty()),
        }
    }

    /// The channel's capacity: `None` if unbounded (timer channels: 1,
    /// [`never`](super::never): 0).
    ///
    /// ```
    /// use costack::channel::{after, bounded, never};
    /// use std::time::Duration;
    ///
    /// assert_eq!(bounded::<i32>(2).1.capacity(), Some(2));
    /// assert_eq!(after(Duration::from_secs(1)).capacity(), Some(1));
    /// assert_eq!(never::<i32>().capacity(), Some(0));
    /// ```
    pub fn capacity(&self) -> Option<usize> {
        match &self.flavor {
            ReceiverFlavor::Array(c) => Some(c.chan.capacity()),
            ReceiverFlavor::List(_) => None,
            ReceiverFlavor::Zero(_) | ReceiverFlavor::Never => Some(0),
            ReceiverFlavor::At(..) | ReceiverFlavor::Tick(..) => Some(1),
        }
    }

    /// An iterator that waits for messages until the channel is empty and
    /// disconnected.
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, r) = unbounded();
    /// s.send(1).unwrap();
    /// s.send(2).unwrap();
    /// drop(s);
    /// assert_eq!(r.iter().collect::<Vec<_>>(), [1, 2]);
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { receiver: self }
    }

    /// An iterator over the messages there now, without waiting.
    ///
    /// ```
    /// use costack::channel::unbounded;
    ///
    /// let (s, r) = unbounded();
    /// s.send(1).unwrap();
    /// assert_eq!(r.try_iter().collect::<Vec<_>>(), [1]);
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { receiver: self }
    }

    /// Whether both receivers belong to the same channel.
    ///
    /// ```
    /// use costack::channel::{never, unbounded};
    ///
    /// let (_s, r) = unbounded::<i32>();
    /// assert!(r.same_channel(&r.clone()));
    /// assert!(!r.same_channel(&never()));
    /// ```
    pub fn same_channel(&self, other: &Receiver<T>) -> bool {
        match (&self.flavor, &other.flavor) {
            (ReceiverFlavor::Never, ReceiverFlavor::Never) => true,
            _ => self.channel_addr() == other.channel_addr(),
        }
    }

    pub(crate) fn channel_addr(&self) -> *const u8 {
        match &self.flavor {
            ReceiverFlavor::Array(c) => addr(c),
            ReceiverFlavor::List(c) => addr(c),
            ReceiverFlavor::Zero(c) => addr(c),
            ReceiverFlavor::At(c, _) => addr(c),
            ReceiverFlavor::Tick(c, _) => addr(c),
            ReceiverFlavor::Never => std::ptr::null(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        match &self.flavor {
            ReceiverFlavor::Array(c) => c.receiver_gone(|ch| {
                ch.disconnect();
            }),
            // The last receiver drops what is queued: nobody can take it.
            ReceiverFlavor::List(c) => c.receiver_gone(|ch| {
                ch.disconnect(true);
            }),
            ReceiverFlavor::Zero(c) => c.receiver_gone(|ch| {
                ch.disconnect(true);
            }),
            _ => {}
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        let flavor = match &self.flavor {
            ReceiverFlavor::Array(c) => {
                c.receivers.fetch_add(1, Ordering::Relaxed);
                ReceiverFlavor::Array(c.clone())
            }
            ReceiverFlavor::List(c) => {
                c.receivers.fetch_add(1, Ordering::Relaxed);
                ReceiverFlavor::List(c.clone())
            }
            ReceiverFlavor::Zero(c) => {
                c.receivers.fetch_add(1, Ordering::Relaxed);
                ReceiverFlavor::Zero(c.clone())
            }
            ReceiverFlavor::At(c, w) => ReceiverFlavor::At(c.clone(), *w),
            ReceiverFlavor::Tick(c, w) => ReceiverFlavor::Tick(c.clone(), *w),
            ReceiverFlavor::Never => ReceiverFlavor::Never,
        };
        Receiver { flavor }
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Receiver { .. }")
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { receiver: self }
    }
}

/// Waits for messages until the channel is empty and disconnected
/// ([`Receiver::iter`]).
///
/// ```
/// use costack::channel::unbounded;
///
/// let (s, r) = unbounded();
/// s.send(3).unwrap();
/// drop(s);
/// let mut it = r.iter();
/// assert_eq!(it.next(), Some(3));
/// assert_eq!(it.next(), None);
/// ```
pub struct Iter<'a, T> {
    receiver: &'a Receiver<T>,
}

impl<T> FusedIterator for Iter<'_, T> {}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.recv().ok()
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Iter { .. }")
    }
}

/// The messages there now, without waiting ([`Receiver::try_iter`]).
///
/// ```
/// use costack::channel::unbounded;
///
/// let (s, r) = unbounded::<i32>();
/// assert_eq!(r.try_iter().next(), None);
/// s.send(1).unwrap();
/// assert_eq!(r.try_iter().next(), Some(1));
/// ```
pub struct TryIter<'a, T> {
    receiver: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.try_recv().ok()
    }
}

impl<T> fmt::Debug for TryIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("TryIter { .. }")
    }
}

/// A receiver turned into an iterator that waits for messages until the
/// channel is empty and disconnected.
///
/// ```
/// use costack::channel::unbounded;
///
/// let (s, r) = unbounded();
/// s.send('a').unwrap();
/// drop(s);
/// assert_eq!(r.into_iter().collect::<String>(), "a");
/// ```
pub struct IntoIter<T> {
    receiver: Receiver<T>,
}

impl<T> FusedIterator for IntoIter<T> {}

impl<T> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.recv().ok()
    }
}

impl<T> fmt::Debug for IntoIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("IntoIter { .. }")
    }
}
