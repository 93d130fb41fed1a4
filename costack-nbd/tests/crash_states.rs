//! Power cuts on qcow2 and raw images, tested rather than argued.
//!
//! `kill -9` cannot show what a power cut does (the page cache survives a
//! killed process), so these tests record every write and barrier a driver
//! issues during a concurrent workload (a recorder under it as its
//! `ImageFile`), rebuild the files a power cut could have left
//! (`support::crash`: every write before the last completed barrier, plus
//! subsets of the rest, torn writes included), and check each one as qemu
//! sees it:
//! - `qemu-img check` finds no corruption (exit 0, or 3: leaked clusters);
//! - every byte written before the last FLUSH that completed before the cut
//!   (FUA writes are a write and a FLUSH) and not written again since reads
//!   back as written (`support::crash_workload`), through the driver itself
//!   for every state and through `qemu-img dd` for one in eight.
//!
//! Covered: data clusters allocated at the end of the file, new L2 tables,
//! the refcount table growing (512-byte clusters), L2 tables and refcount
//! blocks written back as tiny caches evict them, copy-on-write from a
//! backing file and from compressed clusters, zero clusters and discards,
//! clusters freed and reused, on 512-byte, 4 KiB and 64 KiB clusters; a raw
//! image. Then a crashed image made by hand (an L2 entry past the end of the
//! file, counted by refcounts) is written through the driver: new clusters
//! never land on one in use.
//!
//! `COSTACK_CRASH_STATES=N` sets the states per image (default 400; some
//! images take a share of it): a long run is `COSTACK_CRASH_STATES=20000`.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use costack::aio::EventLoop;
use costack_nbd::block::qcow2::bitmap::Bits;
use costack_nbd::block::qcow2::{Options, Qcow2};
use costack_nbd::block::raw::FileDisk;
use costack_nbd::block::BlockDevice;
use support::crash::{Event, Log, Recorder, Replay};
use support::crash_qcow2::{
    check_bitmap, qemu_img_check, read_back, read_back_with_qemu, BitmapView,
};
use support::crash_workload::{self as workload, Expect, Op, Windows};
use support::tools::{convert_to_qcow2, create_qcow2, have, ok, qemu_io, run};
use support::Rng;

fn dir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn states_per_image() -> usize {
    std::env::var("COSTACK_CRASH_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// How an image is made and exercised.
struct Image {
    name: &'static str,
    cluster: u64,
    virtual_size: u64,
    /// Where the workload writes: `(start, len)` ranges.
    windows: Vec<(u64, u64)>,
    /// Made from a raw file of this many bytes of compressible data:
    /// compressed (`qemu-img convert -c`), or as a backing file.
    from_data: Option<(u64, Source)>,
    /// Bytes qemu-io writes at the start of the first window before the
    /// recording (a pattern), so the recorded workload starts on a grown
    /// file.
    prefill: u64,
    /// Bytes written front to back after those, in 128 KiB requests,
    /// besides the random ones (grows the file: L2 tables, refcount blocks
    /// and table).
    fill: u64,
    rounds: usize,
    /// Chance of a request being a discard or write-zeroes of whole
    /// clusters, and of a round ending with a FLUSH (%).
    discard_percent: u64,
    flush_percent: u64,
    /// The driver's options (cache sizes).
    options: Options,
    /// Crash states checked, as a share of `COSTACK_CRASH_STATES` (%).
    states_percent: usize,
    /// The workload must have moved the refcount table.
    grows_refcount_table: bool,
    /// The file may end no further than this after the run (clusters
    /// freed were reused).
    file_bound: Option<u64>,
    /// Carries an `auto` bitmap, `b0` (4 KiB granularity), kept up to date
    /// and saved at close.
    bitmap: bool,
    seed: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Compressed,
    Backing,
}

/// Compressible bytes (16 symbols), so `qemu-img convert -c` compresses.
fn data(rng: &mut Rng, n: usize) -> Vec<u8> {
    rng.bytes(n).into_iter().map(|b| b & 0x0f).collect()
}

/// Cache sizes small enough that the workloads evict dirty tables: two
/// L2 tables, QEMU's minimum of four refcount blocks.
fn tiny_caches(cluster: u64) -> Options {
    Options {
        writable: true,
        l2_cache_bytes: 2 * cluster,
        refcount_cache_bytes: Some(4 * cluster),
        ..Options::default()
    }
}

fn default_caches() -> Options {
    Options {
        writable: true,
        ..Options::default()
    }
}

impl Image {
    /// Makes the image in `d`; returns its path and the guest's view.
    fn create(&self, d: &Path, rng: &mut Rng) -> (PathBuf, Windows) {
        let img = d.join("image.qcow2");
        let cluster = format!("cluster_size={}", self.cluster);
        let size = self.virtual_size.to_string();
        let mut initial = vec![0u8; 0];
        match self.from_data {
            None => create_qcow2(&img, &size, &["-o", &cluster]),
            Some((len, source)) => {
                let raw = d.join("source.raw");
                initial = data(rng, len as usize);
                std::fs::write(&raw, &initial).unwrap();
                if source == Source::Compressed {
                    convert_to_qcow2(&raw, &img, &["-c", "-o", &cluster]);
                    ok("qemu-img", &["resize", "-q", s(&img), &size]);
                } else {
                    let backing = ["-o", &cluster, "-b", s(&raw), "-F", "raw"];
                    create_qcow2(&img, &size, &backing);
                }
            }
        }
        if self.prefill > 0 {
            let fill = format!("write -q -P 0x5a 0 {}", self.prefill);
            qemu_io(&["-f", "qcow2"], &[&fill], s(&img));
            initial.resize(initial.len().max(self.prefill as usize), 0);
            initial[..self.prefill as usize].fill(0x5a);
        }
        if self.bitmap {
            ok(
                "qemu-img",
                &["bitmap", "--add", "-g", "4096", s(&img), "b0"],
            );
        }
        let windows = Windows::new(&self.windows, &initial);
        (img, windows)
    }

    /// A round of requests whose byte ranges do not overlap (they may share
    /// clusters: writers of one cluster wait for its allocation).
    fn plan_round(&self, rng: &mut Rng, filled: &mut u64) -> Vec<Op> {
        let mut ops: Vec<Op> = Vec::new();
        let n = 1 + rng.below(6);
        while ops.len() < n as usize {
            let op = if *filled < self.fill && rng.chance(50) {
                let at = self.windows[0].0 + self.prefill + *filled;
                let len = (128 << 10).min(self.fill - *filled);
                *filled += len;
                Op::Write(at, data(rng, len as usize))
            } else {
                let (start, wlen) = self.windows[rng.below(self.windows.len() as u64) as usize];
                let cs = self.cluster;
                if rng.chance(self.discard_percent) {
                    // Whole clusters: zeroed (unmapped or not) or discarded.
                    let n = 1 + rng.below(4);
                    let at = start + rng.below(wlen / cs - n) * cs;
                    match rng.below(3) {
                        0 => Op::Zero(at, n * cs, true),
                        1 => Op::Zero(at, n * cs, false),
                        _ => Op::Trim(at, n * cs),
                    }
                } else {
                    // Anything from a few bytes to several clusters, at
                    // any offset.
                    let len = match rng.below(3) {
                        0 => 1 + rng.below(512),
                        1 => 512 * (1 + rng.below(16)),
                        _ => cs * (1 + rng.below(3)),
                    }
                    .min(wlen);
                    let at = start + rng.below(wlen - len + 1);
                    Op::Write(at, data(rng, len as usize))
                }
            };
            let (a, la) = op.range();
            let overlaps = ops.iter().any(|o| {
                let (b, lb) = o.range();
                a < b + lb && b < a + la
            });
            if !overlaps {
                ops.push(op);
            }
        }
        ops
    }

    /// The rounds: requests, and whether a FLUSH ends each.
    fn plans(&self, rng: &mut Rng) -> Vec<(Vec<Op>, bool)> {
        let mut filled = 0;
        (0..self.rounds)
            .map(|_| {
                let ops = self.plan_round(rng, &mut filled);
                // FUA: one write, then a FLUSH of its own.
                let fua = ops.len() == 1 && matches!(ops[0], Op::Write(..));
                let flush = fua || rng.chance(self.flush_percent);
                (ops, flush)
            })
            .collect()
    }
}

/// Records `image`'s workload and checks its crash states.
fn power_cuts(image: Image) {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let d = dir(image.name);
    let mut rng = Rng::new(image.seed);
    let (img, windows) = image.create(&d, &mut rng);
    let base = std::fs::read(&img).unwrap();
    let log = Log::default();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let recorder = Recorder::new(costack::fs::File::from_std(file), log.clone());
    let dev = Rc::new(Qcow2::open_file_with(Box::new(recorder), &img, &image.options).unwrap());
    let plans = image.plans(&mut rng);
    let rounds = workload::record(dev.clone(), plans, &log);
    // Closing (bitmaps saved, the file trimmed) is recorded too, and
    // every position in it is cut at.
    let closing = log.len();
    dev.close().unwrap();
    drop(dev);

    // The image as the run left it: clean, and as the model says.
    let last = workload::final_view(&windows, &rounds);
    let done = Expect {
        view: &last,
        since: Vec::new(),
    };
    let out = run("qemu-img", &["check", "-f", "qcow2", s(&img)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: after the run: {out:?}",
        image.name
    );
    let what = format!("{}: after the run", image.name);
    read_back_with_qemu(&img, &done, &what);
    read_back(&img, &std::fs::read(&img).unwrap(), &done, &what);
    if image.grows_refcount_table {
        let header = Qcow2::open(&img, false).unwrap().header().clone();
        assert!(
            header.refcount_table_clusters > 1,
            "{}: the workload did not grow the refcount table",
            image.name
        );
    }
    let file_len = std::fs::metadata(&img).unwrap().len();
    if let Some(bound) = image.file_bound {
        assert!(
            file_len <= bound,
            "{}: the file ends at {file_len}, past {bound}: freed clusters were not reused",
            image.name
        );
    }

    let bitmaps = image.bitmap.then(|| {
        let before = BitmapView::of(&img, &base);
        let after = BitmapView::of(&img, &std::fs::read(&img).unwrap());
        assert!(!after.in_use, "{}: b0 still in use after close", image.name);
        // Every request's range, and nothing else, is dirty.
        let mut want = Bits::new(image.virtual_size, 12);
        for op in rounds.iter().flat_map(|r| &r.ops) {
            let (at, len) = op.range();
            want.set_range(at, len);
        }
        assert_eq!(
            after.ranges,
            want.dirty_ranges(),
            "{}: b0 after close",
            image.name
        );
        (before, after)
    });

    // The open's barrier (bitmaps marked in use) is the log's first.
    let events = log.events();
    let marked_in_use = events
        .iter()
        .position(|e| matches!(e, Event::SyncEnd))
        .unwrap_or(0);
    let replay = Replay::new(base, events);
    let mut cuts = workload::cuts(
        &replay,
        states_per_image() * image.states_percent / 100,
        &mut rng,
    );
    cuts.extend(workload::cuts_in(closing..replay.len() + 1, &mut rng));
    cuts.sort_by_key(|c| c.at);
    let initial_view = Expect {
        view: &windows,
        since: Vec::new(),
    };
    workload::check_states(
        image.name,
        &replay,
        &cuts,
        &rounds,
        &windows,
        |w, cut, bytes, expect, what| {
            let path = d.join(format!("state-{w}.qcow2"));
            std::fs::write(&path, bytes).unwrap();
            qemu_img_check(&path, what);
            read_back(&img, bytes, expect, what);
            if let Some(views) = &bitmaps {
                if check_bitmap(&img, bytes, views, cut.at <= marked_in_use, what) {
                    // The old bitmap, complete: nothing may have changed.
                    let what = format!("{what}: b0 is the old one, not in use");
                    read_back(&img, bytes, &initial_view, &what);
                }
            }
            if cut.at % 8 == 0 {
                read_back_with_qemu(&path, expect, what);
            }
        },
    );
    eprintln!("{}: the file ends at {file_len} bytes", image.name);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn small_clusters_allocation_l2_tables_refcount_table_growth_and_evictions() {
    power_cuts(Image {
        name: "c512",
        cluster: 512,
        virtual_size: 16 << 20,
        windows: vec![(0, 16 << 20)],
        from_data: None,
        // Past 8 MiB: the first refcount table (one 512-byte cluster)
        // covers 8 MiB of file.
        prefill: 7 << 20,
        fill: 2 << 20,
        rounds: 90,
        discard_percent: 20,
        flush_percent: 30,
        // Every allocation touches another L2 table and refcount block.
        options: tiny_caches(512),
        // Its states take longest to check (qemu reads a fragmented image
        // of 512-byte clusters a cluster at a time).
        states_percent: 50,
        grows_refcount_table: true,
        file_bound: None,
        bitmap: false,
        seed: 0x5eed_0512,
    });
}

#[test]
fn large_clusters_scattered_allocation_and_new_l2_tables() {
    // 64 KiB clusters: an L2 table covers 512 MiB; windows in eight of them.
    power_cuts(Image {
        name: "c64k",
        cluster: 64 << 10,
        virtual_size: 4 << 30,
        windows: (0..8)
            .map(|k| (k * (512 << 20) + (k << 20), 2 << 20))
            .collect(),
        from_data: None,
        prefill: 0,
        fill: 0,
        rounds: 60,
        discard_percent: 20,
        flush_percent: 30,
        options: default_caches(),
        states_percent: 100,
        grows_refcount_table: false,
        file_bound: None,
        bitmap: false,
        seed: 0x5eed_0064,
    });
}

#[test]
fn copy_on_write_from_a_backing_file() {
    power_cuts(Image {
        name: "backing",
        cluster: 64 << 10,
        virtual_size: 64 << 20,
        windows: vec![(0, 8 << 20)],
        from_data: Some((8 << 20, Source::Backing)),
        prefill: 0,
        fill: 0,
        rounds: 60,
        discard_percent: 20,
        flush_percent: 30,
        options: default_caches(),
        states_percent: 100,
        grows_refcount_table: false,
        file_bound: None,
        bitmap: false,
        seed: 0x5eed_0bac,
    });
}

#[test]
fn rewrites_of_compressed_clusters() {
    power_cuts(Image {
        name: "compressed",
        cluster: 64 << 10,
        virtual_size: 64 << 20,
        windows: vec![(0, 8 << 20)],
        from_data: Some((8 << 20, Source::Compressed)),
        prefill: 0,
        fill: 0,
        rounds: 60,
        discard_percent: 20,
        flush_percent: 30,
        options: default_caches(),
        states_percent: 100,
        grows_refcount_table: false,
        file_bound: None,
        bitmap: false,
        seed: 0x5eed_0c0c,
    });
}

#[test]
fn clusters_freed_and_reused_with_evictions() {
    // 4 KiB clusters, three windows in three L2 tables (each covers
    // 2 MiB) with a cache of two; a compressed start; many discards and
    // FLUSHes, so freed clusters come back while tables are evicted.
    power_cuts(Image {
        name: "reuse",
        cluster: 4 << 10,
        virtual_size: 32 << 20,
        windows: vec![(0, 1 << 20), (8 << 20, 1 << 20), (16 << 20, 1 << 20)],
        from_data: Some((1 << 20, Source::Compressed)),
        prefill: 0,
        fill: 0,
        rounds: 160,
        discard_percent: 45,
        flush_percent: 50,
        options: tiny_caches(4 << 10),
        states_percent: 100,
        grows_refcount_table: false,
        // It ends near 1.6 MiB; without reuse, near 2.5 MiB.
        file_bound: Some(2 << 20),
        bitmap: false,
        seed: 0x5eed_4e05,
    });
}

#[test]
fn dirty_bitmaps_kept_and_saved() {
    // An auto bitmap (4 KiB granularity) tracks every request; the cuts
    // reach into close, where it is saved.
    power_cuts(Image {
        name: "bitmaps",
        cluster: 64 << 10,
        virtual_size: 64 << 20,
        windows: vec![(0, 4 << 20), (40 << 20, 4 << 20)],
        from_data: None,
        // Allocated before the bitmap is added: writes there go in place,
        // with no barrier of their own.
        prefill: 4 << 20,
        fill: 0,
        rounds: 50,
        discard_percent: 20,
        flush_percent: 30,
        options: default_caches(),
        states_percent: 50,
        grows_refcount_table: false,
        file_bound: None,
        bitmap: true,
        seed: 0x5eed_b17a,
    });
}

#[test]
fn raw_images() {
    let d = dir("raw");
    let mut rng = Rng::new(0x5eed_04a3);
    let img = d.join("image.raw");
    let initial = data(&mut rng, 4 << 20);
    std::fs::write(&img, &initial).unwrap();
    let base = std::fs::read(&img).unwrap();
    let windows_at = [(0, 4 << 20)];
    let windows = Windows::new(&windows_at, &initial);
    let image = Image {
        name: "raw",
        cluster: 4096,
        virtual_size: 4 << 20,
        windows: windows_at.to_vec(),
        from_data: None,
        prefill: 0,
        fill: 0,
        rounds: 120,
        discard_percent: 30,
        flush_percent: 30,
        options: default_caches(),
        states_percent: 100,
        grows_refcount_table: false,
        file_bound: None,
        bitmap: false,
        seed: 0,
    };
    let log = Log::default();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let recorder = Recorder::new(costack::fs::File::from_std(file), log.clone());
    let dev = FileDisk::open_file(Box::new(recorder), false, false).unwrap();
    let rounds = workload::record(Rc::new(dev), image.plans(&mut rng), &log);
    let last = workload::final_view(&windows, &rounds);
    let after = std::fs::read(&img).unwrap();
    Expect {
        view: &last,
        since: Vec::new(),
    }
    .compare("raw: after the run", |at, buf| {
        buf.copy_from_slice(&after[at as usize..][..buf.len()])
    });
    let replay = Replay::new(base, log.events());
    let cuts = workload::cuts(&replay, states_per_image(), &mut rng);
    workload::check_states(
        "raw",
        &replay,
        &cuts,
        &rounds,
        &windows,
        |_, _, bytes, expect, what| {
            assert_eq!(bytes.len(), after.len(), "{what}: the length changed");
            expect.compare(what, |at, buf| {
                buf.copy_from_slice(&bytes[at as usize..][..buf.len()])
            });
        },
    );
    std::fs::remove_dir_all(&d).ok();
}

/// Guest cluster number to host offset, from `qemu-img map`.
fn host_clusters(img: &Path, cs: u64) -> std::collections::BTreeMap<u64, u64> {
    let map = ok("qemu-img", &["map", "--output=json", s(img)]);
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = &line[line.find(&format!("\"{name}\": "))? + name.len() + 4..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut hosts = std::collections::BTreeMap::new();
    for line in map.lines() {
        let (Some(start), Some(length), Some(offset)) = (
            field(line, "start"),
            field(line, "length"),
            field(line, "offset"),
        ) else {
            continue;
        };
        for k in start / cs..(start + length) / cs {
            hosts.insert(k, offset + k * cs - start);
        }
    }
    hosts
}

fn be64_at(f: &std::fs::File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn reopened_after_a_cut_no_cluster_in_use_is_handed_out() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let d = dir("reopen");
    let img = d.join("cut.qcow2");
    let cs: u64 = 64 << 10;
    create_qcow2(&img, "64M", &[]);
    qemu_io(&["-f", "qcow2"], &["write -q -P 0x11 0 64k"], s(&img));
    // What the old reservation could leave after a power cut: clusters
    // counted past the end of the file, and an L2 entry (guest cluster 1)
    // pointing at one of them.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let end = f.metadata().unwrap().len();
    assert_eq!(end % cs, 0);
    let first = end / cs;
    let refcount_block = be64_at(&f, be64_at(&f, 48)) & !0x1ff;
    for c in first..first + 4 {
        f.write_all_at(&1u16.to_be_bytes(), refcount_block + c * 2)
            .unwrap();
    }
    let l2 = be64_at(&f, be64_at(&f, 40)) & 0x00ff_ffff_ffff_fe00;
    let stray = (first + 2) * cs;
    f.write_all_at(&(stray | 1 << 63).to_be_bytes(), l2 + 8)
        .unwrap();
    drop(f);
    let out = run("qemu-img", &["check", s(&img)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the image made is corrupt: {out:?}"
    );

    let dev = Qcow2::open(&img, true).unwrap();
    EventLoop::new().unwrap().block_on(move || {
        for (k, byte) in [(2u64, 0x22u8), (3, 0x33), (4, 0x44)] {
            dev.write_at(&vec![byte; cs as usize], k * cs).unwrap();
        }
        dev.flush().unwrap();
    });
    // The new clusters lie past every counted one: the file now reaches
    // over the stray cluster, which nothing else uses.
    let hosts = host_clusters(&img, cs);
    assert_eq!(hosts.len(), 5, "clusters 0 to 4 mapped: {hosts:?}");
    assert_eq!(hosts[&1], stray);
    for k in 2..5 {
        assert!(
            hosts[&k] >= (first + 4) * cs,
            "guest cluster {k} was put on a counted cluster: {hosts:?}"
        );
    }
    let mut distinct: Vec<u64> = hosts.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        5,
        "two guest clusters share a host cluster: {hosts:?}"
    );
    for (k, byte) in [(0u64, 0x11u8), (1, 0), (2, 0x22), (3, 0x33), (4, 0x44)] {
        let read = format!("read -q -P {byte:#x} {} 64k", k * cs);
        qemu_io(&["-r", "-f", "qcow2"], &[&read], s(&img));
    }
    let out = run("qemu-img", &["check", s(&img)]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "after writing: {out:?}"
    );
    std::fs::remove_dir_all(&d).ok();
}
