//! A bounded pool of worker threads for blocking calls (QEMU's
//! thread-pool.c): at most [`MAX_THREADS`] workers, started on demand,
//! each exiting after [`IDLE_TIMEOUT`] without work. Shared by all loops
//! of the process.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Most worker threads the pool runs at once.
pub const MAX_THREADS: usize = 64;
/// How long an idle worker waits for work before it exits.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

static POOL: Pool = Pool {
    state: Mutex::new(State {
        queue: VecDeque::new(),
        threads: 0,
        idle: 0,
    }),
    work: Condvar::new(),
};

/// Queues `job` for a worker. Jobs must not panic (callers catch).
pub(crate) fn submit(job: Job) {
    let mut st = POOL.state.lock().unwrap_or_else(|e| e.into_inner());
    st.queue.push_back(job);
    if st.idle > st.queue.len() - 1 {
        POOL.work.notify_one();
        return;
    }
    if st.threads < MAX_THREADS {
        let spawned = std::thread::Builder::new()
            .name("costack-worker".into())
            .spawn(worker);
        if spawned.is_ok() {
            st.threads += 1;
            return;
        }
    }
    // At the bound (or out of threads): a busy worker takes it next.
    POOL.work.notify_one();
}

fn worker() {
    let mut st = POOL.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job();
            st = POOL.state.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        st.idle += 1;
        let (guard, timeout) = POOL
            .work
            .wait_timeout(st, IDLE_TIMEOUT)
            .unwrap_or_else(|e| e.into_inner());
        st = guard;
        st.idle -= 1;
        if timeout.timed_out() && st.queue.is_empty() {
            st.threads -= 1;
            return;
        }
    }
}

/// How many worker threads exist now (for tests and diagnostics).
///
/// ```
/// use costack::aio::{self, thread_pool, EventLoop};
///
/// EventLoop::new().unwrap().block_on(|| aio::run_blocking(|| ()));
/// assert!(thread_pool::worker_count() <= thread_pool::MAX_THREADS);
/// ```
pub fn worker_count() -> usize {
    POOL.state.lock().unwrap_or_else(|e| e.into_inner()).threads
}
