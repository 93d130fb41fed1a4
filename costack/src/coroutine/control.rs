//! Control blocks: the per-coroutine state, kept in a per-thread slab.
//!
//! Blocks never move and are reused (with a new generation) once the last
//! handle is gone, so creating a coroutine allocates nothing once the slab
//! and the stack pool are warm. A [`CoId`] (slot + generation) names a
//! coroutine without keeping it alive; it is how other threads refer to one.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::ptr;
use std::rc::Rc;

use crate::arch::Context;
use crate::stack::Stack;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// In the slab's free list.
    Free,
    /// Created, never entered.
    Created,
    /// Yielded; may be entered.
    Suspended,
    /// On the active chain: running, or entered another coroutine.
    Entered,
    /// Returned or panicked; its stack is gone.
    Finished,
}

/// Where a coroutine is scheduled when woken from outside any coroutine:
/// the event loop it belongs to.
pub(crate) trait Home {
    fn schedule(&self, co: super::Coroutine);
}

pub(crate) struct Control {
    pub(crate) refs: Cell<usize>,
    pub(crate) generation: Cell<u32>,
    pub(crate) index: u32,
    pub(crate) state: Cell<State>,
    /// Set when the last handle is dropped while suspended: the next resume
    /// unwinds the coroutine's stack.
    pub(crate) cancelled: Cell<bool>,
    pub(crate) context: UnsafeCell<Option<Context>>,
    pub(crate) stack: UnsafeCell<Option<Stack>>,
    /// The not-yet-started closure, on the stack, and how to drop it.
    pub(crate) closure: Cell<*mut u8>,
    pub(crate) drop_closure: Cell<Option<unsafe fn(*mut u8)>>,
    /// Coroutines this one woke while running, entered after it yields.
    pub(crate) wakes: WakeList,
    /// Link in some coroutine's `wakes` (or a free-list link).
    pub(crate) next: Cell<*const Control>,
    /// Whether this coroutine sits in some wake list.
    pub(crate) queued: Cell<bool>,
    pub(crate) name: UnsafeCell<Option<Box<str>>>,
    pub(crate) panic: Cell<Option<Box<dyn Any + Send>>>,
    pub(crate) home: Cell<Option<Rc<dyn Home>>>,
}

impl Control {
    fn new(index: u32) -> Control {
        Control {
            refs: Cell::new(0),
            generation: Cell::new(0),
            index,
            state: Cell::new(State::Free),
            cancelled: Cell::new(false),
            context: UnsafeCell::new(None),
            stack: UnsafeCell::new(None),
            closure: Cell::new(ptr::null_mut()),
            drop_closure: Cell::new(None),
            wakes: WakeList::new(),
            next: Cell::new(ptr::null()),
            queued: Cell::new(false),
            name: UnsafeCell::new(None),
            panic: Cell::new(None),
            home: Cell::new(None),
        }
    }

    /// The switch context. Only valid between creation and finish.
    #[inline]
    pub(crate) fn context(&self) -> &Context {
        debug_assert!(matches!(
            self.state.get(),
            State::Created | State::Suspended | State::Entered
        ));
        // SAFETY: `context` is written only by `Coroutine::create` (state
        // Created, no outstanding borrow) and is `Some` from then until the
        // block is freed; callers only ask while the coroutine is created,
        // suspended or entered, and in between it is only read.
        unsafe { (*self.context.get()).as_ref().unwrap_unchecked() }
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

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.get().is_null()
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

/// The thread's control blocks, in chunks that never move.
///
/// Free blocks either keep a stack (the pool) or have none (`bare`). The
/// pool has one LIFO list per stack size, so the warmest stack is reused
/// first; the list of the size used last sits in `hot_*` so the common
/// case of create+finish touches a few cells and no `Vec`.
pub(crate) struct Slab {
    /// Chunks from `Box::into_raw`: moving a `Box` (as a growing `Vec`
    /// does) would invalidate the raw pointers into it that free lists and
    /// handles hold.
    chunks: RefCell<Vec<*mut [Control]>>,
    bare: Cell<*const Control>,
    hot_size: Cell<usize>,
    hot_head: Cell<*const Control>,
    /// Lists of the other sizes: (size, head).
    cold: RefCell<Vec<(usize, *const Control)>>,
    pooled: Cell<usize>,
    pooled_bytes: Cell<usize>,
}

crate::arch::logical_thread_local! {
    static SLAB: Slab = const {
        Slab {
            chunks: RefCell::new(Vec::new()),
            bare: Cell::new(ptr::null()),
            hot_size: Cell::new(0),
            hot_head: Cell::new(ptr::null()),
            cold: RefCell::new(Vec::new()),
            pooled: Cell::new(0),
            pooled_bytes: Cell::new(0),
        }
    };
}

/// Pops the head of an intrusive free list.
fn pop_list(head: &Cell<*const Control>) -> Option<*const Control> {
    let co = head.get();
    if co.is_null() {
        return None;
    }
    // SAFETY: list members are blocks of our chunks.
    head.set(unsafe { (*co).next.replace(ptr::null()) });
    Some(co)
}

impl Slab {
    #[inline]
    fn pop_pooled(&self, size: usize) -> Option<*const Control> {
        let co = if size == self.hot_size.get() {
            pop_list(&self.hot_head)?
        } else {
            self.switch_hot(size);
            pop_list(&self.hot_head)?
        };
        self.pooled.set(self.pooled.get() - 1);
        self.pooled_bytes.set(self.pooled_bytes.get() - size);
        Some(co)
    }

    /// Makes `size` the hot list, parking the current hot list.
    #[cold]
    fn switch_hot(&self, size: usize) {
        let mut cold = self.cold.borrow_mut();
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
    }

    #[inline]
    fn has_room(&self, size: usize) -> bool {
        self.pooled_bytes.get() + size <= POOL_BYTES
    }

    #[inline]
    fn add_pooled(&self, size: usize) {
        self.pooled.set(self.pooled.get() + 1);
        self.pooled_bytes.set(self.pooled_bytes.get() + size);
    }

    fn pop_bare(&self) -> *const Control {
        if let Some(co) = pop_list(&self.bare) {
            return co;
        }
        super::overflow::install();
        let mut chunks = self.chunks.borrow_mut();
        let base = (chunks.len() * CHUNK) as u32;
        let chunk: Box<[Control]> = (0..CHUNK as u32).map(|i| Control::new(base + i)).collect();
        let chunk = Box::into_raw(chunk);
        // SAFETY: just made; freed only by `Slab::drop`.
        let blocks = unsafe { &*chunk };
        for c in blocks[1..].iter().rev() {
            c.next.set(self.bare.get());
            self.bare.set(c);
        }
        chunks.push(chunk);
        &blocks[0]
    }

    fn push_bare(&self, co: &Control) {
        co.next.set(self.bare.get());
        self.bare.set(co);
    }

    /// Takes every pooled stack out, leaving the blocks bare.
    fn drain_pool(&self) -> Vec<Stack> {
        let mut stacks = Vec::with_capacity(self.pooled.get());
        let mut lists = std::mem::take(&mut *self.cold.borrow_mut());
        lists.push((0, self.hot_head.replace(ptr::null())));
        for (_, head) in lists {
            let head = Cell::new(head);
            while let Some(co) = pop_list(&head) {
                // SAFETY: list members are blocks of our chunks.
                let c = unsafe { &*co };
                stacks.extend(c.take_stack());
                self.push_bare(c);
            }
        }
        self.pooled.set(0);
        self.pooled_bytes.set(0);
        stacks
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        drop(self.drain_pool());
        // A block still referenced (a handle leaked into another
        // thread-local that outlives this one) must stay valid: leak its
        // chunk rather than free memory a handle points to.
        for chunk in self.chunks.get_mut().drain(..) {
            // SAFETY: made by `Box::into_raw` in `pop_bare`; freed only here.
            if unsafe { &*chunk }
                .iter()
                .all(|c| c.state.get() == State::Free)
            {
                // SAFETY: as above, and no block of it is in use.
                drop(unsafe { Box::from_raw(chunk) });
            }
        }
    }
}

/// A block with one reference, in state Created, owning a stack of `size`
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
    debug_assert_eq!(c.state.get(), State::Free);
    c.refs.set(1);
    c.state.set(State::Created);
    Ok(co)
}

/// A bare block given a new stack.
#[cold]
fn alloc_fresh(size: usize) -> io::Result<*const Control> {
    let stack = Stack::new(size)?;
    let co = match SLAB.try_with(Slab::pop_bare) {
        Ok(co) => co,
        // The thread is tearing down its thread-locals: a lone block,
        // never reused (its index is not in any slab).
        Err(_) => Box::leak(Box::new(Control::new(u32::MAX))),
    };
    // SAFETY: a block just taken from a free list (or made) is ours alone.
    unsafe { *(*co).stack.get() = Some(stack) };
    Ok(co)
}

/// Returns a block whose last reference is gone; its stack, if it still
/// has one, is pooled with it when the pool has room.
#[inline]
pub(crate) fn free(co: &Control) {
    co.state.set(State::Free);
    co.generation.set(co.generation.get().wrapping_add(1));
    // SAFETY: no handle refers to the block any more.
    unsafe {
        if std::mem::needs_drop::<Context>() {
            *co.context.get() = None;
        }
        if (*co.name.get()).is_some() {
            *co.name.get() = None;
        }
    }
    // A panic payload is always taken by whoever saw the coroutine finish.
    debug_assert!({
        let p = co.panic.take();
        p.is_none()
    });
    drop(co.home.take());
    let pooled = SLAB.try_with(|slab| {
        let size = match co.stack() {
            Some(stack) if co.index != u32::MAX => stack.size(),
            _ => return false,
        };
        if size != slab.hot_size.get() || !slab.has_room(size) {
            return false;
        }
        co.next.set(slab.hot_head.get());
        slab.hot_head.set(co);
        slab.add_pooled(size);
        true
    });
    if !matches!(pooled, Ok(true)) {
        free_slow(co);
    }
}

#[cold]
fn free_slow(co: &Control) {
    if co.index == u32::MAX {
        drop(co.take_stack());
        return; // a lone block: leaked on purpose, see `alloc_fresh`.
    }
    let surplus = SLAB.try_with(|slab| {
        if let Some(size) = co.stack().map(Stack::size) {
            if slab.has_room(size) {
                slab.switch_hot(size);
                co.next.set(slab.hot_head.get());
                slab.hot_head.set(co);
                slab.add_pooled(size);
                return None;
            }
        }
        slab.push_bare(co);
        co.take_stack()
    });
    // Outside the slab: dropping a stack gives its memory back.
    drop(surplus);
}

/// Gives every stack pooled by the calling thread back to the kernel.
pub(crate) fn trim_pool() {
    let stacks = SLAB.try_with(Slab::drain_pool).unwrap_or_default();
    drop(stacks);
}

/// How many stacks the calling thread's pool holds.
pub(crate) fn pooled() -> usize {
    SLAB.try_with(|slab| slab.pooled.get()).unwrap_or(0)
}

/// The block `id` names, if that coroutine is still alive on this thread.
pub(crate) fn lookup(id: CoId) -> Option<*const Control> {
    SLAB.try_with(|slab| {
        let chunks = slab.chunks.borrow();
        // SAFETY: chunks live as long as the slab (see `Slab::chunks`).
        let chunk = unsafe { &**chunks.get(id.index as usize / CHUNK)? };
        let co = &chunk[id.index as usize % CHUNK];
        let alive = co.generation.get() == id.generation && co.state.get() != State::Free;
        alive.then_some(co as *const Control)
    })
    .ok()
    .flatten()
}

/// Every live coroutine of this thread, for debugging.
pub(crate) fn for_each_live(mut f: impl FnMut(&Control)) {
    let _ = SLAB.try_with(|slab| {
        let chunks = slab.chunks.borrow();
        // SAFETY: chunks live as long as the slab (see `Slab::chunks`).
        for co in chunks.iter().flat_map(|&c| unsafe { &*c }.iter()) {
            if co.state.get() != State::Free {
                f(co);
            }
        }
    });
}
