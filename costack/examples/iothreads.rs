//! N event loops on N threads (QEMU's iothreads) sharing work: a
//! dispatcher on the main thread's loop hands out jobs round-robin with
//! `LoopHandle::spawn`; each job is a coroutine on its iothread that sleeps
//! (standing in for I/O), and the dispatcher joins the handles, yielding
//! meanwhile.
//!
//! `cargo run --example iothreads -- 4 1000` (threads, jobs).

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
    use std::collections::BTreeMap;
    use std::thread;
    use std::time::{Duration, Instant};

    use costack::aio::{self, EventLoop, IoThread};

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
        let jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);

        let iothreads: Vec<IoThread> = (0..threads)
            .map(|i| IoThread::spawn(&format!("iothread-{i}")).expect("iothread"))
            .collect();
        let handles: Vec<_> = iothreads.iter().map(IoThread::handle).collect();

        let t = Instant::now();
        let per_thread = EventLoop::new().unwrap().block_on(move || {
            let pending: Vec<_> = (0..jobs)
                .map(|j| {
                    handles[j % handles.len()].spawn(move || {
                        aio::sleep(Duration::from_millis(1 + (j % 10) as u64));
                        thread::current().name().unwrap_or("?").to_owned()
                    })
                })
                .collect();
            let mut seen = BTreeMap::<String, usize>::new();
            for h in pending {
                // Yields to this loop until that job's iothread is done.
                *seen.entry(h.join().expect("job panicked")).or_default() += 1;
            }
            seen
        });
        println!("{jobs} jobs on {threads} iothreads in {:?}", t.elapsed());
        for (name, n) in per_thread {
            println!("  {name}: {n} jobs");
        }
        for io in iothreads {
            io.stop();
        }
    }
}
