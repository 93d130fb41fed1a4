//! Round-trip switch cost (enter + yield) of the backend this binary was
//! built with, as a ratio to an indirect function call measured in the same
//! run. Run once per backend:
//!
//! ```text
//! cargo bench -p costack --bench backends                       # default asm
//! cargo bench -p costack --bench backends --features ucontext   # glibc ucontext
//! cargo bench -p costack --bench backends --target x86_64-pc-windows-gnu [--features fibers]
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use costack::{yield_now, Coroutine};

/// Round trips per round: fewer for the thread backend, whose switches
/// are thread wake-ups (tens of microseconds).
const ITERS: u32 = if cfg!(any(miri, feature = "thread-backend")) {
    20_000
} else {
    1_000_000
};
const ROUNDS: usize = 7;

fn backend() -> &'static str {
    if cfg!(any(miri, feature = "thread-backend")) {
        "thread"
    } else if cfg!(feature = "ucontext") {
        "ucontext"
    } else if cfg!(feature = "fibers") {
        "fibers"
    } else {
        "asm"
    }
}

/// Best of `ROUNDS` timings of `f`, per iteration.
fn best(mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best.as_secs_f64() * 1e9 / ITERS as f64
}

#[inline(never)]
fn callee(x: u64) -> u64 {
    black_box(x) + 1
}

fn main() {
    let f: fn(u64) -> u64 = black_box(callee);
    let call = best(|| {
        let mut x = 0;
        for _ in 0..ITERS {
            x = f(x);
        }
        black_box(x);
    });

    let co = Coroutine::new(|| loop {
        yield_now();
    });
    let switch = best(|| {
        for _ in 0..ITERS {
            co.enter();
        }
    });

    println!(
        "backends/{}/{}: call {:.2} ns, enter+yield {:.2} ns, ratio {:.1}",
        std::env::consts::OS,
        backend(),
        call,
        switch,
        switch / call
    );
}
