//! Power cuts on qcow2 images, tested rather than argued.
//!
//! `kill -9` cannot show what a power cut does (the page cache survives a
//! killed process), so these tests record every write and barrier the
//! qcow2 driver issues during a concurrent workload (a recorder under it
//! as its `ImageFile`), rebuild the files a power cut could have left
//! (`support::crash`: every write before the last completed barrier, plus
//! subsets of the rest), and check each one as qemu sees it:
//! - `qemu-img check` finds no corruption (exit 0, or 3: leaked clusters);
//! - every byte written before the last FLUSH that completed before the cut
//!   (FUA writes are a write and a FLUSH) and not written again since reads
//!   back as written (`qemu-img convert` to raw). Bytes written again since
//!   that FLUSH may hold anything: their write was never made durable.
//!
//! Covered: data clusters allocated at the end of the file, new L2 tables,
//! the refcount table growing (512-byte clusters), copy-on-write from a
//! backing file and from compressed clusters, zero clusters and discards,
//! on 512-byte and 64 KiB clusters. Then a crashed image made by hand (an
//! L2 entry past the end of the file, counted by refcounts) is written
//! through the driver: new clusters never land on one in use.
//!
//! `COSTACK_CRASH_STATES=N` sets the states per image (default 300; half
//! that for 512-byte clusters, whose states are slowest to read back).

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use costack::aio::{self, EventLoop};
use costack_nbd::block::qcow2::Qcow2;
use costack_nbd::block::BlockDevice;
use support::crash::{Cut, Log, Recorder, Replay, Subset};
use support::tools::{have, ok, run};
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
        .unwrap_or(300)
}

/// One request of the workload.
#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Trim(u64, u64),
}

impl Op {
    fn range(&self) -> (u64, u64) {
        match self {
            Op::Write(at, data) => (*at, data.len() as u64),
            Op::Zero(at, len) | Op::Trim(at, len) => (*at, *len),
        }
    }

    fn run(&self, dev: &Qcow2) {
        let r = match self {
            Op::Write(at, data) => dev.write_at(data, *at),
            Op::Zero(at, len) => dev.write_zeroes(*at, *len, true),
            Op::Trim(at, len) => dev.trim(*at, *len),
        };
        r.unwrap_or_else(|e| panic!("{self:?}: {e}"));
    }
}

/// The guest's view: the bytes of the ranges of the virtual disk the
/// workload touches (`(start, bytes)`), and the ranges discarded since
/// (unspecified until written again). Compared a range at a time, as
/// slices: the test runs unoptimized.
#[derive(Clone)]
struct Windows {
    bytes: Vec<(u64, Vec<u8>)>,
    discarded: Vec<(u64, u64)>,
}

impl Windows {
    /// Where the last window ends.
    fn end(&self) -> u64 {
        self.bytes
            .iter()
            .map(|(start, b)| start + b.len() as u64)
            .max()
            .unwrap_or(0)
    }

    fn apply(&mut self, op: &Op) {
        let (at, len) = op.range();
        let (start, bytes) = self
            .bytes
            .iter_mut()
            .find(|(start, b)| (*start..*start + b.len() as u64).contains(&at))
            .expect("ops stay inside a window");
        let range = (at - *start) as usize..(at - *start + len) as usize;
        match op {
            Op::Write(_, data) => bytes[range].copy_from_slice(data),
            Op::Zero(..) => bytes[range].fill(0),
            Op::Trim(..) => {
                self.discarded.push((at, len));
                return;
            }
        }
        self.discarded
            .retain(|&(a, l)| !(at <= a && a + l <= at + len));
    }
}

/// A workload's rounds: requests run concurrently within a round; a round
/// may end with a FLUSH, whose completion is a checkpoint.
struct Round {
    ops: Vec<Op>,
    /// Log position once the round's FLUSH returned.
    flushed_at: Option<usize>,
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
    /// Crash states checked, as a share of `COSTACK_CRASH_STATES` (%).
    states_percent: usize,
    /// The workload must have moved the refcount table.
    grows_refcount_table: bool,
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

impl Image {
    /// Makes the image in `d`; returns its path and the guest's view.
    fn create(&self, d: &Path, rng: &mut Rng) -> (PathBuf, Windows) {
        let img = d.join("image.qcow2");
        let cluster = self.cluster.to_string();
        let mut initial = vec![0u8; 0];
        match self.from_data {
            None => {
                ok(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        &format!("cluster_size={cluster}"),
                        s(&img),
                        &self.virtual_size.to_string(),
                    ],
                );
            }
            Some((len, source)) => {
                let raw = d.join("source.raw");
                initial = data(rng, len as usize);
                std::fs::write(&raw, &initial).unwrap();
                if source == Source::Compressed {
                    ok(
                        "qemu-img",
                        &[
                            "convert",
                            "-q",
                            "-c",
                            "-O",
                            "qcow2",
                            "-o",
                            &format!("cluster_size={cluster}"),
                            s(&raw),
                            s(&img),
                        ],
                    );
                    ok(
                        "qemu-img",
                        &["resize", "-q", s(&img), &self.virtual_size.to_string()],
                    );
                } else {
                    ok(
                        "qemu-img",
                        &[
                            "create",
                            "-q",
                            "-f",
                            "qcow2",
                            "-o",
                            &format!("cluster_size={cluster}"),
                            "-b",
                            s(&raw),
                            "-F",
                            "raw",
                            s(&img),
                            &self.virtual_size.to_string(),
                        ],
                    );
                }
            }
        }
        if self.prefill > 0 {
            ok(
                "qemu-io",
                &[
                    "-f",
                    "qcow2",
                    "-c",
                    &format!("write -q -P 0x5a 0 {}", self.prefill),
                    s(&img),
                ],
            );
            initial.resize(initial.len().max(self.prefill as usize), 0);
            initial[..self.prefill as usize].fill(0x5a);
        }
        let bytes = self
            .windows
            .iter()
            .map(|&(start, len)| {
                let mut bytes = vec![0u8; len as usize];
                let have = initial
                    .len()
                    .saturating_sub(start as usize)
                    .min(len as usize);
                if have > 0 {
                    bytes[..have].copy_from_slice(&initial[start as usize..][..have]);
                }
                (start, bytes)
            })
            .collect();
        let windows = Windows {
            bytes,
            discarded: Vec::new(),
        };
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
                match rng.below(10) {
                    // Whole clusters: zeroed or discarded.
                    0 | 1 => {
                        let n = 1 + rng.below(4);
                        let at = start + rng.below(wlen / cs - n) * cs;
                        if rng.chance(50) {
                            Op::Zero(at, n * cs)
                        } else {
                            Op::Trim(at, n * cs)
                        }
                    }
                    // Anything from a few bytes to several clusters, at
                    // any offset.
                    _ => {
                        let len = match rng.below(3) {
                            0 => 1 + rng.below(512),
                            1 => 512 * (1 + rng.below(16)),
                            _ => cs * (1 + rng.below(3)),
                        }
                        .min(wlen);
                        let at = start + rng.below(wlen - len + 1);
                        Op::Write(at, data(rng, len as usize))
                    }
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
}

/// Runs the workload on `img` through a recording driver; returns the
/// rounds and the log.
fn record(image: &Image, img: &Path, rng: &mut Rng) -> (Vec<Round>, Log) {
    let log = Log::default();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let recorder = Recorder::new(costack::fs::File::from_std(file), log.clone());
    let dev = Qcow2::open_file(Box::new(recorder), img, true).unwrap();
    let mut plans = Vec::new();
    let mut filled = 0;
    for _ in 0..image.rounds {
        let ops = image.plan_round(rng, &mut filled);
        // FUA: one write, then a FLUSH of its own.
        let fua = ops.len() == 1 && matches!(ops[0], Op::Write(..));
        plans.push((ops, fua || rng.chance(30)));
    }
    let log2 = log.clone();
    let rounds = EventLoop::new().unwrap().block_on(move || {
        let dev = Rc::new(dev);
        let mut rounds = Vec::new();
        for (ops, flush) in plans {
            let running: Vec<_> = ops
                .iter()
                .cloned()
                .map(|op| {
                    let dev = dev.clone();
                    aio::spawn(move || op.run(&dev))
                })
                .collect();
            for r in running {
                r.join().expect("request panicked");
            }
            let flushed_at = flush.then(|| {
                dev.flush().unwrap();
                log2.len()
            });
            rounds.push(Round { ops, flushed_at });
        }
        dev.flush().unwrap();
        rounds.push(Round {
            ops: Vec::new(),
            flushed_at: Some(log2.len()),
        });
        rounds
    });
    (rounds, log)
}

/// What a cut must still show: the guest's view as of the last FLUSH that
/// completed before it, and the ranges written since (unchecked).
struct Expect<'a> {
    view: &'a Windows,
    since: Vec<(u64, u64)>,
}

/// Walks the rounds alongside cuts taken in order.
struct Expectations<'a> {
    rounds: &'a [Round],
    /// Rounds applied to `view`.
    next: usize,
    view: Windows,
}

impl Expectations<'_> {
    fn at(&mut self, cut: usize) -> Expect<'_> {
        // Apply every round whose FLUSH completed by the cut.
        let mut last_flushed = self.next;
        for (i, r) in self.rounds.iter().enumerate().skip(self.next) {
            if r.flushed_at.is_some_and(|p| p <= cut) {
                last_flushed = i + 1;
            }
        }
        for r in &self.rounds[self.next..last_flushed] {
            for op in &r.ops {
                self.view.apply(op);
            }
        }
        self.next = last_flushed;
        // Everything after: rounds up to (and with) the next FLUSH.
        let mut since = Vec::new();
        for r in &self.rounds[self.next..] {
            since.extend(r.ops.iter().map(Op::range));
            if r.flushed_at.is_some() {
                break;
            }
        }
        Expect {
            view: &self.view,
            since,
        }
    }
}

/// Checks one crash state, written to `path`, against `expect`.
fn check_state(path: &Path, expect: &Expect, what: &str) {
    let out = run("qemu-img", &["check", "-f", "qcow2", s(path)]);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 3)),
        "{what}: qemu-img check exit {code:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = path.with_extension("raw");
    let end = expect.view.end();
    if end <= 64 << 20 {
        // dd reads in large requests: much faster than convert on a
        // fragmented image of small clusters.
        let count = format!("count={}", end.div_ceil(1 << 20));
        let (input, output) = (format!("if={}", s(path)), format!("of={}", s(&raw)));
        let args = [
            "dd", "-f", "qcow2", "-O", "raw", "bs=1M", &count, &input, &output,
        ];
        ok("qemu-img", &args);
    } else {
        ok(
            "qemu-img",
            &["convert", "-f", "qcow2", "-O", "raw", s(path), s(&raw)],
        );
    }
    let f = std::fs::File::open(&raw).unwrap();
    let mut unchecked: Vec<(u64, u64)> = expect.view.discarded.clone();
    unchecked.extend(&expect.since);
    unchecked.sort_unstable();
    for (start, want) in &expect.view.bytes {
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, *start).unwrap();
        // The checked runs: the window minus the unchecked ranges.
        let end = start + want.len() as u64;
        let mut at = *start;
        for &(a, l) in unchecked.iter().chain([(end, 0)].iter()) {
            let (a, b) = (a.clamp(*start, end), (a + l).clamp(*start, end));
            if a > at {
                let run = (at - start) as usize..(a - start) as usize;
                if got[run.clone()] != want[run.clone()] {
                    let i = run.start + (run.clone().position(|i| got[i] != want[i]).unwrap());
                    panic!(
                        "{what}: flushed byte at guest offset {} reads {:#04x}, was written {:#04x}",
                        start + i as u64,
                        got[i],
                        want[i]
                    );
                }
            }
            at = at.max(b);
        }
    }
    std::fs::remove_file(&raw).unwrap();
}

/// Records `image`'s workload and checks its crash states on two threads.
fn power_cuts(image: Image) {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let d = dir(image.name);
    let mut rng = Rng::new(image.seed);
    let (img, windows) = image.create(&d, &mut rng);
    let base = std::fs::read(&img).unwrap();
    let (rounds, log) = record(&image, &img, &mut rng);
    // The image as the run left it: clean, and as the model says.
    let mut last = windows.clone();
    rounds
        .iter()
        .flat_map(|r| &r.ops)
        .for_each(|op| last.apply(op));
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
    check_state(&img, &done, &format!("{}: after the run", image.name));
    if image.grows_refcount_table {
        let header = Qcow2::open(&img, false).unwrap().header().clone();
        assert!(
            header.refcount_table_clusters > 1,
            "{}: the workload did not grow the refcount table",
            image.name
        );
    }

    let replay = Replay::new(base, log.events());
    let points = replay.cut_points(states_per_image() * image.states_percent / 300, &mut rng);
    let mut cuts = Vec::new();
    for &at in &points {
        for subset in [
            Subset::SmallOnly,
            Subset::LargeOnly,
            Subset::Random(rng.next()),
        ] {
            cuts.push(Cut { at, subset });
        }
    }
    cuts.push(Cut {
        at: replay.len(),
        subset: Subset::All,
    });
    cuts.push(Cut {
        at: replay.len(),
        subset: Subset::None,
    });
    // Two workers, each a contiguous half of the cuts (sorted), so each
    // replays its durable prefix once.
    let half = cuts.len().div_ceil(2);
    let checked = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (w, part) in cuts.chunks(half).enumerate() {
            let (replay, rounds, windows, d) = (&replay, &rounds, &windows, &d);
            let (checked, failures, name) = (&checked, &failures, image.name);
            scope.spawn(move || {
                let mut expectations = Expectations {
                    rounds,
                    next: 0,
                    view: windows.clone(),
                };
                let path = d.join(format!("state-{w}.qcow2"));
                replay.for_each_state(part, |cut, bytes| {
                    let expect = expectations.at(cut.at);
                    std::fs::write(&path, bytes).unwrap();
                    let what = format!(
                        "{name}: cut after {} of {} events, {:?}",
                        cut.at,
                        replay.len(),
                        cut.subset
                    );
                    if let Err(e) = std::panic::catch_unwind(|| check_state(&path, &expect, &what))
                    {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .unwrap_or_else(|| "panic".into());
                        failures.lock().unwrap().push(msg);
                    }
                    checked.fetch_add(1, Ordering::Relaxed);
                });
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!(
        "{}: {} events, {} crash states checked, {} corrupt or lost flushed data",
        image.name,
        replay.len(),
        checked.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} crash states fail; the first ones:\n{}",
        failures.len(),
        checked.load(Ordering::Relaxed),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn small_clusters_allocation_l2_tables_and_refcount_table_growth() {
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
        // Its states take longest to read back (qemu reads a fragmented
        // image of 512-byte clusters a cluster at a time).
        states_percent: 50,
        grows_refcount_table: true,
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
        states_percent: 100,
        grows_refcount_table: false,
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
        states_percent: 100,
        grows_refcount_table: false,
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
        states_percent: 100,
        grows_refcount_table: false,
        seed: 0x5eed_0c0c,
    });
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
    ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "64M"]);
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -P 0x11 0 64k", s(&img)],
    );
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
        ok(
            "qemu-io",
            &[
                "-r",
                "-f",
                "qcow2",
                "-c",
                &format!("read -q -P {byte:#x} {} 64k", k * cs),
                s(&img),
            ],
        );
    }
    let out = run("qemu-img", &["check", s(&img)]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "after writing: {out:?}"
    );
    std::fs::remove_dir_all(&d).ok();
}
