//! Cancellation, as the core sees it: requests, cancel scopes and shields,
//! and their delivery at wait points.
//!
//! A cancellation asks a coroutine to unwind from the wait point it is
//! suspended at, or reaches next, up to a *scope*: depth 0 is the
//! coroutine's base (`JoinHandle::cancel`), deeper ones are the cancel
//! scopes that `aio::timeout` and `aio::scope` open, innermost deepest.
//! The payload is [`Cancelled`], raised with `resume_unwind` (no panic hook
//! runs); the frame that opened the scope catches it. Only the outermost
//! request is kept: unwinding to it passes through the inner scopes.
//!
//! Requests are sticky: one stays pending until its scope closes (the
//! base's: until the coroutine finishes), so code that catches the unwind
//! and goes on meets it again at its next wait point.
//!
//! A pending request is delivered at a wait point unless the coroutine is
//! shielded or unwinding. Whether it unwinds is `std::thread::panicking()`,
//! which is per thread: while any coroutine of the thread is suspended in
//! the middle of an unwind it says yes for all of them. Deliveries held back
//! that way are retried by the event loop once no unwind is in progress
//! ([`retry_deferred`]): a delay, never a panic raised in a destructor.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic;
use std::ptr;

use super::control::{CoId, Control, State};
use super::{current_ptr, not_in_coroutine, Coroutine};

/// The payload a cancelled coroutine unwinds with: from the wait point it
/// was suspended at (or reached next) to the scope the cancellation
/// belongs to.
///
/// It travels as a panic payload, raised without the panic hook (nothing
/// is printed): a `join` of a cancelled coroutine returns
/// `Err(payload)` with `payload.is::<Cancelled>()`.
///
/// ```
/// use costack::aio::{self, Cancelled, EventLoop};
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let sleeper = aio::spawn(|| aio::sleep(Duration::from_secs(3600)));
///     aio::yield_now(); // it sleeps now
///     sleeper.cancel();
///     let payload = sleeper.join().unwrap_err();
///     assert!(payload.is::<Cancelled>());
///     println!("{}", payload.downcast_ref::<Cancelled>().unwrap());
/// });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    /// The scope it unwinds to (0: the coroutine's base).
    scope: u32,
}

impl Cancelled {
    pub(crate) fn base() -> Cancelled {
        Cancelled { scope: 0 }
    }

    /// The depth of the scope the cancellation unwinds to.
    pub(crate) fn scope(&self) -> u32 {
        self.scope
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the coroutine was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// No request pending.
const NONE: u32 = u32::MAX;

/// A coroutine's cancellation state, in its control block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CancelState {
    /// The outermost scope a request targets (`NONE`: none).
    pending: u32,
    /// Scopes open: the next one opened gets `depth + 1`.
    depth: u16,
    /// Shields in force: wait points do not deliver.
    shield: u16,
}

impl CancelState {
    pub(crate) const fn new() -> CancelState {
        CancelState {
            pending: NONE,
            depth: 0,
            shield: 0,
        }
    }
}

/// Flags beside the state (in `Control::cancel_flags`).
/// Suspended at a wait point: a request wakes it.
pub(crate) const WAITING: u8 = 1;
/// A cancellation of the base was raised: the value it returns anyway (if
/// it caught the unwind) does not count.
pub(crate) const DELIVERED: u8 = 2;
/// A deadline scope opened since the last suspension may not have its
/// timer yet (see [`DeadlineLink`]).
pub(crate) const UNARMED: u8 = 4;

crate::arch::logical_thread_local! {
    /// Coroutines whose delivery waited for an unwind of another coroutine
    /// of the thread to end.
    static DEFERRED: RefCell<Vec<CoId>> = const { RefCell::new(Vec::new()) };
    static ANY_DEFERRED: Cell<bool> = const { Cell::new(false) };
}

impl Control {
    fn cancel_state(&self) -> CancelState {
        self.cancel.get()
    }

    fn update(&self, f: impl FnOnce(&mut CancelState)) {
        let mut s = self.cancel.get();
        f(&mut s);
        // Reset with the other extras when the block is freed.
        self.mark_extras();
        self.cancel.set(s);
    }

    pub(crate) fn has_cancel_flag(&self, flag: u8) -> bool {
        self.cancel_flags.get() & flag != 0
    }

    pub(crate) fn set_cancel_flag(&self, flag: u8, on: bool) {
        let f = self.cancel_flags.get();
        self.cancel_flags.set(if on { f | flag } else { f & !flag });
    }
}

/// The running coroutine's control block.
#[inline]
fn current_control(what: &str) -> &'static Control {
    let cur = current_ptr();
    if cur.is_null() {
        not_in_coroutine(what);
    }
    // SAFETY: CURRENT is live while it runs; callers use the reference
    // only while the coroutine runs (on its own stack).
    unsafe { &*cur }
}

/// Requests that `co` unwind to its scope `scope` (0: its base). A
/// coroutine suspended at a wait point (and not shielded) is woken to
/// receive it; a running one receives it at its next wait point. Nothing
/// happens to a finished coroutine.
pub(crate) fn request(co: &Coroutine, scope: u32) {
    let c = co.ctl();
    if c.state() == State::Finished {
        return;
    }
    let s = c.cancel_state();
    if s.pending <= scope {
        return; // the same or an outer scope is pending already
    }
    c.update(|s| s.pending = scope);
    if c.state() == State::Ready && c.has_cancel_flag(WAITING) && s.shield == 0 {
        co.wake();
    }
}

/// Whether the running coroutine (if any) may take delivery of a pending
/// request now.
#[inline]
pub(crate) fn deliverable() -> bool {
    let cur = current_ptr();
    // SAFETY: CURRENT is live while it runs.
    !cur.is_null() && unsafe { deliverable_on(&*cur) }
}

#[inline]
fn deliverable_on(co: &Control) -> bool {
    let s = co.cancel_state();
    s.pending != NONE && s.shield == 0 && !std::thread::panicking()
}

/// The wait points' check: raises the running coroutine's pending
/// cancellation if it may be delivered now. Outside a coroutine it does
/// nothing.
#[inline]
pub(crate) fn checkpoint() {
    if let Some(i) = interrupted() {
        i.raise();
    }
}

/// A cancellation a wait point found deliverable. The wait point cleans up
/// its own state (unregisters, drops its guards) and then raises it, from
/// a frame with nothing left to drop: the unwinder stops at every frame
/// that has something to clean up, at a cost of thousands of instructions
/// each.
#[must_use = "a deliverable cancellation must be raised"]
pub(crate) struct Interrupted {
    scope: u32,
}

impl Interrupted {
    /// Unwinds the running coroutine to the cancellation's scope.
    #[cold]
    #[inline(never)]
    pub(crate) fn raise(self) -> ! {
        raise(current_control("a wait point"), self.scope)
    }
}

/// The running coroutine's pending cancellation, if it may be delivered
/// now; `None` outside a coroutine.
#[inline]
pub(crate) fn interrupted() -> Option<Interrupted> {
    let cur = current_ptr();
    if cur.is_null() {
        return None;
    }
    // SAFETY: CURRENT is live while it runs.
    let co = unsafe { &*cur };
    if co.cancel_state().pending == NONE {
        return None;
    }
    interrupted_slow(co)
}

#[cold]
#[inline(never)]
fn interrupted_slow(co: &Control) -> Option<Interrupted> {
    let s = co.cancel_state();
    if s.shield != 0 {
        return None;
    }
    if std::thread::panicking() {
        defer(co);
        return None;
    }
    Some(Interrupted { scope: s.pending })
}

/// A delivery held back by an unwind in progress: the loop wakes the
/// coroutine again once none is.
fn defer(co: &Control) {
    let id = CoId {
        index: co.index,
        generation: co.generation.get(),
    };
    let _ = DEFERRED.try_with(|d| {
        let mut d = d.borrow_mut();
        if !d.contains(&id) {
            d.push(id);
        }
    });
    let _ = ANY_DEFERRED.try_with(|a| a.set(true));
}

/// Wakes the coroutines whose delivery waited for an unwind to end, if no
/// unwind is in progress on this thread now. Called by event loops from
/// their own stack.
#[inline]
pub(crate) fn retry_deferred() {
    if ANY_DEFERRED.with(Cell::get) && !std::thread::panicking() {
        retry_deferred_slow();
    }
}

#[cold]
fn retry_deferred_slow() {
    ANY_DEFERRED.with(|a| a.set(false));
    let ids = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for id in ids {
        if let Some(co) = Coroutine::from_id(id) {
            if co.ctl().has_cancel_flag(WAITING) {
                co.wake();
            }
        }
    }
}

/// Unwinds the running coroutine `co` to scope `scope`.
#[inline(always)]
fn raise(co: &Control, scope: u32) -> ! {
    if scope == 0 {
        co.set_cancel_flag(DELIVERED, true);
    }
    #[cfg(panic = "abort")]
    {
        use std::io::Write;
        let name = co.name().unwrap_or("<unnamed>");
        let _ = writeln!(
            std::io::stderr(),
            "costack: coroutine '{name}' was cancelled (JoinHandle::cancel, or an expired \
             aio::timeout), which unwinds it, but this program is built with panic = \"abort\" \
             and cannot unwind; aborting"
        );
        std::process::abort();
    }
    #[allow(unreachable_code)]
    panic::resume_unwind(Box::new(Cancelled { scope }))
}

/// Whether a cancellation of its base was delivered to the running
/// coroutine (then what it returns does not count).
pub(crate) fn base_delivered() -> bool {
    let cur = current_ptr();
    // SAFETY: CURRENT is live while it runs.
    !cur.is_null() && unsafe { (*cur).has_cancel_flag(DELIVERED) }
}

/// Whether a cancellation of its base is pending for the running
/// coroutine (one requested before it started, say).
pub(crate) fn base_pending() -> bool {
    let cur = current_ptr();
    // SAFETY: CURRENT is live while it runs.
    !cur.is_null() && unsafe { (*cur).cancel_state().pending == 0 }
}

/// A cancel scope of the running coroutine, open while this lives (on that
/// coroutine's stack). Closing it drops the requests that target it.
pub(crate) struct ScopeGuard {
    co: *const Control,
    depth: u32,
}

impl ScopeGuard {
    /// Opens a scope one deeper than the innermost open one.
    ///
    /// # Panics
    /// Outside a coroutine ("`what` called when not in a coroutine"), or
    /// with 65,535 scopes open.
    pub(crate) fn open(what: &str) -> ScopeGuard {
        let co = current_control(what);
        let depth = co.cancel_state().depth.checked_add(1).unwrap_or_else(|| {
            panic!("costack: {what}: too many nested cancel scopes");
        });
        co.update(|s| s.depth = depth);
        ScopeGuard {
            co,
            depth: u32::from(depth),
        }
    }

    /// The scope's depth: what its cancellations target.
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        // SAFETY: the guard lives on the coroutine's stack, so the
        // coroutine (and its control block) is alive while it drops.
        let co = unsafe { &*self.co };
        let depth = self.depth;
        co.update(|s| {
            s.depth = (depth - 1) as u16;
            if s.pending != NONE && s.pending >= depth {
                s.pending = NONE;
            }
        });
    }
}

/// While this lives, wait points of the running coroutine deliver nothing.
pub(crate) struct ShieldGuard(*const Control);

impl ShieldGuard {
    /// Shields the running coroutine; `None` outside a coroutine.
    pub(crate) fn new() -> Option<ShieldGuard> {
        let cur = current_ptr();
        if cur.is_null() {
            return None;
        }
        // SAFETY: CURRENT is live while it runs.
        let co = unsafe { &*cur };
        co.update(|s| {
            s.shield = s
                .shield
                .checked_add(1)
                .expect("costack: too many nested shields")
        });
        Some(ShieldGuard(cur))
    }
}

impl Drop for ShieldGuard {
    fn drop(&mut self) {
        // SAFETY: the guard lives on the coroutine's stack.
        let co = unsafe { &*self.0 };
        co.update(|s| s.shield -= 1);
    }
}

/// A timer a cancel scope wants armed before its coroutine first
/// suspends: linked into the coroutine's chain while the scope is open, so
/// a scope whose body never waits costs no timer at all.
pub(crate) struct DeadlineLink {
    prev: Cell<*const DeadlineLink>,
    armed: Cell<bool>,
    linked: Cell<*const Control>,
    /// What `arm` arms: the struct that holds this link.
    owner: Cell<*const ()>,
    arm: unsafe fn(*const ()),
}

impl DeadlineLink {
    /// An unlinked link whose owner arms with `arm`.
    pub(crate) const fn new(arm: unsafe fn(*const ())) -> DeadlineLink {
        DeadlineLink {
            prev: Cell::new(ptr::null()),
            armed: Cell::new(false),
            linked: Cell::new(ptr::null()),
            owner: Cell::new(ptr::null()),
            arm,
        }
    }

    /// Links into the running coroutine's chain; `owner` is what `arm`
    /// will be called with.
    ///
    /// # Safety
    /// The link and `owner` (which holds it) must stay at their addresses,
    /// on the running coroutine's stack, until the link is unlinked
    /// ([`unlink`](Self::unlink), which the owner's destructor must call).
    pub(crate) unsafe fn link(&self, owner: *const ()) {
        let co = current_control("aio::timeout");
        self.owner.set(owner);
        self.prev.set(co.deadlines.get());
        self.linked.set(co);
        co.deadlines.set(self);
        co.set_cancel_flag(UNARMED, true);
        co.mark_extras();
    }

    /// Unlinks (the innermost link, as scopes nest).
    pub(crate) fn unlink(&self) {
        let co = self.linked.replace(ptr::null());
        if co.is_null() {
            return;
        }
        // SAFETY: linked to a coroutine whose stack holds this link, so it
        // is alive.
        let co = unsafe { &*co };
        debug_assert!(ptr::eq(co.deadlines.get(), self));
        co.deadlines.set(self.prev.get());
    }
}

/// Arms the deadlines of `co`'s open scopes that have no timer yet: it is
/// about to suspend.
#[inline]
pub(crate) fn arm_deadlines(co: &Control) {
    if co.has_cancel_flag(UNARMED) {
        arm_slow(co);
    }
}

#[cold]
fn arm_slow(co: &Control) {
    co.set_cancel_flag(UNARMED, false);
    let mut link = co.deadlines.get();
    while !link.is_null() {
        // SAFETY: linked links live on `co`'s stack until unlinked.
        let l = unsafe { &*link };
        if !l.armed.replace(true) {
            // SAFETY: `arm` and `owner` were given together by the owner,
            // which stays alive while linked.
            unsafe { (l.arm)(l.owner.get()) };
        }
        link = l.prev.get();
    }
}
