//! qemu-nbd's command line, meaning for meaning (issue 23 item 1), on the
//! real binary with real clients: `-t` and the exit after the last client
//! (a list-only client does not count), `--fork` and `--pid-file`, `-e`
//! (a client beyond it waits; multi-conn only above 1), listening on every
//! address without `-b`, nothing on stdout, `--discard`,
//! `--detect-zeroes`, `--cache`/`-n`, `--aio`, `-T`, and the refusals
//! (`-c`, `-d`), and `-s/--snapshot`.

mod support;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::pagecache::dirty_pages;
use support::tools::{create_qcow2, have, ok, qemu_io, run};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_costack-nbd");

/// Waits until `child` exits (true) or `limit` passes (false).
fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw image of `len` bytes of 0xab, written to the disk.
fn raw_image(name: &str, len: usize) -> std::path::PathBuf {
    let img = scratch(name);
    std::fs::write(&img, vec![0xab; len]).unwrap();
    std::fs::File::open(&img).unwrap().sync_all().unwrap();
    img
}

#[test]
fn without_persistent_the_last_client_leaving_stops_the_server() {
    if !have(&["nbdinfo", "qemu-io"]) {
        return;
    }
    let sock = scratch("cli-last").with_extension("sock");
    let mut server = Command::new(BIN)
        .args(["-k", sock.to_str().unwrap(), "--size", "1M"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let deadline = Instant::now() + PATIENCE;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Listing the exports does not count as a client served.
    let list = ok("nbdinfo", &["--list", &url]);
    assert!(list.contains("export=\"\""), "{list}");
    assert!(!exits_within(&mut server, Duration::from_millis(500)));
    ok("qemu-io", &["-f", "raw", "-c", "write -P 3 0 4k", &url]);
    assert!(exits_within(&mut server, PATIENCE), "still serving");
    assert!(server.wait().unwrap().success());
    // qemu-nbd prints nothing on stdout; neither do we without --print-url.
    let mut out = String::new();
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "");
}

#[test]
fn persistent_keeps_serving_client_after_client() {
    if !have(&["qemu-io"]) {
        return;
    }
    let mut server = Server::start(&["--size", "1M"]);
    let url = server.url.clone();
    for i in 0..3 {
        ok(
            "qemu-io",
            &["-f", "raw", "-c", &format!("write -P {i} 0 4k"), &url],
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(server.alive(), "-t: still serving after client {i}");
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

#[test]
fn fork_returns_once_the_socket_accepts_and_the_pid_file_names_the_server() {
    if !have(&["qemu-io"]) {
        return;
    }
    let port = free_port().to_string();
    let pid_file = scratch("cli-fork").with_extension("pid");
    let status = Command::new(BIN)
        .args([
            "--fork",
            "-t",
            "-b",
            "127.0.0.1",
            "-p",
            &port,
            "--size",
            "1M",
        ])
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    // No retry: the socket accepts by the time the command returned.
    let url = format!("nbd://127.0.0.1:{port}/");
    let out = ok("qemu-io", &["-f", "raw", "-c", "read -P 0 0 4k", &url]);
    assert!(out.contains("read 4096/4096"), "{out}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the server runs");
    // SAFETY: SIGTERM to the server we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + PATIENCE;
    // SAFETY: as above (it is not our child: it stays no zombie).
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "the forked server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_file.exists(), "the pid file is removed at exit");

    // A server that cannot start fails the command with its error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args(["--fork", "-b", "127.0.0.1", "-p", &port, "--size", "1M"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn a_client_beyond_shared_waits_for_a_free_slot() {
    let server = Server::start(&["--size", "1M", "-e", "1"]);
    let mut first = server.connect(Opts::SIMPLE);
    first.write(0, &[9; 512], 0).unwrap();
    let addr = server.addr;
    let (tx, rx) = std::sync::mpsc::channel();
    let second = std::thread::spawn(move || {
        let mut c = Client::connect(addr, Opts::SIMPLE).expect("served, not dropped");
        tx.send(()).unwrap();
        c.read(0, 512).unwrap()
    });
    // Waiting in the backlog: no greeting while the slot is taken.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    first.disconnect().unwrap();
    rx.recv_timeout(PATIENCE)
        .expect("served once the slot is free");
    assert_eq!(second.join().unwrap(), vec![9; 512]);
}

#[test]
fn multi_conn_is_advertised_only_above_one_client() {
    if !have(&["nbdinfo"]) {
        return;
    }
    for (shared, multi) in [("1", false), ("2", true)] {
        let server = Server::start(&["--size", "1M", "-e", shared]);
        let info = ok("nbdinfo", &[&server.url]);
        assert!(
            info.contains(&format!("can_multi_conn: {multi}")),
            "-e {shared}: {info}"
        );
    }
}

#[test]
fn without_bind_every_address_is_listened_on() {
    let mut child = Command::new(BIN)
        .args(["-t", "-p", "0", "--print-url", "--size", "1M"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("nbd://0.0.0.0:"), "{line}");
}

#[test]
fn discards_are_ignored_unless_unmap() {
    if !have(&["qemu-io"]) {
        return;
    }
    // (The test harness passes --discard=unmap; a later option overrides.)
    for (mode, freed) in [("--discard=ignore", false), ("--discard=unmap", true)] {
        let img = raw_image("cli-discard", 4 << 20);
        let before = std::fs::metadata(&img).unwrap().blocks();
        let server = Server::start(&[mode, img.to_str().unwrap()]);
        let pattern = if freed { 0 } else { 0xab };
        ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "discard 0 1M",
                "-c",
                &format!("read -P {pattern} 0 1M"),
                &server.url,
            ],
        );
        let after = std::fs::metadata(&img).unwrap().blocks();
        assert_eq!(after < before, freed, "{mode}: {before} -> {after} blocks");
        drop(server);
        let _ = std::fs::remove_file(&img);
    }
}

#[test]
fn detected_zeroes_free_space_with_unmap() {
    if !have(&["qemu-io"]) {
        return;
    }
    for (args, freed) in [
        (&["--discard=unmap"][..], false),
        (&["--discard=unmap", "--detect-zeroes=unmap"][..], true),
    ] {
        let img = raw_image("cli-zeroes", 4 << 20);
        let before = std::fs::metadata(&img).unwrap().blocks();
        let server = Server::start(&[args, &[img.to_str().unwrap()]].concat());
        // qemu-io's `write -P 0` sends the zeroes as data.
        ok(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0 0 2M", &server.url],
        );
        let after = std::fs::metadata(&img).unwrap().blocks();
        assert_eq!(
            after < before,
            freed,
            "{args:?}: {before} -> {after} blocks"
        );
        ok(
            "qemu-io",
            &["-f", "raw", "-c", "read -P 0 0 2M", &server.url],
        );
        drop(server);
        let _ = std::fs::remove_file(&img);
    }
    let out = run(BIN, &["--detect-zeroes=unmap", "--size", "1M"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("discard operation to unmap"));
}

/// Pages of `img` dirty after a write the client did not flush.
fn dirty_after_write(cache: &[&str], flush: bool) -> Option<usize> {
    let img = raw_image("cli-cache", 1 << 20);
    let server = Server::start(&[cache, &[img.to_str().unwrap()]].concat());
    let mut c = server.connect(Opts::SIMPLE);
    c.write(0, &[0x5c; 64 << 10], 0).unwrap();
    if flush {
        c.flush().unwrap();
    }
    let dirty = dirty_pages(&img, 0, 64 << 10);
    drop(c);
    drop(server);
    let _ = std::fs::remove_file(&img);
    dirty
}

#[test]
fn cache_modes_decide_when_writes_reach_the_disk() {
    let Some(writeback) = dirty_after_write(&["--cache=writeback"], false) else {
        assert!(
            std::env::var("COSTACK_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "page flags need root"
        );
        eprintln!("skipping: physical page numbers need root");
        return;
    };
    assert!(writeback > 0, "writeback leaves written pages dirty");
    assert_eq!(dirty_after_write(&["--cache=writethrough"], false), Some(0));
    assert_eq!(dirty_after_write(&["--cache=directsync"], false), Some(0));
    // unsafe: even a flush leaves them to the kernel.
    assert!(dirty_after_write(&["--cache=unsafe"], true).unwrap() > 0);
    assert_eq!(dirty_after_write(&["--cache=writeback"], true), Some(0));
}

#[test]
fn nocache_and_directsync_bypass_the_page_cache() {
    if !have(&["nbdinfo"]) {
        return;
    }
    // O_DIRECT's alignment becomes the export's minimum block size.
    for args in [&["-n"][..], &["--cache=none"], &["--cache=directsync"]] {
        let img = raw_image("cli-direct", 1 << 20);
        let server = Server::start(&[args, &[img.to_str().unwrap()]].concat());
        let info = ok("nbdinfo", &[&server.url]);
        assert!(
            info.contains("block_size_minimum: 4096"),
            "{args:?}: {info}"
        );
        drop(server);
        let _ = std::fs::remove_file(&img);
    }
}

#[test]
fn aio_modes_and_trace_are_accepted() {
    if !have(&["qemu-io"]) {
        return;
    }
    for aio in ["threads", "native", "io_uring"] {
        let img = raw_image("cli-aio", 1 << 20);
        let server = Server::start(&["--aio", aio, img.to_str().unwrap()]);
        ok(
            "qemu-io",
            &["-f", "raw", "-c", "read -P 0xab 0 64k", &server.url],
        );
        drop(server);
        let _ = std::fs::remove_file(&img);
    }
    // -T turns on every log line (the "serving" line is at info level).
    let mut server = Server::spawn(&["-T", "nbd_*", "--size", "1M"], &[], Stdio::piped());
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    let mut err = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("serving"), "{err}");
}

#[test]
fn the_kernel_client_is_refused_clearly() {
    let img = raw_image("cli-refused", 1 << 20);
    let img_s = img.to_str().unwrap();
    for (args, says) in [
        (&["-c", "/dev/nbd0", img_s][..], "nbd module"),
        (&["-d", "/dev/nbd0"][..], "--disconnect"),
    ] {
        let out = run(BIN, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&img).unwrap(), vec![0xab; 1 << 20]);
    let _ = std::fs::remove_file(&img);
}

#[test]
fn snapshot_takes_writes_and_leaves_the_image_untouched() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let raw = raw_image("cli-snap-raw", 2 << 20);
    let qcow2 = scratch("cli-snap-qcow2");
    let q = qcow2.to_str().unwrap();
    create_qcow2(&qcow2, "2M", &[]);
    qemu_io(&["-f", "qcow2"], &["write -P 0xab 0 2M"], q);
    for img in [&raw, &qcow2] {
        let before = std::fs::read(img).unwrap();
        let server = Server::start(&["-s", img.to_str().unwrap()]);
        // Partial blocks, a block boundary and zeroes, then read back in
        // the same session and in the next (-t: the overlay lives on).
        let cmds = [
            "write -P 0x11 1000 5000",
            "write -z 65536 4096",
            "read -P 0xab 0 1000",
            "read -P 0x11 1000 5000",
            "read -P 0xab 6000 59536",
            "read -P 0 65536 4096",
            "flush",
        ];
        qemu_io(&["-f", "raw"], &cmds, &server.url);
        qemu_io(&["-f", "raw"], &["read -P 0x11 1000 5000"], &server.url);
        drop(server);
        assert!(
            std::fs::read(img).unwrap() == before,
            "{} changed under -s",
            img.display()
        );
    }
    ok("qemu-img", &["check", "-q", q]);
    qemu_io(&["-f", "qcow2"], &["read -P 0xab 0 2M"], q);
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&qcow2);
}

#[test]
fn help_version_and_verbose_as_qemu_nbd() {
    let help = run(BIN, &["-h"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--persistent",
        "--snapshot",
        "--fork",
        "--pid-file",
        "--discard",
        "--shared",
    ] {
        assert!(text.contains(option), "-h lacks {option}: {text}");
    }
    let version = run(BIN, &["-V"]);
    assert!(version.status.success());
    let v = String::from_utf8_lossy(&version.stdout);
    assert!(
        v.starts_with("costack-nbd ") && v.contains(env!("CARGO_PKG_VERSION")),
        "{v}"
    );
    // -v adds nothing on stderr, as qemu-nbd's; -vv logs at info.
    let stderr_of = |verbose: &str| {
        let mut server = Server::spawn(&[verbose, "--size", "1M"], &[], Stdio::piped());
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit().success());
        let mut err = String::new();
        server
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        err
    };
    let quiet = stderr_of("-v");
    assert!(quiet.is_empty(), "-v: {quiet}");
    let info = stderr_of("-vv");
    assert!(
        info.contains("serving") && info.contains("stopped"),
        "{info}"
    );
}

#[test]
fn offset_exports_the_image_from_there_on() {
    if !have(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let img = raw_image("offset", 1 << 20);
    let path = img.to_str().unwrap();
    ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -q -P 0x55 512k 4k", path],
    );
    let server = Server::start(&["-o", "524288", "-f", "raw", path]);
    assert_eq!(ok("nbdinfo", &["--size", &server.url]).trim(), "524288");
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -q -P 0x55 0 4k",
            "-c",
            "write -q -P 0x66 4k 4k",
            &server.url,
        ],
    );
    // Past the window's end, nothing: the last byte is the image's last.
    let out = run(
        "qemu-io",
        &["-f", "raw", "-c", "read -q 508k 8k", &server.url],
    );
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains("error"));
    drop(server);
    let mut written = vec![0u8; 4096];
    std::fs::File::open(&img)
        .and_then(|mut f| {
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start((512 << 10) + 4096))?;
            f.read_exact(&mut written)
        })
        .unwrap();
    assert!(
        written.iter().all(|&b| b == 0x66),
        "the write landed past the offset"
    );
    let out = run(
        env!("CARGO_BIN_EXE_costack-nbd"),
        &["-o", "2097152", "-f", "raw", path],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("past the end"),
        "{said}"
    );
}

#[test]
fn image_opts_name_the_file_and_its_driver() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let img = scratch("image-opts");
    let path = img.to_str().unwrap();
    create_qcow2(&img, "4M", &[]);
    qemu_io(&["-f", "qcow2"], &["write -q -P 0x77 1M 64k"], path);
    let spec = format!("driver=qcow2,file.driver=file,file.filename={path}");
    let server = Server::start(&["--image-opts", &spec]);
    qemu_io(
        &["-r", "-f", "raw"],
        &["read -q -P 0x77 1M 64k"],
        &server.url,
    );
    drop(server);
    let out = run(
        env!("CARGO_BIN_EXE_costack-nbd"),
        &["--image-opts", "driver=vmdk,file.filename=/x"],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("driver=vmdk"),
        "{said}"
    );
}
