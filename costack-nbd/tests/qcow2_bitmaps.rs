//! Persistent dirty bitmaps, against qemu: the same writes through
//! qemu-nbd and through costack-nbd leave the same bitmap contents (read
//! by qemu-nbd `-B` and nbdinfo, and by costack-nbd's own reader), `auto`
//! bitmaps are in use while served and clean after, disabled ones are left
//! alone, and a bitmap costack-nbd cannot keep up to date makes a writable
//! open fail with an error naming it.

mod support;

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use costack_nbd::block::qcow2::Qcow2;
use costack_nbd::block::{BlockDevice, ImageFile, STATE_DIRTY};
use support::tools::{create_overlay, create_qcow2, have, ok, qemu_io, run};
use support::Server;

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitmaps-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tools() -> bool {
    have(&["qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"])
}

/// A 64 MiB image with bitmaps `b0` (64 KiB granularity), `b1` (4 KiB)
/// and `off` (disabled).
fn make_image(path: &Path) {
    create_qcow2(path, "64M", &[]);
    ok("qemu-img", &["bitmap", "--add", s(path), "b0"]);
    ok(
        "qemu-img",
        &["bitmap", "--add", "-g", "4096", s(path), "b1"],
    );
    ok("qemu-img", &["bitmap", "--add", s(path), "off"]);
    ok("qemu-img", &["bitmap", "--disable", s(path), "off"]);
}

/// Writes, write-zeroes (unmapping or not), discards, at aligned and odd
/// offsets, then a FLUSH.
const WORKLOAD: [&str; 9] = [
    "write -q -P 0x61 4k 512",
    "write -q -P 0x62 10M 100k",
    "write -q -P 0x63 12345678 3333",
    "write -q -z -u 20M 1M",
    "write -q -z 40M 8k",
    "discard -q 30M 64k",
    "discard -q 33M 1000",
    "write -q -P 0x64 63M 1M",
    "flush",
];

fn run_workload(url: &str) {
    qemu_io(&["-f", "raw"], &WORKLOAD, url);
}

/// Waits for a Unix socket to appear.
fn wait_for(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Serves `img` with qemu-nbd `args` on a Unix socket while `f` runs with
/// its URL, then stops it.
fn with_qemu_nbd(img: &Path, args: &[&str], f: impl FnOnce(&str)) {
    let sock = img.with_extension("sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new("qemu-nbd")
        .args(args)
        .args(["-f", "qcow2", "-k", s(&sock), s(img)])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);
    f(&format!("nbd+unix:///?socket={}", s(&sock)));
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// Bitmap `name` of `img` as qemu reads it: nbdinfo's map of
/// `qemu:dirty-bitmap:NAME` from qemu-nbd `-B`.
fn qemu_map(img: &Path, name: &str) -> String {
    let mut map = String::new();
    let context = format!("--map=qemu:dirty-bitmap:{name}");
    with_qemu_nbd(img, &["-r", "-B", name], |url| {
        map = ok("nbdinfo", &[&context, url]);
    });
    map
}

/// The same map as costack-nbd's reader sees it: `start length 0|1 ...`
/// lines as nbdinfo prints them, compared by numbers.
fn own_map(img: &Path, name: &str) -> Vec<(u64, u64, bool)> {
    let dev = Qcow2::open(img, false).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    for (len, dirty) in dev.dirty_extents(name, 0, 64 << 20).unwrap() {
        out.push((at, len, dirty));
        at += len;
    }
    out
}

fn parse_map(map: &str) -> Vec<(u64, u64, bool)> {
    map.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2] == "1")
        })
        .collect()
}

/// `qemu-img info`'s flags of bitmap `name` (`-U`: the image may be open).
fn flags(img: &Path, name: &str) -> Vec<String> {
    let info = ok("qemu-img", &["info", "-U", "--output=json", s(img)]);
    let at = info
        .find(&format!("\"name\": \"{name}\""))
        .unwrap_or_else(|| panic!("no bitmap {name} in {info}"));
    // The flags list precedes the name in qemu-img's JSON.
    let before = &info[..at];
    let list = &before[before.rfind("\"flags\": [").unwrap()..];
    list.split('"')
        .filter(|w| ["in-use", "auto"].contains(w))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_same_writes_leave_the_same_bitmaps_as_qemu_nbd() {
    if !tools() {
        return;
    }
    let d = dir("same");
    let ours = d.join("costack.qcow2");
    let theirs = d.join("qemu.qcow2");
    make_image(&ours);
    std::fs::copy(&ours, &theirs).unwrap();

    let mut server = Server::start(&[s(&ours)]);
    run_workload(&server.url);
    assert_eq!(
        flags(&ours, "b0"),
        ["in-use", "auto"],
        "an auto bitmap is in use while served"
    );
    assert_eq!(flags(&ours, "off"), Vec::<String>::new());
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    with_qemu_nbd(&theirs, &["--discard=unmap"], run_workload);

    for img in [&ours, &theirs] {
        let out = run("qemu-img", &["check", s(img)]);
        assert_eq!(out.status.code(), Some(0), "{}: {out:?}", img.display());
        assert_eq!(flags(img, "b0"), ["auto"], "{}", img.display());
        assert_eq!(flags(img, "b1"), ["auto"], "{}", img.display());
    }
    for name in ["b0", "b1", "off"] {
        let (mine, qemus) = (qemu_map(&ours, name), qemu_map(&theirs, name));
        assert_eq!(mine, qemus, "bitmap {name}: costack-nbd's, then qemu-nbd's");
        assert_eq!(own_map(&ours, name), parse_map(&mine), "bitmap {name}");
    }
    let b1 = parse_map(&qemu_map(&ours, "b1"));
    assert!(
        b1.iter().filter(|e| e.2).count() >= 7,
        "the workload dirtied its ranges: {b1:?}"
    );
    assert!(
        parse_map(&qemu_map(&ours, "off")).iter().all(|e| !e.2),
        "the disabled bitmap stays clear"
    );
    // A second session: bits accumulate.
    let mut server = Server::start(&[s(&ours)]);
    qemu_io(&["-f", "raw"], &["write -q -P 1 50M 4k"], &server.url);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    let b1_again = parse_map(&qemu_map(&ours, "b1"));
    assert!(b1_again
        .iter()
        .any(|&(at, len, dirty)| dirty && at == 50 << 20 && len == 4096));
    assert_eq!(
        b1_again.iter().filter(|e| e.2).count(),
        b1.iter().filter(|e| e.2).count() + 1
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_bitmap_that_cannot_be_kept_refuses_writes() {
    if !tools() {
        return;
    }
    let d = dir("refuse");
    let img = d.join("odd.qcow2");
    make_image(&img);
    // Give b1 a flag the format does not define (bit 7).
    let dev = Qcow2::open(&img, false).unwrap();
    let b1 = dev
        .bitmaps()
        .unwrap()
        .into_iter()
        .find(|b| b.name == "b1")
        .unwrap();
    drop(dev);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&(b1.flags | 1 << 7).to_be_bytes(), b1.entry_offset + 12)
        .unwrap();
    drop(f);
    let before = std::fs::read(&img).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
        .args(["-p", "0", s(&img)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("\"b1\"")
            && said.contains("unknown flags")
            && said.contains("read-only (-r)"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "the refused image is untouched"
    );
    // Read-only, it is served.
    let server = Server::start(&["-r", s(&img)]);
    qemu_io(&["-r", "-f", "raw"], &["read -q 0 64k"], &server.url);
    std::fs::remove_dir_all(&d).ok();
}

/// nbdinfo's map of `context` from costack-nbd serving `img` with `args`.
fn costack_map(img: &Path, args: &[&str], context: &str) -> String {
    let mut all = args.to_vec();
    all.push(s(img));
    let mut server = Server::start(&all);
    let map = ok("nbdinfo", &[&format!("--map={context}"), &server.url]);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    map
}

/// nbdinfo's map of `context` from qemu-nbd serving `img` with `args`.
fn qemu_nbd_map(img: &Path, args: &[&str], context: &str) -> String {
    let mut map = String::new();
    with_qemu_nbd(img, args, |url| {
        map = ok("nbdinfo", &[&format!("--map={context}"), url]);
    });
    map
}

/// `(start, length, value)` runs of an nbdinfo map, neighbours with the
/// same value merged (servers may split a run where they like).
fn runs(map: &str) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    for l in map.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (at, len, v): (u64, u64, u32) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        match out.last_mut() {
            Some(last) if last.2 == v && last.0 + last.1 == at => last.1 += len,
            _ => out.push((at, len, v)),
        }
    }
    out
}

#[test]
fn dirty_bitmaps_are_exported_as_qemu_nbd_exports_them() {
    if !tools() {
        return;
    }
    let d = dir("export");
    let img = d.join("img.qcow2");
    make_image(&img);
    let mut server = Server::start(&[s(&img)]);
    run_workload(&server.url);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    for name in ["b0", "b1", "off"] {
        let context = format!("qemu:dirty-bitmap:{name}");
        let mine = runs(&costack_map(&img, &["-r", "-B", name], &context));
        let theirs = runs(&qemu_nbd_map(&img, &["-r", "-B", name], &context));
        assert_eq!(
            mine, theirs,
            "bitmap {name}: costack-nbd's, then qemu-nbd's"
        );
    }
    let b1 = runs(&costack_map(
        &img,
        &["-r", "-B", "b1", "-B", "b0"],
        "qemu:dirty-bitmap:b1",
    ));
    assert!(b1.iter().filter(|r| r.2 == 1).count() >= 7, "{b1:?}");
    // Listed with the others.
    let mut server = Server::start(&["-r", "-A", "-B", "b0", s(&img)]);
    let list = ok("nbdinfo", &["--list", &server.url]);
    for context in [
        "base:allocation",
        "qemu:allocation-depth",
        "qemu:dirty-bitmap:b0",
    ] {
        assert!(list.contains(context), "{context} not listed: {list}");
    }
    assert!(!list.contains("qemu:dirty-bitmap:b1"), "{list}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    // A bitmap the image lacks.
    let out = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
        .args(["-r", "-B", "nosuch", "-p", "0", s(&img)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("Bitmap 'nosuch' is not found"),
        "{said}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn allocation_depth_is_reported_as_qemu_nbd_reports_it() {
    if !tools() {
        return;
    }
    let d = dir("depth");
    let (base, mid, top) = (
        d.join("base.qcow2"),
        d.join("mid.qcow2"),
        d.join("top.qcow2"),
    );
    create_qcow2(&base, "16M", &[]);
    create_overlay(&mid, &base, "qcow2", None);
    // A backing file shorter than its overlay: past its end, nothing.
    create_overlay(&top, &mid, "qcow2", Some("24M"));
    let io = |img: &Path, cmds: &[&str]| qemu_io(&["-f", "qcow2"], cmds, s(img));
    io(
        &base,
        &[
            "write -q -P 1 0 1M",
            "write -q -P 2 4M 64k",
            "write -q -P 3 15M 1M",
        ],
    );
    io(&mid, &["write -q -P 4 512k 1M", "write -q -z 8M 64k"]);
    io(
        &top,
        &[
            "write -q -P 5 2M 128k",
            "write -q -P 6 20M 64k",
            "write -q -z 4M 64k",
        ],
    );
    let context = "qemu:allocation-depth";
    let mine = runs(&costack_map(&top, &["-r", "-A"], context));
    let theirs = runs(&qemu_nbd_map(&top, &["-r", "-A"], context));
    assert_eq!(mine, theirs, "costack-nbd's, then qemu-nbd's");
    let depths: Vec<u32> = mine.iter().map(|r| r.2).collect();
    for depth in [0, 1, 2, 3] {
        assert!(depths.contains(&depth), "no depth {depth} in {mine:?}");
    }
    // Without -A, the context is not offered.
    let mut server = Server::start(&["-r", s(&top)]);
    let list = ok("nbdinfo", &["--list", &server.url]);
    assert!(!list.contains(context), "{list}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    std::fs::remove_dir_all(&d).ok();
}

/// Bitmap `name`'s dirty ranges of `dev` as `(start, length)`, asked for
/// twice (the second answer from what the first cached) and both equal.
fn dirty_ranges(dev: &Qcow2, name: &str) -> Vec<(u64, u64)> {
    let ask = || {
        let mut out = Vec::new();
        let mut at = 0;
        while at < dev.size() {
            let extents = BlockDevice::dirty_bitmap(dev, name, at, dev.size() - at).unwrap();
            for e in extents {
                if e.flags & STATE_DIRTY != 0 {
                    out.push((at, e.length));
                }
                at += e.length;
            }
        }
        out
    };
    let first = ask();
    assert_eq!(ask(), first, "bitmap {name} asked again");
    first
}

#[test]
fn a_bitmap_is_the_images_own_before_its_backing_files() {
    if !tools() {
        return;
    }
    let d = dir("chain");
    let (base, top) = (d.join("base.qcow2"), d.join("top.qcow2"));
    // A backing file shorter than its overlay, each with a bitmap of its
    // own and one of the same name.
    create_qcow2(&base, "8M", &[]);
    for name in ["shared", "base_only"] {
        ok("qemu-img", &["bitmap", "--add", s(&base), name]);
    }
    qemu_io(&["-f", "qcow2"], &["write -q -P 1 1M 64k"], s(&base));
    create_overlay(&top, &base, "qcow2", Some("16M"));
    for name in ["shared", "top_only"] {
        ok("qemu-img", &["bitmap", "--add", s(&top), name]);
    }
    qemu_io(&["-f", "qcow2"], &["write -q -P 2 2M 64k"], s(&top));

    let dev = Qcow2::open(&top, false).unwrap();
    assert_eq!(
        dev.bitmap_names().unwrap(),
        ["shared", "top_only", "base_only"],
        "the image's own, then the backing file's"
    );
    let mine = [(2 << 20, 64 << 10)];
    assert_eq!(dirty_ranges(&dev, "top_only"), mine);
    assert_eq!(dirty_ranges(&dev, "shared"), mine, "the image's own wins");
    assert_eq!(
        dirty_ranges(&dev, "base_only"),
        [(1 << 20, 64 << 10)],
        "found in the backing file, and clean past its end"
    );
    let past_base = BlockDevice::dirty_bitmap(&dev, "base_only", 8 << 20, 8 << 20).unwrap();
    assert_eq!(past_base.len(), 1);
    assert_eq!((past_base[0].length, past_base[0].flags), (8 << 20, 0));
    let nosuch = BlockDevice::dirty_bitmap(&dev, "nosuch", 0, 4096).unwrap_err();
    assert_eq!(nosuch.kind(), std::io::ErrorKind::NotFound, "{nosuch}");
    drop(dev);
    // Once a bitmap is loaded, whose it is costs no directory read.
    let dir_at = Qcow2::open(&top, false).unwrap().header().bitmaps.unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let counting = DirectoryReads {
        file: costack::fs::File::from_std(std::fs::File::open(&top).unwrap()),
        dir: dir_at.directory_offset..dir_at.directory_offset + dir_at.directory_size,
        reads: reads.clone(),
    };
    let dev = Qcow2::open_file(Box::new(counting), &top, false).unwrap();
    let names = ["shared", "top_only", "base_only"];
    // The first request for a bitmap loads it (the directory read once).
    for name in names {
        dirty_ranges(&dev, name);
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
    reads.store(0, Ordering::Relaxed);
    for name in names {
        dirty_ranges(&dev, name);
    }
    dev.bitmap_names().unwrap();
    assert_eq!(reads.load(Ordering::Relaxed), 0, "directory reads");
    drop(dev);
    // And as qemu-nbd exports them.
    for name in ["shared", "base_only"] {
        let context = format!("qemu:dirty-bitmap:{name}");
        let mine = runs(&costack_map(&top, &["-r", "-B", name], &context));
        let theirs = runs(&qemu_nbd_map(&top, &["-r", "-B", name], &context));
        assert_eq!(mine, theirs, "bitmap {name}: costack-nbd's, qemu-nbd's");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// An image file that counts the reads touching the bitmap directory.
struct DirectoryReads {
    file: costack::fs::File,
    dir: Range<u64>,
    reads: Arc<AtomicUsize>,
}

impl ImageFile for DirectoryReads {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset < self.dir.end && self.dir.start < offset + buf.len() as u64 {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        unreachable!("opened read-only")
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn set_len(&self, _: u64) -> std::io::Result<()> {
        unreachable!("opened read-only")
    }
}
