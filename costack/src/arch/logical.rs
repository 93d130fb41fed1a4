//! Thread-locals of the *logical* thread.
//!
//! costack keeps its per-thread state (the current coroutine, the control
//! block slab, the stack pool, the wake mailbox) in thread-locals declared
//! with [`logical_thread_local!`]. With a real stack switch that is plain
//! `thread_local!`. With the thread backend, a coroutine's body runs on an
//! OS thread of its own, yet must see the state of the thread that entered
//! it: there each key resolves through a per-OS-thread pointer to the
//! *root* (the thread that is not a coroutine), which the baton hands over
//! at every switch. Only one OS thread of a logical thread runs at a time
//! (the baton's mutex orders them), so the root's values are never touched
//! concurrently.

#[cfg(not(any(miri, feature = "thread-backend")))]
macro_rules! logical_thread_local {
    ($($t:tt)*) => { std::thread_local!($($t)*); };
}

#[cfg(any(miri, feature = "thread-backend"))]
macro_rules! logical_thread_local {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }; $($rest:tt)*) => {
        $crate::arch::logical_thread_local!($(#[$attr])* $vis static $name: $t = $init; $($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
        $(#[$attr])*
        $vis static $name: $crate::arch::logical::Key<$t> = $crate::arch::logical::Key::new({
            fn init() -> $t {
                $init
            }
            init
        });
        $crate::arch::logical_thread_local!($($rest)*);
    };
}

pub(crate) use logical_thread_local;

#[cfg(any(miri, feature = "thread-backend"))]
pub(crate) use imp::*;

#[cfg(any(miri, feature = "thread-backend"))]
mod imp {
    use std::any::Any;
    use std::cell::{Cell, RefCell};
    use std::ptr;

    /// The values of one logical thread, owned by its root OS thread. Raw
    /// pointers (from `Box::into_raw`): references handed out must stay
    /// valid while the vector grows.
    pub(crate) struct Root {
        values: RefCell<Vec<(usize, *mut dyn Any)>>,
    }

    impl Root {
        /// Drops the values newest first, the reverse of creation, as with
        /// thread-locals that use each other. Keys still work meanwhile: a
        /// value's destructor may use the others (or make new ones, which
        /// are dropped in turn).
        ///
        /// # Safety
        /// `this` is a live root; called once, at its thread's exit.
        unsafe fn drain(this: *const Root) {
            loop {
                // SAFETY: the caller's contract; the borrow ends before
                // the value's destructor runs.
                let last = unsafe { (*this).values.borrow_mut().pop() };
                let Some((_, v)) = last else { break };
                // SAFETY: made by `Box::into_raw` in `try_with`, and out of
                // the vector now, so dropped once.
                drop(unsafe { Box::from_raw(v) });
            }
        }
    }

    const NONE: u8 = 0;
    const ALIVE: u8 = 1;
    const GONE: u8 = 2;

    std::thread_local! {
        /// The root this OS thread works for (its own, or its enterer's).
        static ROOT: Cell<*const Root> = const { Cell::new(ptr::null()) };
        /// This thread's own root, if it is a root; dropped at thread exit.
        static OWN: OwnRoot = const { OwnRoot(Cell::new(ptr::null_mut())) };
        static OWN_STATE: Cell<u8> = const { Cell::new(NONE) };
    }

    /// A root made by `Box::into_raw`: pointers to it are handed out.
    struct OwnRoot(Cell<*mut Root>);

    impl Drop for OwnRoot {
        fn drop(&mut self) {
            let p = self.0.get();
            if !p.is_null() {
                // SAFETY: made by `Box::into_raw` in `root` and still ours.
                unsafe { Root::drain(p) };
            }
            // Keys report "gone" from here on.
            let _ = OWN_STATE.try_with(|s| s.set(GONE));
            let _ = ROOT.try_with(|r| r.set(ptr::null()));
            self.0.set(ptr::null_mut());
            if !p.is_null() {
                // SAFETY: made by `Box::into_raw` in `root`, dropped once;
                // no key can reach it any more (ROOT is cleared), and its
                // values are gone.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }

    /// Access to a logical thread-local after the thread's values dropped.
    #[derive(Debug)]
    pub(crate) struct AccessError;

    /// The current OS thread's root, creating it for a root thread.
    pub(crate) fn root() -> Option<*const Root> {
        let r = ROOT.try_with(Cell::get).ok()?;
        if !r.is_null() {
            return Some(r);
        }
        if OWN_STATE.try_with(Cell::get).ok()? != NONE {
            return None;
        }
        let p = Box::into_raw(Box::new(Root {
            values: RefCell::new(Vec::new()),
        }));
        if OWN.try_with(|o| o.0.set(p)).is_err() {
            // SAFETY: just made, and not shared.
            drop(unsafe { Box::from_raw(p) });
            return None;
        }
        OWN_STATE.with(|s| s.set(ALIVE));
        ROOT.with(|r| r.set(p));
        Some(p.cast_const())
    }

    /// Makes this OS thread (a coroutine's) work for `root` until the next
    /// switch.
    pub(crate) fn adopt(root: *const Root) {
        ROOT.with(|r| r.set(root));
    }

    /// A logical thread-local key (see the module documentation).
    pub(crate) struct Key<T> {
        init: fn() -> T,
    }

    impl<T: 'static> Key<T> {
        pub(crate) const fn new(init: fn() -> T) -> Key<T> {
            Key { init }
        }

        pub(crate) fn try_with<R>(
            &'static self,
            f: impl FnOnce(&T) -> R,
        ) -> Result<R, AccessError> {
            let root = root().ok_or(AccessError)?;
            let id = self as *const Key<T> as usize;
            // SAFETY: a root lives until its OS thread exits, and only the
            // thread holding the baton of its logical thread uses it.
            let root = unsafe { &*root };
            let found = root
                .values
                .borrow()
                .iter()
                .find(|(k, _)| *k == id)
                .map(|(_, v)| *v);
            let value = match found {
                Some(v) => v,
                None => {
                    // Not borrowed while `init` runs: it may use other keys.
                    let v: Box<dyn Any> = Box::new((self.init)());
                    let p = Box::into_raw(v);
                    root.values.borrow_mut().push((id, p));
                    p
                }
            };
            // SAFETY: values never move and are dropped only with the root;
            // they are only read through shared references.
            let value = unsafe { &*value }
                .downcast_ref::<T>()
                .expect("logical key type");
            Ok(f(value))
        }

        pub(crate) fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
            self.try_with(f)
                .expect("cannot access a logical thread-local after its thread's values dropped")
        }
    }
}
