//! Memory under client churn: 1,000 clients come and go, 100 at a time,
//! each with many requests in flight (so thousands of request coroutines
//! and megabytes of buffers live at once); once they are gone, the server
//! must give that memory back and stay small.

#![cfg(target_os = "linux")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Client, Opts, Rng, Server, CMD_READ, CMD_WRITE};

/// Resident memory the idle server may keep, as the issue asks.
const IDLE_RSS_LIMIT: u64 = 130 << 20;

/// Resident set size of process `pid`, from /proc.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb << 10
}

/// One client: 48 small reads, two 1 MiB reads and a 1 MiB write, all in
/// flight at once; then it leaves.
fn client(addr: SocketAddr, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut c = Client::connect(addr, Opts::SIMPLE).expect("connect");
    for _ in 0..48 {
        let offset = rng.below(16 << 8) << 12;
        c.send(CMD_READ, 0, offset, 4096, &[]).unwrap();
    }
    for _ in 0..2 {
        c.send(CMD_READ, 0, rng.below(16) << 20, 1 << 20, &[])
            .unwrap();
    }
    let data = vec![seed as u8; 1 << 20];
    c.send(CMD_WRITE, 0, rng.below(16) << 20, 1 << 20, &data)
        .unwrap();
    while c.in_flight() > 0 {
        let r = c.recv().unwrap();
        assert_eq!(r.error, 0);
    }
    c.disconnect().unwrap();
}

#[test]
fn memory_goes_back_after_a_thousand_clients() {
    // 100 clients connect at once: room for all of them to negotiate.
    let server = Server::start(&["-e", "0", "--max-handshakes", "128", "--size", "64M"]);
    let pid = server.pid();
    // The peak, sampled while the clients run (for the log).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    for wave in 0..10u64 {
        let threads: Vec<_> = (0..100u64)
            .map(|i| {
                let addr = server.addr;
                std::thread::spawn(move || client(addr, wave * 100 + i))
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    // The last client's disconnect may still be on its way through.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut idle = rss(pid);
    while idle > IDLE_RSS_LIMIT && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        idle = rss(pid);
    }
    eprintln!(
        "server RSS: {} MiB at the most seen, {} MiB idle after",
        peak >> 20,
        idle >> 20
    );
    assert!(
        idle <= IDLE_RSS_LIMIT,
        "idle server keeps {} MiB resident after 1000 clients (limit {} MiB)",
        idle >> 20,
        IDLE_RSS_LIMIT >> 20
    );
}
