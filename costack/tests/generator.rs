//! Generators: values in order, fused after the body returns, a panic for a
//! body that suspends without a value, unwinding on drop.

mod support;

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use costack::sync::CoMutex;
use costack::{yield_now, Coroutine, Generator};
use support::{panic_message, SetOnDrop};

#[test]
fn yields_values_in_order_then_none_forever() {
    let mut g = Generator::new(|y| {
        for i in 0..3 {
            y.suspend(i);
        }
    });
    assert_eq!(g.by_ref().take(3).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(g.next(), None);
    assert_eq!(g.next(), None);
}

#[test]
fn a_valueless_yield_panics_instead_of_ending_the_iterator() {
    let resumed = Rc::new(Cell::new(false));
    let r = resumed.clone();
    let mut g = Generator::new(move |y| {
        y.suspend(1);
        yield_now(); // no value
        r.set(true);
        y.suspend(2);
    });
    assert_eq!(g.next(), Some(1));
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.next())).unwrap_err();
    assert!(
        panic_message(&*err).contains("without a value"),
        "{}",
        panic_message(&*err)
    );
    // The body is still suspended where it yielded, not finished: the
    // iterator did not end.
    assert!(!resumed.get());
    assert_eq!(g.next(), Some(2));
    assert!(resumed.get());
    assert_eq!(g.next(), None);
}

#[test]
fn a_body_waiting_for_a_lock_panics_in_next() {
    let lock = Rc::new(CoMutex::new(0));
    let held = lock.clone();
    let holder = Coroutine::new(move || {
        let _g = held.lock();
        yield_now();
    });
    holder.enter();
    let l = lock.clone();
    let mut g = Generator::new(move |y| {
        let v = *l.lock(); // contended: waits
        y.suspend(v);
    });
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.next())).unwrap_err();
    assert!(panic_message(&*err).contains("without a value"));
    // Dropping the generator unwinds the waiter out of the lock's queue.
    drop(g);
    holder.enter();
    assert!(holder.is_finished());
    assert!(!lock.is_locked());
}

#[test]
fn a_panic_in_the_body_comes_out_of_next_and_ends_it() {
    let mut g = Generator::<u8>::new(|_| panic!("generator bug"));
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.next())).unwrap_err();
    assert_eq!(panic_message(&*err), "generator bug");
    assert_eq!(g.next(), None);
}

#[test]
fn dropping_an_unfinished_generator_runs_its_destructors() {
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let mut g = Generator::new(move |y| {
        let _f = SetOnDrop(d);
        loop {
            y.suspend(());
        }
    });
    g.next();
    assert!(!dropped.get());
    drop(g);
    assert!(dropped.get());
}
