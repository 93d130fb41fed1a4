//! Event-loop benchmarks against tokio's current-thread runtime, measured
//! in the same run: spawn+finish, ping-pong wake-ups, TCP echo.
//!
//! `cargo bench -p costack --bench aio` (optionally `-- quick` for fewer
//! repetitions). Prints each figure and the ratio costack/tokio as
//! throughput (higher is better for costack).

#[cfg(any(unix, windows))]
fn main() {
    linux::main()
}

// The event loop runs on unix systems and Windows.
#[cfg(not(any(unix, windows)))]
fn main() {
    eprintln!("this needs costack's event loop, which runs on unix systems and Windows only");
}

#[cfg(any(unix, windows))]
mod linux {
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use costack::aio::{self, EventLoop};
    use costack::net::{TcpListener, TcpStream};

    const TASKS: usize = 100_000;
    const BATCH: usize = 100;
    const PINGS: usize = 1_000_000;
    const CONNS: usize = 64;
    const MSG: usize = 1024;

    fn tokio_rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Median of `reps` runs of `f`, which returns (work items, elapsed).
    fn median(reps: usize, mut f: impl FnMut() -> (usize, Duration)) -> f64 {
        let mut rates: Vec<f64> = (0..reps)
            .map(|_| {
                let (n, d) = f();
                n as f64 / d.as_secs_f64()
            })
            .collect();
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rates[reps / 2]
    }

    fn costack_spawn(batch: usize) -> (usize, Duration) {
        let lp = EventLoop::new().unwrap();
        let t = Instant::now();
        lp.block_on(move || {
            let done = Rc::new(Cell::new(0usize));
            let me = costack::current().unwrap();
            let mut spawned = 0;
            while spawned < TASKS {
                for _ in 0..batch {
                    let d = done.clone();
                    aio::spawn(move || d.set(d.get() + 1));
                }
                spawned += batch;
                while done.get() < spawned {
                    aio::schedule(&me);
                    costack::yield_now();
                }
            }
        });
        (TASKS, t.elapsed())
    }

    fn tokio_spawn(batch: usize) -> (usize, Duration) {
        let rt = tokio_rt();
        let t = Instant::now();
        rt.block_on(async move {
            let done = Rc::new(Cell::new(0usize));
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let mut spawned = 0;
                    while spawned < TASKS {
                        let handles: Vec<_> = (0..batch)
                            .map(|_| {
                                let d = done.clone();
                                tokio::task::spawn_local(async move { d.set(d.get() + 1) })
                            })
                            .collect();
                        for h in handles {
                            h.await.unwrap();
                        }
                        spawned += batch;
                    }
                    assert_eq!(done.get(), TASKS);
                })
                .await;
        });
        (TASKS, t.elapsed())
    }

    fn costack_pingpong() -> (usize, Duration) {
        let lp = EventLoop::new().unwrap();
        let t = Instant::now();
        lp.block_on(|| {
            // Each side waits for its flag, then sets the other's and wakes
            // the other through its aio::Waker.
            let turn = Rc::new(Cell::new(0u8));
            let ta = turn.clone();
            let b_waker: Rc<Cell<Option<aio::Waker>>> = Rc::new(Cell::new(None));
            let bw = b_waker.clone();
            let a = costack::current().unwrap();
            let a_waker = aio::waker();
            let b = aio::spawn(move || {
                bw.set(Some(aio::waker()));
                for _ in 0..PINGS {
                    while ta.get() != 1 {
                        costack::yield_now();
                    }
                    ta.set(0);
                    a_waker.wake();
                }
            });
            while b_waker.take().map(|w| b_waker.set(Some(w))).is_none() {
                aio::schedule(&a);
                costack::yield_now();
            }
            let wb = b_waker.take().unwrap();
            for _ in 0..PINGS {
                turn.set(1);
                wb.wake();
                while turn.get() != 0 {
                    costack::yield_now();
                }
            }
            while !b.is_finished() {
                aio::schedule(&a);
                costack::yield_now();
            }
        });
        (PINGS, t.elapsed())
    }

    fn tokio_pingpong() -> (usize, Duration) {
        use std::sync::Arc;
        use tokio::sync::Notify;
        let rt = tokio_rt();
        let t = Instant::now();
        rt.block_on(async {
            let to_b = Arc::new(Notify::new());
            let to_a = Arc::new(Notify::new());
            let (nb, na) = (to_b.clone(), to_a.clone());
            let b = tokio::spawn(async move {
                for _ in 0..PINGS {
                    nb.notified().await;
                    na.notify_one();
                }
            });
            for _ in 0..PINGS {
                to_b.notify_one();
                to_a.notified().await;
            }
            b.await.unwrap();
        });
        (PINGS, t.elapsed())
    }

    fn costack_echo(dur: Duration) -> (usize, Duration) {
        let lp = EventLoop::new().unwrap();
        let t = Instant::now();
        let n = lp.block_on(move || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            aio::spawn(move || loop {
                let (mut s, _) = listener.accept().unwrap();
                s.set_nodelay(true).unwrap();
                aio::spawn(move || {
                    let mut buf = [0u8; MSG];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            });
            let total = Rc::new(Cell::new(0usize));
            let running = Rc::new(Cell::new(CONNS));
            let deadline = Instant::now() + dur;
            for _ in 0..CONNS {
                let (total, running) = (total.clone(), running.clone());
                let main = aio::waker();
                aio::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_nodelay(true).unwrap();
                    let msg = [7u8; MSG];
                    let mut back = [0u8; MSG];
                    while Instant::now() < deadline {
                        c.write_all(&msg).unwrap();
                        c.read_exact(&mut back).unwrap();
                        total.set(total.get() + 1);
                    }
                    running.set(running.get() - 1);
                    if running.get() == 0 {
                        main.wake();
                    }
                });
            }
            while running.get() > 0 {
                costack::yield_now(); // until the last client wakes us
            }
            total.get()
        });
        (n, t.elapsed())
    }

    fn tokio_echo(dur: Duration) -> (usize, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio_rt();
        let t = Instant::now();
        let n = rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    s.set_nodelay(true).unwrap();
                    tokio::spawn(async move {
                        let mut buf = [0u8; MSG];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            });
            let deadline = Instant::now() + dur;
            let clients: Vec<_> = (0..CONNS)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                        c.set_nodelay(true).unwrap();
                        let msg = [7u8; MSG];
                        let mut back = [0u8; MSG];
                        let mut n = 0usize;
                        while Instant::now() < deadline {
                            c.write_all(&msg).await.unwrap();
                            c.read_exact(&mut back).await.unwrap();
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for c in clients {
                total += c.await.unwrap();
            }
            total
        });
        (n, t.elapsed())
    }

    fn report(name: &str, unit: &str, ours: f64, theirs: f64) {
        println!(
            "{name:<34} costack {:>12.0} {unit}/s   tokio {:>12.0} {unit}/s   ratio {:.2}x",
            ours,
            theirs,
            ours / theirs
        );
    }

    pub fn main() {
        let quick = std::env::args().any(|a| a == "quick");
        // `cargo bench` passes `--bench`; any other filter argument selects.
        let filter: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--") && a != "quick")
            .collect();
        let want =
            |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
        let reps = if quick { 3 } else { 7 };
        let echo_dur = Duration::from_millis(if quick { 500 } else { 1500 });

        if want("spawn_batched") {
            let ours = median(reps, || costack_spawn(BATCH));
            let theirs = median(reps, || tokio_spawn(BATCH));
            report("spawn+finish 100k (batches of 100)", "tasks", ours, theirs);
        }
        if want("spawn_burst") {
            let ours = median(reps, || costack_spawn(TASKS));
            let theirs = median(reps, || tokio_spawn(TASKS));
            report("spawn+finish 100k (one burst)", "tasks", ours, theirs);
        }
        if want("pingpong") {
            let ours = median(reps, costack_pingpong);
            let theirs = median(reps, tokio_pingpong);
            report("ping-pong wake-ups (1M)", "wakes", ours, theirs);
        }
        if want("echo") {
            let r = reps.min(3);
            let ours = median(r, || costack_echo(echo_dur));
            let theirs = median(r, || tokio_echo(echo_dur));
            report("TCP echo, 64 conns, 1 KiB msgs", "msgs", ours, theirs);
        }
    }
}
