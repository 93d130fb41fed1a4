//! Control blocks: the per-coroutine state, kept in a per-thread slab.
//!
//! Blocks never move and are reused (with a new generation) once the last
//! handle is gone, so creating a coroutine allocates nothing once the slab
//! and the stack pool are warm. A [`CoId`] (slot + generation) names a
//! coroutine without keeping it alive; it is how other threads refer to one.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::rc::Rc;

use super::cancel::{CancelState, DeadlineLink};
use crate::arch::Context;
use crate::stack::Stack;

/// A coroutine's stage of life: the low bits of [`Control::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// In the slab's free list.
    Free = 0,
    /// Created (not started yet) or suspended: may be entered.
    Ready = 1,
    /// On the active chain: running, or entered another coroutine.
    Entered = 2,
    /// Returned or panicked; its stack is gone or about to go.
    Finished = 3,
}

/// The bits of `status` that hold the [`State`].
const STAGE: u8 = 0b11;
/// Flag: the coroutine woke others while running; whoever entered it runs
/// them once it yields (its `wakes` list is not empty).
pub(crate) const WAKES: u8 = 0b100;
/// Flag: the coroutine is being unwound (its last handle was dropped while
/// it was suspended); every `yield_now` resumes the forced unwind.
pub(crate) const CANCELLED: u8 = 0b1000;
/// Flag: the coroutine finished with a panic, kept in `panic`.
pub(crate) const PANICKED: u8 = 0b1_0000;
/// Flag, with [`CANCELLED`]: an event loop drives the unwind, so a
/// destructor that waits (a contended lock, a sleep) suspends for real and
/// the loop enters the coroutine again when the wait completes.
pub(crate) const DRAINING: u8 = 0b10_0000;
/// Flag: the coroutine is inside a `Future::poll` with its poller's
/// `Context` (`aio::wait_future` in a `CoFuture`): it must not yield, since
/// that poll, and so the context, ends when it does.
pub(crate) const IN_POLL: u8 = 0b100_0000;
/// The flags an unwind keeps across the coroutine's yields; a Ready
/// coroutine with only these may be entered (and keeps them).
pub(crate) const UNWIND_FLAGS: u8 = CANCELLED | DRAINING;

/// `status` of a coroutine that may be entered and has nothing pending:
/// the one value `enter` checks for, and the one it expects back after a
/// plain yield (anything else: finished, woke others, or being unwound).
pub(crate) const READY: u8 = State::Ready as u8;
pub(crate) const ENTERED: u8 = State::Entered as u8;

// A yield turns Entered into Ready and a return turns it into Finished by
// one subtraction or addition, keeping the flags.
const _: () = assert!(State::Entered as u8 - 1 == State::Ready as u8);
const _: () = assert!(State::Entered as u8 + 1 == State::Finished as u8);

/// Where a coroutine is scheduled when woken from outside any coroutine:
/// the event loop it belongs to.
pub(crate) trait Home {
    fn schedule(&self, co: super::Coroutine);

    /// For a coroutine polled as a future: the `std::task::Waker` that
    /// makes its poller poll it again, from any thread.
    fn task_waker(&self) -> Option<std::task::Waker> {
        None
    }
}

/// The fields a round trip touches come first, together in one cache line.
#[repr(C)]
pub(crate) struct Control {
    /// A [`State`] in the low bits, [`WAKES`], [`CANCELLED`],
    /// [`PANICKED`] and [`DRAINING`] above.
    pub(crate) status: Cell<u8>,
    /// Whether this coroutine sits in some wake list or run queue.
    pub(crate) queued: Cell<bool>,
    /// Whether the block has a name or a home to drop when it is freed.
    extras: Cell<bool>,
    /// Set by a wait that something will end with a wake (`park_running`), as
    /// opposed to a bare `yield_now`; read (and cleared) by a future poller.
    pub(crate) parked: Cell<bool>,
    /// Whether the coroutine runs only inside a future's `poll` (a
    /// `CoFuture`): it is never entered by a wake, which goes to its home.
    pub(crate) polled: Cell<bool>,
    pub(crate) index: u32,
    /// While entered: the coroutine that entered it (null: the thread's
    /// own stack), made current again when it yields or finishes.
    pub(crate) caller: Cell<*const Control>,
    /// The switch context: initialised from creation until the block is
    /// freed (see [`Control::context`]).
    pub(crate) context: UnsafeCell<MaybeUninit<Context>>,
    /// Coroutines this one woke while running, entered after it yields.
    pub(crate) wakes: WakeList,
    pub(crate) refs: Cell<usize>,
    pub(crate) generation: Cell<u32>,
    /// Link in some coroutine's `wakes` (or a free-list link).
    pub(crate) next: Cell<*const Control>,
    pub(crate) stack: UnsafeCell<Option<Stack>>,
    /// The not-yet-started closure, on the stack, and how to drop it; the
    /// latter is `Some` exactly until the coroutine starts.
    pub(crate) closure: Cell<*mut u8>,
    pub(crate) drop_closure: Cell<Option<unsafe fn(*mut u8)>>,
    pub(crate) name: UnsafeCell<Option<Box<str>>>,
    pub(crate) panic: Cell<Option<Box<dyn Any + Send>>>,
    pub(crate) home: UnsafeCell<Option<Rc<dyn Home>>>,
    /// For a `CoFuture`'s coroutine: the `Context` its poll lends it while
    /// that poll runs (null otherwise, and while the coroutine has taken
    /// it); see `future.rs`.
    pub(crate) lent_cx: Cell<*mut ()>,
    /// Pending cancellation, open cancel scopes and shields (see
    /// `cancel.rs`), and its flags.
    pub(crate) cancel: Cell<CancelState>,
    pub(crate) cancel_flags: Cell<u8>,
    /// The innermost deadline scope's link (see `cancel::DeadlineLink`).
    pub(crate) deadlines: Cell<*const DeadlineLink>,
}

impl Control {
    fn new(index: u32) -> Control {
        Control {
            status: Cell::new(State::Free as u8),
            queued: Cell::new(false),
            extras: Cell::new(false),
            parked: Cell::new(false),
            polled: Cell::new(false),
            index,
            caller: Cell::new(ptr::null()),
            context: UnsafeCell::new(MaybeUninit::uninit()),
            wakes: WakeList::new(),
            refs: Cell::new(0),
            generation: Cell::new(0),
            next: Cell::new(ptr::null()),
            stack: UnsafeCell::new(None),
            closure: Cell::new(ptr::null_mut()),
            drop_closure: Cell::new(None),
            name: UnsafeCell::new(None),
            panic: Cell::new(None),
            home: UnsafeCell::new(None),
            lent_cx: Cell::new(ptr::null_mut()),
            cancel: Cell::new(CancelState::new()),
            cancel_flags: Cell::new(0),
            deadlines: Cell::new(ptr::null()),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> State {
        match self.status.get() & STAGE {
            0 => State::Free,
            1 => State::Ready,
            2 => State::Entered,
            _ => State::Finished,
        }
    }

    /// The status to resume this coroutine with, if it may be entered now:
    /// Ready, with no flags but those of an unwind in progress (kept).
    #[inline]
    pub(crate) fn resume_status(&self) -> Option<u8> {
        let status = self.status.get();
        (status & !UNWIND_FLAGS == READY).then_some(ENTERED | (status & UNWIND_FLAGS))
    }

    /// Whether the coroutine was created and never entered.
    #[inline]
    pub(crate) fn is_unstarted(&self) -> bool {
        self.drop_closure.get().is_some()
    }

    /// The switch context. Only valid while the block is in use.
    #[inline]
    pub(crate) fn context(&self) -> &Context {
        debug_assert_ne!(self.state(), State::Free);
        // SAFETY: `context` is written only by `Coroutine::create` (before
        // any handle exists) and dropped only by `free` (after the last
        // one is gone); in between it is initialised and only read.
        unsafe { (*self.context.get()).assume_init_ref() }
    }

    pub(crate) fn name(&self) -> Option<&str> {
        // SAFETY: the name is written only while the block is not reachable
        // from any handle (creation, release).
        unsafe { (*self.name.get()).as_deref() }
    }

    /// The stack, while the coroutine has one.
    pub(crate) fn stack(&self) -> Option<&Stack> {
        // SAFETY: the stack is set at creation and taken when the coroutine
        // finishes, both by code holding no other borrow of it.
        unsafe { (*self.stack.get()).as_ref() }
    }

    pub(crate) fn take_stack(&self) -> Option<Stack> {
        // SAFETY: as `stack`; callers take it once nothing runs on it.
        unsafe { (*self.stack.get()).take() }
    }

    /// The event loop the coroutine belongs to, if any.
    pub(crate) fn home(&self) -> Option<Rc<dyn Home>> {
        // SAFETY: `home` is replaced only by `set_home` and `free`, which
        // hold no borrow of it across the replacement; this clones out.
        unsafe { (*self.home.get()).clone() }
    }

    /// Whether the coroutine belongs to an event loop.
    pub(crate) fn has_home(&self) -> bool {
        // SAFETY: as `home`; only reads the discriminant.
        unsafe { (*self.home.get()).is_some() }
    }

    pub(crate) fn set_home(&self, home: Option<Rc<dyn Home>>) {
        if home.is_some() {
            self.extras.set(true);
        }
        // SAFETY: as `home`; the old value is dropped after the write, so
        // its destructor cannot observe a half-written cell.
        drop(unsafe { ptr::replace(self.home.get(), home) });
    }

    /// Sets the name of a block no handle refers to yet.
    pub(crate) fn set_name(&self, name: Box<str>) {
        self.extras.set(true);
        // SAFETY: called by `create` only, before any handle exists, so no
        // borrow of the name is live.
        unsafe { *self.name.get() = Some(name) };
    }

    /// Notes that the block holds state beyond the hot fields, to be reset
    /// when it is freed.
    #[inline]
    pub(crate) fn mark_extras(&self) {
        self.extras.set(true);
    }

    /// Drops the name and home of a block being freed, and resets the rest
    /// of its extras.
    #[cold]
    fn drop_extras(&self) {
        self.extras.set(false);
        self.polled.set(false);
        self.lent_cx.set(ptr::null_mut());
        self.cancel.set(CancelState::new());
        self.cancel_flags.set(0);
        self.deadlines.set(ptr::null());
        // SAFETY: no handle refers to the block any more, so no borrow of
        // its name is live.
        unsafe { *self.name.get() = None };
        self.set_home(None);
    }

    /// Queues `co` to run after this (running) coroutine yields; `co`
    /// must not be in any list, and a reference must come with it.
    pub(crate) fn push_wake(&self, co: &Control) {
        self.wakes.push(co);
        self.status.set(self.status.get() | WAKES);
    }

    /// Moves this coroutine's woken coroutines to the end of `list`.
    pub(crate) fn take_wakes(&self, list: &WakeList) {
        list.append(&self.wakes);
        self.status.set(self.status.get() & !WAKES);
    }

    #[inline]
    pub(crate) fn has_wakes(&self) -> bool {
        self.status.get() & WAKES != 0
    }
}

/// An intrusive FIFO of control blocks, linked through `Control::next`.
pub(crate) struct WakeList {
    head: Cell<*const Control>,
    tail: Cell<*const Control>,
}

impl WakeList {
    pub(crate) const fn new() -> WakeList {
        WakeList {
            head: Cell::new(ptr::null()),
            tail: Cell::new(ptr::null()),
        }
    }

    /// Appends `co`, which must not be in any list.
    pub(crate) fn push(&self, co: &Control) {
        co.next.set(ptr::null());
        let tail = self.tail.get();
        if tail.is_null() {
            self.head.set(co);
        } else {
            // SAFETY: list members are live control blocks (queued blocks
            // hold a reference, see `Coroutine::wake`).
            unsafe { (*tail).next.set(co) };
        }
        self.tail.set(co);
    }

    pub(crate) fn pop(&self) -> Option<*const Control> {
        let head = self.head.get();
        if head.is_null() {
            return None;
        }
        // SAFETY: as in `push`.
        let next = unsafe { (*head).next.replace(ptr::null()) };
        self.head.set(next);
        if next.is_null() {
            self.tail.set(ptr::null());
        }
        Some(head)
    }

    /// Moves all of `other` to the end of `self`.
    pub(crate) fn append(&self, other: &WakeList) {
        let head = other.head.replace(ptr::null());
        if head.is_null() {
            return;
        }
        let tail = other.tail.replace(ptr::null());
        if self.tail.get().is_null() {
            self.head.set(head);
        } else {
            // SAFETY: as in `push`.
            unsafe { (*self.tail.get()).next.set(head) };
        }
        self.tail.set(tail);
    }
}

/// Names a coroutine of one thread without keeping it alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CoId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

const CHUNK: usize = 64;

/// Most bytes of stack (reserved, not touched) that one thread's pool keeps
/// for reuse: 128 default-sized stacks, or 8192 of 16 KiB. Only the pages
/// the pooled coroutines touched cost memory.
pub const POOL_BYTES: usize = 128 << 20;

/// The hot half of the thread's slab of control blocks: only cells, so its
/// thread-local needs no destructor and costs no registration check on
/// the create/free fast path. The cold half is [`Chunks`].
///
/// Free blocks either keep a stack (the pool) or have none (`bare`). The
/// pool has one LIFO list per stack size, so the warmest stack is reused
/// first; the list of the size used last sits in `hot_*`, the others in
/// `Chunks::cold`.
struct Slab {
    bare: Cell<*const Control>,
    hot_size: Cell<usize>,
    hot_head: Cell<*const Control>,
    pooled_bytes: Cell<usize>,
    /// Set by `Chunks`' destructor at thread exit: nothing is pooled or
    /// reused any more.
    closed: Cell<bool>,
    /// Once closed: the chunks that still had blocks in use (a `Box`ed
    /// `Vec` from `Box::into_raw`, or null), and how many blocks in them
    /// are in use. The last one freed frees them all.
    orphan_chunks: Cell<*mut Vec<*mut [Control]>>,
    orphans: Cell<usize>,
}

/// A stack size no stack has: the hot list of a closed slab.
const CLOSED_SIZE: usize = usize::MAX;

/// The cold half of the slab: the chunks blocks live in, and the pool
/// lists of stack sizes other than the hot one. Its destructor closes the
/// slab at thread exit.
struct Chunks {
    /// Chunks from `Box::into_raw`: moving a `Box` (as a growing `Vec`
    /// does) would invalidate the raw pointers into it that free lists and
    /// handles hold.
    chunks: RefCell<Vec<*mut [Control]>>,
    /// Lists of the other sizes: (size, head).
    cold: RefCell<Vec<(usize, *const Control)>>,
}

crate::arch::logical_thread_local! {
    static SLAB: Slab = const {
        Slab {
            bare: Cell::new(ptr::null()),
            hot_size: Cell::new(0),
            hot_head: Cell::new(ptr::null()),
            pooled_bytes: Cell::new(0),
            closed: Cell::new(false),
            orphan_chunks: Cell::new(ptr::null_mut()),
            orphans: Cell::new(0),
        }
    };
    static CHUNKS: Chunks = const {
        Chunks {
            chunks: RefCell::new(Vec::new()),
            cold: RefCell::new(Vec::new()),
        }
    };
}

/// Pops the head of an intrusive free list.
fn pop_list(head: &Cell<*const Control>) -> Option<*const Control> {
    let co = head.get();
    if co.is_null() {
        return None;
    }
    // SAFETY: list members are blocks of our chunks. The popped block's
    // stale link is overwritten by whichever list takes it next.
    head.set(unsafe { (*co).next.get() });
    Some(co)
}

/// Pushes `co` (in no list) on an intrusive free list.
fn push_list(head: &Cell<*const Control>, co: &Control) {
    co.next.set(head.get());
    head.set(co);
}

/// The length of an intrusive list.
fn list_len(mut co: *const Control) -> usize {
    let mut n = 0;
    while !co.is_null() {
        n += 1;
        // SAFETY: list members are blocks of our chunks.
        co = unsafe { (*co).next.get() };
    }
    n
}

impl Slab {
    #[inline]
    fn pop_pooled(&self, size: usize) -> Option<*const Control> {
        if size != self.hot_size.get() {
            self.switch_hot(size);
        }
        let co = pop_list(&self.hot_head)?;
        self.pooled_bytes.set(self.pooled_bytes.get() - size);
        Some(co)
    }

    /// Pools `co` (with its stack of `size` bytes) if the hot list is of
    /// that size and the pool has room.
    #[inline]
    fn push_pooled(&self, co: &Control, size: usize) -> bool {
        let bytes = self.pooled_bytes.get() + size;
        if size != self.hot_size.get() || bytes > POOL_BYTES {
            return false;
        }
        push_list(&self.hot_head, co);
        self.pooled_bytes.set(bytes);
        true
    }

    /// Makes `size` the hot list, parking the current hot list.
    #[cold]
    fn switch_hot(&self, size: usize) {
        if self.closed.get() {
            return;
        }
        let _ = CHUNKS.try_with(|c| {
            let mut cold = c.cold.borrow_mut();
            let parked = (self.hot_size.get(), self.hot_head.get());
            let head = match cold.iter().position(|(s, _)| *s == size) {
                Some(i) => cold.swap_remove(i).1,
                None => ptr::null(),
            };
            if !parked.1.is_null() {
                cold.push(parked);
            }
            self.hot_size.set(size);
            self.hot_head.set(head);
        });
    }

    /// A block without stack: from the free list, or a new chunk.
    fn pop_bare(&self) -> Option<*const Control> {
        if let Some(co) = pop_list(&self.bare) {
            return Some(co);
        }
        if self.closed.get() {
            return None;
        }
        super::overflow::install();
        CHUNKS
            .try_with(|c| {
                let mut chunks = c.chunks.borrow_mut();
                let base = (chunks.len() * CHUNK) as u32;
                let chunk: Box<[Control]> =
                    (0..CHUNK as u32).map(|i| Control::new(base + i)).collect();
                let chunk = Box::into_raw(chunk);
                // SAFETY: just made; freed only by `Chunks::drop` or, once
                // orphaned, by `free_after_close`.
                let blocks = unsafe { &*chunk };
                for c in blocks[1..].iter().rev() {
                    push_list(&self.bare, c);
                }
                chunks.push(chunk);
                &blocks[0] as *const Control
            })
            .ok()
    }

    /// Takes every pooled stack out, leaving the blocks bare.
    fn drain_pool(&self, cold: Vec<(usize, *const Control)>) -> Vec<Stack> {
        let mut stacks = Vec::new();
        let hot = (self.hot_size.get(), self.hot_head.replace(ptr::null()));
        for (_, head) in cold.into_iter().chain([hot]) {
            let head = Cell::new(head);
            while let Some(co) = pop_list(&head) {
                // SAFETY: list members are blocks of our chunks.
                let c = unsafe { &*co };
                stacks.extend(c.take_stack());
                push_list(&self.bare, c);
            }
        }
        self.pooled_bytes.set(0);
        stacks
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        let _ = SLAB.try_with(|slab| {
            let stacks = slab.drain_pool(std::mem::take(self.cold.get_mut()));
            slab.closed.set(true);
            slab.hot_size.set(CLOSED_SIZE);
            // The bare blocks are about to be freed with their chunks (or
            // orphaned with them): nothing may pop them any more.
            slab.bare.set(ptr::null());
            drop(stacks);
            // A block still in use (its handle lives in another
            // thread-local, destroyed later) must stay valid: its chunk is
            // kept until the last such block is freed.
            let mut orphaned = Vec::new();
            let mut in_use = 0;
            for chunk in self.chunks.get_mut().drain(..) {
                // SAFETY: made by `Box::into_raw` in `pop_bare`; freed only
                // here or by `free_after_close`.
                let live = unsafe { &*chunk }
                    .iter()
                    .filter(|c| c.state() != State::Free)
                    .count();
                if live == 0 {
                    // SAFETY: as above, and no block of it is in use.
                    drop(unsafe { Box::from_raw(chunk) });
                } else {
                    in_use += live;
                    orphaned.push(chunk);
                }
            }
            if in_use > 0 {
                slab.orphans.set(in_use);
                slab.orphan_chunks.set(Box::into_raw(Box::new(orphaned)));
            }
        });
    }
}

/// A block with one reference, in state Ready, owning a stack of `size`
/// usable bytes (already rounded): from the pool when one is there.
#[inline]
pub(crate) fn alloc(size: usize) -> io::Result<*const Control> {
    let pooled = SLAB.try_with(|slab| slab.pop_pooled(size));
    let co = match pooled {
        Ok(Some(co)) => co,
        _ => alloc_fresh(size)?,
    };
    // SAFETY: a block just taken from a free list is ours alone.
    let c = unsafe { &*co };
    debug_assert_eq!(c.state(), State::Free);
    c.refs.set(1);
    c.status.set(READY);
    Ok(co)
}

/// A bare block given a new stack.
#[cold]
fn alloc_fresh(size: usize) -> io::Result<*const Control> {
    let stack = Stack::new(size)?;
    let co = match SLAB.try_with(Slab::pop_bare) {
        Ok(Some(co)) => co,
        // The thread is tearing down its thread-locals: a lone block,
        // not in any slab, deallocated when freed (`free_after_close`).
        _ => Box::leak(Box::new(Control::new(u32::MAX))),
    };
    // SAFETY: a block just taken from a free list (or made) is ours alone.
    unsafe { *(*co).stack.get() = Some(stack) };
    Ok(co)
}

/// Returns a block whose last reference is gone; its stack, if it still
/// has one, is pooled with it when the pool has room. A raw pointer: after
/// thread exit this may free the block's memory.
#[inline]
pub(crate) fn free(ptr: *const Control) {
    // SAFETY: callers pass a block that is live until this call.
    let co = unsafe { &*ptr };
    co.status.set(State::Free as u8);
    co.generation.set(co.generation.get().wrapping_add(1));
    if std::mem::needs_drop::<Context>() {
        // SAFETY: no handle refers to the block any more; the context was
        // initialised by `create` and is not used again until the next one.
        unsafe { (*co.context.get()).assume_init_drop() };
    }
    if co.extras.get() {
        co.drop_extras();
    }
    // A panic payload is always taken by whoever saw the coroutine finish.
    debug_assert!({
        let p = co.panic.take();
        p.is_none()
    });
    // A closed slab's hot size matches no stack, and lone blocks (made only
    // once the slab is closed) take the slow path that way too.
    let pooled = match co.stack() {
        Some(stack) => SLAB
            .try_with(|slab| slab.push_pooled(co, stack.size()))
            .unwrap_or(false),
        None => false,
    };
    if !pooled {
        free_slow(ptr);
    }
}

/// Pools the stack of a finished coroutine whose block lingers (a handle
/// still names it): in a bare block, as if that block had finished with
/// it, so the next coroutine of its size runs on warm pages instead of
/// faulting in fresh ones. Dropped when the pool is full.
#[cold]
pub(crate) fn pool_stack(stack: Stack) {
    let mut stack = Some(stack);
    let _ = SLAB.try_with(|slab| {
        let size = stack.as_ref().map_or(0, Stack::size);
        if slab.closed.get() || slab.pooled_bytes.get() + size > POOL_BYTES {
            return;
        }
        let Some(co) = slab.pop_bare() else { return };
        // SAFETY: a block from the bare list (or a new chunk) is free and
        // ours alone.
        let c = unsafe { &*co };
        // SAFETY: as above: nothing refers to its stack slot.
        unsafe { *c.stack.get() = stack.take() };
        if size != slab.hot_size.get() {
            slab.switch_hot(size);
        }
        if !slab.push_pooled(c, size) {
            stack = c.take_stack();
            push_list(&slab.bare, c);
        }
    });
    drop(stack);
}

#[cold]
fn free_slow(ptr: *const Control) {
    enum Fate {
        Pooled,
        Bare,
        Closed,
    }
    // SAFETY: as in `free`; not used once the block's memory may go.
    let co = unsafe { &*ptr };
    let fate = SLAB
        .try_with(|slab| {
            if slab.closed.get() {
                return Fate::Closed;
            }
            if let Some(size) = co.stack().map(Stack::size) {
                if slab.pooled_bytes.get() + size <= POOL_BYTES {
                    slab.switch_hot(size);
                    if slab.push_pooled(co, size) {
                        return Fate::Pooled;
                    }
                }
            }
            push_list(&slab.bare, co);
            Fate::Bare
        })
        .unwrap_or(Fate::Closed);
    match fate {
        Fate::Pooled => {}
        // Outside the slab: dropping a stack gives its memory back.
        Fate::Bare => drop(co.take_stack()),
        Fate::Closed => {
            drop(co.take_stack());
            free_after_close(ptr);
        }
    }
}

/// Frees a block after its thread's slab closed: a lone block goes back
/// to the allocator; a block of an orphaned chunk is counted off, and the
/// last one frees those chunks.
fn free_after_close(ptr: *const Control) {
    // SAFETY: a block whose last reference is gone; read before it may be
    // deallocated.
    if unsafe { (*ptr).index } == u32::MAX {
        // SAFETY: lone blocks come from `Box::leak` in `alloc_fresh`, and
        // nothing refers to this one any more.
        drop(unsafe { Box::from_raw(ptr as *mut Control) });
        return;
    }
    let _ = SLAB.try_with(|slab| {
        debug_assert!(slab.orphans.get() > 0);
        let left = slab.orphans.get() - 1;
        slab.orphans.set(left);
        if left > 0 {
            return;
        }
        let chunks = slab.orphan_chunks.replace(ptr::null_mut());
        if chunks.is_null() {
            return;
        }
        // SAFETY: made by `Box::into_raw` in `Chunks::drop`, taken once.
        for chunk in *unsafe { Box::from_raw(chunks) } {
            // SAFETY: chunks from `pop_bare`, none of whose blocks is in
            // use any more (the count reached zero).
            drop(unsafe { Box::from_raw(chunk) });
        }
    });
}

/// Gives every stack pooled by the calling thread back to the kernel.
pub(crate) fn trim_pool() {
    let cold = CHUNKS
        .try_with(|c| std::mem::take(&mut *c.cold.borrow_mut()))
        .unwrap_or_default();
    let stacks = SLAB
        .try_with(|slab| slab.drain_pool(cold))
        .unwrap_or_default();
    drop(stacks);
    crate::stack::release_freed();
}

/// How many stacks the calling thread's pool holds.
pub(crate) fn pooled() -> usize {
    let hot = SLAB
        .try_with(|slab| list_len(slab.hot_head.get()))
        .unwrap_or(0);
    let cold = CHUNKS
        .try_with(|c| c.cold.borrow().iter().map(|&(_, h)| list_len(h)).sum())
        .unwrap_or(0);
    hot + cold
}

/// The block `id` names, if that coroutine is still alive on this thread.
pub(crate) fn lookup(id: CoId) -> Option<*const Control> {
    CHUNKS
        .try_with(|c| {
            let chunks = c.chunks.borrow();
            // SAFETY: chunks live as long as the slab (see `Chunks::chunks`).
            let chunk = unsafe { &**chunks.get(id.index as usize / CHUNK)? };
            let co = &chunk[id.index as usize % CHUNK];
            let alive = co.generation.get() == id.generation && co.state() != State::Free;
            alive.then_some(co as *const Control)
        })
        .ok()
        .flatten()
}

/// Every live coroutine of this thread, for debugging.
pub(crate) fn for_each_live(mut f: impl FnMut(&Control)) {
    let _ = CHUNKS.try_with(|c| {
        let chunks = c.chunks.borrow();
        // SAFETY: chunks live as long as the slab (see `Chunks::chunks`).
        for co in chunks.iter().flat_map(|&c| unsafe { &*c }.iter()) {
            if co.state() != State::Free {
                f(co);
            }
        }
    });
}
