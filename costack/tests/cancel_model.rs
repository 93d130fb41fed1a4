//! A model-based test of the locks under cancellation: random workloads
//! over CoMutex, CoRwLock, CoSemaphore and CoQueue, with cancellations and
//! timeouts at random points. Whatever happens, nothing is lost:
//! - every lock ends free, and the semaphore's permits add up;
//! - nobody waits forever (every coroutine is joined, within a deadline);
//! - mutual exclusion holds throughout;
//! - every destructor runs exactly once.

#![cfg(any(unix, windows))]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use costack::aio::{self, EventLoop};
use costack::sync::{CoMutex, CoQueue, CoRwLock, CoSemaphore};
use proptest::prelude::*;

const PERMITS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Holds the mutex across this many yields.
    Lock(u8),
    Read(u8),
    Write(u8),
    /// Upgrades a read lock to a write lock.
    Upgrade(u8),
    Acquire(usize, u8),
    /// Waits on the queue (someone restarts it).
    Wait,
    Restart,
    Sleep(u8),
    /// The next op runs under a timeout of this many milliseconds.
    Timeout(u8),
    /// Cancels coroutine number `k` (modulo their number), right after
    /// whatever this coroutine released last may have been handed to it.
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3u8).prop_map(Op::Lock),
        (0..3u8).prop_map(Op::Read),
        (0..3u8).prop_map(Op::Write),
        (0..3u8).prop_map(Op::Upgrade),
        ((1..=PERMITS), 0..3u8).prop_map(|(n, y)| Op::Acquire(n, y)),
        Just(Op::Wait),
        Just(Op::Restart),
        (0..3u8).prop_map(Op::Sleep),
        (0..4u8).prop_map(Op::Timeout),
        (0..8usize).prop_map(Op::Cancel),
    ]
}

/// The shared state, and what the invariants count.
struct World {
    mutex: CoMutex<()>,
    rw: CoRwLock<()>,
    sem: CoSemaphore,
    queue: CoQueue,
    in_mutex: Cell<u32>,
    readers: Cell<u32>,
    writers: Cell<u32>,
    drops: Cell<u32>,
    handles: std::cell::RefCell<Vec<aio::JoinHandle<()>>>,
}

/// Counts the destructors of a coroutine's state.
struct Dropped(Rc<World>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.drops.set(self.0.drops.get() + 1);
    }
}

/// Marks a critical section: entered on creation, left on drop.
struct Inside<'a>(&'a Cell<u32>);

impl<'a> Inside<'a> {
    fn enter(count: &'a Cell<u32>, max: u32) -> Inside<'a> {
        count.set(count.get() + 1);
        assert!(count.get() <= max, "exclusion broken");
        Inside(count)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn yields(n: u8) {
    for _ in 0..n {
        aio::yield_now();
    }
}

fn run_op(w: &World, op: &Op) {
    match *op {
        Op::Lock(y) => {
            let _g = w.mutex.lock();
            let _in = Inside::enter(&w.in_mutex, 1);
            yields(y);
        }
        Op::Read(y) => {
            let _g = w.rw.read();
            assert_eq!(w.writers.get(), 0);
            let _in = Inside::enter(&w.readers, u32::MAX);
            yields(y);
        }
        Op::Write(y) => {
            let _g = w.rw.write();
            assert_eq!(w.readers.get(), 0);
            let _in = Inside::enter(&w.writers, 1);
            yields(y);
        }
        Op::Upgrade(y) => {
            let g = w.rw.read();
            yields(y);
            let _g = costack::sync::CoRwLockReadGuard::upgrade(g);
            assert_eq!(w.readers.get(), 0);
            let _in = Inside::enter(&w.writers, 1);
            yields(y);
        }
        Op::Acquire(n, y) => {
            w.sem.acquire(n);
            struct Permits<'a>(&'a CoSemaphore, usize);
            impl Drop for Permits<'_> {
                fn drop(&mut self) {
                    self.0.release(self.1);
                }
            }
            let _p = Permits(&w.sem, n);
            yields(y);
        }
        Op::Wait => w.queue.wait(),
        Op::Restart => {
            w.queue.restart_next();
        }
        Op::Sleep(ms) => aio::sleep(Duration::from_millis(u64::from(ms))),
        Op::Cancel(k) => {
            let handles = w.handles.borrow();
            if !handles.is_empty() {
                handles[k % handles.len()].cancel();
            }
        }
        Op::Timeout(_) => {}
    }
}

fn run_script(w: &World, script: &[Op]) {
    let mut ops = script.iter();
    while let Some(op) = ops.next() {
        if let Op::Timeout(ms) = *op {
            if let Some(next) = ops.next() {
                let _ = aio::timeout(Duration::from_millis(u64::from(ms)), || run_op(w, next));
            }
        } else {
            run_op(w, op);
        }
    }
}

fn check(scripts: Vec<Vec<Op>>, cancels: Vec<(usize, u8)>) {
    let world = Rc::new(World {
        mutex: CoMutex::new(()),
        rw: CoRwLock::new(()),
        sem: CoSemaphore::new(PERMITS),
        queue: CoQueue::new(),
        in_mutex: Cell::new(0),
        readers: Cell::new(0),
        writers: Cell::new(0),
        drops: Cell::new(0),
        handles: Default::default(),
    });
    let w = world.clone();
    let n = scripts.len();
    let finished = EventLoop::new().unwrap().block_on(move || {
        let spawned: Vec<_> = scripts
            .into_iter()
            .map(|script| {
                let w = w.clone();
                // Captured: dropped whether the coroutine runs or not.
                let d = Dropped(w.clone());
                aio::spawn(move || {
                    let _d = d;
                    run_script(&w, &script);
                })
            })
            .collect();
        *w.handles.borrow_mut() = spawned;
        for (who, after) in cancels {
            yields(after);
            let handles = w.handles.borrow();
            handles[who % handles.len()].cancel();
        }
        // Waiters on the queue are restarted until everyone is done.
        let all = aio::timeout(Duration::from_secs(20), || {
            while !w.handles.borrow().iter().all(|h| h.is_finished()) {
                w.queue.restart_all();
                aio::yield_now();
            }
        });
        let handles = std::mem::take(&mut *w.handles.borrow_mut());
        for h in handles {
            // Cancelled or not, or a panic from a broken invariant.
            if let Err(p) = h.join() {
                if !p.is::<aio::Cancelled>() {
                    std::panic::resume_unwind(p);
                }
            }
        }
        all.is_ok()
    });
    assert!(finished, "some coroutine waited forever");
    assert!(!world.mutex.is_locked());
    assert!(world.rw.try_write().is_some(), "the rwlock ends held");
    assert_eq!(world.sem.available(), PERMITS, "permits lost or doubled");
    assert!(world.queue.is_empty());
    assert_eq!(
        world.drops.get() as usize,
        n,
        "destructors ran {} times",
        world.drops.get()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn locks_survive_cancellations_and_timeouts(
        scripts in prop::collection::vec(prop::collection::vec(op(), 1..8), 2..7),
        cancels in prop::collection::vec((0..8usize, 0..6u8), 0..5),
    ) {
        check(scripts, cancels);
    }
}
