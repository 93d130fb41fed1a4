//! Control blocks: the per-coroutine state, kept in a per-thread slab.
//!
//! Blocks never move and are reused (with a new generation) once the last
//! handle is gone, so creating a coroutine allocates nothing once the slab
//! and the stack pool are warm. A [`CoId`] (slot + generation) names a
//! coroutine without keeping it alive; it is how other threads refer to one.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
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
    /// Whoever entered this coroutine, while it is entered (null: a thread).
    pub(crate) caller: Cell<*const Control>,
    /// Coroutines this one woke while running, entered after it yields.
    pub(crate) wakes: WakeList,
    /// Link in some coroutine's `wakes` (or a free-list link).
    pub(crate) next: Cell<*const Control>,
    /// Whether this coroutine sits in some wake list.
    pub(crate) queued: Cell<bool>,
    pub(crate) name: UnsafeCell<Option<Box<str>>>,
    pub(crate) panic: Cell<Option<Box<dyn Any + Send>>>,
    pub(crate) home: RefCell<Option<Rc<dyn Home>>>,
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
            caller: Cell::new(ptr::null()),
            wakes: WakeList::new(),
            next: Cell::new(ptr::null()),
            queued: Cell::new(false),
            name: UnsafeCell::new(None),
            panic: Cell::new(None),
            home: RefCell::new(None),
        }
    }

    /// The switch context. Only valid between creation and finish.
    #[inline]
    pub(crate) fn context(&self) -> &Context {
        // SAFETY: `context` is written only by `Coroutine::create` (state
        // Created, no outstanding borrow) and cleared by the slab on reuse;
        // in between it is only read.
        unsafe { (*self.context.get()).as_ref().expect("coroutine has no context") }
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

/// The thread's control blocks, in chunks that never move.
pub(crate) struct Slab {
    chunks: Vec<Box<[Control]>>,
    free: *const Control,
}

crate::arch::logical_thread_local! {
    static SLAB: RefCell<Slab> = const {
        RefCell::new(Slab { chunks: Vec::new(), free: ptr::null() })
    };
}

impl Drop for Slab {
    fn drop(&mut self) {
        // A block still referenced (a handle leaked into another
        // thread-local that outlives this one) must stay valid: leak its
        // chunk rather than free memory a handle points to.
        for chunk in self.chunks.drain(..) {
            if chunk.iter().any(|c| c.state.get() != State::Free) {
                std::mem::forget(chunk);
            }
        }
    }
}

/// A free control block, with one reference, in state Created.
pub(crate) fn alloc() -> *const Control {
    let from_slab = SLAB.try_with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.free.is_null() {
            let base = (slab.chunks.len() * CHUNK) as u32;
            let chunk: Box<[Control]> = (0..CHUNK as u32).map(|i| Control::new(base + i)).collect();
            for c in chunk.iter().rev() {
                c.next.set(slab.free);
                slab.free = c;
            }
            slab.chunks.push(chunk);
        }
        let co = slab.free;
        // SAFETY: free-list members are blocks of our chunks.
        slab.free = unsafe { (*co).next.replace(ptr::null()) };
        co
    });
    let co = match from_slab {
        Ok(co) => co,
        // The thread is tearing down its thread-locals: a lone block,
        // never reused (its index is not in any slab).
        Err(_) => Box::into_raw(Box::new(Control::new(u32::MAX))),
    };
    // SAFETY: a block just taken from the free list is ours alone.
    let c = unsafe { &*co };
    debug_assert_eq!(c.state.get(), State::Free);
    c.refs.set(1);
    c.state.set(State::Created);
    co
}

/// Returns a block whose last reference is gone and whose coroutine holds
/// no stack any more.
pub(crate) fn free(co: &Control) {
    debug_assert!(co.stack().is_none());
    co.state.set(State::Free);
    co.generation.set(co.generation.get().wrapping_add(1));
    co.cancelled.set(false);
    co.caller.set(ptr::null());
    co.closure.set(ptr::null_mut());
    // SAFETY: no handle refers to the block any more.
    unsafe {
        *co.context.get() = None;
        *co.name.get() = None;
    }
    drop(co.panic.take());
    drop(co.home.borrow_mut().take());
    if co.index == u32::MAX {
        return; // a lone block: leaked on purpose, see `alloc`.
    }
    let _ = SLAB.try_with(|slab| {
        let mut slab = slab.borrow_mut();
        co.next.set(slab.free);
        slab.free = co;
    });
}

/// The block `id` names, if that coroutine is still alive on this thread.
pub(crate) fn lookup(id: CoId) -> Option<*const Control> {
    SLAB.try_with(|slab| {
        let slab = slab.borrow();
        let chunk = slab.chunks.get(id.index as usize / CHUNK)?;
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
        let slab = slab.borrow();
        for co in slab.chunks.iter().flat_map(|c| c.iter()) {
            if co.state.get() != State::Free {
                f(co);
            }
        }
    });
}
