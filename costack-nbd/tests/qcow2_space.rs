//! Space over time: a qcow2 export rewritten, trimmed and zeroed in
//! cycles keeps its file within a bound of the data it holds, as qemu-nbd
//! with `--discard=unmap` does, and stays clean.
//!
//! The workload, through qemu-io over NBD, on an image that starts with
//! compressed clusters: per cycle, the compressed start rewritten; a
//! region written then discarded; another written then zeroed (may
//! unmap); a FLUSH. The same runs through qemu-nbd when it is installed,
//! and costack-nbd's file must not end more than 10% past qemu-nbd's.
//! `COSTACK_SPACE_MIB=N` sets the regions' size (default 16; the issue's
//! case is 384, `bench/qcow2-space.sh`).

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::tools::{convert_to_qcow2, have, ok, qemu_io, run};
use support::Server;

fn dir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("space-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const MIB: u64 = 1 << 20;
const CYCLES: u64 = 4;
/// The compressed start of the image.
const START: u64 = 16 * MIB;

fn region_mib() -> u64 {
    std::env::var("COSTACK_SPACE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

/// A fresh image of 4 GiB whose first 16 MiB are compressed clusters.
fn make_image(d: &Path, name: &str) -> PathBuf {
    let raw = d.join("start.raw");
    if !raw.exists() {
        // Compressible: a few symbols.
        let data: Vec<u8> = (0..START).map(|i| b"qcow2 "[(i % 6) as usize]).collect();
        std::fs::write(&raw, data).unwrap();
    }
    let img = d.join(name);
    convert_to_qcow2(&raw, &img, &["-c"]);
    ok("qemu-img", &["resize", "-q", s(&img), "4G"]);
    img
}

/// The cycles, through qemu-io on `url`.
fn cycles(url: &str) {
    let n = region_mib();
    let (discarded, zeroed) = (512, 1536);
    for k in 0..CYCLES {
        let p = 0x10 + k;
        let cmds = [
            format!("write -q -P {p:#x} 0 {}M", START / MIB),
            format!("write -q -P {p:#x} {discarded}M {n}M"),
            format!("discard -q {discarded}M {n}M"),
            format!("write -q -P {p:#x} {zeroed}M {n}M"),
            format!("write -q -z -u {zeroed}M {n}M"),
            "flush".to_owned(),
        ];
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(&["-f", "raw"], &cmds, url);
    }
}

/// Length and allocated bytes of the file at `path`.
fn space(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.len(), m.blocks() * 512)
}

/// Checks what the image holds after the cycles.
fn check_image(img: &Path) {
    let out = run("qemu-img", &["check", s(img)]);
    assert_eq!(out.status.code(), Some(0), "qemu-img check: {out:?}");
    let last = format!("read -q -P {:#x} 0 {}M", 0x10 + CYCLES - 1, START / MIB);
    let n = region_mib();
    let zeros = format!("read -q -P 0 512M {n}M");
    let zeros2 = format!("read -q -P 0 1536M {n}M");
    qemu_io(&["-r", "-f", "qcow2"], &[&last, &zeros, &zeros2], s(img));
}

/// Runs the cycles through qemu-nbd `--discard=unmap`; the file's space.
fn through_qemu_nbd(d: &Path) -> (u64, u64) {
    let img = make_image(d, "qemu.qcow2");
    let sock = d.join("qemu.sock");
    let mut child = Command::new("qemu-nbd")
        .args([
            "-f",
            "qcow2",
            "--discard=unmap",
            "-t",
            "-k",
            s(&sock),
            s(&img),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    cycles(&format!("nbd+unix:///?socket={}", s(&sock)));
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    check_image(&img);
    space(&img)
}

#[test]
fn rewrites_trims_and_zeroes_reuse_space() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let d = dir("cycles");
    let img = make_image(&d, "costack.qcow2");
    let mut server = Server::start(&[s(&img)]);
    cycles(&server.url);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    check_image(&img);
    let (len, allocated) = space(&img);
    let n = region_mib() * MIB;
    // What it holds at the end: the 16 MiB start, now plain clusters. On
    // the way it held at most that and one region; metadata is small.
    let bound = START + n + 4 * MIB;
    eprintln!(
        "costack-nbd: the file ends at {} KiB, {} KiB allocated (bound {} KiB)",
        len >> 10,
        allocated >> 10,
        bound >> 10
    );
    assert!(len <= bound, "the file ends at {len}, past {bound}");
    assert!(
        allocated <= bound,
        "{allocated} bytes allocated, past {bound}"
    );
    if have(&["qemu-nbd"]) {
        let (qlen, qallocated) = through_qemu_nbd(&d);
        eprintln!(
            "qemu-nbd --discard=unmap: the file ends at {} KiB, {} KiB allocated",
            qlen >> 10,
            qallocated >> 10
        );
        assert!(
            len * 10 <= qlen * 11,
            "costack-nbd's file ends at {len}, qemu-nbd's at {qlen}: more than 1.1x"
        );
    }
    std::fs::remove_dir_all(&d).ok();
}
