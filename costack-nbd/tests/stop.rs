//! A stop that always stops (issue 23 item 5): SIGTERM ends the real
//! `costack-nbd` promptly whatever its loops were waiting for.
//!
//! The stop used to reach the accept loop only through a connection the
//! signal thread made to the server's own listening socket. Where that
//! connection cannot be made, the wake-up was lost and the loop slept in
//! `epoll_wait` for ever: a Unix socket whose path was removed or replaced
//! while the server sat idle (as temporary-file cleaners do to old
//! sockets) is one such case, reproduced here after serving a qcow2 image
//! and letting the loop go idle (its stacks and heap trimmed when the last
//! client left).

mod support;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::tools::{create_qcow2, have, ok, qemu_io};
use support::*;

/// Well under the 5 s grace the signal thread gives stuck clients: a stop
/// of an idle server takes no grace at all.
const PROMPT: Duration = Duration::from_secs(3);

/// Waits for `child` to exit within `limit`; kills it and fails if not.
fn exits_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: costack-nbd did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// Starts `costack-nbd ARGS` and waits for its URL line.
fn start(args: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
        .args(["-t", "--print-url"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start costack-nbd");
    let url = support::read_url(&mut child);
    assert!(url.starts_with("nbd"), "unexpected first line {url:?}");
    child
}

fn qcow2_image(name: &str) -> std::path::PathBuf {
    let img = scratch(name);
    create_qcow2(&img, "64M", &[]);
    qemu_io(
        &["-f", "qcow2"],
        &["write -P 7 0 2M"],
        img.to_str().unwrap(),
    );
    img
}

#[test]
fn sigterm_stops_an_idle_server_whose_socket_path_is_gone() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let img = qcow2_image("stop-unlinked");
    let sock = scratch("stop-unlinked").with_extension("sock");
    let moved = sock.with_extension("moved");
    let mut server = start(&["-k", sock.to_str().unwrap(), img.to_str().unwrap()]);
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let out = qemu_io(
        &["-f", "raw"],
        &["read -P 7 0 2M", "write -P 9 4M 1M"],
        &url,
    );
    assert!(out.contains("read 2097152/2097152"), "{out}");
    // The client is gone: the loop trims its pool and heap and sleeps.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&sock, &moved).expect("move the socket away");
    sigterm(&server);
    let status = exits_within(&mut server, PROMPT, "socket path moved away");
    assert!(status.success(), "{status}");
    // The image was closed cleanly: qemu-img finds nothing to repair and
    // reads the write.
    let img_s = img.to_str().unwrap();
    ok("qemu-img", &["check", "-q", img_s]);
    qemu_io(&["-f", "qcow2"], &["read -P 9 4M 1M"], img_s);
    for p in [&img, &moved] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn sigterm_stops_every_loop_with_a_client_still_connected() {
    // Four loops, a client on one of them idle in the transmission phase,
    // others gone: the stop ends the idle client's connection (its read
    // sees end-of-stream) and every loop, with no timer on any of them.
    let server = Server::start(&["--threads", "4", "--size", "16M", "-e", "0"]);
    for _ in 0..3 {
        let mut c = server.connect(Opts::SIMPLE);
        c.write(0, &[5; 4096], 0).unwrap();
        c.disconnect().unwrap();
    }
    let mut idle = server.connect(Opts::SIMPLE);
    assert_eq!(idle.read(0, 4096).unwrap(), vec![5; 4096]);
    std::thread::sleep(Duration::from_millis(200));
    let mut server = server;
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    assert!(idle.closed_by_server());
}

#[test]
fn sigterm_stops_a_server_that_never_had_a_client() {
    let sock = scratch("stop-fresh").with_extension("sock");
    let mut server = start(&["-k", sock.to_str().unwrap(), "--size", "1M"]);
    sigterm(&server);
    let status = exits_within(&mut server, PROMPT, "fresh server");
    assert!(status.success(), "{status}");
    assert!(!Path::new(&sock).exists(), "the socket file is removed");
}
