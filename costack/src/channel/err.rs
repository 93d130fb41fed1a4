//! The error types, with crossbeam-channel's variants, `Display` texts and
//! conversions.

use std::error::Error;
use std::fmt;

/// The message could not be sent because every receiver is gone; it comes
/// back inside.
///
/// ```
/// use costack::channel::{unbounded, SendError};
///
/// let (s, r) = unbounded();
/// drop(r);
/// assert_eq!(s.send(1), Err(SendError(1)));
/// assert_eq!(SendError(1).to_string(), "sending on a disconnected channel");
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub struct SendError<T>(pub T);

/// Why [`try_send`](super::Sender::try_send) failed; the message comes
/// back inside.
///
/// ```
/// use costack::channel::{bounded, TrySendError};
///
/// let (s, r) = bounded(1);
/// s.try_send(1).unwrap();
/// assert_eq!(s.try_send(2), Err(TrySendError::Full(2)));
/// drop(r);
/// assert_eq!(s.try_send(3), Err(TrySendError::Disconnected(3)));
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySendError<T> {
    /// The channel is full (a rendezvous channel: no receiver waits).
    Full(T),
    /// Every receiver is gone.
    Disconnected(T),
}

/// Why [`send_timeout`](super::Sender::send_timeout) failed; the message
/// comes back inside.
///
/// ```
/// use costack::channel::{bounded, SendTimeoutError};
/// use std::time::Duration;
///
/// let (s, _r) = bounded(0);
/// let e = s.send_timeout(1, Duration::from_millis(1)).unwrap_err();
/// assert_eq!(e, SendTimeoutError::Timeout(1));
/// assert!(e.is_timeout());
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SendTimeoutError<T> {
    /// Nobody made room in time.
    Timeout(T),
    /// Every receiver is gone.
    Disconnected(T),
}

/// The channel is empty and every sender is gone.
///
/// ```
/// use costack::channel::{unbounded, RecvError};
///
/// let (s, r) = unbounded::<i32>();
/// drop(s);
/// assert_eq!(r.recv(), Err(RecvError));
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub struct RecvError;

/// Why [`try_recv`](super::Receiver::try_recv) failed.
///
/// ```
/// use costack::channel::{unbounded, TryRecvError};
///
/// let (s, r) = unbounded::<i32>();
/// assert_eq!(r.try_recv(), Err(TryRecvError::Empty));
/// drop(s);
/// assert_eq!(r.try_recv(), Err(TryRecvError::Disconnected));
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub enum TryRecvError {
    /// No message is there now.
    Empty,
    /// The channel is empty and every sender is gone.
    Disconnected,
}

/// Why [`recv_timeout`](super::Receiver::recv_timeout) failed.
///
/// ```
/// use costack::channel::{unbounded, RecvTimeoutError};
/// use std::time::Duration;
///
/// let (_s, r) = unbounded::<i32>();
/// assert_eq!(r.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout));
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub enum RecvTimeoutError {
    /// No message came in time.
    Timeout,
    /// The channel is empty and every sender is gone.
    Disconnected,
}

/// No operation of a [`Select`](super::Select) was ready.
///
/// ```
/// use costack::channel::{unbounded, Select};
///
/// let (_s, r) = unbounded::<i32>();
/// let mut sel = Select::new();
/// sel.recv(&r);
/// assert!(sel.try_select().is_err());
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub struct TrySelectError;

/// No operation of a [`Select`](super::Select) became ready in time.
///
/// ```
/// use costack::channel::{unbounded, Select};
/// use std::time::Duration;
///
/// let (_s, r) = unbounded::<i32>();
/// let mut sel = Select::new();
/// sel.recv(&r);
/// assert!(sel.select_timeout(Duration::from_millis(1)).is_err());
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub struct SelectTimeoutError;

/// No operation of a [`Select`](super::Select) is ready
/// ([`try_ready`](super::Select::try_ready)).
///
/// ```
/// use costack::channel::{unbounded, Select};
///
/// let (_s, r) = unbounded::<i32>();
/// let mut sel = Select::new();
/// sel.recv(&r);
/// assert!(sel.try_ready().is_err());
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub struct TryReadyError;

/// No operation of a [`Select`](super::Select) became ready in time
/// ([`ready_timeout`](super::Select::ready_timeout)).
///
/// ```
/// use costack::channel::{unbounded, Select};
/// use std::time::Duration;
///
/// let (_s, r) = unbounded::<i32>();
/// let mut sel = Select::new();
/// sel.recv(&r);
/// assert!(sel.ready_timeout(Duration::from_millis(1)).is_err());
/// ```
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub struct ReadyTimeoutError;

/// `Debug` without the message, which need not be `Debug` (as crossbeam).
macro_rules! opaque_debug {
    ($t:ident, $($variant:ident => $text:literal),+) => {
        impl<T> fmt::Debug for $t<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($t::$variant(..) => f.write_str($text),)+
                }
            }
        }
    };
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}
opaque_debug!(TrySendError, Full => "Full(..)", Disconnected => "Disconnected(..)");
opaque_debug!(SendTimeoutError, Timeout => "SendTimeoutError(..)", Disconnected => "SendTimeoutError(..)");

/// `Display` as a fixed text, and `std::error::Error`.
macro_rules! text {
    ($t:ty, $text:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($text)
            }
        }
        impl Error for $t {}
    };
}

const SEND_DISCONNECTED: &str = "sending on a disconnected channel";

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SEND_DISCONNECTED)
    }
}
impl<T: Send> Error for SendError<T> {}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(..) => "sending on a full channel",
            TrySendError::Disconnected(..) => SEND_DISCONNECTED,
        })
    }
}
impl<T: Send> Error for TrySendError<T> {}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendTimeoutError::Timeout(..) => "timed out waiting on send operation",
            SendTimeoutError::Disconnected(..) => SEND_DISCONNECTED,
        })
    }
}
impl<T: Send> Error for SendTimeoutError<T> {}

text!(RecvError, "receiving on an empty and disconnected channel");
text!(TrySelectError, "all operations in select would block");
text!(SelectTimeoutError, "timed out waiting on select");
text!(TryReadyError, "no operation in select is ready");
text!(
    ReadyTimeoutError,
    "timed out waiting on select to become ready"
);

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryRecvError::Empty => "receiving on an empty channel",
            TryRecvError::Disconnected => "receiving on an empty and disconnected channel",
        })
    }
}
impl Error for TryRecvError {}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvTimeoutError::Timeout => "timed out waiting on receive operation",
            RecvTimeoutError::Disconnected => "channel is empty and disconnected",
        })
    }
}
impl Error for RecvTimeoutError {}

impl<T> From<SendError<T>> for TrySendError<T> {
    fn from(SendError(msg): SendError<T>) -> Self {
        TrySendError::Disconnected(msg)
    }
}

impl<T> From<SendError<T>> for SendTimeoutError<T> {
    fn from(SendError(msg): SendError<T>) -> Self {
        SendTimeoutError::Disconnected(msg)
    }
}

impl From<RecvError> for TryRecvError {
    fn from(_: RecvError) -> Self {
        TryRecvError::Disconnected
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(_: RecvError) -> Self {
        RecvTimeoutError::Disconnected
    }
}

impl<T> SendError<T> {
    /// The message that was not sent.
    ///
    /// ```
    /// use costack::channel::SendError;
    /// assert_eq!(SendError("hi").into_inner(), "hi");
    /// ```
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    ///
    /// ```
    /// use costack::channel::TrySendError;
    /// assert_eq!(TrySendError::Full(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Disconnected(v) => v,
        }
    }

    /// Whether the channel was full.
    ///
    /// ```
    /// use costack::channel::TrySendError;
    /// assert!(TrySendError::Full(()).is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// Whether every receiver was gone.
    ///
    /// ```
    /// use costack::channel::TrySendError;
    /// assert!(TrySendError::Disconnected(()).is_disconnected());
    /// ```
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }
}

impl<T> SendTimeoutError<T> {
    /// The message that was not sent.
    ///
    /// ```
    /// use costack::channel::SendTimeoutError;
    /// assert_eq!(SendTimeoutError::Timeout(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(v) | SendTimeoutError::Disconnected(v) => v,
        }
    }

    /// Whether the send timed out.
    ///
    /// ```
    /// use costack::channel::SendTimeoutError;
    /// assert!(SendTimeoutError::Timeout(()).is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }

    /// Whether every receiver was gone.
    ///
    /// ```
    /// use costack::channel::SendTimeoutError;
    /// assert!(SendTimeoutError::Disconnected(()).is_disconnected());
    /// ```
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendTimeoutError::Disconnected(_))
    }
}

impl TryRecvError {
    /// Whether the channel was empty (and not disconnected).
    ///
    /// ```
    /// use costack::channel::TryRecvError;
    /// assert!(TryRecvError::Empty.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }

    /// Whether the channel was empty and disconnected.
    ///
    /// ```
    /// use costack::channel::TryRecvError;
    /// assert!(TryRecvError::Disconnected.is_disconnected());
    /// ```
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TryRecvError::Disconnected)
    }
}

impl RecvTimeoutError {
    /// Whether the receive timed out.
    ///
    /// ```
    /// use costack::channel::RecvTimeoutError;
    /// assert!(RecvTimeoutError::Timeout.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }

    /// Whether the channel was empty and disconnected.
    ///
    /// ```
    /// use costack::channel::RecvTimeoutError;
    /// assert!(RecvTimeoutError::Disconnected.is_disconnected());
    /// ```
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvTimeoutError::Disconnected)
    }
}
