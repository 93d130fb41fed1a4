//! qcow2 images made by qemu-img, served by costack-nbd and read back by
//! qemu's own tools: every cluster size, both versions, compressed
//! clusters, backing chains (qcow2 and raw), the allocation map, damaged
//! images (refused at open, or I/O errors for the bad range while the rest
//! is served); written through costack-nbd by qemu-io and nbdcopy, then
//! `qemu-img check` clean and `qemu-img compare` equal to a raw model; and
//! `kill -9` under load leaves at worst leaked clusters.
//!
//! A missing tool skips a test, except under `COSTACK_REQUIRE_CLIENTS=1`
//! (set by CI), where it is a failure.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::tools::{
    convert_to_qcow2, create_overlay, create_qcow2, have, ok, qemu_io, qemu_io_args, run,
};
use support::Server;

fn dir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qcow2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 8 MiB: 3 MiB of random-looking data, a hole, then 1 MiB of data at 6 MiB.
fn make_raw(path: &Path) {
    let mut data = vec![0u8; 8 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, b) in data.iter_mut().enumerate() {
        if i < 3 << 20 || (6 << 20..7 << 20).contains(&i) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    // Sparse: the zeros are a hole in the file, as the map test expects.
    let f = std::fs::File::create(path).unwrap();
    f.write_all_at(&data[..3 << 20], 0).unwrap();
    f.write_all_at(&data[6 << 20..7 << 20], 6 << 20).unwrap();
    f.set_len(8 << 20).unwrap();
}

/// `qemu-img compare` of a raw file against the export.
fn same(raw: &Path, server: &Server) {
    ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", s(raw), &server.url],
    );
}

fn tools() -> bool {
    have(&["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"])
}

#[test]
fn images_of_every_cluster_size_and_version_read_back() {
    if !tools() {
        return;
    }
    let d = dir("sizes");
    let raw = d.join("disk.raw");
    make_raw(&raw);
    for (cluster, compat, compressed) in [
        ("512", "1.1", false),
        ("4k", "0.10", false),
        ("64k", "1.1", false),
        ("2M", "1.1", false),
        ("64k", "1.1", true),
        ("4k", "0.10", true),
        ("2M", "1.1", true),
    ] {
        let img = d.join(format!("{cluster}-{compat}-{compressed}.qcow2"));
        let opts = format!("cluster_size={cluster},compat={compat}");
        let mut args = vec!["-o", &opts];
        if compressed {
            args.push("-c");
        }
        convert_to_qcow2(&raw, &img, &args);
        // Probed (no -f) on one half, named on the other.
        let server = if compressed {
            Server::start(&["-r", s(&img)])
        } else {
            Server::start(&["-r", "-f", "qcow2", s(&img)])
        };
        same(&raw, &server);
        // Several connections, many requests in flight.
        let copy = d.join("copy.raw");
        ok(
            "nbdcopy",
            &["--connections=4", "--requests=32", &server.url, s(&copy)],
        );
        assert!(
            std::fs::read(&copy).unwrap() == std::fs::read(&raw).unwrap(),
            "{}: nbdcopy read different bytes",
            img.display()
        );
    }
}

#[test]
fn backing_chains_read_through() {
    if !tools() {
        return;
    }
    let d = dir("backing");
    let base = d.join("base.raw");
    make_raw(&base);
    // base.raw <- mid.qcow2 <- top.qcow2, each layer written by qemu-io;
    // the same writes on a raw copy make the model.
    let model = d.join("model.raw");
    std::fs::copy(&base, &model).unwrap();
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    create_overlay(&mid, &base, "raw", None);
    let layers: [(&Path, &[&str]); 2] = [
        (
            &mid,
            &[
                "write -P 0x11 1M 64k",
                "write -z 2M 128k",
                "write -P 0x22 5M 8k",
            ],
        ),
        (
            &top,
            &[
                "write -P 0x33 1040k 4k",
                "write -z 6M 64k",
                "write -P 0x44 7M 1M",
            ],
        ),
    ];
    for (i, (image, cmds)) in layers.iter().enumerate() {
        if i == 1 {
            create_overlay(&top, &mid, "qcow2", None);
        }
        for (target, format) in [(*image, "qcow2"), (&model as &Path, "raw")] {
            qemu_io(&["-f", format], cmds, s(target));
        }
    }
    let server = Server::start(&["-r", s(&top)]);
    same(&model, &server);
    // Backing files are never written: their checksums stay.
    let before = std::fs::read(&base).unwrap();
    drop(server);
    assert!(std::fs::read(&base).unwrap() == before);

    // The allocation map: the top's zero cluster, its data, and the raw
    // base's hole (3 to 6 MiB, not written by any layer) read through.
    let server = Server::start(&["-r", s(&top)]);
    let map = ok("nbdinfo", &["--map", &server.url]);
    let kind_at = |offset: u64| -> u32 {
        for line in map.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (start, len, kind): (u64, u64, u32) = (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            );
            if (start..start + len).contains(&offset) {
                return kind;
            }
        }
        panic!("{offset} not in the map:\n{map}");
    };
    assert_eq!(kind_at(6 << 20), 2, "zero cluster:\n{map}");
    assert_eq!(kind_at(7 << 20), 0, "data:\n{map}");
    assert_eq!(kind_at(1 << 20), 0, "the middle layer's data:\n{map}");
    assert_eq!(kind_at(4 << 20), 3, "the raw base's hole:\n{map}");
    assert_eq!(
        kind_at(2 << 20),
        2,
        "the middle layer's zero cluster:\n{map}"
    );
}

/// Runs costack-nbd expecting it to refuse to start; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
        .args(["-p", "0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn damaged_images_are_refused_at_open() {
    if !tools() {
        return;
    }
    let d = dir("damaged");
    let make = |name: &str| {
        let p = d.join(name);
        create_qcow2(&p, "64M", &[]);
        p
    };
    // Writable only what this driver can write: internal snapshots and
    // other refcount widths are served read-only.
    let img = make("snap.qcow2");
    ok("qemu-img", &["snapshot", "-c", "one", s(&img)]);
    let e = refused(&[s(&img)]);
    assert!(e.contains("snapshots") && e.contains("-r"), "{e}");
    let img = d.join("rc64.qcow2");
    create_qcow2(&img, "64M", &["-o", "refcount_bits=64"]);
    let e = refused(&[s(&img)]);
    assert!(e.contains("16-bit refcounts"), "{e}");
    drop(Server::start(&["-r", s(&img)]));

    let cases: [(&str, u64, &[u8], &str); 5] = [
        ("version.qcow2", 4, &[0, 0, 0, 9], "version 9"),
        ("clusters.qcow2", 20, &[0, 0, 0, 40], "cluster size"),
        ("l1.qcow2", 40, &[0, 0, 0, 1, 0, 0, 0, 0], "L1 table"),
        (
            "feature.qcow2",
            72,
            &[0, 0, 0, 0, 0, 0, 1, 0],
            "unknown incompatible feature",
        ),
        (
            "size.qcow2",
            24,
            &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
            "too large",
        ),
    ];
    for (name, at, bytes, why) in cases {
        let img = make(name);
        patch(&img, at, bytes);
        let e = refused(&["-r", s(&img)]);
        assert!(e.contains(why) && e.contains(name), "{name}: {e}");
    }
    // Not qcow2 at all, named as qcow2.
    let raw = d.join("plain.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let e = refused(&["-r", "-f", "qcow2", s(&raw)]);
    assert!(e.contains("no qcow2 magic"), "{e}");

    // A backing chain that loops, and one whose file is missing.
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    create_qcow2(&b, "64M", &[]);
    create_overlay(&a, &b, "qcow2", None);
    ok(
        "qemu-img",
        &["rebase", "-u", "-b", s(&a), "-F", "qcow2", s(&b)],
    );
    let e = refused(&["-r", s(&a)]);
    assert!(e.contains("loops"), "{e}");
    let c = d.join("c.qcow2");
    create_qcow2(&c, "64M", &["-b", "gone.qcow2", "-F", "qcow2", "-u"]);
    let e = refused(&["-r", s(&c)]);
    assert!(
        e.contains("gone.qcow2") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn bad_tables_fail_their_range_only() {
    if !tools() {
        return;
    }
    let d = dir("tables");
    let raw = d.join("disk.raw");
    make_raw(&raw);
    let img = d.join("disk.qcow2");
    // 4 KiB clusters: one L2 table maps 2 MiB.
    convert_to_qcow2(&raw, &img, &["-o", "cluster_size=4k"]);
    let header = std::fs::read(&img).unwrap();
    let l1 = u64::from_be_bytes(header[40..48].try_into().unwrap());
    let len = header.len() as u64;
    // L1[0] past the end of the file; L1[1] misaligned.
    patch(
        &img,
        l1,
        &((len + (1 << 20)) & !4095 | 1 << 63).to_be_bytes(),
    );
    patch(&img, l1 + 8, &(0x1200u64 | 1 << 63).to_be_bytes());
    let mut server = Server::start(&["-r", s(&img)]);
    let io = |cmd: &str| {
        run(
            "qemu-io",
            &qemu_io_args(&["-r", "-f", "raw"], &[cmd], &server.url),
        )
    };
    for cmd in ["read 0 4k", "read 1M 64k", "read 2M 4k"] {
        let out = io(cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Input/output error"), "{cmd}: {text}");
    }
    // The rest reads as the raw image does.
    let out = io("read -v 6M 16");
    assert!(out.status.success());
    let mut expect = vec![0u8; 16];
    std::fs::File::open(&raw)
        .unwrap()
        .read_exact_at(&mut expect, 6 << 20)
        .unwrap();
    let first = format!("{:02x} {:02x}", expect[0], expect[1]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&first),
        "{first}"
    );
    assert!(server.alive());
}

/// The same qemu-io commands on the export and on a raw model.
fn io_both(server: &Server, model: &Path, cmds: &[&str]) {
    for target in [server.url.as_str(), s(model)] {
        let out = qemu_io(&["-f", "raw"], cmds, target);
        assert!(!out.contains("error") && !out.contains("failed"), "{out}");
    }
}

/// `qemu-img check` exit status: 0 clean, 3 leaks only, 2 corruption.
fn check(img: &Path) -> i32 {
    run("qemu-img", &["check", "-q", s(img)])
        .status
        .code()
        .unwrap_or(-1)
}

/// Text-like data, which compresses (random data would be stored raw).
fn make_text(path: &Path, len: usize) {
    let words: [&[u8]; 6] = [
        b"alpha ",
        b"beta ",
        b"gamma ",
        b"costack ",
        b"qcow2 ",
        b"cluster ",
    ];
    let mut out = Vec::with_capacity(len + 8);
    let mut x = 7u64;
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 60) as usize % words.len()]);
    }
    out.truncate(len);
    std::fs::write(path, out).unwrap();
}

#[test]
fn writes_keep_images_clean_and_equal_to_a_model() {
    if !tools() {
        return;
    }
    let d = dir("writes");
    let cmds = [
        "write -P 0x61 4k 512",
        "write -P 0x62 70k 1k",
        "write -z 200k 64k",
        "write -P 0x63 129k 130k",
        "write -z 1001k 3k",
        "write -P 0x64 3M 1M",
        "discard 6M 1M",
        "write -P 0x65 6M 4k",
        "flush",
    ];
    let text = d.join("text.raw");
    make_text(&text, 8 << 20);
    // Fresh images of several cluster sizes (512 B makes the refcount
    // table grow), version 2, and an image of compressed clusters.
    let cases: [(&str, &[&str]); 4] = [
        ("c512.qcow2", &["-o", "cluster_size=512"]),
        ("c64k.qcow2", &[]),
        ("v2.qcow2", &["-o", "compat=0.10,cluster_size=4k"]),
        ("compressed.qcow2", &["-c", "-o", "cluster_size=4k"]),
    ];
    for (name, opts) in cases {
        let img = d.join(name);
        let model = d.join(format!("{name}.model"));
        if opts.contains(&"-c") {
            convert_to_qcow2(&text, &img, opts);
            std::fs::copy(&text, &model).unwrap();
        } else {
            create_qcow2(&img, "8M", opts);
            std::fs::File::create(&model)
                .unwrap()
                .set_len(8 << 20)
                .unwrap();
        }
        let server = Server::start(&[s(&img)]);
        io_both(&server, &model, &cmds);
        // Many requests in flight over several connections.
        let random = d.join("random.raw");
        make_raw(&random);
        let half = d.join("half.raw");
        std::fs::write(&half, &std::fs::read(&random).unwrap()[..4 << 20]).unwrap();
        ok(
            "nbdcopy",
            &["--connections=4", "--requests=16", s(&half), &server.url],
        );
        {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&model)
                .unwrap();
            f.write_all_at(&std::fs::read(&half).unwrap(), 0).unwrap();
        }
        // qemu-img convert as the writer, over the last 2 MiB.
        let tail = d.join("tail.raw");
        std::fs::write(&tail, &std::fs::read(&random).unwrap()[6 << 20..]).unwrap();
        let target = format!(
            "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port={},offset={},size={}",
            server
                .url
                .trim_start_matches("nbd://127.0.0.1:")
                .trim_end_matches('/'),
            6 << 20,
            2 << 20
        );
        ok(
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                "--target-image-opts",
                s(&tail),
                &target,
            ],
        );
        {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&model)
                .unwrap();
            f.write_all_at(&std::fs::read(&tail).unwrap(), 6 << 20)
                .unwrap();
        }
        same(&model, &server);
        drop(server);
        assert_eq!(check(&img), 0, "{name}: qemu-img check is not clean");
        ok(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "raw",
                "-F",
                "qcow2",
                s(&model),
                s(&img),
            ],
        );
    }

    // An overlay: written through, its backing file never touched.
    let base = d.join("base.qcow2");
    convert_to_qcow2(&text, &base, &[]);
    let before = std::fs::read(&base).unwrap();
    let top = d.join("top.qcow2");
    create_overlay(&top, &base, "qcow2", None);
    let model = d.join("top.model");
    std::fs::copy(&text, &model).unwrap();
    let server = Server::start(&[s(&top)]);
    io_both(&server, &model, &cmds);
    drop(server);
    assert!(
        std::fs::read(&base).unwrap() == before,
        "the backing file changed"
    );
    assert_eq!(check(&top), 0);
    ok(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "qcow2",
            s(&model),
            s(&top),
        ],
    );
}

#[test]
fn kill_9_under_load_leaves_at_worst_leaks() {
    if !tools() {
        return;
    }
    let d = dir("kill");
    let random = d.join("random.raw");
    make_raw(&random);
    for round in 0..4u64 {
        let img = d.join(format!("k{round}.qcow2"));
        create_qcow2(&img, "8M", &["-o", "cluster_size=4k"]);
        let server = Server::start(&[s(&img)]);
        let mut copy = Command::new("nbdcopy")
            .args(["--connections=4", "--requests=16", s(&random), &server.url])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + 40 * round));
        drop(server); // SIGKILL
        let _ = copy.kill();
        let _ = copy.wait();
        let rc = check(&img);
        assert!(
            rc == 0 || rc == 3,
            "round {round}: qemu-img check exit {rc} (2 is corruption)"
        );
    }
}

#[test]
fn an_image_left_dirty_by_lazy_refcounts_is_repaired_when_written() {
    if !tools() {
        return;
    }
    let d = dir("dirty");
    let img = d.join("lazy.qcow2");
    create_qcow2(&img, "64M", &["-o", "lazy_refcounts=on"]);
    // qemu-io killed after a FLUSH: with lazy refcounts, the L2 tables
    // are on the disk and the refcounts are not; the dirty bit says so.
    let cmds = [
        "write -q -P 0x33 0 1M",
        "write -q -P 0x44 8M 64k",
        "flush",
        "sigraise 9",
    ];
    let out = run("qemu-io", &qemu_io_args(&["-f", "qcow2"], &cmds, s(&img)));
    assert!(!out.status.success(), "qemu-io was to be killed: {out:?}");
    assert_eq!(check(&img), 2, "the refcounts lag behind the tables");
    let mut server = Server::start(&[s(&img)]);
    qemu_io(
        &["-f", "raw"],
        &["read -q -P 0x33 0 1M", "write -q -P 0x55 2M 1M"],
        &server.url,
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    assert_eq!(check(&img), 0, "repaired, and the new clusters counted");
    qemu_io(
        &["-r", "-f", "qcow2"],
        &[
            "read -q -P 0x33 0 1M",
            "read -q -P 0x55 2M 1M",
            "read -q -P 0x44 8M 64k",
        ],
        s(&img),
    );
    let info = ok("qemu-img", &["info", "--output=json", s(&img)]);
    assert!(info.contains("\"dirty-flag\": false"), "{info}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn internal_snapshots_are_served_with_load_snapshot() {
    if !tools() {
        return;
    }
    let d = dir("load-snapshot");
    let img = d.join("snaps.qcow2");
    create_qcow2(&img, "8M", &[]);
    let io = |cmds: &[&str]| qemu_io(&["-f", "qcow2"], cmds, s(&img));
    // Snapshot "one" (id 1) sees 0x41 at 0; "two" (id 2), taken after a
    // resize, sees 0x42 there and a larger disk; the image itself 0x43.
    io(&["write -q -P 0x41 0 64k"]);
    ok("qemu-img", &["snapshot", "-c", "one", s(&img)]);
    io(&["write -q -P 0x42 0 64k"]);
    ok("qemu-img", &["resize", "-q", s(&img), "16M"]);
    ok("qemu-img", &["snapshot", "-c", "two", s(&img)]);
    io(&["write -q -P 0x43 0 64k"]);
    for (which, pattern, size) in [
        ("one", "0x41", 8u64 << 20),
        ("1", "0x41", 8 << 20),
        ("snapshot.name=two", "0x42", 16 << 20),
        ("snapshot.id=2,snapshot.name=two", "0x42", 16 << 20),
    ] {
        let server = Server::start(&["-l", which, s(&img)]);
        let check = format!("read -q -P {pattern} 0 64k");
        qemu_io(&["-r", "-f", "raw"], &[&check], &server.url);
        let info = ok("nbdinfo", &["--size", &server.url]);
        assert_eq!(info.trim(), size.to_string(), "-l {which}");
        // Read-only: a write is refused.
        let write = qemu_io_args(&["-f", "raw"], &["write -q 0 4k"], &server.url);
        let out = run("qemu-io", &write);
        assert!(!out.status.success(), "-l {which}: a write got through");
    }
    let e = refused(&["-l", "three", s(&img)]);
    assert!(e.contains("not found"), "{e}");
    // The image itself is untouched by all this.
    let server = Server::start(&["-r", s(&img)]);
    qemu_io(
        &["-r", "-f", "raw"],
        &["read -q -P 0x43 0 64k"],
        &server.url,
    );
}
