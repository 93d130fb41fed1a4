//! Scoped coroutines (after `std::thread::scope` and Trio's nurseries):
//! children that may borrow from their parent, and that never outlive it.
//!
//! Soundness rests on one rule: [`scope`] does not return, and its frame is
//! not unwound past, before every child has finished. Every way out keeps
//! it: a normal return and a panic or cancellation of the body are caught,
//! the children cancelled and awaited, and the unwind resumed; a forced
//! unwind (the parent dropped, or its loop) is not caught, and the children
//! are awaited by a destructor while it passes. A parent that can never be
//! resumed (its last handle dropped while children run) aborts the process
//! there, naming it, rather than free what they borrow.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::thread;

use super::join::catch_task;
use super::turn::Inner;
use super::waker::{waker, Waker};
use crate::coroutine::cancel::{self, Cancelled, ScopeGuard};
use crate::coroutine::control::CoId;
use crate::coroutine::wait::{wait_stopping, wait_until};
use crate::coroutine::{self, Coroutine};

/// Runs `f` with a [`Scope`] whose [`spawn`](Scope::spawn) starts
/// coroutines on the current loop that may borrow anything that outlives
/// the scope. `scope` returns only once `f` and every child have finished.
///
/// - A child's panic (not a cancellation) cancels `f` and the other
///   children at once; once all have finished, `scope` panics: it resumes
///   the first child panic, or, if a [`ScopedJoinHandle::join`] took that
///   payload, panics with a message containing `a scoped coroutine
///   panicked`.
/// - A panic of `f`, or a cancellation or expired [`timeout`](super::timeout)
///   of the coroutine running `scope`, cancels the children and waits for
///   them before the unwind leaves `scope`.
/// - A child cancelled on its own ([`ScopedJoinHandle::cancel`],
///   [`Scope::cancel`]) is not a failure.
///
/// # Panics
/// When not in a coroutine on a costack event loop (a `CoFuture` included):
/// "needs a costack event loop"; and as above.
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::cell::Cell;
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let words = vec!["a", "bb", "ccc"];
///     let total = Cell::new(0);
///     aio::scope(|s| {
///         for w in &words {
///             let total = &total; // borrowed from the parent's stack
///             s.spawn(move || {
///                 aio::sleep(Duration::from_millis(1));
///                 total.set(total.get() + w.len());
///             });
///         }
///     }); // every child has finished here
///     assert_eq!(total.get(), 6);
/// });
/// ```
#[track_caller]
pub fn scope<'env, T, F>(f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let inner = super::context("aio::scope");
    let cancel_scope = ScopeGuard::open("aio::scope");
    let depth = cancel_scope.depth();
    let scope = Scope {
        inner,
        parent: crate::current().expect("checked by context()").id(),
        depth,
        state: RefCell::new(State::new()),
        _scope: PhantomData,
        _env: PhantomData,
    };
    let forced = AwaitWhileForced(&scope);
    let result = match panic::catch_unwind(AssertUnwindSafe(|| f(&scope))) {
        // Not ours to stop: `forced` awaits the children on the way out.
        Err(p) if coroutine::is_forced_unwind(&*p) => panic::resume_unwind(p),
        r => r,
    };
    if result.is_err() {
        scope.cancel_children();
    }
    // A cancellation of ours that comes meanwhile goes to the children.
    let (_, stopped) = wait_stopping(
        "aio::scope",
        || (scope.state.borrow().running == 0).then_some(()),
        || scope.cancel_children(),
    );
    std::mem::forget(forced);
    drop(cancel_scope);
    let first_panic = scope.state.borrow_mut().first_panic.take();
    let child_panic = || -> ! {
        match first_panic.and_then(|cell| cell.take()) {
            Some(p) => panic::resume_unwind(p),
            None => panic!("costack: a scoped coroutine panicked"),
        }
    };
    match result {
        Ok(v) => {
            if stopped {
                // Our own cancellation: delivered now that all are done.
                cancel::checkpoint();
            }
            if scope.state.borrow().failed {
                child_panic();
            }
            v
        }
        Err(p)
            if p.downcast_ref::<Cancelled>()
                .is_some_and(|c| c.scope() == depth) =>
        {
            child_panic()
        }
        Err(p) => panic::resume_unwind(p),
    }
}

/// Awaits the children while a forced unwind passes through [`scope`].
struct AwaitWhileForced<'a, 'scope, 'env>(&'a Scope<'scope, 'env>);

impl Drop for AwaitWhileForced<'_, '_, '_> {
    fn drop(&mut self) {
        let scope = self.0;
        if scope.state.borrow().running == 0 {
            return;
        }
        scope.cancel_children();
        // Unwinding: this delivers nothing, and suspends only if the loop
        // drives the unwind (else it aborts: nothing could resume us).
        wait_until("aio::scope", || {
            (scope.state.borrow().running == 0).then_some(())
        });
    }
}

/// A scope to spawn coroutines in; see [`scope`].
pub struct Scope<'scope, 'env: 'scope> {
    inner: Rc<Inner>,
    /// The coroutine running [`scope`], and the depth of its cancel scope.
    parent: CoId,
    depth: u32,
    state: RefCell<State>,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

struct State {
    /// Children not finished yet (a slab; a child knows its slot).
    children: Vec<Option<Coroutine>>,
    free: Vec<usize>,
    running: usize,
    /// A child panicked.
    failed: bool,
    /// The first child panic's payload, until a join takes it.
    first_panic: Option<Rc<PanicCell>>,
}

/// A child's panic payload, shared by its handle and the scope: whichever
/// comes first takes it.
type PanicCell = Cell<Option<Box<dyn Any + Send>>>;

impl<'scope, 'env> Scope<'scope, 'env> {
    /// Spawns a coroutine on the current loop running `f`, which may borrow
    /// anything that outlives the scope. It starts in a coming iteration.
    ///
    /// # Panics
    /// If no coroutine stack can be allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let mut data = vec![1, 2, 3];
    ///     let sum = aio::scope(|s| {
    ///         let h = s.spawn(|| data.iter().sum::<i32>());
    ///         h.join().unwrap()
    ///     });
    ///     data.push(sum); // the borrow ended with the scope
    ///     assert_eq!(data, [1, 2, 3, 6]);
    /// });
    /// ```
    pub fn spawn<T: 'scope, F: FnOnce() -> T + 'scope>(
        &'scope self,
        f: F,
    ) -> ScopedJoinHandle<'scope, T> {
        let slot = Rc::new(Slot {
            result: Cell::new(None),
            panic: RefCell::new(None),
            joiner: Cell::new(None),
        });
        let theirs = slot.clone();
        let index = self.state.borrow_mut().reserve();
        let done = ChildDone { scope: self, index };
        let body: Box<dyn FnOnce() + 'scope> = Box::new(move || {
            let done = done;
            match catch_task(f) {
                Err(p) if !p.is::<Cancelled>() => {
                    let payload = Rc::new(Cell::new(Some(p)));
                    *theirs.panic.borrow_mut() = Some(payload.clone());
                    done.scope.child_panicked(index, payload);
                }
                r => theirs.result.set(Some(r)),
            }
            if let Some(w) = theirs.joiner.take() {
                w.wake();
            }
        });
        // SAFETY: only the lifetime is changed. The body borrows data that
        // lives for 'scope, which `scope` outlives, and `scope` does not
        // return or unwind past its frame before every child has finished
        // (the module docs list every way out); a child that never starts
        // is dropped, with what it borrows, no later than its loop's
        // shutdown, which the parent awaits likewise.
        let body: Box<dyn FnOnce() + 'static> = unsafe { std::mem::transmute(body) };
        let co = self.inner.spawn_task(body);
        self.state.borrow_mut().fill(index, &co);
        ScopedJoinHandle {
            co,
            slot,
            _scope: PhantomData,
        }
    }

    /// Cancels every child still running (not the body of [`scope`]):
    /// each unwinds from its wait point. Not a failure of the scope.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use std::time::Duration;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     aio::scope(|s| {
    ///         for _ in 0..3 {
    ///             s.spawn(|| aio::sleep(Duration::from_secs(3600)));
    ///         }
    ///         aio::yield_now();
    ///         s.cancel(); // or the scope would wait an hour
    ///     });
    /// });
    /// ```
    pub fn cancel(&self) {
        self.cancel_children();
    }

    fn cancel_children(&self) {
        let children: Vec<Coroutine> = self
            .state
            .borrow()
            .children
            .iter()
            .flatten()
            .cloned()
            .collect();
        for co in children {
            cancel::request(&co, 0);
        }
    }

    /// Child `index` panicked (its payload is in `slot`): the scope fails,
    /// and the body and the other children are cancelled.
    fn child_panicked(&self, index: usize, payload: Rc<PanicCell>) {
        {
            let mut st = self.state.borrow_mut();
            st.failed = true;
            st.first_panic.get_or_insert(payload);
        }
        if let Some(parent) = Coroutine::from_id(self.parent) {
            cancel::request(&parent, self.depth);
        }
        let others: Vec<Coroutine> = {
            let st = self.state.borrow();
            st.children
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != index)
                .filter_map(|(_, c)| c.clone())
                .collect()
        };
        for co in others {
            cancel::request(&co, 0);
        }
    }
}

impl State {
    fn new() -> Self {
        State {
            children: Vec::new(),
            free: Vec::new(),
            running: 0,
            failed: false,
            first_panic: None,
        }
    }

    fn reserve(&mut self) -> usize {
        self.running += 1;
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.children.push(None);
                self.children.len() - 1
            }
        }
    }

    fn fill(&mut self, index: usize, co: &Coroutine) {
        // A child that finished already (never started: its loop is
        // closing) has given its slot back.
        if self.children.get(index).is_some_and(Option::is_none) && !co.is_finished() {
            self.children[index] = Some(co.clone());
        }
    }
}

/// A child's end, however it comes (it ran, or it was dropped unstarted):
/// it leaves the scope, and the last one wakes the parent.
struct ChildDone<'a, 'scope, 'env> {
    scope: &'a Scope<'scope, 'env>,
    index: usize,
}

impl Drop for ChildDone<'_, '_, '_> {
    fn drop(&mut self) {
        let last = {
            let mut st = self.scope.state.borrow_mut();
            let child = st.children[self.index].take();
            st.free.push(self.index);
            st.running -= 1;
            drop(child);
            st.running == 0
        };
        // After this the scope may return: the child touches it no more.
        if last {
            if let Some(parent) = Coroutine::from_id(self.scope.parent) {
                parent.wake();
            }
        }
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("Scope")
            .field("running", &st.running)
            .field("failed", &st.failed)
            .finish_non_exhaustive()
    }
}

/// Where a child leaves its result: its value or cancellation, or its
/// panic (shared with the scope).
struct Slot<T> {
    result: Cell<Option<thread::Result<T>>>,
    panic: RefCell<Option<Rc<PanicCell>>>,
    joiner: Cell<Option<Waker>>,
}

impl<T> Slot<T> {
    fn take(&self) -> Option<thread::Result<T>> {
        if let Some(cell) = self.panic.borrow_mut().take() {
            let p = cell
                .take()
                .unwrap_or_else(|| Box::new("a scoped coroutine panicked"));
            return Some(Err(p));
        }
        self.result.take()
    }
}

/// An owned permission to join a coroutine spawned in a [`Scope`].
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// EventLoop::new().unwrap().block_on(|| {
///     aio::scope(|s| {
///         let a = s.spawn(|| 40);
///         let b = s.spawn(|| 2);
///         assert_eq!(a.join().unwrap() + b.join().unwrap(), 42);
///     });
/// });
/// ```
pub struct ScopedJoinHandle<'scope, T> {
    co: Coroutine,
    slot: Rc<Slot<T>>,
    _scope: PhantomData<&'scope ()>,
}

impl<T> ScopedJoinHandle<'_, T> {
    /// Waits for the child to finish and returns its value, or the payload
    /// of its panic (a [`Cancelled`] if it was cancelled). A wait point.
    ///
    /// # Panics
    /// Outside a coroutine: "not in a coroutine".
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     aio::scope(|s| {
    ///         let h = s.spawn(|| "done");
    ///         assert_eq!(h.join().unwrap(), "done");
    ///     });
    /// });
    /// ```
    pub fn join(self) -> thread::Result<T> {
        wait_until("ScopedJoinHandle::join", || match self.slot.take() {
            Some(r) => Some(r),
            // Finished without a result: dropped before it started.
            None if self.co.is_finished() => Some(Err(Box::new(Cancelled::base()))),
            None => {
                self.slot.joiner.set(Some(waker()));
                None
            }
        })
    }

    /// Cancels the child: it unwinds from its wait point, and
    /// [`join`](Self::join) returns `Err` with a [`Cancelled`] payload
    /// (unless it finished first). Not a failure of the scope.
    ///
    /// ```
    /// use costack::aio::{self, Cancelled, EventLoop};
    /// use std::time::Duration;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     aio::scope(|s| {
    ///         let h = s.spawn(|| aio::sleep(Duration::from_secs(3600)));
    ///         h.cancel();
    ///         assert!(h.join().unwrap_err().is::<Cancelled>());
    ///     });
    /// });
    /// ```
    pub fn cancel(&self) {
        cancel::request(&self.co, 0);
    }

    /// Whether the child has finished, so that [`join`](Self::join) would
    /// not wait.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     aio::scope(|s| {
    ///         let h = s.spawn(|| ());
    ///         assert!(!h.is_finished()); // not started yet
    ///         aio::yield_now();
    ///         assert!(h.is_finished());
    ///     });
    /// });
    /// ```
    pub fn is_finished(&self) -> bool {
        self.co.is_finished()
    }
}

impl<T> fmt::Debug for ScopedJoinHandle<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedJoinHandle")
            .field("co", &self.co)
            .finish()
    }
}
