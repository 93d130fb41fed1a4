//! costack and tokio in one program, both ways round.
//!
//! 1. Coroutines on tokio: each [`CoFuture`] is a coroutine polled by
//!    tokio. A coroutine never moves between threads, so on a multi-thread
//!    runtime each one is pinned to a worker with
//!    `tokio_util::task::LocalPoolHandle` (one `LocalSet` per worker
//!    thread); inside, blocking-looking code awaits tokio futures with
//!    `aio::wait_future` and shares a `CoMutex` with the others.
//! 2. Tokio futures on costack's loop: a multi-thread runtime's handle is
//!    entered on the loop's thread (its workers drive timers and sockets
//!    while costack's loop runs), or work is handed to the runtime with
//!    `Handle::spawn` and its `JoinHandle` waited for.
//!
//! `cargo run --example tokio_interop`

use std::sync::Arc;
use std::time::Duration;

use costack::aio;
use costack::future::CoFuture;
use costack::sync::CoMutex;

/// Part 1: 8 coroutines spread over a pool of 2 tokio workers.
fn coroutines_on_tokio() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("tokio runtime");
    let pool = tokio_util::task::LocalPoolHandle::new(2);
    let total = Arc::new(CoMutex::new(0u64));
    let sum = rt.block_on(async move {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let total = total.clone();
                // The closure runs on the chosen worker, which then polls
                // the (non-Send) CoFuture it returns, and only that worker.
                pool.spawn_pinned(move || {
                    CoFuture::new(move || {
                        // Reads like blocking code; yields to tokio inside.
                        aio::wait_future(tokio::time::sleep(Duration::from_millis(10 * i)));
                        let mut t = total.lock(); // shared with other workers
                        *t += i;
                        i
                    })
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.expect("coroutine task");
        }
        // Every coroutine is done, so the lock is free (`lock` would wait
        // only inside a coroutine).
        assert_eq!(*total.try_lock().expect("unlocked"), sum);
        sum
    });
    println!("coroutines on tokio: sum {sum}");
}

/// Part 2: tokio futures awaited from coroutines of costack's own loop.
#[cfg(any(unix, windows))]
fn tokio_on_costack() {
    use costack::aio::EventLoop;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let handle = rt.handle().clone();
    // tokio's context for this thread, for as long as the loop runs: tokio
    // timers and sockets created by the coroutines register with it, and
    // the runtime's worker wakes them.
    let _entered = rt.enter();
    EventLoop::new().expect("event loop").block_on(move || {
        let t = std::time::Instant::now();
        aio::wait_future(tokio::time::sleep(Duration::from_millis(20)));
        println!("tokio on costack: slept {:?} on a tokio timer", t.elapsed());

        // Or hand a whole async job to the runtime and wait for its result.
        let job = handle.spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            42
        });
        let v = aio::wait_future(job).expect("tokio task");
        println!("tokio on costack: a tokio task returned {v}");
    });
}

#[cfg(not(any(unix, windows)))]
fn tokio_on_costack() {
    println!("tokio on costack: costack's event loop runs on unix systems and Windows only");
}

fn main() {
    coroutines_on_tokio();
    tokio_on_costack();
}
