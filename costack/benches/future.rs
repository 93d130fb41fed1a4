//! CoFuture (a coroutine polled as a future) against plain async code,
//! both on one tokio current_thread runtime, measured in the same run:
//!
//! - awaiting `tokio::task::yield_now()` in a loop: from a CoFuture through
//!   `aio::wait_future` vs an `async` loop (target: <= 1.5x the time per
//!   await);
//! - a tree walk that awaits at every leaf: plain recursion inside a
//!   CoFuture vs async recursion with `Box::pin` per level (target: <= 1.0x
//!   the time). Each wake-up resumes the coroutine where it stopped, while
//!   the async walk is polled down from the root through every level.
//!
//! `cargo bench -p costack --bench future` prints the medians of
//! interleaved rounds and the ratios.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::time::Instant;

use costack::aio;
use costack::future::CoFuture;

const ROUNDS: usize = 9;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// Runs each body `ROUNDS` times, interleaved so that machine noise hits
/// all alike; returns the median time per unit (`units` per run).
fn measure(benches: &mut [(&str, f64, &mut dyn FnMut())]) -> Vec<f64> {
    let mut samples = vec![Vec::new(); benches.len()];
    for (_, _, f) in benches.iter_mut() {
        f(); // warm-up: stacks, pools, the runtime's queues
    }
    for _ in 0..ROUNDS {
        for (i, (_, units, f)) in benches.iter_mut().enumerate() {
            let t = Instant::now();
            f();
            samples[i].push(t.elapsed().as_nanos() as f64 / *units);
        }
    }
    samples
        .into_iter()
        .zip(benches.iter())
        .map(|(mut s, (name, _, _))| {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let median = s[s.len() / 2];
            println!(
                "{name:<52} median {median:>10.1} ns   (min {:.1}, max {:.1})",
                s[0],
                s[s.len() - 1]
            );
            median
        })
        .collect()
}

fn yield_loop() {
    const AWAITS: u32 = 200_000;
    let rt = runtime();
    let mut cofuture = || {
        rt.block_on(CoFuture::new(|| {
            for _ in 0..AWAITS {
                aio::wait_future(tokio::task::yield_now());
            }
        }))
    };
    let rt2 = runtime();
    let mut plain = || {
        rt2.block_on(async {
            for _ in 0..AWAITS {
                tokio::task::yield_now().await;
            }
        })
    };
    let m = measure(&mut [
        (
            "await yield_now: CoFuture + aio::wait_future",
            AWAITS as f64,
            &mut cofuture,
        ),
        ("await yield_now: async loop", AWAITS as f64, &mut plain),
    ]);
    println!(
        "  -> CoFuture / async: {:.2}x the time per await\n",
        m[0] / m[1]
    );
}

/// Sums the leaves of a full binary tree of `depth`, awaiting a yield at
/// each leaf, as blocking-looking recursion in a coroutine.
fn walk_co(depth: u32, at: u64) -> u64 {
    if depth == 0 {
        aio::wait_future(tokio::task::yield_now());
        return at;
    }
    walk_co(depth - 1, 2 * at) + walk_co(depth - 1, 2 * at + 1)
}

/// The same walk as async recursion, boxed per level as async needs.
fn walk_async(depth: u32, at: u64) -> Pin<Box<dyn Future<Output = u64>>> {
    Box::pin(async move {
        if depth == 0 {
            tokio::task::yield_now().await;
            return at;
        }
        walk_async(depth - 1, 2 * at).await + walk_async(depth - 1, 2 * at + 1).await
    })
}

fn tree_walk(depth: u32) {
    let leaves = 1u64 << depth;
    let expect = (leaves..2 * leaves).sum::<u64>();
    let rt = runtime();
    let mut cofuture = || {
        let d = black_box(depth);
        let sum = rt.block_on(CoFuture::new(move || walk_co(d, 1)));
        assert_eq!(sum, expect);
    };
    let rt2 = runtime();
    let mut plain = || {
        let sum = rt2.block_on(walk_async(black_box(depth), 1));
        assert_eq!(sum, expect);
    };
    let name_co = format!("tree walk depth {depth}: recursion in a CoFuture");
    let name_async = format!("tree walk depth {depth}: async, Box::pin per level");
    let m = measure(&mut [
        (&name_co, leaves as f64, &mut cofuture),
        (&name_async, leaves as f64, &mut plain),
    ]);
    println!(
        "  -> CoFuture / async: {:.2}x the time per leaf\n",
        m[0] / m[1]
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one case.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if wanted("yield") {
        yield_loop();
    }
    if wanted("tree") {
        tree_walk(4);
        tree_walk(6);
        tree_walk(16);
    }
}
