//! `costack::sync`'s locks against models of what they promise: random
//! scripts of lock, try-lock, yield and drop, replayed per seed.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use costack::sync::{CoMutex, CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard, CoSemaphore};
use costack::{yield_now, Coroutine};

/// Seeds per randomized test: under Miri (each coroutine an interpreted
/// OS thread) a few cover every path of the locks; natively, hundreds.
const SEEDS: u64 = if cfg!(miri) { 6 } else { 300 };

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Lock(u32),
    TryLock(u32),
    Yield,
}

struct Model {
    holder: Cell<Option<usize>>,
    requests: RefCell<Vec<usize>>,
    acquired: RefCell<Vec<usize>>,
    waiting: Vec<Cell<bool>>,
}

/// Clears the model's record of a coroutine that is dropped mid-script.
struct Leave<'a>(&'a Model, usize);
impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let (m, i) = (self.0, self.1);
        if m.waiting[i].replace(false) {
            let mut req = m.requests.borrow_mut();
            let pos = req.iter().rposition(|&r| r == i).unwrap();
            req.remove(pos);
        }
        if m.holder.get() == Some(i) {
            m.holder.set(None);
        }
    }
}

fn run_mutex_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = 2 + rng.below(7) as usize;
    let mutex = Rc::new(CoMutex::new(0u64));
    let model = Rc::new(Model {
        holder: Cell::new(None),
        requests: RefCell::new(Vec::new()),
        acquired: RefCell::new(Vec::new()),
        waiting: (0..n).map(|_| Cell::new(false)).collect(),
    });
    let mut cos: Vec<Option<Coroutine>> = (0..n)
        .map(|i| {
            let script: Vec<Op> = (0..rng.below(12))
                .map(|_| match rng.below(3) {
                    0 => Op::Lock(rng.below(3) as u32),
                    1 => Op::TryLock(rng.below(2) as u32),
                    _ => Op::Yield,
                })
                .collect();
            let (mutex, model) = (mutex.clone(), model.clone());
            Some(Coroutine::new(move || {
                let model = &*model;
                let _leave = Leave(model, i);
                for op in script {
                    let (guard, hold) = match op {
                        Op::Yield => {
                            yield_now();
                            continue;
                        }
                        Op::Lock(hold) => {
                            model.waiting[i].set(true);
                            model.requests.borrow_mut().push(i);
                            let g = mutex.lock();
                            model.waiting[i].set(false);
                            (g, hold)
                        }
                        Op::TryLock(hold) => match mutex.try_lock() {
                            Some(g) => {
                                model.requests.borrow_mut().push(i);
                                (g, hold)
                            }
                            None => continue,
                        },
                    };
                    assert_eq!(model.holder.replace(Some(i)), None, "mutual exclusion");
                    model.acquired.borrow_mut().push(i);
                    let mut guard = guard;
                    *guard += 1;
                    for _ in 0..hold {
                        yield_now();
                    }
                    model.holder.set(None);
                    drop(guard);
                }
            }))
        })
        .collect();
    let mut steps = 0;
    loop {
        let runnable: Vec<usize> = (0..n)
            .filter(|&i| matches!(&cos[i], Some(c) if !c.is_finished() && !model.waiting[i].get()))
            .collect();
        if runnable.is_empty() {
            let stuck: Vec<usize> = (0..n)
                .filter(|&i| matches!(&cos[i], Some(c) if !c.is_finished()))
                .collect();
            assert!(
                stuck.is_empty(),
                "seed {seed}: lost wake-up, {stuck:?} wait forever"
            );
            break;
        }
        let pick = runnable[rng.below(runnable.len() as u64) as usize];
        if rng.below(40) == 0 {
            // Drop a random live coroutine (maybe a waiter, maybe the holder).
            let victim = rng.below(n as u64) as usize;
            cos[victim] = None;
            continue;
        }
        if let Some(c) = &cos[pick] {
            c.enter();
        }
        steps += 1;
        assert!(steps < 100_000, "seed {seed}: no progress");
    }
    assert_eq!(
        *model.requests.borrow(),
        *model.acquired.borrow(),
        "seed {seed}: FIFO: acquisitions follow requests"
    );
    assert!(!mutex.is_locked(), "seed {seed}");
    assert_eq!(*mutex.lock() as usize, model.acquired.borrow().len());
}

#[test]
fn randomized_mutex_against_a_model() {
    for seed in 0..SEEDS * 4 / 3 {
        run_mutex_model(seed);
    }
}

/// Semaphore: random acquire/release amounts; at no time do holders
/// exceed the capacity; requests are served in FIFO order; all finish.
fn run_semaphore_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0xd134_2543_de82_ef95) | 1);
    let cap = 1 + rng.below(4) as usize;
    let n = 2 + rng.below(6) as usize;
    let sem = Rc::new(CoSemaphore::new(cap));
    let used = Rc::new(Cell::new(0usize));
    let requests = Rc::new(RefCell::new(Vec::new()));
    let served = Rc::new(RefCell::new(Vec::new()));
    let waiting: Rc<Vec<Cell<bool>>> = Rc::new((0..n).map(|_| Cell::new(false)).collect());
    let cos: Vec<Coroutine> = (0..n)
        .map(|i| {
            let script: Vec<(usize, u32)> = (0..rng.below(8))
                .map(|_| (1 + rng.below(cap as u64) as usize, rng.below(3) as u32))
                .collect();
            let (sem, used, requests, served, waiting) = (
                sem.clone(),
                used.clone(),
                requests.clone(),
                served.clone(),
                waiting.clone(),
            );
            Coroutine::new(move || {
                for (k, hold) in script {
                    waiting[i].set(true);
                    requests.borrow_mut().push(i);
                    sem.acquire(k);
                    waiting[i].set(false);
                    served.borrow_mut().push(i);
                    used.set(used.get() + k);
                    assert!(used.get() <= cap, "capacity exceeded");
                    for _ in 0..hold {
                        yield_now();
                    }
                    used.set(used.get() - k);
                    sem.release(k);
                    yield_now();
                }
            })
        })
        .collect();
    loop {
        let runnable: Vec<&Coroutine> = cos
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.is_finished() && !waiting[*i].get())
            .map(|(_, c)| c)
            .collect();
        if runnable.is_empty() {
            assert!(
                cos.iter().all(Coroutine::is_finished),
                "seed {seed}: lost wake-up"
            );
            break;
        }
        runnable[rng.below(runnable.len() as u64) as usize].enter();
    }
    assert_eq!(*requests.borrow(), *served.borrow(), "seed {seed}: FIFO");
    assert_eq!(sem.available(), cap);
}

#[test]
fn randomized_semaphore_against_a_model() {
    for seed in 0..SEEDS {
        run_semaphore_model(seed);
    }
}

/// RwLock: random readers/writers/upgrades/downgrades; checks exclusion
/// (never a writer with anyone else) and that everyone finishes.
fn run_rwlock_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0xa076_1d64_78bd_642f) | 1);
    let n = 2 + rng.below(6) as usize;
    let lock = Rc::new(CoRwLock::new(()));
    let readers = Rc::new(Cell::new(0i32)); // -1: a writer
    let waiting: Rc<Vec<Cell<bool>>> = Rc::new((0..n).map(|_| Cell::new(false)).collect());
    let enter_read = |r: &Cell<i32>| {
        assert!(r.get() >= 0, "reader with a writer");
        r.set(r.get() + 1);
    };
    let enter_write = |r: &Cell<i32>| {
        assert_eq!(r.get(), 0, "writer with others");
        r.set(-1);
    };
    let cos: Vec<Coroutine> = (0..n)
        .map(|i| {
            let script: Vec<(u64, u32)> = (0..rng.below(8))
                .map(|_| (rng.below(4), rng.below(3) as u32))
                .collect();
            let (lock, readers, waiting) = (lock.clone(), readers.clone(), waiting.clone());
            Coroutine::new(move || {
                let hold = |k: u32| {
                    for _ in 0..k {
                        yield_now();
                    }
                };
                for (kind, k) in script {
                    waiting[i].set(true);
                    match kind {
                        0 => {
                            let g = lock.read();
                            waiting[i].set(false);
                            enter_read(&readers);
                            hold(k);
                            readers.set(readers.get() - 1);
                            drop(g);
                        }
                        1 => {
                            let g = lock.write();
                            waiting[i].set(false);
                            enter_write(&readers);
                            hold(k);
                            readers.set(0);
                            drop(g);
                        }
                        2 => {
                            let g = lock.read();
                            waiting[i].set(false);
                            enter_read(&readers);
                            hold(k);
                            readers.set(readers.get() - 1);
                            waiting[i].set(true);
                            let w = CoRwLockReadGuard::upgrade(g);
                            waiting[i].set(false);
                            enter_write(&readers);
                            hold(1);
                            readers.set(0);
                            drop(w);
                        }
                        _ => {
                            let w = lock.write();
                            waiting[i].set(false);
                            enter_write(&readers);
                            hold(k);
                            readers.set(1);
                            let r = CoRwLockWriteGuard::downgrade(w);
                            hold(1);
                            readers.set(readers.get() - 1);
                            drop(r);
                        }
                    }
                    yield_now();
                }
            })
        })
        .collect();
    loop {
        let runnable: Vec<&Coroutine> = cos
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.is_finished() && !waiting[*i].get())
            .map(|(_, c)| c)
            .collect();
        if runnable.is_empty() {
            assert!(
                cos.iter().all(Coroutine::is_finished),
                "seed {seed}: lost wake-up"
            );
            break;
        }
        runnable[rng.below(runnable.len() as u64) as usize].enter();
    }
    assert!(lock.try_write().is_some());
}

#[test]
fn randomized_rwlock_against_a_model() {
    for seed in 0..SEEDS {
        run_rwlock_model(seed);
    }
}
