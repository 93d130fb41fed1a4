//! `-L/--list`, qemu-nbd's client mode: costack-nbd lists a server's
//! exports exactly as qemu-nbd lists them, whether the server is
//! costack-nbd, qemu-nbd or nbdkit, and refuses what qemu-nbd refuses.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::tools::{create_qcow2, have, ok, run};
use support::Server;

fn dir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("list-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const ME: &str = env!("CARGO_BIN_EXE_costack-nbd");

/// Starts `cmd args` serving on Unix socket `sock`; waits for it.
fn serve(cmd: &str, args: &[&str], sock: &Path) -> Child {
    let child = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "{cmd} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// What `cmd -L -k sock` prints (it must succeed).
fn listing(cmd: &str, sock: &Path) -> String {
    ok(cmd, &["-L", "-k", s(sock)])
}

#[test]
fn exports_are_listed_as_qemu_nbd_lists_them() {
    if !have(&["qemu-nbd", "qemu-img", "nbdkit"]) {
        return;
    }
    let d = dir("same");
    let img = d.join("img.qcow2");
    create_qcow2(&img, "64M", &[]);
    ok("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    let sock = d.join("sock");
    let servers: [(&str, Vec<&str>); 4] = [
        (
            ME,
            vec![
                "-x",
                "exp1",
                "-D",
                "a description",
                "-r",
                "-A",
                "-B",
                "b0",
                "-t",
            ],
        ),
        (ME, vec!["-e", "2", "-t"]),
        (
            "qemu-nbd",
            vec![
                "-x",
                "exp1",
                "-D",
                "a description",
                "-r",
                "-A",
                "-B",
                "b0",
                "-t",
                "-f",
                "qcow2",
            ],
        ),
        ("nbdkit", vec!["-f", "memory", "1M"]),
    ];
    for (cmd, args) in servers {
        let _ = std::fs::remove_file(&sock);
        let mut all = args.clone();
        if cmd == "nbdkit" {
            all.splice(1..1, ["-U", s(&sock)]);
        } else {
            all.extend(["-k", s(&sock), s(&img)]);
        }
        let server = serve(cmd, &all, &sock);
        let mine = listing(ME, &sock);
        let theirs = listing("qemu-nbd", &sock);
        stop(server);
        assert_eq!(
            mine, theirs,
            "serving with {cmd} {args:?}: costack-nbd -L, then qemu-nbd -L"
        );
        assert!(mine.starts_with("exports available: 1\n"), "{mine}");
    }
}

#[test]
fn list_mode_over_tcp_and_its_refusals() {
    let server = Server::start(&["-x", "tcp", "--size", "1M"]);
    let port = server.addr.port().to_string();
    let out = ok(ME, &["-L", "-b", "127.0.0.1", "-p", &port]);
    assert!(out.contains(" export: 'tcp'\n  size:  1048576\n"), "{out}");
    for (args, why) in [
        (vec!["-L", "img"], "incompatible with a file name"),
        (
            vec!["-L", "-x", "a"],
            "incompatible with per-device settings",
        ),
        (vec!["-L", "-r"], "incompatible with per-device settings"),
        (vec!["-L", "--fork"], "incompatible with forking"),
    ] {
        let out = run(ME, &args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains(why),
            "{args:?}: {said}"
        );
    }
    // Nobody there.
    drop(server);
    let out = run(ME, &["-L", "-b", "127.0.0.1", "-p", &port]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("Failed to connect to '127.0.0.1:"),
        "{said}"
    );
}
