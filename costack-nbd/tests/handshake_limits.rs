//! Clients that never finish negotiating cannot lock real clients out:
//! the handshake has a deadline (`--handshake-limit`, qemu-nbd's fix for
//! CVE-2024-7409), negotiating connections do not take `-e` slots, and
//! when too many negotiate at once a stalled one is dropped for a
//! newcomer; clients making progress never are, so 1,000 clients
//! connecting at once are all served.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Reads until the server closes the connection; returns how long that
/// took, or `None` if it was still open after `patience`.
fn closed_within(s: &mut TcpStream, patience: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 256];
    while start.elapsed() < patience {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {} // the greeting
            // Interrupted: a signal, not the server (see
            // `support::read_within`).
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Some(start.elapsed()), // reset
        }
    }
    None
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_limit() {
    let server = Server::start(&["--handshake-limit", "1"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let took = closed_within(&mut silent, PATIENCE).expect("silent client dropped");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_client_trickling_bytes_is_dropped_at_the_limit_too() {
    let server = Server::start(&["--handshake-limit", "1"]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    let mut greeting = [0u8; 18];
    slow.read_exact(&mut greeting).unwrap();
    let start = Instant::now();
    // The client flags and an option header, a byte every 100 ms: each
    // read is prompt, the handshake as a whole is not.
    let mut cut = false;
    for b in [0u8, 0, 0, 3]
        .iter()
        .chain(b"IHAVEOPT".iter())
        .cycle()
        .take(60)
    {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    if !cut {
        assert!(
            closed_within(&mut slow, PATIENCE).is_some(),
            "trickling client kept"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn stalled_sockets_neither_take_e_slots_nor_delay_a_real_client() {
    // Defaults but -e 1: 100 sockets that never negotiate, held open.
    let server = Server::start(&["-e", "1"]);
    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200)); // all accepted
    let start = Instant::now();
    let mut c = Client::connect(server.addr, Opts::FULL).expect("a real client is served");
    let data = vec![0x5a; 4096];
    c.write(0, &data, 0).unwrap();
    assert_eq!(c.read(0, 4096).unwrap(), data);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a real client waited {took:?}"
    );
    c.disconnect().unwrap();
    drop(stalled);
}

#[test]
fn the_longest_stalled_connection_makes_room() {
    let server = Server::start(&["--max-handshakes", "2", "--handshake-limit", "0"]);
    let mut oldest = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut second = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // A third one comes: the oldest goes once it counts as stalled (half
    // a second of silence), the second stays.
    let c = Client::connect(server.addr, Opts::FULL).expect("the newcomer is served");
    assert!(
        closed_within(&mut oldest, Duration::from_secs(5)).is_some(),
        "oldest kept"
    );
    assert!(
        closed_within(&mut second, Duration::from_millis(500)).is_none(),
        "second dropped"
    );
    c.disconnect().unwrap();
}

#[test]
fn a_thousand_clients_at_once_are_all_served() {
    // Defaults but -e 0 (the harness's): 64 may negotiate at once, the
    // rest wait for room instead of pushing out clients in progress.
    let server = Server::start(&["--size", "16M"]);
    let addr = server.addr;
    let failures = std::sync::Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..1000u32 {
            let failures = &failures;
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn_scoped(s, move || {
                    let served = Client::connect(addr, Opts::SIMPLE).and_then(|mut c| {
                        let got = c.read(u64::from(i % 32) * 4096, 4096)?;
                        assert_eq!(got, vec![0; 4096]);
                        c.disconnect()
                    });
                    if let Err(e) = served {
                        failures.lock().unwrap().push(format!("client {i}: {e}"));
                    }
                })
                .unwrap();
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 1000 clients lost, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!("1000 clients served in {:?}", start.elapsed());
}
