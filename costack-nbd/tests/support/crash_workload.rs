//! Workloads for the power-cut tests, whatever the format: concurrent
//! rounds of requests run through a driver over a recorder, the guest's
//! view they leave after each FLUSH, and crash states checked against it
//! on two threads.
//!
//! The rule a crash state must keep: every byte written before the last
//! FLUSH that completed before the cut (a FUA write is a write and a
//! FLUSH) and not written again since reads back as written; discarded
//! ranges and ranges written since that FLUSH may hold anything.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use costack::aio::{self, EventLoop};
use costack_nbd::block::BlockDevice;

use super::crash::{Cut, Log, Replay, Subset};
use super::Rng;

/// One request.
#[derive(Debug, Clone)]
pub enum Op {
    Write(u64, Vec<u8>),
    /// Write-zeroes; `true`: the driver may unmap (no NO_HOLE flag).
    Zero(u64, u64, bool),
    Trim(u64, u64),
}

impl Op {
    pub fn range(&self) -> (u64, u64) {
        match self {
            Op::Write(at, data) => (*at, data.len() as u64),
            Op::Zero(at, len, _) | Op::Trim(at, len) => (*at, *len),
        }
    }

    pub fn run(&self, dev: &dyn BlockDevice) {
        let r = match self {
            Op::Write(at, data) => dev.write_at(data, *at),
            Op::Zero(at, len, unmap) => dev.write_zeroes(*at, *len, *unmap),
            Op::Trim(at, len) => dev.trim(*at, *len),
        };
        r.unwrap_or_else(|e| panic!("{self:?}: {e}"));
    }
}

/// The guest's view: the bytes of the ranges of the virtual disk a
/// workload touches (`(start, bytes)`), and the ranges discarded since
/// (unspecified until written again).
#[derive(Clone)]
pub struct Windows {
    pub bytes: Vec<(u64, Vec<u8>)>,
    pub discarded: Vec<(u64, u64)>,
}

impl Windows {
    /// Windows `(start, len)` holding `initial`'s bytes (zeros past it).
    pub fn new(windows: &[(u64, u64)], initial: &[u8]) -> Windows {
        let bytes = windows
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
        Windows {
            bytes,
            discarded: Vec::new(),
        }
    }

    /// Where the last window ends.
    pub fn end(&self) -> u64 {
        self.bytes
            .iter()
            .map(|(start, b)| start + b.len() as u64)
            .max()
            .unwrap_or(0)
    }

    pub fn apply(&mut self, op: &Op) {
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

/// Requests that run concurrently, then maybe a FLUSH, whose completion
/// is a checkpoint.
pub struct Round {
    pub ops: Vec<Op>,
    /// Log position once the round's FLUSH returned.
    pub flushed_at: Option<usize>,
}

/// Runs `plans` (each a round's requests and whether a FLUSH ends it) on
/// `dev`, which writes through a recorder appending to `log`; returns the
/// rounds with their checkpoints. A last FLUSH ends the run.
pub fn record(dev: Rc<dyn BlockDevice>, plans: Vec<(Vec<Op>, bool)>, log: &Log) -> Vec<Round> {
    let log = log.clone();
    EventLoop::new().unwrap().block_on(move || {
        let mut rounds = Vec::new();
        for (ops, flush) in plans {
            let running: Vec<_> = ops
                .iter()
                .cloned()
                .map(|op| {
                    let dev = dev.clone();
                    aio::spawn(move || op.run(&*dev))
                })
                .collect();
            for r in running {
                r.join().expect("request panicked");
            }
            let flushed_at = flush.then(|| {
                dev.flush().unwrap();
                log.len()
            });
            rounds.push(Round { ops, flushed_at });
        }
        dev.flush().unwrap();
        rounds.push(Round {
            ops: Vec::new(),
            flushed_at: Some(log.len()),
        });
        rounds
    })
}

/// What a cut must still show: the guest's view as of the last FLUSH that
/// completed before it, and the ranges written since (unchecked).
pub struct Expect<'a> {
    pub view: &'a Windows,
    pub since: Vec<(u64, u64)>,
}

impl Expect<'_> {
    /// Checks the guest's bytes as `read` (guest offset, buffer) gives
    /// them; panics naming the first wrong byte.
    pub fn compare(&self, what: &str, mut read: impl FnMut(u64, &mut [u8])) {
        let mut unchecked: Vec<(u64, u64)> = self.view.discarded.clone();
        unchecked.extend(&self.since);
        unchecked.sort_unstable();
        for (start, want) in &self.view.bytes {
            let mut got = vec![0u8; want.len()];
            read(*start, &mut got);
            // The checked runs: the window minus the unchecked ranges.
            let end = start + want.len() as u64;
            let mut at = *start;
            for &(a, l) in unchecked.iter().chain([(end, 0)].iter()) {
                let (a, b) = (a.clamp(*start, end), (a + l).clamp(*start, end));
                if a > at {
                    let run = (at - start) as usize..(a - start) as usize;
                    if got[run.clone()] != want[run.clone()] {
                        let i = run.start + run.clone().position(|i| got[i] != want[i]).unwrap();
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
    }
}

/// Walks the rounds alongside cuts taken in order.
pub struct Expectations<'a> {
    rounds: &'a [Round],
    /// Rounds applied to `view`.
    next: usize,
    view: Windows,
}

impl<'a> Expectations<'a> {
    pub fn new(rounds: &'a [Round], initial: &Windows) -> Self {
        Expectations {
            rounds,
            next: 0,
            view: initial.clone(),
        }
    }

    pub fn at(&mut self, cut: usize) -> Expect<'_> {
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

/// The guest's view once every round ran.
pub fn final_view(initial: &Windows, rounds: &[Round]) -> Windows {
    let mut last = initial.clone();
    rounds
        .iter()
        .flat_map(|r| &r.ops)
        .for_each(|op| last.apply(op));
    last
}

/// About `n` cuts of `replay` (positions from [`Replay::cut_points`]),
/// each with small writes only, large ones only, a random subset and torn
/// writes, plus the whole log with everything and nothing persisted.
pub fn cuts(replay: &Replay, n: usize, rng: &mut Rng) -> Vec<Cut> {
    let points = replay.cut_points(n.div_ceil(4), rng);
    let mut cuts = Vec::new();
    for &at in &points {
        for subset in [
            Subset::SmallOnly,
            Subset::LargeOnly,
            Subset::Random(rng.next()),
            Subset::Torn(rng.next()),
        ] {
            cuts.push(Cut { at, subset });
        }
    }
    for subset in [Subset::All, Subset::None] {
        cuts.push(Cut {
            at: replay.len(),
            subset,
        });
    }
    cuts
}

/// Cuts at every position of `at` (a stretch of the log worth covering
/// whole, such as a close), each with the four kinds of subsets.
pub fn cuts_in(at: std::ops::Range<usize>, rng: &mut Rng) -> Vec<Cut> {
    at.flat_map(|at| {
        [
            Subset::SmallOnly,
            Subset::LargeOnly,
            Subset::Random(rng.next()),
            Subset::Torn(rng.next()),
        ]
        .map(|subset| Cut { at, subset })
    })
    .collect()
}

/// Builds each cut's state and hands it to `check` (worker number, cut,
/// the file's bytes, what it must show, a name for messages) on two
/// threads, each a contiguous half of the (sorted) cuts so that each
/// replays its durable prefix once. Panics listing the first failures.
pub fn check_states(
    name: &str,
    replay: &Replay,
    cuts: &[Cut],
    rounds: &[Round],
    initial: &Windows,
    check: impl Fn(usize, Cut, &[u8], &Expect, &str) + Sync,
) {
    let half = cuts.len().div_ceil(2);
    let checked = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (w, part) in cuts.chunks(half).enumerate() {
            let (checked, failures, check) = (&checked, &failures, &check);
            scope.spawn(move || {
                let mut expectations = Expectations::new(rounds, initial);
                replay.for_each_state(part, |cut, bytes| {
                    let expect = expectations.at(cut.at);
                    let what = format!(
                        "{name}: cut after {} of {} events, {:?}",
                        cut.at,
                        replay.len(),
                        cut.subset
                    );
                    let run = std::panic::AssertUnwindSafe(|| check(w, cut, bytes, &expect, &what));
                    if let Err(e) = std::panic::catch_unwind(run) {
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
    let checked = checked.load(Ordering::Relaxed);
    eprintln!(
        "{name}: {} events, {checked} crash states checked, {} corrupt or lost flushed data",
        replay.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} crash states fail; the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
