//! Coroutine locks against their peers, measured in the same run:
//!
//! - uncontended lock + unlock: `CoMutex` vs `std::sync::Mutex` and
//!   `tokio::sync::Mutex` (target: CoMutex time <= 1.0x std's);
//! - contended hand-off: two coroutines ping-pong through a `CoMutex`, each
//!   yielding while it holds the lock so the other queues, vs the same with
//!   two tokio tasks on a current-thread runtime (target: throughput >=
//!   1.0x tokio's).
//!
//! `cargo bench -p costack --bench sync` prints nanoseconds per operation
//! (median of interleaved rounds) and the ratios.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use costack::sync::CoMutex;
use costack::{yield_now, Coroutine};

const ROUNDS: usize = 9;

/// Runs every benchmark `ROUNDS` times, interleaved so that noise from the
/// (shared) machine hits all of them alike; returns median ns per op.
/// A benchmark: its name, iterations per round, and the body run with them.
type Bench<'a> = (&'a str, u64, &'a mut dyn FnMut(u64));

fn measure(benches: &mut [Bench<'_>]) -> Vec<f64> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); benches.len()];
    for (_, iters, f) in benches.iter_mut() {
        f(*iters / 10); // warm-up
    }
    for _ in 0..ROUNDS {
        for (i, (_, iters, f)) in benches.iter_mut().enumerate() {
            let t = Instant::now();
            f(*iters);
            samples[i].push(t.elapsed().as_nanos() as f64 / *iters as f64);
        }
    }
    samples
        .into_iter()
        .zip(benches.iter())
        .map(|(mut s, (name, _, _))| {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let median = s[s.len() / 2];
            println!(
                "{name:<44} median {median:>8.2} ns/op   (min {:.2}, max {:.2})",
                s[0],
                s[s.len() - 1]
            );
            median
        })
        .collect()
}

fn uncontended() -> (f64, f64, f64, f64) {
    const N: u64 = 5_000_000;
    let co_mutex = CoMutex::new(0u64);
    let std_mutex = std::sync::Mutex::new(0u64);
    let tokio_mutex = tokio::sync::Mutex::new(0u64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut co = |n: u64| {
        for _ in 0..n {
            *black_box(&co_mutex).lock() += 1;
        }
    };
    // The same inside a coroutine (the usual place), where `lock` could yield.
    let co_in = {
        let m = Rc::new(CoMutex::new(0u64));
        move |n: u64| {
            let m = m.clone();
            Coroutine::new(move || {
                for _ in 0..n {
                    *black_box(&*m).lock() += 1;
                }
            })
            .enter();
        }
    };
    let mut co_in = co_in;
    let mut std = |n: u64| {
        for _ in 0..n {
            *black_box(&std_mutex).lock().unwrap() += 1;
        }
    };
    let mut tokio = |n: u64| {
        rt.block_on(async {
            for _ in 0..n {
                *black_box(&tokio_mutex).lock().await += 1;
            }
        })
    };
    let r = measure(&mut [
        ("uncontended CoMutex (thread)", N, &mut co),
        ("uncontended CoMutex (in a coroutine)", N, &mut co_in),
        ("uncontended std::sync::Mutex", N, &mut std),
        ("uncontended tokio::sync::Mutex (block_on)", N, &mut tokio),
    ]);
    (r[0], r[1], r[2], r[3])
}

/// Two coroutines hand the lock back and forth `n` times in total.
fn costack_ping_pong(n: u64) {
    let m = Rc::new(CoMutex::new(0u64));
    let mk = |m: Rc<CoMutex<u64>>| {
        Coroutine::new(move || {
            for _ in 0..n / 2 {
                let mut g = m.lock();
                *g += 1;
                yield_now(); // hold it: the other one queues
            }
        })
    };
    let (a, b) = (mk(m.clone()), mk(m.clone()));
    // After the first two enters, each enter of the holder hands the lock
    // over and runs the other until it yields holding the lock.
    while !(a.is_finished() && b.is_finished()) {
        for c in [&a, &b] {
            if !c.is_finished() {
                c.enter();
            }
        }
    }
    assert_eq!(*m.lock(), n / 2 * 2);
}

fn tokio_ping_pong(rt: &tokio::runtime::Runtime, n: u64) {
    let m = std::sync::Arc::new(tokio::sync::Mutex::new(0u64));
    rt.block_on(async {
        let task = |m: std::sync::Arc<tokio::sync::Mutex<u64>>| async move {
            for _ in 0..n / 2 {
                let mut g = m.lock().await;
                *g += 1;
                tokio::task::yield_now().await;
            }
        };
        let a = tokio::task::spawn(task(m.clone()));
        let b = tokio::task::spawn(task(m.clone()));
        a.await.unwrap();
        b.await.unwrap();
    });
    assert_eq!(*m.try_lock().unwrap(), n / 2 * 2);
}

fn contended() -> (f64, f64) {
    const N: u64 = 400_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = measure(&mut [
        (
            "contended hand-off, 2 coroutines (CoMutex)",
            N,
            &mut costack_ping_pong,
        ),
        ("contended hand-off, 2 tokio tasks", N, &mut |n| {
            tokio_ping_pong(&rt, n)
        }),
    ]);
    (r[0], r[1])
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep it short.
    if !std::env::args().any(|a| a == "--bench") {
        costack_ping_pong(1000);
        return;
    }
    let (co, co_in, std, tokio) = uncontended();
    let (ping, tokio_ping) = contended();
    println!();
    println!(
        "uncontended: CoMutex / std time      = {:.3}  (target <= 1.0)",
        co / std
    );
    println!(
        "uncontended: CoMutex in coroutine / std = {:.3}",
        co_in / std
    );
    println!("uncontended: CoMutex / tokio time    = {:.3}", co / tokio);
    println!(
        "contended:   CoMutex / tokio throughput = {:.3}  (target >= 1.0)",
        tokio_ping / ping
    );
}
