//! N event loops on N threads (QEMU's iothreads) sharing work through
//! `LoopHandle::spawn`: a dispatcher hands out jobs round-robin; each job
//! is a coroutine on its loop's thread that sleeps (standing in for I/O)
//! and reports back through an `aio::Waker`.
//!
//! `cargo run --example iothreads -- 4 1000` (threads, jobs).

#[cfg(target_os = "linux")]
fn main() {
    linux::main()
}

// The event loop is Linux-only for now.
#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("this needs costack's event loop, which is Linux-only for now");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    use costack::aio::{self, EventLoop, LoopHandle};

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
        let jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);

        // Start the iothreads; each sends back its loop's handle and runs its
        // loop until told to stop.
        let stop = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<LoopHandle>();
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let tx = tx.clone();
                let stop = stop.clone();
                thread::Builder::new()
                    .name(format!("iothread-{i}"))
                    .spawn(move || {
                        let lp = EventLoop::new().unwrap();
                        tx.send(lp.handle()).unwrap();
                        while stop.load(Ordering::Acquire) == 0 {
                            lp.poll(true);
                        }
                    })
                    .unwrap()
            })
            .collect();
        let handles: Vec<LoopHandle> = rx.iter().take(threads).collect();

        // The dispatcher is a coroutine on the main thread's loop.
        let main_loop = EventLoop::new().unwrap();
        let t = Instant::now();
        let per_thread = main_loop.block_on(move || {
            let done = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
            let me = aio::waker();
            for j in 0..jobs {
                let (done, seen, me) = (done.clone(), seen.clone(), me.clone());
                handles[j % handles.len()].spawn(move || {
                    aio::sleep(Duration::from_millis(1 + (j % 10) as u64));
                    let name = thread::current().name().unwrap_or("?").to_owned();
                    *seen.lock().unwrap().entry(name).or_default() += 1;
                    if done.fetch_add(1, Ordering::AcqRel) + 1 == jobs {
                        me.wake(); // from the iothread to the main loop
                    }
                });
            }
            while done.load(Ordering::Acquire) < jobs {
                costack::yield_now(); // until the last job wakes us
            }
            let seen = seen.lock().unwrap();
            let mut v: Vec<_> = seen.iter().map(|(k, v)| (k.clone(), *v)).collect();
            v.sort();
            (v, handles)
        });
        let (per_thread, handles) = per_thread;
        println!("{jobs} jobs on {threads} iothreads in {:?}", t.elapsed());
        for (name, n) in per_thread {
            println!("  {name}: {n} jobs");
        }
        stop.store(1, Ordering::Release);
        for h in &handles {
            h.call_soon(|| {}); // wake each loop so it sees `stop`
        }
        for w in workers {
            w.join().unwrap();
        }
    }
}
