//! The core API of costack: every sentence of API.md's "Core" section.

mod support;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use costack::{current, in_coroutine, yield_now, Coroutine};
use support::{expect_panic, panic_message, SetOnDrop};

type Log = Rc<RefCell<Vec<&'static str>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

#[test]
fn new_runs_nothing_and_enter_runs_until_yield() {
    let l = log();
    let l2 = l.clone();
    let co = Coroutine::new(move || {
        l2.borrow_mut().push("a");
        yield_now();
        l2.borrow_mut().push("c");
        yield_now();
        l2.borrow_mut().push("e");
    });
    assert!(l.borrow().is_empty());
    assert!(!co.is_entered() && !co.is_finished());
    co.enter();
    l.borrow_mut().push("b");
    co.enter();
    l.borrow_mut().push("d");
    assert!(!co.is_finished());
    co.enter();
    assert!(co.is_finished());
    assert_eq!(*l.borrow(), ["a", "b", "c", "d", "e"]);
}

#[test]
fn yield_returns_to_whoever_entered() {
    let l = log();
    let (l1, l2) = (l.clone(), l.clone());
    let inner = Coroutine::new(move || {
        l2.borrow_mut().push("inner 1");
        yield_now();
        l2.borrow_mut().push("inner 2");
    });
    let inner2 = inner.clone();
    let outer = Coroutine::new(move || {
        l1.borrow_mut().push("outer 1");
        inner2.enter();
        l1.borrow_mut().push("outer 2");
        yield_now();
        // Enter the inner coroutine from a different enterer this time.
        l1.borrow_mut().push("outer 3");
    });
    outer.enter();
    assert_eq!(*l.borrow(), ["outer 1", "inner 1", "outer 2"]);
    // Now the thread itself enters the inner coroutine: it yields to us.
    inner.enter();
    assert_eq!(l.borrow().last(), Some(&"inner 2"));
    outer.enter();
    assert_eq!(l.borrow().last(), Some(&"outer 3"));
    assert!(inner.is_finished() && outer.is_finished());
}

#[test]
fn nesting_to_depth_1000() {
    fn nest(depth: usize, max: usize, reached: Rc<Cell<usize>>) {
        reached.set(reached.get().max(depth));
        if depth < max {
            let r = reached.clone();
            let co = Coroutine::builder()
                .stack_size(32 << 10)
                .create(move || nest(depth + 1, max, r))
                .unwrap();
            co.enter();
            assert!(co.is_finished());
        }
    }
    let reached = Rc::new(Cell::new(0));
    let r = reached.clone();
    Coroutine::new(move || nest(1, 1000, r)).enter();
    assert_eq!(reached.get(), 1000);
}

#[test]
fn is_entered_across_nesting() {
    let slot: Rc<RefCell<Option<Coroutine>>> = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let inner = Coroutine::new(move || {
        let outer = s.borrow().clone().unwrap();
        let me = current().unwrap();
        assert!(outer.is_entered(), "outer waits for us, so it is entered");
        assert!(me.is_entered());
        yield_now();
        // Entered by the thread this time; outer has finished meanwhile.
        assert!(!outer.is_entered() && outer.is_finished());
    });
    let inner2 = inner.clone();
    let outer = Coroutine::new(move || {
        inner2.enter();
        assert!(!inner2.is_entered(), "the inner one yielded");
        yield_now();
    });
    *slot.borrow_mut() = Some(outer.clone());
    assert!(!outer.is_entered());
    outer.enter();
    assert!(!outer.is_entered());
    assert!(!inner.is_entered());
    outer.enter();
    inner.enter();
    assert!(!inner.is_entered());
    slot.borrow_mut().take();
}

#[test]
fn no_dangling_caller_after_enterer_finishes_and_is_reused() {
    // `inner` is first entered by `outer`, which then finishes; its control
    // block and stack go back to the pool and are reused by `reuser`. When
    // `inner` yields later it must return to its new enterer (the thread),
    // not to the dead `outer`.
    let inner = Coroutine::new(|| {
        yield_now();
        yield_now();
    });
    let i2 = inner.clone();
    let outer = Coroutine::new(move || i2.enter());
    outer.enter();
    assert!(outer.is_finished());
    drop(outer);
    let hits = Rc::new(Cell::new(0));
    let h = hits.clone();
    let reuser = Coroutine::new(move || {
        h.set(h.get() + 1);
        yield_now();
        h.set(h.get() + 1);
    });
    reuser.enter();
    inner.enter();
    assert_eq!(hits.get(), 1, "inner yielded back to the thread");
    inner.enter();
    assert!(inner.is_finished());
    reuser.enter();
    assert_eq!(hits.get(), 2);
}

#[test]
fn reentering_recursively_panics() {
    let co = Coroutine::new(|| {
        let me = current().unwrap();
        expect_panic(|| me.enter(), "re-entered recursively");
    });
    co.enter();
    assert!(co.is_finished());

    // An ancestor, too.
    let outer = Coroutine::new(|| {
        let outer = current().unwrap();
        let inner = Coroutine::new(move || {
            expect_panic(|| outer.enter(), "re-entered recursively");
            assert!(!outer.enter_if_inactive());
        });
        inner.enter();
        assert!(inner.is_finished());
    });
    outer.enter();
    assert!(outer.is_finished());
}

#[test]
fn entering_a_finished_coroutine_panics() {
    let co = Coroutine::new(|| {});
    co.enter();
    expect_panic(|| co.enter(), "finished");
    assert!(!co.enter_if_inactive());
}

#[test]
fn yield_outside_a_coroutine_panics() {
    assert!(!in_coroutine());
    assert!(current().is_none());
    expect_panic(yield_now, "not in a coroutine");
}

#[test]
fn enter_if_inactive_enters_only_when_inactive() {
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let co = Coroutine::new(move || loop {
        n2.set(n2.get() + 1);
        assert!(!current().unwrap().enter_if_inactive());
        yield_now();
    });
    assert!(co.enter_if_inactive());
    assert!(co.enter_if_inactive());
    assert_eq!(n.get(), 2);
}

#[test]
fn panic_propagates_with_its_payload_and_the_thread_stays_usable() {
    #[derive(Debug, PartialEq)]
    struct Payload(u32);
    let co = Coroutine::new(|| {
        yield_now();
        panic::panic_any(Payload(42));
    });
    co.enter();
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.enter())).unwrap_err();
    assert_eq!(err.downcast_ref::<Payload>(), Some(&Payload(42)));
    assert!(co.is_finished());
    assert!(!in_coroutine());
    // The thread and the pool still work.
    let ok = Rc::new(Cell::new(false));
    let o = ok.clone();
    Coroutine::new(move || o.set(true)).enter();
    assert!(ok.get());
}

#[test]
fn panic_unwinds_through_nested_enters() {
    let outer = Coroutine::new(|| {
        let inner = Coroutine::new(|| panic!("deep trouble"));
        inner.enter();
        unreachable!("the inner panic continues out of inner.enter()");
    });
    let err = panic::catch_unwind(AssertUnwindSafe(|| outer.enter())).unwrap_err();
    assert_eq!(panic_message(&*err), "deep trouble");
    assert!(outer.is_finished());
}

#[test]
fn dropping_a_suspended_coroutine_runs_its_destructors() {
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let co = Coroutine::new(move || {
        let _guard = SetOnDrop(d);
        yield_now();
        unreachable!("never resumed normally");
    });
    co.enter();
    let clone = co.clone();
    drop(co);
    assert!(!dropped.get(), "a handle remains");
    drop(clone);
    assert!(dropped.get());
}

#[test]
fn dropping_an_unstarted_coroutine_drops_its_closure() {
    let dropped = Rc::new(Cell::new(false));
    let guard = SetOnDrop(dropped.clone());
    let co = Coroutine::new(move || drop(guard));
    drop(co);
    assert!(dropped.get());
}

#[test]
fn a_caught_forced_unwind_cannot_suspend_again() {
    let stages = log();
    let s = stages.clone();
    let co = Coroutine::new(move || {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            yield_now();
        }));
        assert!(caught.is_err(), "the drop unwinds the coroutine");
        s.borrow_mut().push("caught");
        let again = panic::catch_unwind(AssertUnwindSafe(yield_now));
        assert!(again.is_err(), "yield during the unwind resumes it");
        s.borrow_mut().push("yield refused");
        // Returning normally finishes the coroutine.
    });
    co.enter();
    drop(co);
    assert_eq!(*stages.borrow(), ["caught", "yield refused"]);
}

#[test]
fn dropping_a_suspended_coroutine_while_panicking() {
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let result = panic::catch_unwind(AssertUnwindSafe(move || {
        let co = Coroutine::new(move || {
            let _guard = SetOnDrop(d);
            yield_now();
        });
        co.enter();
        panic!("outer panic while a coroutine is suspended");
    }));
    assert!(result.is_err());
    assert!(dropped.get());
}

#[test]
fn a_panic_after_catching_the_drop_unwind_propagates_from_drop() {
    let co = Coroutine::new(|| {
        let caught = panic::catch_unwind(yield_now);
        assert!(caught.is_err());
        panic!("cleanup failed");
    });
    co.enter();
    let err = panic::catch_unwind(AssertUnwindSafe(move || drop(co))).unwrap_err();
    assert_eq!(panic_message(&*err), "cleanup failed");
}

#[test]
fn a_coroutine_can_drop_the_last_handle_of_another() {
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let victim = Coroutine::new(move || {
        let _g = SetOnDrop(d);
        yield_now();
    });
    victim.enter();
    let killer = Coroutine::new(move || drop(victim));
    killer.enter();
    assert!(dropped.get());
    assert!(killer.is_finished());
}

#[test]
fn wake_outside_a_coroutine_enters_at_once() {
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let co = Coroutine::new(move || loop {
        n2.set(n2.get() + 1);
        yield_now();
    });
    co.wake();
    assert_eq!(n.get(), 1);
    co.wake();
    assert_eq!(n.get(), 2);
}

#[test]
fn wake_inside_a_coroutine_is_deferred_until_it_yields() {
    let l = log();
    let l2 = l.clone();
    let target = Coroutine::new(move || {
        l2.borrow_mut().push("target runs");
    });
    let t2 = target.clone();
    let l3 = l.clone();
    let waker = Coroutine::new(move || {
        t2.wake();
        t2.wake(); // already queued: no second entry
        l3.borrow_mut().push("waker continues");
        yield_now();
        l3.borrow_mut().push("waker resumed");
    });
    waker.enter();
    assert_eq!(*l.borrow(), ["waker continues", "target runs"]);
    assert!(target.is_finished());
    waker.enter();
    target.wake(); // finished: nothing happens
    assert_eq!(l.borrow().len(), 3);
}

#[test]
fn waking_oneself_runs_again_after_the_yield() {
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let co = Coroutine::new(move || {
        n2.set(1);
        current().unwrap().wake();
        yield_now();
        n2.set(2);
    });
    co.enter();
    assert_eq!(n.get(), 2, "re-entered by the enter() that ran it");
    assert!(co.is_finished());
}

#[test]
fn waking_an_entered_ancestor_runs_it_once_it_has_yielded() {
    let l = log();
    let (l1, l2) = (l.clone(), l.clone());
    let outer = Coroutine::new(move || {
        let me = current().unwrap();
        let l3 = l1.clone();
        let middle = Coroutine::new(move || {
            let l4 = l3.clone();
            // Two levels down: wakes its grandparent, then its parent.
            let grandparent = me.clone();
            let parent = current().unwrap();
            let inner = Coroutine::new(move || {
                grandparent.wake();
                grandparent.wake(); // queued already: coalesced
                parent.wake();
                l4.borrow_mut().push("inner done");
            });
            inner.enter();
            assert!(inner.is_finished());
            l3.borrow_mut().push("middle yields");
            yield_now();
            l3.borrow_mut().push("middle resumed");
        });
        middle.enter();
        assert!(middle.is_finished(), "woken parent ran after its yield");
        l1.borrow_mut().push("outer yields");
        yield_now();
        l1.borrow_mut().push("outer resumed");
    });
    outer.enter();
    assert!(outer.is_finished(), "woken grandparent ran after its yield");
    assert_eq!(
        *l2.borrow(),
        [
            "inner done",
            "middle yields",
            "middle resumed",
            "outer yields",
            "outer resumed"
        ]
    );
}

/// QEMU's test-aio "queue-chaining": two coroutines wake each other back and
/// forth; the stack must not grow with the chain.
#[test]
fn chain_of_25000_wakes_does_not_grow_the_stack() {
    const STEPS: usize = 25_000;
    let peer: Rc<RefCell<[Option<Coroutine>; 2]>> = Rc::new(RefCell::new([None, None]));
    let count = Rc::new(Cell::new(0usize));
    let depth = Rc::new([
        Cell::new((usize::MAX, 0usize)),
        Cell::new((usize::MAX, 0usize)),
    ]);
    let make = |me: usize| {
        let peer = peer.clone();
        let count = count.clone();
        let depth = depth.clone();
        Coroutine::builder()
            .stack_size(64 << 10)
            .create(move || loop {
                let here = &me as *const usize as usize;
                let (lo, hi) = depth[me].get();
                depth[me].set((lo.min(here), hi.max(here)));
                if count.get() >= STEPS {
                    return;
                }
                count.set(count.get() + 1);
                let other = peer.borrow()[1 - me].clone().unwrap();
                other.wake();
                yield_now();
            })
            .unwrap()
    };
    let a = make(0);
    let b = make(1);
    *peer.borrow_mut() = [Some(a.clone()), Some(b.clone())];
    a.enter();
    assert_eq!(count.get(), STEPS);
    // Each coroutine always runs at the same depth of its own stack.
    for d in depth.iter() {
        let (lo, hi) = d.get();
        assert_eq!(hi, lo, "the stack grew with the chain");
    }
    *peer.borrow_mut() = [None, None];
}

#[test]
fn panics_in_woken_coroutines_surface_after_all_woken_ran() {
    let ran = Rc::new(Cell::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    let bad = Coroutine::new(move || {
        r1.set(r1.get() + 1);
        panic!("woken one failed");
    });
    let good = Coroutine::new(move || r2.set(r2.get() + 1));
    let (b, g) = (bad.clone(), good.clone());
    let waker = Coroutine::new(move || {
        b.wake();
        g.wake();
    });
    let err = panic::catch_unwind(AssertUnwindSafe(|| waker.enter())).unwrap_err();
    assert_eq!(panic_message(&*err), "woken one failed");
    assert_eq!(
        ran.get(),
        2,
        "nothing lost: the second woken coroutine ran too"
    );
    assert!(good.is_finished() && bad.is_finished());
}

#[test]
fn name_and_stack_size() {
    let co = Coroutine::builder()
        .name("named")
        .stack_size(100_000)
        .create(|| {
            let me = current().unwrap();
            assert_eq!(me.name(), Some("named"));
        })
        .unwrap();
    assert_eq!(co.name(), Some("named"));
    assert!(co.stack_size() >= 100_000 && co.stack_size().is_multiple_of(4096));
    assert!(format!("{co:?}").contains("named"));
    co.enter();
    assert_eq!(Coroutine::new(|| {}).name(), None);
    assert_eq!(co.stack_size(), 0, "finished");
    // Its block and stack go back to the pool without the name: the next
    // coroutine of that stack size reuses them, unnamed.
    drop(co);
    let next = Coroutine::builder()
        .stack_size(100_000)
        .create(|| {})
        .unwrap();
    assert_eq!(next.name(), None);
    assert!(!format!("{next:?}").contains("named"));
}

#[test]
fn handles_compare_equal_for_the_same_coroutine() {
    let a = Coroutine::new(|| {});
    let b = Coroutine::new(|| {});
    assert_eq!(a, a.clone());
    assert_ne!(a, b);
    let a2 = a.clone();
    let inner = Coroutine::new(move || assert_eq!(current().unwrap(), a2));
    let _ = inner; // not entered: `current()` there would be `inner`
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let co = Coroutine::new(move || *s.borrow_mut() = current());
    co.enter();
    assert_eq!(seen.borrow().as_ref(), Some(&co));
}

#[test]
fn thread_locals_are_the_same_across_a_yield() {
    thread_local!(static ID: Cell<usize> = const { Cell::new(0) });
    let co = Coroutine::new(|| {
        let before = ID.with(|id| id as *const Cell<usize> as usize);
        ID.with(|id| id.set(7));
        yield_now();
        let after = ID.with(|id| id as *const Cell<usize> as usize);
        assert_eq!(before, after);
        assert_eq!(ID.with(Cell::get), 7);
    });
    co.enter();
    co.enter();
    assert!(co.is_finished());
}

#[test]
fn coroutines_on_several_threads_at_once() {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let total = Rc::new(Cell::new(0u64));
                let cos: Vec<_> = (0..100)
                    .map(|i| {
                        let total = total.clone();
                        Coroutine::builder()
                            .stack_size(64 << 10)
                            .create(move || {
                                for step in 0..100u64 {
                                    total.set(total.get() + step * i + t);
                                    yield_now();
                                }
                            })
                            .unwrap()
                    })
                    .collect();
                while !cos.iter().all(Coroutine::is_finished) {
                    for co in &cos {
                        co.enter_if_inactive();
                    }
                }
                total.get()
            })
        })
        .collect();
    for (t, th) in threads.into_iter().enumerate() {
        let expect: u64 = (0..100u64)
            .map(|i| (0..100u64).map(|s| s * i + t as u64).sum::<u64>())
            .sum();
        assert_eq!(th.join().unwrap(), expect);
    }
}

#[test]
fn a_hundred_thousand_live_coroutines_with_64k_stacks() {
    let live = Rc::new(Cell::new(0usize));
    let cos: Vec<_> = (0..100_000)
        .map(|_| {
            let live = live.clone();
            Coroutine::builder()
                .stack_size(64 << 10)
                .create(move || {
                    live.set(live.get() + 1);
                    yield_now();
                    live.set(live.get() - 1);
                })
                .unwrap()
        })
        .collect();
    for co in &cos {
        co.enter();
    }
    assert_eq!(live.get(), 100_000);
    for co in &cos {
        co.enter();
    }
    assert_eq!(live.get(), 0);
    assert!(cos.iter().all(Coroutine::is_finished));
}

#[test]
fn backtrace_inside_a_coroutine_continues_into_its_enterer() {
    #[inline(never)]
    fn enterer_frame_marker() -> String {
        let out = Rc::new(RefCell::new(String::new()));
        let o = out.clone();
        let co = Coroutine::new(move || {
            *o.borrow_mut() = std::backtrace::Backtrace::force_capture().to_string();
        });
        co.enter();
        let s = out.borrow().clone();
        s
    }
    let bt = enterer_frame_marker();
    assert!(bt.contains("enterer_frame_marker"), "backtrace:\n{bt}");
    assert!(
        bt.contains("backtrace_inside_a_coroutine_continues_into_its_enterer"),
        "{bt}"
    );
}

#[test]
fn pool_reuses_stacks_and_trim_empties_it() {
    costack::pool::trim();
    for _ in 0..10 {
        Coroutine::new(|| {}).enter();
    }
    assert_eq!(costack::pool::pooled(), 1, "one stack, reused each time");
    costack::pool::trim();
    assert_eq!(costack::pool::pooled(), 0);
}

#[test]
fn pool_keeps_stacks_of_several_sizes() {
    costack::pool::trim();
    let sized = |kib: usize| {
        Coroutine::builder()
            .stack_size(kib << 10)
            .create(|| {})
            .unwrap()
    };
    for _ in 0..5 {
        // Two at once of each size, so two of each are pooled.
        let (a, b) = (sized(64), sized(64));
        let (c, d) = (sized(128), sized(128));
        for co in [&a, &b, &c, &d] {
            co.enter();
        }
        assert_eq!(c.stack_size(), 0, "finished: its stack is gone");
    }
    assert_eq!(costack::pool::pooled(), 4);
    // A pooled stack of the right size is reused, not a new one mapped.
    sized(64).enter();
    sized(128).enter();
    assert_eq!(costack::pool::pooled(), 4);
    costack::pool::trim();
    assert_eq!(costack::pool::pooled(), 0);
}

/// Coroutines handled in a thread-local destructor, before or after
/// costack's own thread-locals are gone: the suspended one is unwound, a
/// new one still runs, and nothing is used after being freed.
#[test]
#[cfg_attr(
    any(miri, feature = "thread-backend"),
    ignore = "the thread backend's logical thread-locals end with the thread's own"
)]
fn coroutines_in_thread_local_destructors() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static UNWOUND: AtomicUsize = AtomicUsize::new(0);
    static RAN: AtomicUsize = AtomicUsize::new(0);

    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            UNWOUND.fetch_add(1, Ordering::SeqCst);
        }
    }
    struct Late(RefCell<Option<Coroutine>>);
    impl Drop for Late {
        fn drop(&mut self) {
            drop(self.0.borrow_mut().take());
            let co = Coroutine::builder()
                .stack_size(64 << 10)
                .create(|| {
                    RAN.fetch_add(1, Ordering::SeqCst);
                    yield_now();
                })
                .unwrap();
            co.enter();
            co.enter();
            assert!(co.is_finished());
        }
    }
    thread_local!(static LATE: Late = const { Late(RefCell::new(None)) });

    for register_first in [false, true] {
        std::thread::spawn(move || {
            if register_first {
                // Destroyed after costack's thread-locals.
                LATE.with(|_| {});
            }
            let co = Coroutine::builder()
                .stack_size(64 << 10)
                .create(|| {
                    let _guard = Guard;
                    yield_now();
                })
                .unwrap();
            co.enter();
            LATE.with(|l| *l.0.borrow_mut() = Some(co));
        })
        .join()
        .unwrap();
    }
    assert_eq!(UNWOUND.load(Ordering::SeqCst), 2);
    assert_eq!(RAN.load(Ordering::SeqCst), 2);
}

#[test]
fn debug_lists_live_coroutines() {
    let co = Coroutine::builder()
        .name("listed")
        .create(yield_now)
        .unwrap();
    co.enter();
    let list = costack::debug::coroutines();
    let me = list
        .iter()
        .find(|c| c.name.as_deref() == Some("listed"))
        .unwrap();
    assert_eq!(me.state, "suspended");
    assert_eq!(me.stack_size, costack::pool::DEFAULT_STACK_SIZE);
    // Known where stacks are our own mappings (not the thread backend's,
    // whose coroutines run on OS thread stacks).
    if cfg!(all(
        target_os = "linux",
        not(miri),
        not(feature = "thread-backend")
    )) {
        assert!(me.stack_high_water.is_some());
    }
    if let Some(hw) = me.stack_high_water {
        assert!(hw > 0, "{hw}");
    }
    // A shallow coroutine shows little. The high-water mark is the stack's,
    // and a pooled stack keeps what earlier coroutines touched: tests on
    // other threads free default-sized stacks that went deeper (much deeper
    // under sanitizers), and the arenas hand the newest freed slot out
    // first. So this one asks for a size no other test in this binary
    // uses, and gets a stack nobody else touched.
    let shallow = Coroutine::builder()
        .name("shallow")
        .stack_size(448 << 10)
        .create(yield_now)
        .unwrap();
    shallow.enter();
    let list = costack::debug::coroutines();
    let info = list
        .iter()
        .find(|c| c.name.as_deref() == Some("shallow"))
        .unwrap();
    if let Some(hw) = info.stack_high_water {
        assert!(hw > 0 && hw < 64 << 10, "a shallow coroutine: {hw}");
    }
    // A coroutine that went deep shows it.
    let deep = Coroutine::builder()
        .name("deep")
        .stack_size(1 << 20)
        .create(|| {
            let big = std::hint::black_box([1u8; 100_000]);
            yield_now();
            std::hint::black_box(big);
        })
        .unwrap();
    deep.enter();
    let list = costack::debug::coroutines();
    let info = list
        .iter()
        .find(|c| c.name.as_deref() == Some("deep"))
        .unwrap();
    if let Some(hw) = info.stack_high_water {
        assert!(hw >= 100_000, "{hw}");
    }
}
