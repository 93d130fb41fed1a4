//! [`Select`]: waiting on several channel operations at once, after Go's
//! `select` (runtime/select.go): try every operation; if none is ready,
//! register one waiter on all of them, which the first channel to become
//! ready claims (one compare-and-swap decides), then withdraw from the
//! others. Exactly one operation happens.

use std::fmt;
use std::time::{Duration, Instant};

use super::handles::oper_of;
use super::selected::SelectedOperation;
use super::sync::Arc;
use super::waiter::{
    deliver_cancellation, sleep_until, Backoff, Waiter, ABORTED, CANCELLED, FIRST_OPER, WAITING,
};
use super::{
    ReadyTimeoutError, Receiver, SelectTimeoutError, Sender, TryReadyError, TrySelectError,
};

/// What a picked operation needs to be completed: a reserved slot and its
/// stamp (bounded), a reservation (unbounded), a hand-off packet
/// (rendezvous), the instant (timers). Each flavor reads its own fields.
pub(crate) struct Token {
    pub(crate) ptr: *const (),
    pub(crate) stamp: usize,
    pub(crate) reserved: bool,
    pub(crate) instant: Option<Instant>,
}

impl Default for Token {
    fn default() -> Self {
        Token {
            ptr: std::ptr::null(),
            stamp: 0,
            reserved: false,
            instant: None,
        }
    }
}

/// Per-registration state of an arm (a rendezvous channel's packet).
pub(crate) type RegSlot = *const ();

/// A channel operation a select can wait on (a `Sender` or `Receiver`).
pub(crate) trait SelectHandle {
    /// Picks the operation if it is ready, reserving what completing it
    /// takes.
    fn try_select(&self, token: &mut Token) -> bool;
    /// When a timer channel becomes ready.
    fn deadline(&self) -> Option<Instant>;
    /// Registers `waiter` as `oper`; returns whether the operation is
    /// ready already.
    fn register(&self, oper: usize, waiter: &Arc<Waiter>, slot: &mut RegSlot) -> bool;
    fn unregister(&self, oper: usize, waiter: &Arc<Waiter>, slot: &mut RegSlot);
    /// After the waiter was claimed as this arm (and unregistered
    /// everywhere): picks the operation, or `false` to select again.
    fn accept(&self, token: &mut Token, slot: &mut RegSlot) -> bool;
    /// The waiter was claimed as this arm but goes away without accepting:
    /// passes the claim on.
    fn abandon(&self, slot: &mut RegSlot);
    fn is_ready(&self) -> bool;
    fn watch(&self, oper: usize, waiter: &Arc<Waiter>) -> bool;
    fn unwatch(&self, oper: usize, waiter: &Arc<Waiter>);
    /// A picked operation that is not completed gives its reservation up.
    fn release(&self, token: &mut Token);
}

/// One operation of a select: the handle, its index, and the handle's
/// address (to check what the caller completes it with).
type Handle<'a> = (&'a dyn SelectHandle, usize, *const u8);

/// When a select stops waiting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timeout {
    Now,
    Never,
    At(Instant),
}

/// A small per-thread random generator for the order of fair selects.
fn shuffle<T>(v: &mut [T]) {
    use std::cell::Cell;
    if cfg!(costack_loom) {
        return; // a loom model must be deterministic
    }
    thread_local! {
        static RNG: Cell<u32> = const { Cell::new(0x9e37_79b9) };
    }
    if v.len() < 2 {
        return;
    }
    let _ = RNG.try_with(|rng| {
        let mut x = rng.get();
        for i in (1..v.len()).rev() {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let j = ((u64::from(x) * (i as u64 + 1)) >> 32) as usize;
            v.swap(i, j);
        }
        rng.set(x);
    });
}

/// Registration of a select's waiter on its arms, withdrawn however the
/// wait ends. Dropped while claimed as an arm (an unwound coroutine), that
/// arm's claim is passed on.
struct Registration<'h, 'a> {
    handles: &'h [Handle<'a>],
    waiter: &'h Arc<Waiter>,
    slots: Vec<RegSlot>,
    /// How many arms are registered.
    count: usize,
    watching: bool,
}

impl Registration<'_, '_> {
    /// Unregisters everywhere; returns the slot of the claimed arm.
    fn withdraw(&mut self) {
        for (k, (h, _, _)) in self.handles.iter().enumerate().take(self.count) {
            if self.watching {
                h.unwatch(oper_of(k), self.waiter);
            } else {
                h.unregister(oper_of(k), self.waiter, &mut self.slots[k]);
            }
        }
        self.count = 0;
    }
}

impl Drop for Registration<'_, '_> {
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        let sel = self.waiter.claim_or_current(ABORTED);
        // Keep the claimed arm's slot for `abandon`.
        let claimed = sel.checked_sub(FIRST_OPER).filter(|&k| k < self.count);
        let mut kept = claimed.map(|k| std::mem::replace(&mut self.slots[k], std::ptr::null()));
        self.withdraw();
        if let (Some(k), false) = (claimed, self.watching) {
            let slot = kept.as_mut().expect("kept above");
            self.handles[k].0.abandon(slot);
        }
    }
}

/// Runs a select: the picked operation's token, index and handle address,
/// or `None` on timeout.
fn run_select<'a>(
    handles: &mut [Handle<'a>],
    timeout: Timeout,
    biased: bool,
) -> Option<(Token, usize, *const u8, &'a dyn SelectHandle)> {
    if handles.is_empty() {
        match timeout {
            Timeout::Now => return None,
            Timeout::Never => {
                sleep_until("channel select", None);
                unreachable!("slept for ever");
            }
            Timeout::At(when) => {
                sleep_until("channel select", Some(when));
                return None;
            }
        }
    }
    if !biased {
        shuffle(handles);
    }
    let mut token = Token::default();
    loop {
        // Two sweeps before giving up: an arm found empty early in the
        // first may have been filled before a later arm was emptied (by
        // one other thread, in that order), and no instant saw them all
        // not ready; the second sweep sees it (as crossbeam's
        // registration pass does).
        for _ in 0..2 {
            for &(h, i, p) in handles.iter() {
                if h.try_select(&mut token) {
                    return Some((token, i, p, h));
                }
            }
            if timeout == Timeout::Never {
                break;
            }
        }
        let deadline = match timeout {
            Timeout::Now => return None,
            Timeout::Never => None,
            Timeout::At(when) => {
                if Instant::now() >= when {
                    return None;
                }
                Some(when)
            }
        };
        let waiter = Waiter::new();
        let mut reg = Registration {
            handles,
            waiter: &waiter,
            slots: vec![std::ptr::null(); handles.len()],
            count: 0,
            watching: false,
        };
        for (k, (h, _, _)) in handles.iter().enumerate() {
            reg.count += 1;
            if h.register(oper_of(k), &waiter, &mut reg.slots[k]) {
                // Ready already: stop, and try again (unless claimed).
                let _ = waiter.try_select(ABORTED);
                break;
            }
            if waiter.selected() != WAITING {
                break;
            }
        }
        let mut deadline = deadline;
        for (h, _, _) in handles.iter() {
            if let Some(d) = h.deadline() {
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
        }
        let sel = waiter.wait("channel select", deadline);
        let claimed = sel.checked_sub(FIRST_OPER);
        let mut slot = claimed.map(|k| std::mem::replace(&mut reg.slots[k], std::ptr::null()));
        reg.withdraw();
        drop(reg);
        if let Some(k) = claimed {
            let (h, i, p) = handles[k];
            let slot = slot.as_mut().expect("taken above");
            // A drop guard would be empty here: `accept` handles its own
            // unwinding (a rendezvous receive arm waiting for its message).
            if h.accept(&mut token, slot) {
                return Some((token, i, p, h));
            }
        } else if sel == CANCELLED {
            deliver_cancellation();
        }
        Waiter::recycle(waiter);
    }
}

/// Runs `ready`: the index of an operation that is ready, or `None` on
/// timeout.
fn run_ready(handles: &mut [Handle<'_>], timeout: Timeout, biased: bool) -> Option<usize> {
    if handles.is_empty() {
        match timeout {
            Timeout::Now => return None,
            Timeout::Never => {
                sleep_until("channel select", None);
                unreachable!("slept for ever");
            }
            Timeout::At(when) => {
                sleep_until("channel select", Some(when));
                return None;
            }
        }
    }
    if !biased {
        shuffle(handles);
    }
    loop {
        let mut backoff = Backoff::new();
        let mut sweeps = 0;
        loop {
            for &(h, i, _) in handles.iter() {
                if h.is_ready() {
                    return Some(i);
                }
            }
            // At least two sweeps (see `run_select`).
            sweeps += 1;
            if sweeps >= 2 && (backoff.is_completed() || crate::in_coroutine()) {
                break;
            }
            if !crate::in_coroutine() {
                backoff.snooze();
            }
        }
        let deadline = match timeout {
            Timeout::Now => return None,
            Timeout::Never => None,
            Timeout::At(when) => {
                if Instant::now() >= when {
                    return None;
                }
                Some(when)
            }
        };
        let waiter = Waiter::new();
        let mut reg = Registration {
            handles,
            waiter: &waiter,
            slots: Vec::new(),
            count: 0,
            watching: true,
        };
        for (k, (h, _, _)) in handles.iter().enumerate() {
            reg.count += 1;
            if h.watch(oper_of(k), &waiter) {
                let _ = waiter.try_select(oper_of(k));
                break;
            }
            if waiter.selected() != WAITING {
                break;
            }
        }
        let mut deadline = deadline;
        for (h, _, _) in handles.iter() {
            if let Some(d) = h.deadline() {
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
        }
        let sel = waiter.wait("channel select", deadline);
        reg.withdraw();
        drop(reg);
        if let Some(k) = sel.checked_sub(FIRST_OPER) {
            return Some(handles[k].1);
        }
        if sel == CANCELLED {
            deliver_cancellation();
        }
        Waiter::recycle(waiter);
    }
}

/// Waits on a set of channel operations and picks one that can proceed
/// (crossbeam-channel's `Select`). In a coroutine a select that waits
/// yields; on a thread it blocks. The [`select!`](crate::channel::select)
/// macro is the usual way to use it.
///
/// ```
/// use costack::channel::{unbounded, Select};
///
/// let (s1, r1) = unbounded::<i32>();
/// let (s2, r2) = unbounded::<i32>();
/// s2.send(20).unwrap();
///
/// let mut sel = Select::new();
/// let op1 = sel.recv(&r1);
/// let op2 = sel.recv(&r2);
/// let oper = sel.select();
/// assert_eq!(oper.index(), op2);
/// assert_eq!(oper.recv(&r2), Ok(20));
/// # let _ = (s1, op1);
/// ```
pub struct Select<'a> {
    handles: Vec<Handle<'a>>,
    next_index: usize,
    biased: bool,
}

// SAFETY: a `Select` holds `&Sender<T>`/`&Receiver<T>` as trait objects
// and addresses used only for comparison. On another thread it can pick
// and give back operations, which moves messages between places inside
// the channel but never runs a message's code (no drop, no clone: a
// message given back goes into the channel, never away), so a `T` that is
// not `Send` is not touched there. Its code runs only when an operation is
// completed (`SelectedOperation::send`/`recv`), which takes the handle
// itself, and so needs `&Receiver<T>`/`&Sender<T>` to be usable on that
// thread. (crossbeam's `Select` is Send + Sync as well.)
unsafe impl Send for Select<'_> {}
// SAFETY: `&Select` gives access to nothing (every method takes `&mut`).
unsafe impl Sync for Select<'_> {}

impl<'a> Select<'a> {
    /// An empty select that picks among ready operations at random.
    ///
    /// ```
    /// use costack::channel::Select;
    ///
    /// let mut sel = Select::new();
    /// assert!(sel.try_select().is_err()); // no operations
    /// ```
    pub fn new() -> Select<'a> {
        Select {
            handles: Vec::with_capacity(4),
            next_index: 0,
            biased: false,
        }
    }

    /// For the `select!` macros.
    #[doc(hidden)]
    pub fn __with_bias(biased: bool) -> Select<'a> {
        Select {
            biased,
            ..Select::new()
        }
    }

    /// An empty select that picks the first ready operation, in the order
    /// they were added.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s1, r1) = unbounded();
    /// let (s2, r2) = unbounded();
    /// s1.send(1).unwrap();
    /// s2.send(2).unwrap();
    /// let mut sel = Select::new_biased();
    /// let first = sel.recv(&r1);
    /// sel.recv(&r2);
    /// let oper = sel.select();
    /// assert_eq!(oper.index(), first); // always the first one ready
    /// assert_eq!(oper.recv(&r1), Ok(1));
    /// ```
    pub fn new_biased() -> Select<'a> {
        Select {
            biased: true,
            ..Select::new()
        }
    }

    /// Adds a send on `s`; returns its index.
    ///
    /// ```
    /// use costack::channel::{bounded, Select};
    ///
    /// let (s, r) = bounded(1);
    /// let mut sel = Select::new();
    /// let i = sel.send(&s);
    /// let oper = sel.select();
    /// assert_eq!(oper.index(), i);
    /// oper.send(&s, 7).unwrap();
    /// assert_eq!(r.recv(), Ok(7));
    /// ```
    pub fn send<T>(&mut self, s: &'a Sender<T>) -> usize {
        let i = self.next_index;
        let ptr = (s as *const Sender<T>).cast();
        self.handles.push((s, i, ptr));
        self.next_index += 1;
        i
    }

    /// Adds a receive on `r`; returns its index.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s, r) = unbounded();
    /// s.send("x").unwrap();
    /// let mut sel = Select::new();
    /// let i = sel.recv(&r);
    /// let oper = sel.select();
    /// assert_eq!(oper.index(), i);
    /// assert_eq!(oper.recv(&r), Ok("x"));
    /// ```
    pub fn recv<T>(&mut self, r: &'a Receiver<T>) -> usize {
        let i = self.next_index;
        let ptr = (r as *const Receiver<T>).cast();
        self.handles.push((r, i, ptr));
        self.next_index += 1;
        i
    }

    /// Removes the operation with index `index` (indices of the others
    /// stay).
    ///
    /// # Panics
    /// If no operation has that index.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s1, r1) = unbounded::<i32>();
    /// let (s2, r2) = unbounded::<i32>();
    /// let mut sel = Select::new();
    /// let op1 = sel.recv(&r1);
    /// let op2 = sel.recv(&r2);
    /// drop(s2); // r2 would be ready (disconnected)
    /// sel.remove(op2);
    /// s1.send(1).unwrap();
    /// let oper = sel.select();
    /// assert_eq!(oper.index(), op1);
    /// assert_eq!(oper.recv(&r1), Ok(1));
    /// ```
    pub fn remove(&mut self, index: usize) {
        assert!(
            index < self.next_index,
            "index out of bounds; {} >= {}",
            index,
            self.next_index
        );
        let at = self
            .handles
            .iter()
            .position(|&(_, i, _)| i == index)
            .expect("no operation with this index");
        self.handles.swap_remove(at);
    }

    /// Picks a ready operation without waiting.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s, r) = unbounded();
    /// let mut sel = Select::new();
    /// sel.recv(&r);
    /// assert!(sel.try_select().is_err());
    /// s.send(1).unwrap();
    /// let oper = sel.try_select().unwrap();
    /// assert_eq!(oper.recv(&r), Ok(1));
    /// ```
    pub fn try_select(&mut self) -> Result<SelectedOperation<'a>, TrySelectError> {
        run_select(&mut self.handles, Timeout::Now, self.biased)
            .map(SelectedOperation::new)
            .ok_or(TrySelectError)
    }

    /// Waits until an operation is ready and picks it.
    ///
    /// # Panics
    /// If no operation was added.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    /// use std::thread;
    ///
    /// let (s, r) = unbounded();
    /// thread::spawn(move || s.send(3).unwrap());
    /// let mut sel = Select::new();
    /// sel.recv(&r);
    /// assert_eq!(sel.select().recv(&r), Ok(3));
    /// ```
    pub fn select(&mut self) -> SelectedOperation<'a> {
        assert!(
            !self.handles.is_empty(),
            "no operations have been added to `Select`"
        );
        SelectedOperation::new(
            run_select(&mut self.handles, Timeout::Never, self.biased).expect("no timeout"),
        )
    }

    /// As [`select`](Select::select), giving up after `timeout`.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    /// use std::time::Duration;
    ///
    /// let (_s, r) = unbounded::<i32>();
    /// let mut sel = Select::new();
    /// sel.recv(&r);
    /// assert!(sel.select_timeout(Duration::from_millis(5)).is_err());
    /// ```
    pub fn select_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.select_deadline(deadline),
            None => Ok(self.select()),
        }
    }

    /// As [`select`](Select::select), giving up at `deadline`.
    ///
    /// ```
    /// use costack::channel::{after, Select};
    /// use std::time::{Duration, Instant};
    ///
    /// let t = after(Duration::from_millis(1));
    /// let mut sel = Select::new();
    /// sel.recv(&t);
    /// let oper = sel.select_deadline(Instant::now() + Duration::from_secs(5)).unwrap();
    /// assert!(oper.recv(&t).is_ok()); // the timer fired first
    /// ```
    pub fn select_deadline(
        &mut self,
        deadline: Instant,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        run_select(&mut self.handles, Timeout::At(deadline), self.biased)
            .map(SelectedOperation::new)
            .ok_or(SelectTimeoutError)
    }

    /// The index of an operation that is ready now (it may no longer be
    /// when the caller acts on it: another thread may take it first).
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    ///
    /// let (s, r) = unbounded();
    /// let mut sel = Select::new();
    /// let i = sel.recv(&r);
    /// assert!(sel.try_ready().is_err());
    /// s.send(0).unwrap();
    /// assert_eq!(sel.try_ready(), Ok(i));
    /// ```
    pub fn try_ready(&mut self) -> Result<usize, TryReadyError> {
        run_ready(&mut self.handles, Timeout::Now, self.biased).ok_or(TryReadyError)
    }

    /// Waits until an operation is ready; returns its index (without
    /// performing it).
    ///
    /// # Panics
    /// If no operation was added.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    /// use std::thread;
    ///
    /// let (s, r) = unbounded();
    /// thread::spawn(move || s.send(1).unwrap());
    /// let mut sel = Select::new();
    /// let i = sel.recv(&r);
    /// assert_eq!(sel.ready(), i);
    /// assert_eq!(r.try_recv(), Ok(1));
    /// ```
    pub fn ready(&mut self) -> usize {
        assert!(
            !self.handles.is_empty(),
            "no operations have been added to `Select`"
        );
        run_ready(&mut self.handles, Timeout::Never, self.biased).expect("no timeout")
    }

    /// As [`ready`](Select::ready), giving up after `timeout`.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    /// use std::time::Duration;
    ///
    /// let (_s, r) = unbounded::<i32>();
    /// let mut sel = Select::new();
    /// sel.recv(&r);
    /// assert!(sel.ready_timeout(Duration::from_millis(5)).is_err());
    /// ```
    pub fn ready_timeout(&mut self, timeout: Duration) -> Result<usize, ReadyTimeoutError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.ready_deadline(deadline),
            None => Ok(self.ready()),
        }
    }

    /// As [`ready`](Select::ready), giving up at `deadline`.
    ///
    /// ```
    /// use costack::channel::{unbounded, Select};
    /// use std::time::{Duration, Instant};
    ///
    /// let (s, r) = unbounded();
    /// s.send(1).unwrap();
    /// let mut sel = Select::new();
    /// let i = sel.recv(&r);
    /// assert_eq!(sel.ready_deadline(Instant::now() + Duration::from_secs(1)), Ok(i));
    /// ```
    pub fn ready_deadline(&mut self, deadline: Instant) -> Result<usize, ReadyTimeoutError> {
        run_ready(&mut self.handles, Timeout::At(deadline), self.biased).ok_or(ReadyTimeoutError)
    }
}

impl Clone for Select<'_> {
    fn clone(&self) -> Self {
        Select {
            handles: self.handles.clone(),
            next_index: self.next_index,
            biased: self.biased,
        }
    }
}

impl Default for Select<'_> {
    fn default() -> Self {
        Select::new()
    }
}

impl fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Select { .. }")
    }
}
