//! Arbitrary bytes as a transmission-phase request stream.
//!
//! `read_request` must never panic, must consume exactly the header plus
//! (for writes) the payload of each request, and everything it accepts must
//! satisfy the session's rules; replies built from the results must encode
//! without panicking.

#![no_main]

use std::io::{Cursor, Read};

use costack_nbd::block::Extent;
use costack_nbd::protocol::handshake::{BlockSizes, ExportInfo};
use costack_nbd::protocol::proto::{
    Command, RequestHeader, EXTENDED_REQUEST_HEADER_LEN, NBD_CMD_FLAG_PAYLOAD_LEN,
    NBD_FLAG_BLOCK_STATUS_PAYLOAD, REQUEST_HEADER_LEN,
};
use costack_nbd::protocol::reply::{
    block_status_descriptors, write_block_status_reply, write_read_reply, write_rejection,
};
use costack_nbd::protocol::request::{read_request, Incoming, Op, ReadError, TransmissionParams};
use libfuzzer_sys::fuzz_target;

/// Session variants: simple, structured or extended headers, read-only,
/// aligned, tiny, huge.
fn params(selector: u8, extended: bool) -> TransmissionParams {
    let structured = extended || selector & 1 != 0;
    let mut e = ExportInfo::new("", 1 << 20);
    e.fast_zero = selector & 2 != 0;
    e.read_only = selector & 4 != 0;
    match (selector >> 3) & 3 {
        0 => {}
        1 => {
            e.block_sizes = BlockSizes {
                minimum: 4096,
                preferred: 4096,
                maximum: 1 << 16,
            }
        }
        2 => e.size = 0,
        _ => {
            e.size = u64::MAX;
            e.block_sizes = BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: u32::MAX,
            };
        }
    }
    if selector & 0x20 != 0 {
        e.flush = false;
        e.fua = false;
        e.trim = false;
        e.write_zeroes = false;
        e.cache = false;
    }
    TransmissionParams {
        size: e.size,
        transmission_flags: e.transmission_flags(structured)
            | if extended && selector & 0x40 != 0 {
                NBD_FLAG_BLOCK_STATUS_PAYLOAD
            } else {
                0
            },
        read_only: e.read_only,
        structured_replies: structured,
        extended_headers: extended,
        base_allocation: (structured && selector & 0x40 != 0).then_some(1),
        qemu_contexts: Vec::new(),
        block_sizes: e.block_sizes,
        // Small limits keep allocations cheap; one variant uses the default.
        max_payload: if selector & 0x80 != 0 { 4096 } else { 1 << 20 },
    }
}

fn check_op(op: &Op, p: &TransmissionParams) {
    let in_bounds = |offset: u64, length: u64| {
        let min = u64::from(p.block_sizes.minimum.max(1));
        assert!(offset.checked_add(length).is_some_and(|e| e <= p.size));
        assert_eq!(offset % min, 0);
        assert_eq!(length % min, 0);
    };
    match *op {
        Op::Read { offset, length, .. }
        | Op::Write { offset, length }
        | Op::Cache { offset, length } => {
            in_bounds(offset, u64::from(length));
            assert!(p.block_sizes.maximum == u32::MAX || length <= p.block_sizes.maximum);
        }
        Op::Trim { offset, length } | Op::WriteZeroes { offset, length, .. } => {
            in_bounds(offset, length)
        }
        Op::BlockStatus {
            offset,
            length,
            ref only,
            ..
        } => {
            in_bounds(offset, length);
            assert!(length > 0);
            assert!(p.base_allocation.is_some());
            assert!(only.iter().flatten().all(|&id| Some(id) == p.base_allocation));
        }
        Op::Flush | Op::Disconnect => {}
    }
    if p.read_only {
        assert!(!matches!(
            op,
            Op::Write { .. } | Op::Trim { .. } | Op::WriteZeroes { .. }
        ));
    }
}

/// Bytes of the request with `header` on the wire: its header and the
/// payload it announces.
fn wire_len(header: &RequestHeader, p: &TransmissionParams) -> u64 {
    let flagged = header.flags & NBD_CMD_FLAG_PAYLOAD_LEN != 0;
    let payload = if header.command == Command::Write || (p.extended_headers && flagged) {
        header.length
    } else {
        0
    };
    let head = if p.extended_headers {
        EXTENDED_REQUEST_HEADER_LEN
    } else {
        REQUEST_HEADER_LEN
    };
    head as u64 + payload
}

fuzz_target!(|data: &[u8]| {
    let [selector, mode, input @ ..] = data else {
        return;
    };
    let p = params(*selector, mode & 1 != 0);
    let mut cur = Cursor::new(input);
    for _ in 0..64 {
        let before = cur.position();
        let mut out = Vec::new();
        match read_request(&mut cur, &p) {
            Ok(Incoming::Request(req)) => {
                let used = cur.position() - before;
                assert_eq!(used, wire_len(&req.header, &p));
                let payload = if req.header.command == Command::Write {
                    req.header.length
                } else {
                    0
                };
                assert_eq!(req.payload.len() as u64, payload);
                check_op(&req.op, &p);
                let to = p.reply_to(&req.header);
                match req.op {
                    Op::Read { length, df, .. } => {
                        // Reply with stand-in data, some of it zero.
                        let len = (length as usize).min(1 << 16);
                        let buf: Vec<u8> = (0..len).map(|i| (i / 4096 % 2) as u8).collect();
                        write_read_reply(&mut out, &to, &buf, df).expect("read reply encodes");
                    }
                    Op::BlockStatus {
                        length,
                        req_one,
                        ..
                    } => {
                        // Extents derived from the remaining input.
                        let extents: Vec<Extent> = input[cur.position() as usize..]
                            .chunks(3)
                            .take(16)
                            .map(|c| Extent {
                                length: u64::from(c[0]) << (c.get(1).copied().unwrap_or(0) % 40),
                                flags: u32::from(c.get(2).copied().unwrap_or(0) & 3),
                            })
                            .collect();
                        let d = block_status_descriptors(&extents, length, req_one);
                        assert!(!d.is_empty());
                        let total: u64 = d.iter().map(|d| d.length).sum();
                        assert!(total <= length);
                        if req_one {
                            assert_eq!(d.len(), 1);
                        }
                        let id = p.base_allocation.expect("checked above");
                        write_block_status_reply(&mut out, &to, id, &extents, length, req_one)
                            .expect("block status reply encodes");
                    }
                    _ => {}
                }
            }
            Ok(Incoming::Rejected { header, error }) => {
                let used = cur.position() - before;
                assert_eq!(used, wire_len(&header, &p), "rejected payload not skipped");
                assert_ne!(header.command, Command::Disc);
                write_rejection(&mut out, &header, error, p.reply_format())
                    .expect("rejection encodes");
                assert!(!out.is_empty());
            }
            Err(ReadError::PayloadTooLarge { length, .. }) => {
                assert!(length > u64::from(p.max_payload));
                break;
            }
            Err(_) => break,
        }
    }
    // Whatever is left is never read past the end.
    let mut rest = Vec::new();
    let _ = cur.read_to_end(&mut rest);
});
