//! Cancellation in the server: a connection's requests end with it, and
//! requests cancelled at any point leave a qcow2 image consistent.
//!
//! - A client that breaks its connection while requests hang in the
//!   device: the requests are cancelled (they unwind from their wait) and
//!   the connection's `serve` returns only after they have.
//! - A client that says goodbye (`NBD_CMD_DISC`): its requests in flight
//!   finish and are answered first.
//! - Writes, zeroes, discards and flushes on a qcow2 image, each under a
//!   random `aio::timeout` so that cancellations land anywhere inside the
//!   driver: every acknowledged write reads back; nothing is left stuck
//!   (a last pass writes every slot, without deadlines); `qemu-img check`
//!   finds no corruption (leaks at most), and the file holds the last
//!   pass's data.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use costack::aio::{self, EventLoop};
use costack::net::TcpListener;
use costack_nbd::block::qcow2::Qcow2;
use costack_nbd::block::{BlockDevice, Extent, MemDisk};
use costack_nbd::protocol::handshake::{ExportInfo, HandshakeConfig};
use costack_nbd::server::{serve, Shared};
use support::tools::{create_qcow2, have, ok, run};
use support::{reset, scratch, Client, Opts, Rng, CMD_DISC, CMD_READ};

/// Reads at or past `SLOW` take `delay`; `live` counts those under way
/// (a guard counts down when one returns or unwinds).
struct SlowDisk {
    mem: MemDisk,
    delay: Duration,
    live: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

const SLOW: u64 = 1 << 20;

struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BlockDevice for SlowDisk {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset >= SLOW {
            self.live.fetch_add(1, Ordering::SeqCst);
            self.started.fetch_add(1, Ordering::SeqCst);
            let _live = Live(&self.live);
            aio::sleep(self.delay);
        }
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.mem.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()> {
        self.mem.write_zeroes(offset, len, may_punch_hole)
    }
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.mem.block_status(offset, len)
    }
}

/// What the server saw of one connection.
struct Served {
    /// How long `serve` ran after the client's last act.
    after_client: Duration,
    /// Slow reads still under way when `serve` returned.
    live_at_end: usize,
    started: usize,
}

/// Serves one connection in this process on a device whose slow reads take
/// `delay`; `client` runs on a thread against the address and returns when
/// it has done its last act.
fn serve_one(delay: Duration, client: impl FnOnce(SocketAddr) + Send + 'static) -> Served {
    let live = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let disk = SlowDisk {
        mem: MemDisk::new(4 << 20),
        delay,
        live: live.clone(),
        started: started.clone(),
    };
    let export = ExportInfo::for_device(String::new(), &disk);
    let shared = Shared::new(HandshakeConfig::new(vec![export]), Arc::new(disk));
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    EventLoop::new().unwrap().block_on(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || {
            client(addr);
            done_tx.send(Instant::now()).unwrap();
        });
        let (stream, peer) = listener.accept().unwrap();
        serve(stream, peer.to_string(), shared, 0);
        let ended = Instant::now();
        let live_at_end = live.load(Ordering::SeqCst);
        // The client's thread blocks; join it off the loop.
        let last_act = aio::run_blocking(move || {
            client.join().unwrap();
            done_rx.recv().unwrap()
        });
        Served {
            after_client: ended.saturating_duration_since(last_act),
            live_at_end,
            started: started.load(Ordering::SeqCst),
        }
    })
}

#[test]
fn a_broken_connection_cancels_its_requests_and_ends_after_them() {
    let served = serve_one(Duration::from_secs(3600), |addr| {
        let mut c = Client::connect(addr, Opts::FULL).unwrap();
        for i in 0..4u64 {
            c.send(CMD_READ, 0, SLOW + i * 4096, 4096, &[]).unwrap();
        }
        // A fast read answered proves the four slow ones were read (the
        // server reads requests in order).
        c.send(CMD_READ, 0, 0, 4096, &[]).unwrap();
        let r = c.recv().unwrap();
        assert_eq!(r.error, 0);
        // Gone without a word: the socket is reset.
        reset(c.stream());
    });
    assert_eq!(served.started, 4, "every slow read began");
    assert_eq!(served.live_at_end, 0, "a request outlived its connection");
    assert!(
        served.after_client < Duration::from_secs(60),
        "the connection waited for its requests instead of cancelling them \
         ({:?})",
        served.after_client
    );
}

#[test]
fn a_disconnect_lets_requests_in_flight_finish_and_answer() {
    let served = serve_one(Duration::from_millis(100), |addr| {
        let mut c = Client::connect(addr, Opts::FULL).unwrap();
        let mut handles = Vec::new();
        for i in 0..4u64 {
            handles.push(c.send(CMD_READ, 0, SLOW + i * 4096, 4096, &[]).unwrap());
        }
        c.send(CMD_DISC, 0, 0, 0, &[]).unwrap();
        for _ in 0..4 {
            let r = c.recv().expect("a reply after the disconnect");
            assert_eq!((r.error, r.data.len()), (0, 4096));
            assert!(handles.contains(&r.handle));
        }
        assert!(c.closed_by_server());
    });
    assert_eq!((served.started, served.live_at_end), (4, 0));
}

/// What a slot of the qcow2 test is known to hold.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Known {
    Zeros,
    /// `Rng::new(seed).bytes(len)`.
    Data(u64),
    /// An operation on it was cancelled: anything.
    Unknown,
}

/// Small clusters, so that the 64 MiB disk spans eight L2 tables, and a
/// cache of two tables, so that dirty tables are written back and evicted
/// while requests are cancelled.
const CLUSTER: u64 = 8 << 10;
const L2_CACHE: u64 = 2 * CLUSTER;
/// 1 KiB slots, eight to a cluster, owned by the workers in turn (so
/// neighbours allocate the same cluster at once); then whole-cluster
/// slots, where zeroes and discards change whole L2 entries. Both spread
/// over the disk, a group every `STRIDE`.
const SMALL: u64 = 1 << 10;
const SMALL_SLOTS: u64 = 1024;
const BIG_SLOTS: u64 = 256;
const STRIDE: u64 = 512 << 10;
const WORKERS: u64 = 8;
const OPS: u64 = 250;
/// Seeds of the last pass's data.
const FINAL: u64 = 1 << 40;

fn slot(i: u64) -> (u64, u64) {
    if i < SMALL_SLOTS {
        ((i / 8) * STRIDE + (i % 8) * SMALL, SMALL)
    } else {
        let j = i - SMALL_SLOTS;
        ((j / 2) * STRIDE + STRIDE / 2 + (j % 2) * CLUSTER, CLUSTER)
    }
}

fn expected(k: Known, len: u64) -> Option<Vec<u8>> {
    match k {
        Known::Zeros => Some(vec![0; len as usize]),
        Known::Data(seed) => Some(Rng::new(seed).bytes(len as usize)),
        Known::Unknown => None,
    }
}

/// One worker's random operations on its own slots, each under a random
/// deadline; returns (acknowledged, cancelled).
fn worker(image: &Qcow2, w: u64, known: &mut [Known]) -> (u64, u64) {
    let mut rng = Rng::new(1000 + w);
    let (mut acked, mut cancelled) = (0, 0);
    for op in 0..OPS {
        let i = w + WORKERS * rng.below((SMALL_SLOTS + BIG_SLOTS) / WORKERS);
        let (at, len) = slot(i);
        let seed = (w << 32) | op;
        let kind = rng.below(100);
        let after = match kind {
            0..=59 => Known::Data(seed),
            60..=89 => Known::Zeros,
            _ => known[i as usize],
        };
        // Short enough that a fair share of requests is cancelled however
        // fast completions come back (the io_uring backend reads them from
        // the ring without waiting for epoll).
        let deadline = Duration::from_micros(rng.below(150));
        let r = aio::timeout(deadline, || match kind {
            0..=59 => image.write_at(&Rng::new(seed).bytes(len as usize), at),
            60..=74 => image.write_zeroes(at, len, true),
            75..=89 if len == CLUSTER => image.trim(at, len),
            75..=89 => image.write_zeroes(at, len, false),
            _ => image.flush(),
        });
        match r {
            Ok(Ok(())) => {
                known[i as usize] = after;
                acked += 1;
            }
            Ok(Err(e)) => panic!("worker {w} op {op}: {e}"),
            Err(_elapsed) => {
                if after != known[i as usize] {
                    known[i as usize] = Known::Unknown;
                }
                cancelled += 1;
            }
        }
    }
    (acked, cancelled)
}

#[test]
fn qcow2_requests_cancelled_anywhere_leave_the_image_consistent() {
    if !have(&["qemu-img"]) {
        return;
    }
    let img = scratch("cancel-qcow2");
    let img_s = img.to_str().unwrap().to_owned();
    create_qcow2(&img, "64M", &["-o", "cluster_size=8192"]);
    let slots = (SMALL_SLOTS + BIG_SLOTS) as usize;
    let path = img.clone();
    let (known, acked, cancelled) = EventLoop::new().unwrap().block_on(move || {
        let image = Qcow2::open_with(
            &path,
            &costack_nbd::block::qcow2::Options {
                writable: true,
                l2_cache_bytes: L2_CACHE,
                discard: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut parts: Vec<Vec<Known>> = (0..WORKERS).map(|_| vec![Known::Zeros; slots]).collect();
        let counts = aio::scope(|s| {
            let image = &image;
            let handles: Vec<_> = parts
                .iter_mut()
                .enumerate()
                .map(|(w, known)| s.spawn(move || worker(image, w as u64, known)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        });
        // Each worker touched only its own slots.
        let known: Vec<Known> = (0..slots).map(|i| parts[i % WORKERS as usize][i]).collect();
        // The image as this process sees it, before the close.
        for (i, k) in known.iter().enumerate() {
            let (at, len) = slot(i as u64);
            if let Some(want) = expected(*k, len) {
                let mut got = vec![0xa5; len as usize];
                image.read_at(&mut got, at).unwrap();
                assert!(got == want, "slot {i} ({k:?}) reads back wrong in process");
            }
        }
        // Nothing left stuck: every slot written once more, with no
        // deadline but the test's (a cancelled allocation that left its
        // cluster marked as being allocated would stall these).
        let mut known = known;
        let finished = aio::timeout(Duration::from_secs(60), || {
            aio::scope(|s| {
                for w in 0..WORKERS {
                    let image = &image;
                    s.spawn(move || {
                        for i in (w..SMALL_SLOTS + BIG_SLOTS).step_by(WORKERS as usize) {
                            let (at, len) = slot(i);
                            let data = Rng::new(FINAL + i).bytes(len as usize);
                            image.write_at(&data, at).unwrap();
                        }
                    });
                }
            })
        });
        assert!(finished.is_ok(), "writes stalled after the cancellations");
        for (i, k) in known.iter_mut().enumerate() {
            *k = Known::Data(FINAL + i as u64);
        }
        image.close().unwrap();
        (known, counts.0, counts.1)
    });
    assert!(acked >= 200, "too few operations completed ({acked})");
    assert!(
        cancelled >= 50,
        "too few operations cancelled ({cancelled})"
    );

    let check = run("qemu-img", &["check", "-f", "qcow2", &img_s]);
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    // 0: clean; 3: leaked clusters only. 2 would be corruption.
    assert!(
        matches!(check.status.code(), Some(0 | 3)),
        "qemu-img check: {said}"
    );
    let raw = scratch("cancel-qcow2-raw");
    let raw_s = raw.to_str().unwrap();
    ok(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", &img_s, raw_s],
    );
    let data = std::fs::read(&raw).unwrap();
    for (i, k) in known.iter().enumerate() {
        let (at, len) = slot(i as u64);
        if let Some(want) = expected(*k, len) {
            let got = &data[at as usize..(at + len) as usize];
            assert!(
                got == want,
                "slot {i} ({k:?}) reads back wrong from the file"
            );
        }
    }
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&raw);
}
