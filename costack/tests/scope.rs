//! `aio::scope`: children that borrow from their parent and never outlive
//! it, however the scope ends.

#![cfg(any(unix, windows))]

mod support;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use costack::aio::{self, Cancelled, EventLoop};
use support::{panic_message, Log, Noisy};

const LONG: Duration = Duration::from_secs(3600);

#[test]
fn children_borrow_and_the_scope_waits_for_them() {
    EventLoop::new().unwrap().block_on(|| {
        let mut counts = vec![0usize; 8];
        let total = Cell::new(0);
        aio::scope(|s| {
            for (i, slot) in counts.iter_mut().enumerate() {
                let total = &total;
                s.spawn(move || {
                    aio::sleep(Duration::from_millis(1 + i as u64 % 3));
                    *slot = i * 10;
                    total.set(total.get() + 1);
                });
            }
        });
        assert_eq!(total.get(), 8);
        assert_eq!(counts, [0, 10, 20, 30, 40, 50, 60, 70]);
    });
}

#[test]
fn join_returns_values_and_is_finished_tells() {
    EventLoop::new().unwrap().block_on(|| {
        let text = String::from("borrowed");
        let r = aio::scope(|s| {
            let a = s.spawn(|| text.len());
            let b = s.spawn(|| {
                aio::sleep(Duration::from_millis(2));
                text.to_uppercase()
            });
            assert!(!a.is_finished());
            let n = a.join().unwrap();
            (n, b.join().unwrap())
        });
        assert_eq!(r, (8, "BORROWED".to_string()));
    });
}

#[test]
fn a_child_panic_cancels_the_others_and_f_then_resumes() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let t = Instant::now();
        let p = catch_unwind(AssertUnwindSafe(|| {
            aio::scope(|s| {
                let l2 = l.clone();
                s.spawn(move || {
                    let _n = Noisy(l2, "sibling");
                    aio::sleep(LONG);
                });
                s.spawn(|| {
                    aio::sleep(Duration::from_millis(2));
                    panic!("child failed");
                });
                let _n = Noisy(l.clone(), "body");
                aio::sleep(LONG); // cancelled by the child's panic
                l.push("body went on");
            })
        }))
        .unwrap_err();
        assert_eq!(panic_message(&*p), "child failed");
        assert!(t.elapsed() < Duration::from_secs(10));
    });
    let mut got = log.take();
    got.sort();
    assert_eq!(got, ["drop body", "drop sibling"]);
}

#[test]
fn a_joined_child_panic_still_fails_the_scope() {
    EventLoop::new().unwrap().block_on(|| {
        let p = catch_unwind(AssertUnwindSafe(|| {
            aio::scope(|s| {
                let h = s.spawn(|| panic!("joined panic"));
                let payload = h.join().unwrap_err();
                assert_eq!(panic_message(&*payload), "joined panic");
            })
        }))
        .unwrap_err();
        assert!(
            panic_message(&*p).contains("a scoped coroutine panicked"),
            "{}",
            panic_message(&*p)
        );
    });
}

#[test]
fn a_panic_of_f_cancels_and_awaits_the_children_before_leaving() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let p = catch_unwind(AssertUnwindSafe(|| {
            aio::scope(|s| {
                let l2 = l.clone();
                s.spawn(move || {
                    struct Slow(Log);
                    impl Drop for Slow {
                        fn drop(&mut self) {
                            // Cleanup that waits while unwinding.
                            aio::sleep(Duration::from_millis(5));
                            self.0.push("child cleaned up");
                        }
                    }
                    let _s = Slow(l2);
                    aio::sleep(LONG);
                });
                aio::yield_now();
                panic!("body failed");
            })
        }))
        .unwrap_err();
        l.push("scope left");
        assert_eq!(panic_message(&*p), "body failed");
    });
    assert_eq!(log.take(), ["child cleaned up", "scope left"]);
}

#[test]
fn cancelled_children_are_not_a_failure() {
    EventLoop::new().unwrap().block_on(|| {
        let r = aio::scope(|s| {
            let a = s.spawn(|| aio::sleep(LONG));
            s.spawn(|| aio::sleep(LONG));
            s.spawn(|| aio::sleep(LONG));
            aio::yield_now();
            a.cancel();
            assert!(a.join().unwrap_err().is::<Cancelled>());
            s.cancel();
            "done"
        });
        assert_eq!(r, "done");
    });
}

#[test]
fn cancelling_the_parent_cancels_the_children_first() {
    let log = Log::default();
    let l = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let started = Rc::new(Cell::new(0));
        let (l2, st) = (l.clone(), started.clone());
        let parent = aio::spawn(move || {
            let data = RefCell::new(Vec::new());
            aio::scope(|s| {
                for i in 0..3 {
                    let (data, l3, st) = (&data, l2.clone(), st.clone());
                    s.spawn(move || {
                        let _n = Noisy(l3, "child");
                        data.borrow_mut().push(i);
                        st.set(st.get() + 1);
                        aio::sleep(LONG);
                    });
                }
                aio::sleep(LONG);
            });
            unreachable!("the scope returned");
        });
        while started.get() < 3 {
            aio::yield_now();
        }
        parent.cancel();
        assert!(parent.join().unwrap_err().is::<Cancelled>());
        l.push("parent joined");
    });
    assert_eq!(
        log.take(),
        ["drop child", "drop child", "drop child", "parent joined"]
    );
}

#[test]
fn a_timeout_around_a_scope_cancels_its_children() {
    EventLoop::new().unwrap().block_on(|| {
        let finished = Cell::new(0);
        let r = aio::timeout(Duration::from_millis(5), || {
            aio::scope(|s| {
                for _ in 0..4 {
                    let finished = &finished;
                    s.spawn(move || {
                        let _count = Counter(finished);
                        aio::sleep(LONG);
                    });
                }
            })
        });
        assert!(r.is_err());
        assert_eq!(
            finished.get(),
            4,
            "every child ended before timeout returned"
        );
    });
}

struct Counter<'a>(&'a Cell<usize>);

impl Drop for Counter<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn a_loop_dropped_mid_scope_ends_the_children_before_the_parent() {
    let log = Log::default();
    let l = log.clone();
    let lp = EventLoop::new().unwrap();
    let _parent = lp.spawn(move || {
        let borrowed = Noisy(l.clone(), "parent's data");
        aio::scope(|s| {
            for _ in 0..2 {
                let (b, l2) = (&borrowed, l.clone());
                s.spawn(move || {
                    struct UsesParent<'a>(&'a Noisy, Log);
                    impl Drop for UsesParent<'_> {
                        fn drop(&mut self) {
                            // Reads the parent's stack while unwinding.
                            self.1.push(format!("child saw {}", self.0 .1));
                        }
                    }
                    let _u = UsesParent(b, l2);
                    aio::sleep(LONG);
                });
            }
            aio::sleep(LONG);
        });
    });
    for _ in 0..5 {
        lp.poll(false);
    }
    drop(lp);
    let got = log.take();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2], "drop parent's data", "{got:?}");
}

#[test]
fn ten_thousand_children() {
    // Under Miri (every instruction interpreted) a few hundred make the
    // same point.
    const N: u64 = if cfg!(miri) { 300 } else { 10_000 };
    EventLoop::new().unwrap().block_on(|| {
        let sum = Cell::new(0u64);
        aio::scope(|s| {
            for i in 0..N {
                let sum = &sum;
                s.spawn(move || {
                    aio::yield_now();
                    sum.set(sum.get() + i);
                });
            }
        });
        assert_eq!(sum.get(), (0..N).sum::<u64>());
    });
}

#[test]
fn scope_needs_a_costack_event_loop() {
    use std::future::Future;
    let mut fut = Box::pin(costack::future::CoFuture::new(|| {
        aio::scope(|_| ());
    }));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let p = catch_unwind(AssertUnwindSafe(|| {
        let _ = fut.as_mut().poll(&mut cx);
    }))
    .unwrap_err();
    assert!(panic_message(&*p).contains("needs a costack event loop"));
}

#[test]
fn children_may_spawn_siblings_and_join_them() {
    EventLoop::new().unwrap().block_on(|| {
        let hits = Rc::new(Cell::new(0));
        aio::scope(|s| {
            let h2 = hits.clone();
            s.spawn(move || {
                let inner = s.spawn(move || h2.set(h2.get() + 1));
                inner.join().unwrap();
            });
        });
        assert_eq!(hits.get(), 1);
    });
}

/// A parent that can never be resumed (its last handle dropped while its
/// children run) cannot leave the scope, nor wait for them: the process
/// aborts naming it, instead of freeing what the children borrow. Run in
/// a child process (this test binary, re-executed).
#[test]
#[cfg_attr(miri, ignore = "spawns a process")]
fn a_dropped_parent_with_running_children_aborts_clearly() {
    const CASE: &str = "COSTACK_SCOPE_DROP_CASE";
    if std::env::var_os(CASE).is_some() {
        let lp = EventLoop::new().unwrap();
        lp.block_on(|| {
            let parent = costack::Builder::new()
                .name("scope parent")
                .create(|| {
                    let data = [1u8; 16];
                    aio::scope(|s| {
                        s.spawn(|| {
                            aio::sleep(LONG);
                            data.len()
                        });
                        aio::sleep(LONG);
                    });
                })
                .unwrap();
            parent.enter(); // it waits in the scope
            aio::yield_now(); // the child sleeps too
            drop(parent); // nobody can resume it now
            unreachable!("dropping the parent returned");
        });
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_dropped_parent_with_running_children_aborts_clearly",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child did not abort: {stderr}");
    assert!(
        stderr.contains("yielded while being dropped") && stderr.contains("scope parent"),
        "{stderr}"
    );
}
