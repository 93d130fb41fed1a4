//! systemd socket activation (issue 23 item 2): `LISTEN_PID`/`LISTEN_FDS`
//! with the listening socket at descriptor 3, as libnbd's
//! `nbdinfo -- [ costack-nbd IMG ]` and `nbdcopy -- [ ... ]` start the
//! real binary, and as a systemd socket unit would (TCP, set up here by
//! hand).
//!
//! nbdinfo and nbdcopy come from Debian's `libnbd-bin` (scripts/test-all.sh
//! installs it); without them these tests are skipped with a message,
//! except under `COSTACK_REQUIRE_CLIENTS=1` (CI), where that fails.

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::tools::{create_qcow2, have, ok, qemu_io, run};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_costack-nbd");

/// Runs libnbd's `tool ARGS` (which must succeed) under coreutils'
/// `timeout`: a server that ignores the socket it was given leaves the
/// client waiting for ever.
fn libnbd(tool: &str, args: &[&str]) -> String {
    let mut all = vec!["60", tool];
    all.extend_from_slice(args);
    ok("timeout", &all)
}

/// A 16 MiB qcow2 image with a pattern at 1 MiB.
fn qcow2_image(name: &str) -> std::path::PathBuf {
    let img = scratch(name);
    create_qcow2(&img, "16M", &[]);
    qemu_io(
        &["-f", "qcow2"],
        &["write -P 0x5a 1M 64K"],
        img.to_str().unwrap(),
    );
    img
}

#[test]
fn nbdinfo_starts_the_server_by_socket_activation() {
    if !have(&["nbdinfo", "qemu-img", "qemu-io"]) {
        return;
    }
    let img = qcow2_image("act-info");
    let img_s = img.to_str().unwrap();
    // Hung before: the server listened on TCP 10809 instead of fd 3.
    let out = libnbd("nbdinfo", &["--", "[", BIN, "-r", img_s, "]"]);
    assert!(out.contains("export-size: 16777216"), "{out}");
    assert!(out.contains("is_read_only: true"), "{out}");
    // Nothing of ours on the client's stdout: the size alone.
    let size = libnbd("nbdinfo", &["--size", "--", "[", BIN, "-r", img_s, "]"]);
    assert_eq!(size.trim(), "16777216");
    let _ = std::fs::remove_file(&img);
}

#[test]
fn nbdcopy_reads_and_writes_through_socket_activation() {
    if !have(&["nbdcopy", "qemu-img", "qemu-io"]) {
        return;
    }
    let img = qcow2_image("act-copy");
    let img_s = img.to_str().unwrap();
    let out = scratch("act-copy-out");
    let out_s = out.to_str().unwrap();
    libnbd("nbdcopy", &["--", "[", BIN, "-r", img_s, "]", out_s]);
    ok(
        "qemu-img",
        &["compare", "-q", "-f", "qcow2", "-F", "raw", img_s, out_s],
    );

    // And the other way: a raw file copied into a writable qcow2 served by
    // an activated server, which must close the image cleanly when libnbd
    // ends it.
    let src = scratch("act-copy-src");
    let src_s = src.to_str().unwrap();
    std::fs::write(&src, Rng::new(7).bytes(16 << 20)).unwrap();
    let dst = qcow2_image("act-copy-dst");
    let dst_s = dst.to_str().unwrap();
    libnbd("nbdcopy", &[src_s, "--", "[", BIN, dst_s, "]"]);
    ok("qemu-img", &["check", "-q", dst_s]);
    ok(
        "qemu-img",
        &["compare", "-q", "-f", "raw", "-F", "qcow2", src_s, dst_s],
    );
    for p in [&img, &out, &src, &dst] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn listen_options_are_refused_under_socket_activation() {
    if !have(&["nbdinfo"]) {
        return;
    }
    for (args, says) in [
        (&["-p", "10900"][..], "TCP port number can't be set"),
        (&["-b", "127.0.0.1"][..], "The interface can't be set"),
        (&["-k", "/tmp/x.sock"][..], "Unix socket can't be set"),
    ] {
        let mut cmd = vec!["--size", "--", "[", BIN, "--size", "1M"];
        cmd.extend_from_slice(args);
        cmd.push("]");
        cmd.insert(0, "nbdinfo");
        cmd.insert(0, "60");
        let out = run("timeout", &cmd);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_tcp_listener_passed_as_descriptor_3_is_served() {
    if !have(&["qemu-io"]) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut cmd = Command::new("sh");
    // `exec` keeps the shell's pid, which LISTEN_PID must name.
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"",
        BIN,
        "--size",
        "4M",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe and only touches descriptors of
    // the child: the listener (inherited) becomes its descriptor 3,
    // without FD_CLOEXEC, as systemd passes it.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == 3 && libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = cmd.spawn().expect("start costack-nbd");
    drop(listener);
    let url = format!("nbd://{addr}/");
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x33 0 64K",
            "-c",
            "read -P 0x33 0 64K",
            &url,
        ],
    );
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < PATIENCE, "server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stdout, "", "an activated server prints no URL");
}
