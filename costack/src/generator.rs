//! Generators: iterators written as coroutines that suspend with a value.

use std::cell::Cell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::coroutine::control::CoId;
use crate::coroutine::{self, Coroutine};

/// An iterator whose items a coroutine produces with [`Yielder::suspend`].
///
/// ```
/// use costack::Generator;
///
/// let fib = Generator::new(|y| {
///     let (mut a, mut b) = (0u64, 1u64);
///     loop {
///         y.suspend(a);
///         (a, b) = (b, a + b);
///     }
/// });
/// let first: Vec<u64> = fib.take(8).collect();
/// assert_eq!(first, [0, 1, 1, 2, 3, 5, 8, 13]);
/// ```
///
/// Dropping a generator before it finishes unwinds its coroutine, so the
/// destructors of its locals run. A panic in the generator's body continues
/// out of [`next`](Iterator::next).
///
/// `next` returns `None` only once the body has returned, and from then on
/// always (the iterator is fused).
///
/// # Panics
///
/// The body runs only inside `next`, so it cannot wait: if it suspends
/// without a value (a bare [`yield_now`](crate::yield_now), a contended
/// lock, a sleep or I/O), that `next` panics with a message containing
/// "without a value" (the body stays suspended where it yielded).
///
/// ```should_panic
/// let mut g = costack::Generator::<u32>::new(|_| costack::yield_now());
/// g.next(); // panics: the body yielded without a value
/// ```
pub struct Generator<T> {
    co: Coroutine,
    slot: Rc<Cell<Option<T>>>,
}

/// Hands values from a generator's body to its consumer.
///
/// ```
/// use costack::{Generator, Yielder};
///
/// // A recursive walk that hands out values from any depth.
/// fn walk(y: &Yielder<u32>, depth: u32) {
///     if depth == 0 {
///         return;
///     }
///     walk(y, depth - 1);
///     y.suspend(depth);
///     walk(y, depth - 1);
/// }
/// let g = Generator::new(|y| walk(y, 3));
/// assert_eq!(g.collect::<Vec<_>>(), [1, 2, 1, 3, 1, 2, 1]);
/// ```
pub struct Yielder<T> {
    slot: Rc<Cell<Option<T>>>,
    /// The generator's coroutine, by id: a handle here would keep the
    /// coroutine alive from its own stack, and dropping the generator could
    /// then never unwind it.
    co: CoId,
    _not_send: PhantomData<*const ()>,
}

impl<T: 'static> Generator<T> {
    /// A generator running `f`; nothing runs until the first `next`.
    ///
    /// ```
    /// use costack::Generator;
    ///
    /// let squares = Generator::new(|y| {
    ///     for i in 1..=4u32 {
    ///         y.suspend(i * i);
    ///     }
    /// });
    /// assert_eq!(squares.collect::<Vec<_>>(), [1, 4, 9, 16]);
    /// ```
    pub fn new<F: FnOnce(&Yielder<T>) + 'static>(f: F) -> Generator<T> {
        let slot = Rc::new(Cell::new(None));
        let body_slot = slot.clone();
        let co = Coroutine::new(move || {
            let yielder = Yielder {
                slot: body_slot,
                co: coroutine::current()
                    .expect("generator body runs in its coroutine")
                    .id(),
                _not_send: PhantomData,
            };
            f(&yielder);
        });
        Generator { co, slot }
    }
}

impl<T> Yielder<T> {
    /// Gives `value` to the consumer and suspends until the next item is
    /// asked for.
    ///
    /// # Panics
    /// If called from any coroutine but the generator's own (for example a
    /// coroutine the body entered).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::Generator;
    ///
    /// let mut g = Generator::new(|y| {
    ///     y.suspend("first"); // next() returns this; the body waits here
    ///     y.suspend("second");
    /// });
    /// assert_eq!(g.next(), Some("first"));
    /// assert_eq!(g.next(), Some("second"));
    /// assert_eq!(g.next(), None);
    /// ```
    pub fn suspend(&self, value: T) {
        let here = coroutine::with_current(|co| co.map(Coroutine::id));
        assert!(
            here == Some(self.co),
            "Yielder::suspend called outside its generator's coroutine"
        );
        self.slot.set(Some(value));
        coroutine::yield_now();
    }
}

impl<T> Iterator for Generator<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.co.is_finished() {
            return None;
        }
        self.co.enter();
        match self.slot.take() {
            Some(value) => Some(value),
            None if self.co.is_finished() => None,
            None => yielded_without_value(),
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn yielded_without_value() -> ! {
    panic!(
        "generator body yielded without a value (a bare yield_now, or a lock or I/O \
         call that waits): a generator only runs inside next() and cannot wait"
    )
}

impl<T> std::iter::FusedIterator for Generator<T> {}

impl<T> std::fmt::Debug for Generator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("co", &self.co).finish()
    }
}

impl<T> std::fmt::Debug for Yielder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Yielder").finish_non_exhaustive()
    }
}
