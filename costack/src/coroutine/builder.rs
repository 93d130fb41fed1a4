//! Building coroutines: [`Builder`], and the base frame every coroutine
//! starts in.

use std::io;
use std::marker::PhantomData;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use super::control::{self, Control, PANICKED};
use super::unwind::ForcedUnwind;
use super::Coroutine;
use crate::arch::{Context, Switch};
use crate::stack::{self, DEFAULT_STACK_SIZE};

/// Builds a coroutine with a chosen stack size or name.
///
/// ```
/// let co = costack::Coroutine::builder()
///     .name("worker")
///     .stack_size(64 * 1024)
///     .create(|| assert_eq!(costack::current().unwrap().name(), Some("worker")))
///     .unwrap();
/// co.enter();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    stack_size: Option<usize>,
    name: Option<String>,
}

impl Builder {
    /// A builder with the default stack size (1 MiB) and no name.
    ///
    /// ```
    /// use costack::Builder;
    ///
    /// let co = Builder::new().create(|| ()).unwrap(); // the defaults
    /// co.enter();
    /// ```
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Sets the stack size in bytes; rounded up to whole pages, and to at
    /// least 16 KiB. A guard page comes on top of it.
    ///
    /// ```
    /// use costack::Builder;
    ///
    /// // Deep recursion wants a bigger stack than the default 1 MiB.
    /// fn depth(n: u32) -> u32 { if n == 0 { 0 } else { 1 + depth(n - 1) } }
    /// let co = Builder::new().stack_size(8 << 20).create(|| assert_eq!(depth(50_000), 50_000)).unwrap();
    /// co.enter();
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Names the coroutine: shown by `Debug`, [`Coroutine::name`], tracing
    /// events and the stack-overflow message.
    ///
    /// ```
    /// use costack::{current, Builder};
    ///
    /// let co = Builder::new()
    ///     .name("conn 7") // shown in panics, overflow reports and debug::coroutines
    ///     .create(|| assert_eq!(current().unwrap().name(), Some("conn 7")))
    ///     .unwrap();
    /// co.enter();
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Creates the coroutine; nothing runs until it is entered.
    ///
    /// # Errors
    /// If no stack can be mapped (address space or kernel mappings
    /// exhausted).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::Builder;
    ///
    /// match Builder::new().stack_size(256 << 10).create(|| ()) {
    ///     Ok(co) => co.enter(),
    ///     Err(e) => eprintln!("no stack for a coroutine: {e}"), // out of address space
    /// }
    /// ```
    pub fn create<F: FnOnce() + 'static>(self, f: F) -> io::Result<Coroutine> {
        let size = self
            .stack_size
            .map_or(DEFAULT_STACK_SIZE, stack::round_size);
        create(size, self.name, f)
    }
}

/// Creates a coroutine with a stack of `size` bytes (a multiple of the page
/// size, at least the minimum).
#[inline]
pub(super) fn create<F: FnOnce() + 'static>(
    size: usize,
    name: Option<String>,
    f: F,
) -> io::Result<Coroutine> {
    // A closure too large to sit comfortably on the stack goes on the heap.
    if mem::size_of::<F>() > size / 4 {
        let boxed: Box<dyn FnOnce()> = Box::new(f);
        return create_with(size, name, boxed);
    }
    create_with(size, name, f)
}

fn create_with<F: FnOnce() + 'static>(
    size: usize,
    name: Option<String>,
    f: F,
) -> io::Result<Coroutine> {
    let ptr = control::alloc(size)?;
    // SAFETY: freshly allocated, we hold its only reference.
    let co = unsafe { &*ptr };
    // SAFETY: `alloc` returns blocks with a stack.
    let stack = unsafe { co.stack().unwrap_unchecked() };
    stack.prepare();
    // The closure lives at the top of the stack until the coroutine
    // starts (or is dropped unstarted).
    let align = mem::align_of::<F>().max(16);
    let closure = ((stack.top() as usize - mem::size_of::<F>()) & !(align - 1)) as *mut F;
    let top = ((closure as usize) & !15) as *mut u8;
    // SAFETY: `closure` lies in the stack we own, below its top, aligned
    // for F; the stack is large enough (size_of::<F>() <= size / 4).
    unsafe { closure.write(f) };
    co.closure.set(closure.cast());
    co.drop_closure.set(Some(drop_closure::<F>));
    // SAFETY: the context gets the rest of the stack, below the closure,
    // and the control block, which outlives it, as its argument.
    let context = unsafe { Context::new(top, stack.bottom(), start::<F>, ptr as *mut u8) };
    // SAFETY: the block is ours alone (see above); its context slot is
    // uninitialised (freed blocks have dropped theirs).
    unsafe { (*co.context.get()).write(context) };
    if let Some(name) = name {
        co.set_name(name.into_boxed_str());
    }
    trace_event!("create", co);
    Ok(Coroutine {
        ctl: NonNull::from(co),
        _not_send: PhantomData,
    })
}

unsafe fn drop_closure<F>(p: *mut u8) {
    // SAFETY: `p` points at the unstarted closure `create` wrote.
    unsafe { ptr::drop_in_place(p.cast::<F>()) }
}

/// The base frame of every coroutine.
unsafe extern "C-unwind" fn start<F: FnOnce()>(arg: *mut u8) -> ! {
    // SAFETY: `arg` is the control block, live while the coroutine runs.
    let co = unsafe { &*(arg as *const Control) };
    co.drop_closure.set(None);
    // SAFETY: the closure was written by `create`, and is read exactly once
    // (drop_closure was cleared, so nobody else drops it).
    let f = unsafe { co.closure.get().cast::<F>().read() };
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
        if !payload.is::<ForcedUnwind>() {
            co.panic.set(Some(payload));
            co.status.set(co.status.get() | PANICKED);
        }
    }
    let context = co.context();
    // Entered becomes Finished; the flags stay for the enterer, which also
    // makes our caller current again (see `finished`).
    co.status.set(co.status.get() + 1);
    trace_event!("terminate", co);
    // SAFETY: everything on this stack has been dropped.
    unsafe { context.exit() }
}
