//! Cancellation, deadlines and scopes against tokio's current-thread
//! runtime, measured in the same run, interleaved:
//! - `aio::timeout(1 s, op)` where `op` returns without waiting, against
//!   `tokio::time::timeout(1 s, op)`;
//! - cancel and join a sleeping coroutine, against `abort` and await of a
//!   sleeping task;
//! - a scope of 8 children that each sleep 1 ms, and one of 10,000,
//!   against a `JoinSet` of as many tasks.
//!
//! `cargo bench -p costack --bench cancel` (`-- quick` for fewer rounds).
//! Prints the time per operation of each and the ratio costack/tokio
//! (lower is better for costack).

#[cfg(any(unix, windows))]
fn main() {
    bench::main()
}

#[cfg(not(any(unix, windows)))]
fn main() {
    eprintln!("this needs costack's event loop, which runs on unix systems and Windows only");
}

#[cfg(any(unix, windows))]
mod bench {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use costack::aio::{self, EventLoop};

    const LONG: Duration = Duration::from_secs(3600);

    fn tokio_rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Runs both sides `rounds` times, alternating; returns the median time
    /// per operation of each, in ns.
    fn compare(
        rounds: usize,
        ours: impl Fn() -> (usize, Duration),
        theirs: impl Fn() -> (usize, Duration),
    ) -> (f64, f64) {
        let per_op = |(n, d): (usize, Duration)| d.as_nanos() as f64 / n as f64;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(per_op(ours()));
            b.push(per_op(theirs()));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|x, y| x.partial_cmp(y).unwrap());
            v[v.len() / 2]
        };
        (median(&mut a), median(&mut b))
    }

    fn report(name: &str, (ours, theirs): (f64, f64)) {
        let fmt = |ns: f64| {
            if ns >= 1e6 {
                format!("{:.2} ms", ns / 1e6)
            } else if ns >= 1e3 {
                format!("{:.2} µs", ns / 1e3)
            } else {
                format!("{ns:.1} ns")
            }
        };
        println!(
            "{name:<34} costack {:>10}  tokio {:>10}  costack/tokio {:.2}x the time",
            fmt(ours),
            fmt(theirs),
            ours / theirs
        );
    }

    const TIMEOUTS: usize = 1_000_000;

    fn costack_timeout() -> (usize, Duration) {
        EventLoop::new().unwrap().block_on(|| {
            let t = Instant::now();
            let mut sum = 0u64;
            for i in 0..TIMEOUTS as u64 {
                sum += aio::timeout(Duration::from_secs(1), || black_box(i)).unwrap();
            }
            black_box(sum);
            (TIMEOUTS, t.elapsed())
        })
    }

    fn tokio_timeout() -> (usize, Duration) {
        tokio_rt().block_on(async {
            let t = Instant::now();
            let mut sum = 0u64;
            for i in 0..TIMEOUTS as u64 {
                sum += tokio::time::timeout(Duration::from_secs(1), async { black_box(i) })
                    .await
                    .unwrap();
            }
            black_box(sum);
            (TIMEOUTS, t.elapsed())
        })
    }

    const CANCELS: usize = 20_000;

    fn costack_cancel() -> (usize, Duration) {
        EventLoop::new().unwrap().block_on(|| {
            let t = Instant::now();
            for _ in 0..CANCELS {
                let h = aio::spawn(|| aio::sleep(LONG));
                aio::yield_now(); // it sleeps now
                h.cancel();
                assert!(h.join().is_err());
            }
            (CANCELS, t.elapsed())
        })
    }

    fn tokio_cancel() -> (usize, Duration) {
        tokio_rt().block_on(async {
            let t = Instant::now();
            for _ in 0..CANCELS {
                let h = tokio::spawn(tokio::time::sleep(LONG));
                tokio::task::yield_now().await; // it sleeps now
                h.abort();
                assert!(h.await.is_err());
            }
            (CANCELS, t.elapsed())
        })
    }

    fn costack_scope(children: usize, scopes: usize) -> (usize, Duration) {
        EventLoop::new().unwrap().block_on(move || {
            let t = Instant::now();
            for _ in 0..scopes {
                aio::scope(|s| {
                    for _ in 0..children {
                        s.spawn(|| aio::sleep(Duration::from_millis(1)));
                    }
                });
            }
            (scopes, t.elapsed())
        })
    }

    fn tokio_joinset(children: usize, scopes: usize) -> (usize, Duration) {
        tokio_rt().block_on(async move {
            let t = Instant::now();
            for _ in 0..scopes {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..children {
                    set.spawn(tokio::time::sleep(Duration::from_millis(1)));
                }
                while let Some(r) = set.join_next().await {
                    r.unwrap();
                }
            }
            (scopes, t.elapsed())
        })
    }

    pub fn main() {
        let quick = std::env::args().any(|a| a == "quick");
        let rounds = if quick { 3 } else { 7 };
        report(
            "timeout(1 s) of a ready op",
            compare(rounds, costack_timeout, tokio_timeout),
        );
        report(
            "cancel + join a sleeper",
            compare(rounds, costack_cancel, tokio_cancel),
        );
        report(
            "scope of 8 x sleep(1 ms)",
            compare(rounds, || costack_scope(8, 100), || tokio_joinset(8, 100)),
        );
        report(
            "scope of 10,000 x sleep(1 ms)",
            compare(
                rounds,
                || costack_scope(10_000, 3),
                || tokio_joinset(10_000, 3),
            ),
        );
    }
}
