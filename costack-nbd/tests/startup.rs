//! What the real `costack-nbd` binary says when it cannot start, and how
//! it warns: every failure names what failed (address and port, socket
//! path, image path, the size and its rule), goes to stderr, exits non-zero
//! without a panic, and carries no colour codes when stderr is a pipe.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::*;

/// Runs `costack-nbd ARGS`, which must exit by itself, and returns its exit
/// code and stderr (checked to be free of colour codes and panics).
fn run_to_exit(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start costack-nbd");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("costack-nbd {args:?} did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_plain(&stderr);
    assert!(
        !stderr.contains("panicked"),
        "a panic, not an error: {stderr}"
    );
    (status.code().expect("exited, not killed"), stderr)
}

/// No ANSI escape sequences: stderr is a pipe here, not a terminal.
fn assert_plain(stderr: &str) {
    assert!(!stderr.contains("\x1b["), "colour codes in {stderr:?}");
}

/// Starts `costack-nbd -p 0 ARGS` with stderr piped, once it prints its URL.
fn start_with_stderr(args: &[&str]) -> (Server, std::process::ChildStderr) {
    let mut server = Server::spawn(args, &[], Stdio::piped());
    let stderr = server.child.stderr.take().expect("piped stderr");
    (server, stderr)
}

#[test]
fn port_in_use_names_the_address_and_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_to_exit(&["-b", "127.0.0.1", "-p", &port, "--size", "1M"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn missing_image_names_the_path() {
    let path = scratch("missing");
    let (code, stderr) = run_to_exit(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot open {}", path.display()))
            && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn unusable_socket_path_is_named() {
    let path = scratch("no-such-dir").join("nbd.sock");
    let (code, stderr) = run_to_exit(&["-k", path.to_str().unwrap(), "--size", "1M"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on Unix socket {}", path.display())),
        "{stderr}"
    );
}

#[test]
fn size_with_a_file_is_a_usage_error() {
    let path = scratch("sized");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let (code, stderr) = run_to_exit(&["--size", "1M", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 2, "clap's usage-error status: {stderr}");
    assert!(
        stderr.contains("--size") && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}

#[test]
fn size_not_a_multiple_of_512_is_refused() {
    let (code, stderr) = run_to_exit(&["--size", "1000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("1000") && stderr.contains("not a multiple of 512"),
        "{stderr}"
    );
}

#[test]
fn odd_sized_image_is_served_rounded_up_without_a_word() {
    // As qemu-nbd: the size rounded up to a sector, nothing said about it
    // (qemu's iotest 241; the tail itself is tested in qemu_nbd_compat.rs).
    let path = scratch("odd");
    let contents = Rng::new(5).bytes(1000);
    std::fs::write(&path, &contents).unwrap();
    let (mut server, mut stderr) = start_with_stderr(&["-f", "raw", path.to_str().unwrap()]);
    let mut c = server.connect(Opts::FULL);
    assert_eq!(c.export.size, 1024, "rounded up to a sector");
    assert_eq!(c.read(0, 1000).expect("read all of it"), contents);
    c.disconnect().expect("clean disconnect");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_plain(&log);
    assert!(log.is_empty(), "qemu-nbd says nothing here: {log}");
}

#[test]
fn logs_have_no_colour_codes_in_a_pipe() {
    let (mut server, mut stderr) = start_with_stderr(&["-vv", "--size", "1M"]);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(log.contains("serving"), "-vv logs at info: {log}");
    assert_plain(&log);
}
