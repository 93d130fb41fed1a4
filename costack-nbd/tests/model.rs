//! Model-based end-to-end test: random request streams against the real
//! `costack-nbd` binary, every read compared with an in-memory model disk.
//!
//! Each batch sends several requests before reading any reply (the server
//! runs them concurrently and may answer in any order; replies are matched
//! by handle). Requests of one batch touch disjoint ranges, so their order
//! does not matter to the model. Trimmed bytes are "unknown" in the model
//! (their contents are unspecified) until written again. Requests that must
//! be refused are mixed in and their error codes checked.
//!
//! The seed is printed; `COSTACK_MODEL_SEED=<n>` replays a run.

mod support;

use std::collections::HashMap;

use support::*;

/// What a reply must look like, and how it changes the model.
#[derive(Debug)]
enum Expect {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        offset: u64,
        len: u32,
        fast: bool,
    },
    Trim {
        offset: u64,
        len: u32,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Ok,
    Error(u32, &'static str),
}

struct Run {
    rng: Rng,
    model: Model,
    client: Client,
    read_only: bool,
    /// Longest request generated.
    max_len: u64,
    /// The part of the export this run owns: `[lo, hi)`.
    lo: u64,
    hi: u64,
    stats: HashMap<&'static str, usize>,
}

impl Run {
    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn align(&self) -> u64 {
        u64::from(self.client.export.min_block.max(1))
    }

    /// A random aligned range inside the export, disjoint from `used`.
    fn range(&mut self, used: &[(u64, u64)]) -> Option<(u64, u32)> {
        let a = self.align();
        let (lo, hi) = (self.lo, self.hi);
        for _ in 0..8 {
            let offset = lo + a * self.rng.below((hi - lo) / a);
            let room = (hi - offset).min(self.max_len) / a;
            // Mostly small requests, some up to `max_len`.
            let units = if self.rng.chance(70) {
                1 + self.rng.below(room.min(4))
            } else {
                1 + self.rng.below(room)
            };
            let len = units * a;
            if used.iter().all(|&(s, e)| offset + len <= s || offset >= e) {
                return Some((offset, len as u32));
            }
        }
        None
    }

    /// Sends one random valid request; returns what to expect.
    fn valid(&mut self, used: &mut Vec<(u64, u64)>) -> Option<(u64, Expect)> {
        let (offset, len) = self.range(used)?;
        used.push((offset, offset + u64::from(len)));
        let e = self.client.export.clone();
        let roll = self.rng.below(100);
        let mut payload = Vec::new();
        // Now and then a zero-length request (a no-op), sometimes right at
        // the end of the export.
        // (Not for block status, where zero length is invalid: that is
        // tested as a refusal.)
        let block_status = !self.read_only && roll >= 92 && e.meta_id.is_some();
        let (offset, len) = match self.rng.below(100) {
            _ if block_status => (offset, len),
            0 => (e.size, 0),
            1..=2 => (offset, 0),
            _ => (offset, len),
        };
        let (name, cmd, flags, len, expect) = match roll {
            _ if self.read_only || roll < 40 => {
                let mut flags = 0;
                if e.has(TF_SEND_DF) && self.rng.chance(20) {
                    flags |= FLAG_DF;
                }
                ("read", CMD_READ, flags, len, Expect::Read { offset, len })
            }
            40..=64 => {
                let data = self.rng.bytes(len as usize);
                payload.clone_from(&data);
                let flags = if self.rng.chance(30) { FLAG_FUA } else { 0 };
                (
                    "write",
                    CMD_WRITE,
                    flags,
                    len,
                    Expect::Write { offset, data },
                )
            }
            65..=76 => {
                let mut flags = 0;
                if self.rng.chance(40) {
                    flags |= FLAG_NO_HOLE;
                }
                let fast = e.has(TF_SEND_FAST_ZERO) && self.rng.chance(25);
                if fast {
                    flags |= FLAG_FAST_ZERO;
                }
                if self.rng.chance(20) {
                    flags |= FLAG_FUA;
                }
                let expect = Expect::Zero { offset, len, fast };
                ("write_zeroes", CMD_WRITE_ZEROES, flags, len, expect)
            }
            77..=84 => ("trim", CMD_TRIM, 0, len, Expect::Trim { offset, len }),
            85..=89 => ("flush", CMD_FLUSH, 0, 0, Expect::Ok),
            90..=91 => ("cache", CMD_CACHE, 0, len, Expect::Ok),
            _ if e.meta_id.is_some() => {
                let req_one = self.rng.chance(30);
                let flags = if req_one { FLAG_REQ_ONE } else { 0 };
                let expect = Expect::BlockStatus {
                    offset,
                    len,
                    req_one,
                };
                ("block_status", CMD_BLOCK_STATUS, flags, len, expect)
            }
            _ => ("read", CMD_READ, 0, len, Expect::Read { offset, len }),
        };
        self.count(name);
        let offset = if cmd == CMD_FLUSH { 0 } else { offset };
        let h = self
            .client
            .send(cmd, flags, offset, len, &payload)
            .expect("send request");
        Some((h, expect))
    }

    /// Sends one request the server must refuse; returns the expected
    /// error. Rules as documented on `request::validate`.
    fn invalid(&mut self) -> (u64, Expect) {
        let e = self.client.export.clone();
        let a = self.align();
        let size = e.size;
        let past = size - a; // aligned, one unit before the end
        let long = (4 * a) as u32; // so `past + long` is beyond the end
        let mut choices: Vec<(&'static str, u16, u16, u64, u32, u32)> = vec![
            ("read past the end", CMD_READ, 0, past, long, EINVAL),
            (
                "read starting past the end",
                CMD_READ,
                0,
                size + a,
                a as u32,
                EINVAL,
            ),
            (
                "read with overflowing range",
                CMD_READ,
                0,
                u64::MAX - a + 1,
                long,
                EINVAL,
            ),
            ("unknown command", 42, 0, 0, a as u32, EINVAL),
            (
                "flag not defined for read",
                CMD_READ,
                FLAG_REQ_ONE,
                0,
                a as u32,
                EINVAL,
            ),
        ];
        if e.max_block != u32::MAX {
            let too_long = e.max_block + a as u32;
            choices.push((
                "read over the maximum block size",
                CMD_READ,
                0,
                0,
                too_long,
                EINVAL,
            ));
        }
        if !e.has(TF_SEND_DF) {
            choices.push((
                "DF without structured replies",
                CMD_READ,
                FLAG_DF,
                0,
                a as u32,
                EINVAL,
            ));
        }
        match e.meta_id {
            Some(_) => choices.push((
                "zero-length block status",
                CMD_BLOCK_STATUS,
                0,
                0,
                0,
                EINVAL,
            )),
            None => choices.push((
                "block status without a context",
                CMD_BLOCK_STATUS,
                0,
                0,
                a as u32,
                EINVAL,
            )),
        }
        if a > 1 {
            choices.push((
                "misaligned read offset",
                CMD_READ,
                0,
                a / 2,
                a as u32,
                EINVAL,
            ));
            choices.push((
                "misaligned read length",
                CMD_READ,
                0,
                0,
                (a + 1) as u32,
                EINVAL,
            ));
        }
        if self.read_only {
            choices.push((
                "write to a read-only export",
                CMD_WRITE,
                0,
                0,
                a as u32,
                EPERM,
            ));
            choices.push((
                "write past the end, read-only",
                CMD_WRITE,
                0,
                past,
                long,
                EPERM,
            ));
            choices.push((
                "trim on a read-only export",
                CMD_TRIM,
                0,
                0,
                a as u32,
                EPERM,
            ));
            choices.push((
                "write zeroes on a read-only export",
                CMD_WRITE_ZEROES,
                0,
                0,
                a as u32,
                EPERM,
            ));
        } else {
            choices.push(("write past the end", CMD_WRITE, 0, past, long, ENOSPC));
            choices.push((
                "write starting past the end",
                CMD_WRITE,
                0,
                size,
                a as u32,
                ENOSPC,
            ));
            choices.push((
                "write zeroes past the end",
                CMD_WRITE_ZEROES,
                0,
                past,
                long,
                ENOSPC,
            ));
            choices.push(("trim past the end", CMD_TRIM, 0, past, long, EINVAL));
            if a > 1 {
                let n = a as u32;
                choices.push(("misaligned write", CMD_WRITE, 0, a + 1, n, EINVAL));
                choices.push(("misaligned write zeroes", CMD_WRITE_ZEROES, 0, 1, n, EINVAL));
                choices.push(("misaligned trim", CMD_TRIM, 0, a, n - 1, EINVAL));
            }
        }
        let (what, cmd, flags, offset, len, code) =
            choices[self.rng.below(choices.len() as u64) as usize];
        self.count("refused");
        // Rejected writes still carry their payload, which the server must
        // skip to stay in sync.
        let payload = if cmd == CMD_WRITE {
            self.rng.bytes(len as usize)
        } else {
            Vec::new()
        };
        let h = self
            .client
            .send(cmd, flags, offset, len, &payload)
            .expect("send request");
        (h, Expect::Error(code, what))
    }

    fn check_reply(&mut self, r: Reply, expect: Expect) {
        let e = &self.client.export;
        match expect {
            Expect::Error(code, what) => {
                assert_eq!(r.error, code, "{what}: wrong error");
            }
            Expect::Read { offset, len } => {
                assert_eq!(r.error, 0, "read [{offset}, +{len}) failed");
                assert_eq!(r.data.len(), len as usize);
                self.model.check(offset, &r.data, "read");
            }
            Expect::Write { offset, data } => {
                assert_eq!(r.error, 0, "write at {offset} failed");
                self.model.write(offset, &data);
            }
            Expect::Zero { offset, len, fast } => {
                if fast && r.error == ENOTSUP {
                    // A fast zero the device cannot do changes nothing.
                    return;
                }
                assert_eq!(r.error, 0, "write zeroes at {offset} failed");
                self.model.zero(offset, len);
            }
            Expect::Trim { offset, len } => {
                assert_eq!(r.error, 0, "trim at {offset} failed");
                self.model.forget(offset, len);
            }
            Expect::Ok => assert_eq!(r.error, 0),
            Expect::BlockStatus {
                offset,
                len,
                req_one,
            } => {
                assert_eq!(r.error, 0, "block status failed");
                assert_eq!(r.context, e.meta_id, "block status context id");
                assert!(!r.extents.is_empty());
                if req_one {
                    assert_eq!(r.extents.len(), 1, "REQ_ONE gave several extents");
                }
                let mut at = offset;
                let min = e.min_block.max(1);
                for &(n, flags) in &r.extents {
                    assert!(n > 0, "zero-length extent");
                    assert!(
                        n.is_multiple_of(min),
                        "extent length {n} not a multiple of {min}"
                    );
                    assert!(
                        at + u64::from(n) <= offset + u64::from(len),
                        "extent overruns"
                    );
                    if flags & STATE_ZERO != 0 {
                        assert!(
                            self.model.zero_where_known(at, u64::from(n)),
                            "extent [{at}, +{n}) claims zeroes over data"
                        );
                    }
                    at += u64::from(n);
                }
            }
        }
    }

    /// Random batches of concurrent requests.
    fn batches(&mut self, n: usize, refusals: bool) {
        for _ in 0..n {
            let k = 1 + self.rng.below(8) as usize;
            let mut used = Vec::new();
            let mut expected = HashMap::new();
            for _ in 0..k {
                let sent = if refusals && self.rng.chance(10) {
                    Some(self.invalid())
                } else {
                    self.valid(&mut used)
                };
                if let Some((h, e)) = sent {
                    expected.insert(h, e);
                }
            }
            while !expected.is_empty() {
                let r = self.client.recv().expect("reply");
                let e = expected
                    .remove(&r.handle)
                    .unwrap_or_else(|| panic!("reply to unexpected handle {}", r.handle));
                self.check_reply(r, e);
            }
        }
    }

    /// Reads the whole export back and compares it with the model.
    fn verify_all(&mut self) {
        let step = 1u64 << 20;
        let mut at = self.lo;
        while at < self.hi {
            let n = (self.hi - at).min(step) as u32;
            let got = self.client.read(at, n).expect("read back");
            self.model.check(at, &got, "final read-back");
            at += u64::from(n);
        }
    }
}

fn seed(test: u64) -> u64 {
    let base = std::env::var("COSTACK_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001);
    let s = base ^ test.wrapping_mul(0x1000_0001);
    eprintln!("model seed {s} (COSTACK_MODEL_SEED={base})");
    s
}

/// One model run against `server`.
fn run(
    server: &Server,
    opts: Opts,
    initial: Vec<u8>,
    read_only: bool,
    seed: u64,
    batches: usize,
) -> Run {
    let client = server.connect(opts);
    let size = initial.len() as u64;
    assert_eq!(client.export.size, size);
    assert_eq!(client.export.has(TF_READ_ONLY), read_only);
    assert_eq!(client.export.meta_id.is_some(), opts.meta);
    let mut run = Run {
        rng: Rng::new(seed),
        model: Model::new(initial),
        client,
        read_only,
        max_len: 256 << 10,
        lo: 0,
        hi: size,
        stats: HashMap::new(),
    };
    run.batches(batches, true);
    run.verify_all();
    eprintln!("requests: {:?}", run.stats);
    for kind in ["read", "refused"] {
        assert!(
            run.stats.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} requests ran"
        );
    }
    if !read_only {
        for kind in ["write", "write_zeroes", "trim", "flush"] {
            assert!(
                run.stats.get(kind).copied().unwrap_or(0) > 0,
                "no {kind} requests ran"
            );
        }
    }
    run
}

const SIZE: usize = 2 << 20;

#[test]
fn memory_disk_structured() {
    let server = Server::start(&["--size", "2M"]);
    let run = run(&server, Opts::FULL, vec![0; SIZE], false, seed(1), 600);
    assert!(run.stats.get("block_status").copied().unwrap_or(0) > 0);
    run.client.disconnect().expect("clean disconnect");
}

#[test]
fn memory_disk_simple_replies_two_loops() {
    let server = Server::start(&["--size", "2M", "--threads", "2"]);
    // Consecutive clients land on different loop threads; the second one
    // starts from the first one's final contents.
    let first = run(&server, Opts::SIMPLE, vec![0; SIZE], false, seed(2), 400);
    let contents = first.model.data.clone();
    let known = first.model.known.clone();
    first.client.disconnect().expect("clean disconnect");
    let mut second = run_with_model(&server, Opts::FULL, contents, known, seed(3), 200);
    second.verify_all();
    second.client.disconnect().expect("clean disconnect");
}

fn run_with_model(
    server: &Server,
    opts: Opts,
    data: Vec<u8>,
    known: Vec<bool>,
    seed: u64,
    batches: usize,
) -> Run {
    let client = server.connect(opts);
    let data_len = data.len() as u64;
    let mut run = Run {
        rng: Rng::new(seed),
        model: Model { data, known },
        client,
        read_only: false,
        max_len: 256 << 10,
        lo: 0,
        hi: data_len,
        stats: HashMap::new(),
    };
    // The disk carries the previous client's data: check it first.
    run.verify_all();
    run.batches(batches, true);
    run
}

#[test]
fn concurrent_clients_on_two_loops() {
    // Four clients at once, spread over two loop threads, each with its own
    // quarter of one shared disk (so each model is exact).
    let server = Server::start(&["--size", "4M", "--threads", "2"]);
    let quarter = 1u64 << 20;
    let clients: Vec<Client> = (0..4).map(|_| server.connect(Opts::FULL)).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let seed = seed(10 + i as u64);
            std::thread::spawn(move || {
                let mut run = Run {
                    rng: Rng::new(seed),
                    model: Model::new(vec![0; 4 << 20]),
                    client,
                    read_only: false,
                    max_len: 128 << 10,
                    lo: i as u64 * quarter,
                    hi: (i as u64 + 1) * quarter,
                    stats: HashMap::new(),
                };
                run.batches(150, true);
                run.verify_all();
                run.client.disconnect().expect("clean disconnect");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn memory_disk_read_only() {
    let server = Server::start(&["--size", "1M", "-r"]);
    let run = run(&server, Opts::SIMPLE, vec![0; 1 << 20], true, seed(4), 200);
    run.client.disconnect().expect("clean disconnect");
}

/// A scratch image with random contents; removed on drop.
struct Image {
    path: std::path::PathBuf,
    contents: Vec<u8>,
}

impl Image {
    fn new(name: &str, seed: u64) -> Image {
        Self::at(scratch(name), seed)
    }

    fn at(path: std::path::PathBuf, seed: u64) -> Image {
        let contents = Rng::new(seed).bytes(SIZE);
        std::fs::write(&path, &contents).expect("write the image");
        Image { path, contents }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// After a clean shutdown the file holds exactly what the model says.
fn check_file(mut server: Server, run: Run, image: &Image) {
    run.client.disconnect().expect("clean disconnect");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "server exit status");
    let on_disk = std::fs::read(&image.path).expect("read the image");
    assert_eq!(on_disk.len(), run.model.data.len(), "image size changed");
    run.model.check(0, &on_disk, "image file after shutdown");
}

#[test]
fn file_export_writeback() {
    let s = seed(5);
    let image = Image::new("model-writeback", s);
    let server = Server::start(&["-f", "raw", "--cache", "writeback", image.arg()]);
    let run = run(&server, Opts::FULL, image.contents.clone(), false, s, 500);
    check_file(server, run, &image);
}

/// On a memory file system, large write payloads are received straight
/// into the image's mapping (`BlockDevice::write_mapped`): the same model
/// must hold, through trims and zeroes of the same ranges.
#[test]
fn file_export_on_tmpfs_receives_writes_into_the_mapping() {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        scratch("no-shm").parent().unwrap().to_path_buf()
    };
    let s = seed(8);
    let name = format!("costack-nbd-model-shm-{}.img", std::process::id());
    let image = Image::at(dir.join(name), s);
    let server = Server::start(&["-f", "raw", "--cache", "writeback", image.arg()]);
    let run = run(&server, Opts::FULL, image.contents.clone(), false, s, 500);
    check_file(server, run, &image);
}

#[test]
fn file_export_direct_io_alignment() {
    let s = seed(6);
    let image = Image::new("model-direct", s);
    let server = Server::start(&["-f", "raw", "--cache", "none", image.arg()]);
    let client = server.connect(Opts::FULL);
    // O_DIRECT makes the server advertise (and enforce) 4 KiB alignment.
    assert_eq!(client.export.min_block, 4096, "minimum block size");
    drop(client);
    let run = run(&server, Opts::FULL, image.contents.clone(), false, s, 400);
    check_file(server, run, &image);
}

#[test]
fn file_export_read_only() {
    let s = seed(7);
    let image = Image::new("model-ro", s);
    let server = Server::start(&["-f", "raw", "-r", image.arg()]);
    let run = run(&server, Opts::FULL, image.contents.clone(), true, s, 200);
    run.client.disconnect().expect("clean disconnect");
    assert_eq!(std::fs::read(&image.path).unwrap(), image.contents);
}
