//! `costack::channel` against its peers, measured in the same run
//! (interleaved rounds, medians), with the targets of issue 22:
//!
//! - 1M messages, producer and consumer coroutines on one loop,
//!   `bounded(1024)`, vs tokio `mpsc::channel(1024)` with two tasks on a
//!   current_thread runtime (>= 1.5x the throughput) and vs may's `mpsc`
//!   with one worker (>= 1.0x);
//! - rendezvous ping-pong (`bounded(0)`) between two coroutines vs two
//!   tokio tasks over two `mpsc::channel(1)` (>= 1.5x);
//! - two plain threads, `bounded(1024)`, 1M messages, vs
//!   crossbeam-channel (>= 0.9x);
//! - producer on one IoThread, consumer on another vs tokio multi_thread
//!   with two workers (>= 1.0x);
//! - `select` over 4 receivers with one ready vs crossbeam's `Select`
//!   (>= 0.9x).
//!
//! `cargo bench -p costack --bench channel` prints ns per message and the
//! ratios (peer time / costack time: above 1 means costack is faster).

use std::hint::black_box;
use std::time::Instant;

use costack::aio::{self, EventLoop, IoThread};

const ROUNDS: usize = 7;
const MESSAGES: u64 = 1_000_000;

/// A benchmark: its name, messages per round, and the body run with them.
type Bench<'a> = (&'a str, u64, &'a mut dyn FnMut(u64));

/// Runs every benchmark `ROUNDS` times, interleaved so that noise from
/// the (shared) machine hits all of them alike; returns median ns per
/// message.
fn measure(benches: &mut [Bench<'_>]) -> Vec<f64> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); benches.len()];
    for (_, n, f) in benches.iter_mut() {
        f(*n / 10); // warm-up
    }
    for _ in 0..ROUNDS {
        for (i, (_, n, f)) in benches.iter_mut().enumerate() {
            let t = Instant::now();
            f(*n);
            samples[i].push(t.elapsed().as_nanos() as f64 / *n as f64);
        }
    }
    samples
        .into_iter()
        .zip(benches.iter())
        .map(|(mut s, (name, _, _))| {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let median = s[s.len() / 2];
            println!(
                "{name:<52} median {median:>8.2} ns/msg   (min {:.2}, max {:.2})",
                s[0],
                s[s.len() - 1]
            );
            median
        })
        .collect()
}

fn ratio(what: &str, costack: f64, peer: f64, target: f64) {
    let r = peer / costack;
    let met = if r >= target { "met" } else { "NOT met" };
    println!("  {what:<50} {r:>6.2}x   (target >= {target}x: {met})");
}

fn costack_one_loop(ev: &EventLoop, n: u64) {
    ev.block_on(move || {
        let (s, r) = costack::channel::bounded::<u64>(1024);
        let producer = aio::spawn(move || {
            for i in 0..n {
                s.send(i).unwrap();
            }
        });
        let mut sum = 0;
        for m in r.iter() {
            sum += m;
        }
        producer.join().unwrap();
        black_box(sum);
    });
}

fn tokio_one_thread(rt: &tokio::runtime::Runtime, n: u64) {
    rt.block_on(async move {
        let (s, mut r) = tokio::sync::mpsc::channel::<u64>(1024);
        let producer = tokio::spawn(async move {
            for i in 0..n {
                s.send(i).await.unwrap();
            }
        });
        let consumer = tokio::spawn(async move {
            let mut sum = 0;
            while let Some(m) = r.recv().await {
                sum += m;
            }
            sum
        });
        producer.await.unwrap();
        black_box(consumer.await.unwrap());
    });
}

#[cfg(target_os = "linux")]
fn may_one_worker(n: u64) {
    let (s, r) = may::sync::mpsc::channel::<u64>();
    let producer = may::go!(move || {
        for i in 0..n {
            s.send(i).unwrap();
        }
    });
    let consumer = may::go!(move || {
        let mut sum = 0;
        while let Ok(m) = r.recv() {
            sum += m;
        }
        sum
    });
    producer.join().unwrap();
    black_box(consumer.join().unwrap());
}

fn one_loop() {
    println!("\n== 1M messages, producer and consumer coroutines on one loop, capacity 1024");
    let ev = EventLoop::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut costack = |n| costack_one_loop(&ev, n);
    let mut tokio = |n| tokio_one_thread(&rt, n);
    #[cfg(target_os = "linux")]
    {
        let t = measure(&mut [
            (
                "costack bounded(1024), two coroutines",
                MESSAGES,
                &mut costack,
            ),
            (
                "tokio mpsc(1024), two tasks, current_thread",
                MESSAGES,
                &mut tokio,
            ),
            (
                "may mpsc (unbounded), one worker",
                MESSAGES,
                &mut may_one_worker,
            ),
        ]);
        ratio("throughput vs tokio", t[0], t[1], 1.5);
        ratio("throughput vs may", t[0], t[2], 1.0);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let t = measure(&mut [
            (
                "costack bounded(1024), two coroutines",
                MESSAGES,
                &mut costack,
            ),
            (
                "tokio mpsc(1024), two tasks, current_thread",
                MESSAGES,
                &mut tokio,
            ),
        ]);
        ratio("throughput vs tokio", t[0], t[1], 1.5);
    }
}

fn costack_ping_pong(ev: &EventLoop, cap: usize, n: u64) {
    ev.block_on(move || {
        let (ping_s, ping_r) = costack::channel::bounded::<u64>(cap);
        let (pong_s, pong_r) = costack::channel::bounded::<u64>(cap);
        let echo = aio::spawn(move || {
            for m in ping_r.iter() {
                pong_s.send(m).unwrap();
            }
        });
        for i in 0..n {
            ping_s.send(i).unwrap();
            black_box(pong_r.recv().unwrap());
        }
        drop(ping_s);
        echo.join().unwrap();
    });
}

fn tokio_ping_pong(rt: &tokio::runtime::Runtime, n: u64) {
    rt.block_on(async move {
        let (ping_s, mut ping_r) = tokio::sync::mpsc::channel::<u64>(1);
        let (pong_s, mut pong_r) = tokio::sync::mpsc::channel::<u64>(1);
        let echo = tokio::spawn(async move {
            while let Some(m) = ping_r.recv().await {
                pong_s.send(m).await.unwrap();
            }
        });
        let main = tokio::spawn(async move {
            for i in 0..n {
                ping_s.send(i).await.unwrap();
                black_box(pong_r.recv().await.unwrap());
            }
        });
        main.await.unwrap();
        echo.await.unwrap();
    });
}

fn ping_pong() {
    println!("\n== rendezvous ping-pong (round trips)");
    let ev = EventLoop::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = measure(&mut [
        ("costack bounded(0), two coroutines", 200_000, &mut |n| {
            costack_ping_pong(&ev, 0, n)
        }),
        ("tokio two mpsc(1), two tasks", 200_000, &mut |n| {
            tokio_ping_pong(&rt, n)
        }),
        // Like for like: tokio's mpsc(1) buffers one message, as bounded(1).
        ("costack bounded(1), two coroutines", 200_000, &mut |n| {
            costack_ping_pong(&ev, 1, n)
        }),
    ]);
    ratio("round trips vs tokio", t[0], t[1], 1.5);
    ratio(
        "round trips vs tokio, bounded(1) (like for like)",
        t[2],
        t[1],
        1.5,
    );
}

fn threads_costack(n: u64) {
    let (s, r) = costack::channel::bounded::<u64>(1024);
    let t = std::thread::spawn(move || {
        for i in 0..n {
            s.send(i).unwrap();
        }
    });
    black_box(r.iter().sum::<u64>());
    t.join().unwrap();
}

fn threads_crossbeam(n: u64) {
    let (s, r) = crossbeam_channel::bounded::<u64>(1024);
    let t = std::thread::spawn(move || {
        for i in 0..n {
            s.send(i).unwrap();
        }
    });
    black_box(r.iter().sum::<u64>());
    t.join().unwrap();
}

fn threads() {
    println!("\n== two plain threads, 1M messages, capacity 1024");
    let t = measure(&mut [
        ("costack bounded(1024)", MESSAGES, &mut threads_costack),
        (
            "crossbeam-channel bounded(1024)",
            MESSAGES,
            &mut threads_crossbeam,
        ),
    ]);
    ratio("throughput vs crossbeam-channel", t[0], t[1], 0.9);
}

fn io_threads_costack(a: &IoThread, b: &IoThread, n: u64) {
    let (s, r) = costack::channel::bounded::<u64>(1024);
    let consumer = b.handle().spawn(move || r.iter().sum::<u64>());
    let producer = a.handle().spawn(move || {
        for i in 0..n {
            s.send(i).unwrap();
        }
    });
    producer.join().unwrap();
    black_box(consumer.join().unwrap());
}

fn tokio_two_workers(rt: &tokio::runtime::Runtime, n: u64) {
    rt.block_on(async move {
        let (s, mut r) = tokio::sync::mpsc::channel::<u64>(1024);
        let consumer = tokio::spawn(async move {
            let mut sum = 0;
            while let Some(m) = r.recv().await {
                sum += m;
            }
            sum
        });
        let producer = tokio::spawn(async move {
            for i in 0..n {
                s.send(i).await.unwrap();
            }
        });
        producer.await.unwrap();
        black_box(consumer.await.unwrap());
    });
}

fn across_loops() {
    println!("\n== producer on one IoThread, consumer on another, 1M messages, capacity 1024");
    let a = IoThread::spawn("producer").unwrap();
    let b = IoThread::spawn("consumer").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let t = measure(&mut [
        ("costack bounded(1024), two IoThreads", MESSAGES, &mut |n| {
            io_threads_costack(&a, &b, n)
        }),
        (
            "tokio mpsc(1024), multi_thread, 2 workers",
            MESSAGES,
            &mut |n| tokio_two_workers(&rt, n),
        ),
    ]);
    ratio("throughput vs tokio multi_thread", t[0], t[1], 1.0);
}

fn select_costack(n: u64) {
    let chans: Vec<_> = (0..4)
        .map(|_| costack::channel::bounded::<u64>(1))
        .collect();
    let mut sum = 0;
    for i in 0..n {
        chans[(i % 4) as usize].0.send(i).unwrap();
        let mut sel = costack::channel::Select::new();
        for (_, r) in &chans {
            sel.recv(r);
        }
        let oper = sel.select();
        let k = oper.index();
        sum += oper.recv(&chans[k].1).unwrap();
    }
    black_box(sum);
}

fn select_crossbeam(n: u64) {
    let chans: Vec<_> = (0..4)
        .map(|_| crossbeam_channel::bounded::<u64>(1))
        .collect();
    let mut sum = 0;
    for i in 0..n {
        chans[(i % 4) as usize].0.send(i).unwrap();
        let mut sel = crossbeam_channel::Select::new();
        for (_, r) in &chans {
            sel.recv(r);
        }
        let oper = sel.select();
        let k = oper.index();
        sum += oper.recv(&chans[k].1).unwrap();
    }
    black_box(sum);
}

fn select_one_ready() {
    println!("\n== select over 4 receivers, one ready (send + select + recv)");
    let t = measure(&mut [
        ("costack Select", 1_000_000, &mut select_costack),
        ("crossbeam-channel Select", 1_000_000, &mut select_crossbeam),
    ]);
    ratio("select vs crossbeam-channel", t[0], t[1], 0.9);
}

fn main() {
    #[cfg(target_os = "linux")]
    may::config().set_workers(1);
    // `cargo bench -- NAME` runs the benchmarks whose name contains NAME.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if want("one_loop") {
        one_loop();
    }
    if want("ping_pong") {
        ping_pong();
    }
    if want("threads") {
        threads();
    }
    if want("across_loops") {
        across_loops();
    }
    if want("select") {
        select_one_ready();
    }
}
