//! Fault injection against the real `costack-nbd` binary: clients that
//! vanish mid-request, malformed and oversized input, connection churn,
//! `kill -9` after a flush, and `SIGTERM` with requests in flight.
//!
//! Every test ends by checking that the server still serves a well-behaved
//! client. Nothing here asserts on timing; waits are bounded by a generous
//! [`PATIENCE`] only so that a hang fails instead of blocking CI.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::*;

/// A well-behaved client writes, flushes and reads back.
fn still_serving(server: &Server, seed: u64) {
    let mut c = server.connect_eventually(Opts::FULL);
    let data = Rng::new(seed).bytes(64 << 10);
    let offset = 4096 * (seed % 16);
    c.write(offset, &data, FLAG_FUA).expect("write");
    c.flush().expect("flush");
    assert_eq!(c.read(offset, data.len() as u32).expect("read"), data);
    c.disconnect().expect("clean disconnect");
}

fn request_header(cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(REQUEST_MAGIC.to_be_bytes());
    b.extend(0u16.to_be_bytes());
    b.extend(cmd.to_be_bytes());
    b.extend(handle.to_be_bytes());
    b.extend(offset.to_be_bytes());
    b.extend(len.to_be_bytes());
    b
}

#[test]
fn clients_vanishing_mid_request_leave_others_served() {
    let server = Server::start(&["--size", "64M"]);
    // A client that stays connected throughout.
    let mut bystander = server.connect(Opts::SIMPLE);
    let pattern = Rng::new(1).bytes(1 << 20);
    bystander.write(0, &pattern, 0).expect("write");

    // Half a request header.
    let mut c = server.connect(Opts::FULL);
    c.send_raw(&request_header(CMD_READ, 1, 0, 4096)[..11])
        .unwrap();
    drop(c);

    // A write header and part of its payload.
    let mut c = server.connect(Opts::SIMPLE);
    c.send_raw(&request_header(CMD_WRITE, 2, 1 << 20, 1 << 20))
        .unwrap();
    c.send_raw(&Rng::new(2).bytes(300 << 10)).unwrap();
    drop(c);

    // The same, but reset instead of closed (SO_LINGER 0 → RST).
    let mut c = server.connect(Opts::SIMPLE);
    c.send_raw(&request_header(CMD_WRITE, 3, 2 << 20, 1 << 20))
        .unwrap();
    c.send_raw(&Rng::new(3).bytes(100 << 10)).unwrap();
    reset(c.stream());
    drop(c);

    // Big reads in flight whose replies nobody reads.
    let mut c = server.connect(Opts::SIMPLE);
    for i in 0..8 {
        c.send(CMD_READ, 0, i << 20, 8 << 20, &[]).unwrap();
    }
    // Wait until the server has started answering, then vanish.
    let mut first = [0u8; 1];
    c.stream()
        .try_clone()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(c);

    // Gone in the middle of the handshake (an option with half its data).
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&0x4948_4156_454f_5054u64.to_be_bytes())
        .unwrap();
    s.write_all(&[0, 0, 0, 7, 0, 0, 0, 100, 1, 2]).unwrap();
    drop(s);

    // The bystander and new clients are unaffected; the partial write never
    // happened (its payload was incomplete).
    assert_eq!(bystander.read(0, 1 << 20).unwrap(), pattern);
    assert_eq!(bystander.read(1 << 20, 1 << 20).unwrap(), vec![0; 1 << 20]);
    assert_eq!(bystander.read(2 << 20, 1 << 20).unwrap(), vec![0; 1 << 20]);
    still_serving(&server, 4);
    bystander.disconnect().expect("clean disconnect");
}

#[test]
fn bad_input_closes_only_that_connection() {
    let server = Server::start(&["--size", "64M"]);
    let mut bystander = server.connect(Opts::FULL);
    let data = Rng::new(10).bytes(8192);
    bystander.write(0, &data, 0).unwrap();

    // A write longer than the 32 MiB payload limit: its payload cannot be
    // skipped safely, so the server must hang up.
    let mut c = server.connect(Opts::SIMPLE);
    c.send_raw(&request_header(CMD_WRITE, 1, 0, 64 << 20))
        .unwrap();
    c.send_raw(&[0xee; 4096]).unwrap();
    assert!(c.closed_by_server(), "oversized write: connection kept");
    assert_eq!(bystander.read(0, 8192).unwrap(), data);

    // Bad request magic.
    let mut c = server.connect(Opts::FULL);
    let mut h = request_header(CMD_READ, 1, 0, 512);
    h[0] ^= 0xff;
    c.send_raw(&h).unwrap();
    assert!(c.closed_by_server(), "bad magic: connection kept");

    // Garbage right after a valid request: the protocol error ends the
    // connection and cancels what is in flight, so the valid request is
    // answered correctly or not at all.
    let mut c = server.connect(Opts::SIMPLE);
    c.send(CMD_READ, 0, 0, 8192, &[]).unwrap();
    c.send_raw(b"this is not an NBD request header").unwrap();
    if let Ok(r) = c.recv() {
        assert_eq!((r.error, r.data), (0, data.clone()));
    }
    assert!(c.closed_by_server(), "garbage: connection kept");

    // Handshake garbage: bad option magic, and an absurd option length.
    for bad in [
        &b"XHAVEOPT\0\0\0\x07\0\0\0\0"[..],
        b"IHAVEOPT\0\0\0\x07\x7f\xff\xff\xff",
    ] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        s.write_all(&3u32.to_be_bytes()).unwrap();
        s.write_all(bad).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    // Unknown client flags end the handshake.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&0xffff_fff0u32.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "reply to bad client flags");

    assert_eq!(bystander.read(0, 8192).unwrap(), data);
    still_serving(&server, 11);
    bystander.disconnect().unwrap();
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}

fn thread_count(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: line")
}

/// One abrupt client, in one of several ways.
fn abrupt(server: &Server, kind: u64) {
    match kind % 6 {
        0 => drop(TcpStream::connect(server.addr).unwrap()),
        1 => {
            let s = TcpStream::connect(server.addr).unwrap();
            reset(&s);
        }
        2 => {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut g = [0u8; 18];
            // (A client over the limit is hung up on before the greeting.)
            if s.read_exact(&mut g).is_ok() {
                let _ = s.write_all(&3u32.to_be_bytes());
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        3 => drop(server.connect_eventually(Opts::FULL)),
        4 => {
            let mut c = server.connect_eventually(Opts::SIMPLE);
            c.send(CMD_READ, 0, 0, 1 << 20, &[]).unwrap();
            reset(c.stream());
        }
        _ => {
            let mut c = server.connect_eventually(Opts::SIMPLE);
            c.send_raw(&request_header(CMD_WRITE, 9, 0, 1 << 16))
                .unwrap();
            c.send_raw(&[1; 1000]).unwrap();
        }
    }
}

/// Polls until `f` holds, for at most [`PATIENCE`].
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn connection_churn_does_not_leak() {
    // A small client limit (-e 4) turns a leaked client slot into refused
    // clients; two loop threads exercise the hand-over between loops.
    let server = Server::start(&["--size", "16M", "-e", "4", "--threads", "2"]);
    let pid = server.pid();
    // Warm up every path once (lazily created fds and threads settle).
    for k in 0..6 {
        abrupt(&server, k);
        still_serving(&server, 20 + k);
    }
    assert!(eventually(|| {
        let n = fd_count(pid);
        std::thread::sleep(Duration::from_millis(200));
        fd_count(pid) == n
    }));
    let fds = fd_count(pid);
    let threads = thread_count(pid);

    for k in 0..60 {
        abrupt(&server, k);
    }
    still_serving(&server, 30);
    // Every abandoned connection is eventually closed by the server.
    assert!(
        eventually(|| fd_count(pid) <= fds),
        "fds: {} after churn, {fds} before",
        fd_count(pid)
    );
    let now = thread_count(pid);
    eprintln!("fds {fds} -> {}, threads {threads} -> {now}", fd_count(pid));
    assert!(
        now <= threads + 4,
        "threads: {now} after churn, {threads} before"
    );

    // All four client slots are free again: four clients at once are
    // served, and a fifth waits (as with qemu-nbd) until one leaves.
    let mut four: Vec<Client> = (0..4)
        .map(|_| server.connect_eventually(Opts::SIMPLE))
        .collect();
    for c in &mut four {
        assert_eq!(c.read(0, 512).unwrap().len(), 512);
    }
    let mut fifth = TcpStream::connect(server.addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut greeting = [0u8; 18];
    assert!(
        fifth.read_exact(&mut greeting).is_err(),
        "fifth client greeted despite -e 4"
    );
    four.pop().unwrap().disconnect().unwrap();
    fifth.set_read_timeout(Some(PATIENCE)).unwrap();
    fifth
        .read_exact(&mut greeting)
        .expect("the fifth client is greeted once a slot is free");
    drop(fifth);
    for c in four {
        c.disconnect().unwrap();
    }
    still_serving(&server, 31);
}

#[test]
fn disconnect_waits_for_requests_in_flight() {
    let server = Server::start(&["--size", "64M"]);
    // Ended by NBD_CMD_DISC, then by a half-close (end of stream).
    for (round, disc) in [(0u64, true), (1, false)] {
        let mut c = server.connect(Opts::FULL);
        let data = Rng::new(50 + round).bytes(1 << 20);
        let mut handles = Vec::new();
        for i in 0..16u64 {
            handles.push(c.send(CMD_WRITE, 0, i << 20, 1 << 20, &data).unwrap());
        }
        handles.push(c.send(CMD_FLUSH, 0, 0, 0, &[]).unwrap());
        handles.push(c.send(CMD_READ, 0, 0, 1 << 20, &[]).unwrap());
        if disc {
            c.send(CMD_DISC, 0, 0, 0, &[]).unwrap();
        } else {
            c.stream().shutdown(Shutdown::Write).unwrap();
        }
        // Every request sent before is answered, then the server closes
        // the connection.
        for _ in 0..handles.len() {
            let r = c.recv().expect("reply after the client said goodbye");
            assert_eq!(r.error, 0);
            assert!(handles.contains(&r.handle));
        }
        assert!(c.closed_by_server());
        let mut check = server.connect(Opts::SIMPLE);
        for i in 0..16u64 {
            assert_eq!(check.read(i << 20, 1 << 20).unwrap(), data, "write {i}");
        }
        check.disconnect().unwrap();
    }
}

#[test]
fn sigterm_with_idle_and_handshaking_clients_exits() {
    let mut server = Server::start(&["--size", "16M", "--threads", "2"]);
    let mut idle = server.connect(Opts::FULL);
    let mut simple = server.connect(Opts::SIMPLE);
    // Stuck in the handshake, after the greeting.
    let mut hs = TcpStream::connect(server.addr).unwrap();
    hs.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut greeting = [0u8; 18];
    hs.read_exact(&mut greeting).unwrap();
    // Connected, greeting never read.
    let quiet = TcpStream::connect(server.addr).unwrap();
    assert_eq!(simple.read(0, 4096).unwrap(), vec![0; 4096]);

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "exit status after SIGTERM");
    assert!(idle.closed_by_server());
    assert!(simple.closed_by_server());
    let mut rest = Vec::new();
    let _ = hs.read_to_end(&mut rest);
    assert!(rest.is_empty());
    drop(quiet);
}

#[test]
fn flushed_writes_survive_sigkill() {
    for (mode, align) in [("writeback", 1u64), ("none", 4096)] {
        let path = scratch(&format!("kill9-{mode}"));
        let size = 8u64 << 20;
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("create the image");
        let mut server = Server::start(&["--cache", mode, path.to_str().unwrap()]);
        let mut c = server.connect(Opts::FULL);
        let mut model = vec![0u8; size as usize];
        let mut rng = Rng::new(30 + align);
        // Batches of concurrent disjoint writes, each acknowledged.
        for batch in 0..20 {
            let mut pending = 0;
            for slot in 0..8u64 {
                let units = 1 + rng.below(16);
                let len = (units * align.max(512)) as usize;
                let within = (size / 8 - len as u64) / align;
                let offset = slot * (size / 8) + rng.below(within) * align;
                let data = rng.bytes(len);
                let flags = if batch % 3 == 0 { FLAG_FUA } else { 0 };
                c.send(CMD_WRITE, flags, offset, len as u32, &data).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
                pending += 1;
            }
            for _ in 0..pending {
                let r = c.recv().expect("write reply");
                assert_eq!(r.error, 0, "write failed");
            }
        }
        c.flush().expect("flush");
        server.signal(libc::SIGKILL);
        let status = server.wait_exit();
        assert!(!status.success(), "SIGKILL: {status:?}");
        let on_disk = std::fs::read(&path).expect("read the image");
        let _ = std::fs::remove_file(&path);
        assert!(on_disk == model, "{mode}: flushed data lost after kill -9");
    }
}

#[test]
fn sigterm_finishes_in_flight_requests() {
    let path = scratch("sigterm");
    let size = 80usize << 20;
    let pattern = Rng::new(40).bytes(size);
    std::fs::write(&path, &pattern).expect("write the image");
    let mut server = Server::start(&[path.to_str().unwrap()]);
    let mut c = server.connect(Opts::SIMPLE);

    // Two small writes and eight 8 MiB reads in one send: far more reply
    // data than the socket buffers hold, so the reads are still being
    // answered when the signal arrives.
    let mut batch = Vec::new();
    let small = Rng::new(41).bytes(4096);
    let mut expect = std::collections::HashMap::new();
    let mut handle = 1000u64;
    for i in 0..2u64 {
        let offset = (72 << 20) + i * 4096;
        batch.extend(request_header(CMD_WRITE, handle, offset, 4096));
        batch.extend(&small);
        expect.insert(handle, None);
        handle += 1;
    }
    for i in 0..8usize {
        batch.extend(request_header(CMD_READ, handle, (i << 23) as u64, 8 << 20));
        expect.insert(handle, Some(i << 23));
        handle += 1;
    }
    c.send_raw(&batch).unwrap();
    // The first reply bytes prove the server read the batch.
    let mut stream = c.stream().try_clone().unwrap();
    let mut magic = [0u8; 4];
    stream.read_exact(&mut magic).unwrap();
    assert_eq!(magic, 0x6744_6698u32.to_be_bytes());
    server.signal(libc::SIGTERM);

    // Every request in flight is answered in full.
    let mut first = true;
    while !expect.is_empty() {
        let mut h = [0u8; 12];
        if first {
            first = false;
        } else {
            stream.read_exact(&mut magic).unwrap();
            assert_eq!(magic, 0x6744_6698u32.to_be_bytes());
        }
        stream.read_exact(&mut h).expect("reply header");
        let error = u32::from_be_bytes(h[..4].try_into().unwrap());
        let handle = u64::from_be_bytes(h[4..].try_into().unwrap());
        assert_eq!(error, 0, "request {handle} failed");
        match expect.remove(&handle).expect("known handle") {
            None => {}
            Some(offset) => {
                let mut data = vec![0u8; 8 << 20];
                stream.read_exact(&mut data).expect("read data");
                assert!(
                    data == pattern[offset..offset + (8 << 20)],
                    "read at {offset}"
                );
            }
        }
    }
    // Then the server hangs up and exits cleanly.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("end of stream");
    assert!(rest.is_empty(), "unexpected bytes after the replies");
    let status = server.wait_exit();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let on_disk = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    for i in 0..2 {
        let o = (72 << 20) + i * 4096;
        assert_eq!(&on_disk[o..o + 4096], &small[..], "write {i} lost");
    }
}

#[test]
fn device_errors_become_nbd_errors() {
    // The image shrinks under the server: reads past the new end fail in
    // the backend. Each must be answered with an error, not a dropped
    // connection, and the rest of the export keeps working.
    let path = scratch("shrink");
    let pattern = Rng::new(60).bytes(4 << 20);
    std::fs::write(&path, &pattern).unwrap();
    let server = Server::start(&[path.to_str().unwrap()]);
    for opts in [Opts::SIMPLE, Opts::FULL] {
        let mut c = server.connect(opts);
        assert_eq!(c.read(0, 4096).unwrap(), pattern[..4096]);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        let r = c.request(CMD_READ, 0, 2 << 20, 65536, &[]).unwrap();
        assert_ne!(r.error, 0, "read past the shrunken file succeeded");
        // Straddling the new end.
        let r = c.request(CMD_READ, 0, (1 << 20) - 4096, 8192, &[]).unwrap();
        assert_ne!(r.error, 0, "read across the shrunken end succeeded");
        assert_eq!(c.read(0, 1 << 20).unwrap(), pattern[..1 << 20]);
        c.disconnect().unwrap();
        std::fs::write(&path, &pattern).unwrap();
    }
    let _ = std::fs::remove_file(&path);
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_that_takes_no_replies_holds_bounded_memory_and_cannot_block_exit() {
    let mut server = Server::start(&["--size", "1G"]);
    let mut c = server.connect(Opts::SIMPLE);
    // 64 reads of 16 MiB (1 GiB of replies) in one send, never read back.
    let mut batch = Vec::new();
    for i in 0..64u64 {
        batch.extend(request_header(CMD_READ, 7000 + i, i << 24, 16 << 20));
    }
    c.send_raw(&batch).unwrap();
    // Give the server time to do all it can; it must stop at its byte
    // budget instead of reading everything into memory.
    std::thread::sleep(Duration::from_millis(1500));
    let rss = rss_kib(server.pid());
    assert!(rss < 300 << 10, "server holds {rss} KiB for unread replies");

    // SIGTERM: in-flight requests cannot finish (nobody reads), so after
    // the grace period the server closes the connection and exits.
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(t0.elapsed() < Duration::from_secs(60));
    drop(c);
}
