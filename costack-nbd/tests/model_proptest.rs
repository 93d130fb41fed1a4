//! A `proptest` of random request streams against a model disk, end to
//! end: the real binary serves a small memory disk; each case connects,
//! zeroes the disk, sends its requests in batches (all of a batch in
//! flight at once) and checks every reply against the model. A failing
//! stream is shrunk to a short one by proptest.
//!
//! `model.rs` covers more ground (refusals, block status, file exports);
//! this one finds the smallest stream that breaks the server.

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::*;

/// Size of the memory disk.
const DISK: u64 = 256 << 10;
/// Requests are whole multiples of this (the disk's minimum block is 1).
const UNIT: u64 = 512;
/// Most units one request covers.
const MAX_UNITS: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    Read {
        at: u64,
        len: u32,
    },
    Write {
        at: u64,
        len: u32,
        seed: u8,
        fua: bool,
    },
    Zero {
        at: u64,
        len: u32,
        no_hole: bool,
    },
    Trim {
        at: u64,
        len: u32,
    },
    Flush,
}

impl Op {
    /// The bytes it touches, `[start, end)`.
    fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Read { at, len }
            | Op::Write { at, len, .. }
            | Op::Zero { at, len, .. }
            | Op::Trim { at, len } => Some((at, at + u64::from(len))),
            Op::Flush => None,
        }
    }

    fn changes_data(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::Zero { .. } | Op::Trim { .. })
    }
}

/// The payload of a write, a function of where it goes and its seed.
fn pattern(at: u64, len: u32, seed: u8) -> Vec<u8> {
    (0..u64::from(len))
        .map(|i| (((at + i) * 31) >> 3) as u8 ^ seed)
        .collect()
}

fn range() -> impl Strategy<Value = (u64, u32)> {
    (0..DISK / UNIT)
        .prop_flat_map(|first| (Just(first), 1..=(DISK / UNIT - first).min(MAX_UNITS)))
        .prop_map(|(first, units)| (first * UNIT, (units * UNIT) as u32))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => range().prop_map(|(at, len)| Op::Read { at, len }),
        4 => (range(), any::<u8>(), any::<bool>())
            .prop_map(|((at, len), seed, fua)| Op::Write { at, len, seed, fua }),
        1 => (range(), any::<bool>()).prop_map(|((at, len), no_hole)| Op::Zero { at, len, no_hole }),
        1 => range().prop_map(|(at, len)| Op::Trim { at, len }),
        1 => Just(Op::Flush),
    ]
}

/// Splits `ops` into batches whose order does not matter: no request
/// overlaps one that changes data in the same batch. At most 16 each.
fn batches(ops: &[Op]) -> Vec<&[Op]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, op) in ops.iter().enumerate() {
        let conflict = op.range().is_some_and(|(s, e)| {
            ops[start..i].iter().any(|o| {
                (op.changes_data() || o.changes_data())
                    && o.range().is_some_and(|(os, oe)| s < oe && os < e)
            })
        });
        if conflict || i - start == 16 {
            out.push(&ops[start..i]);
            start = i;
        }
    }
    if start < ops.len() {
        out.push(&ops[start..]);
    }
    out
}

/// What `op` does to the model.
fn apply(model: &mut Model, op: &Op) {
    match *op {
        Op::Write { at, len, seed, .. } => model.write(at, &pattern(at, len, seed)),
        Op::Zero { at, len, .. } => model.zero(at, len),
        Op::Trim { at, len } => model.forget(at, len),
        Op::Read { .. } | Op::Flush => {}
    }
}

fn run_stream(server: &Server, structured: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let opts = if structured { Opts::FULL } else { Opts::SIMPLE };
    let mut client = server.connect(opts);
    prop_assert_eq!(client.export.size, DISK);
    // Every case starts from a zeroed disk (earlier cases wrote to it).
    let r = client
        .request(CMD_WRITE_ZEROES, 0, 0, DISK as u32, &[])
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(r.error, 0);
    let mut model = Model::new(vec![0; DISK as usize]);
    let io = |e: std::io::Error| TestCaseError::fail(format!("connection: {e}"));
    for batch in batches(ops) {
        let mut sent = HashMap::new();
        for (i, op) in batch.iter().enumerate() {
            let handle = match *op {
                Op::Read { at, len } => client.send(CMD_READ, 0, at, len, &[]),
                Op::Write { at, len, seed, fua } => {
                    let flags = if fua { FLAG_FUA } else { 0 };
                    client.send(CMD_WRITE, flags, at, len, &pattern(at, len, seed))
                }
                Op::Zero { at, len, no_hole } => {
                    let flags = if no_hole { FLAG_NO_HOLE } else { 0 };
                    client.send(CMD_WRITE_ZEROES, flags, at, len, &[])
                }
                Op::Trim { at, len } => client.send(CMD_TRIM, 0, at, len, &[]),
                Op::Flush => client.send(CMD_FLUSH, 0, 0, 0, &[]),
            }
            .map_err(io)?;
            sent.insert(handle, i);
        }
        // The batch's writes commute with its reads (no overlap), so the
        // model may take them all before the reads are checked.
        for op in batch {
            apply(&mut model, op);
        }
        for _ in 0..batch.len() {
            let reply = client.recv().map_err(io)?;
            let Some(i) = sent.remove(&reply.handle) else {
                return Err(TestCaseError::fail(format!(
                    "reply to unknown or repeated handle {}",
                    reply.handle
                )));
            };
            prop_assert_eq!(reply.error, 0, "{:?} failed", batch[i]);
            if let Op::Read { at, len } = batch[i] {
                prop_assert_eq!(reply.data.len(), len as usize);
                if let Some((byte, got, want)) = model.first_difference(at, &reply.data) {
                    return Err(TestCaseError::fail(format!(
                        "byte {byte}: read {got:#04x}, the model has {want:#04x}"
                    )));
                }
            }
        }
    }
    client.disconnect().map_err(io)?;
    Ok(())
}

#[test]
fn random_request_streams_match_a_model_disk() {
    let server = Server::start(&["--size", "256K"]);
    run_streams(&server, 64);
}

/// `cases` random request streams against `server`, each checked against
/// a model disk.
fn run_streams(server: &Server, cases: u32) {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let streams = (any::<bool>(), proptest::collection::vec(op(), 1..120));
    let result = TestRunner::new(config).run(&streams, |(structured, ops)| {
        run_stream(server, structured, &ops)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The same streams against a qcow2 image (4 KiB clusters, so requests
/// straddle clusters and allocate L2 tables and refcount blocks); then
/// `qemu-img check` must find it clean.
#[test]
fn random_request_streams_match_a_model_disk_on_qcow2() {
    let have = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok();
    if !have {
        assert!(
            std::env::var("COSTACK_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "qemu-img is not installed"
        );
        eprintln!("skipping: qemu-img is not installed");
        return;
    }
    let image = support::scratch("model-qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"])
        .arg(&image)
        .arg(DISK.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start(&[image.to_str().unwrap()]);
    run_streams(&server, 32);
    // A flushed image has nothing to leak, killed or not.
    let mut client = server.connect(Opts::SIMPLE);
    client.flush().unwrap();
    client.disconnect().unwrap();
    drop(server);
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_file(image);
}

#[test]
fn batches_never_reorder_conflicting_requests() {
    let w = |at, len| Op::Write {
        at,
        len,
        seed: 0,
        fua: false,
    };
    let r = |at, len| Op::Read { at, len };
    let ops = [
        r(0, 512),
        r(0, 512),
        w(512, 512),
        r(600, 10),
        w(600, 100),
        Op::Flush,
    ];
    let lens: Vec<usize> = batches(&ops).iter().map(|b| b.len()).collect();
    // Reads share a batch; the read of written bytes starts a new one, as
    // does the write over earlier reads.
    assert_eq!(lens, [3, 1, 2]);
}
