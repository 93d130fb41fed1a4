//! Unit tests of `request.rs` (a child module of it: private items are in
//! reach through `super`).

use super::*;
use crate::protocol::handshake::ExportInfo;
use crate::protocol::proto::*;
use std::io::Cursor;

#[test]
fn is_all_zero_finds_a_byte_anywhere() {
    for len in [0, 1, 7, 8, 15, 16, 17, 255, 256, 4095, 4096, 4097, 8200] {
        let mut b = vec![0u8; len];
        assert!(is_all_zero(&b), "len {len}");
        for at in 0..len {
            for v in [1, 0x80, 0xff] {
                b[at] = v;
                assert!(!is_all_zero(&b), "len {len}, byte {v:#x} at {at}");
            }
            b[at] = 0;
        }
    }
}

fn params(structured: bool) -> TransmissionParams {
    let e = ExportInfo {
        fast_zero: true,
        ..ExportInfo::new("", 1 << 20)
    };
    TransmissionParams {
        size: e.size,
        transmission_flags: e.transmission_flags(structured),
        read_only: false,
        structured_replies: structured,
        extended_headers: false,
        base_allocation: structured.then_some(1),
        qemu_contexts: Vec::new(),
        block_sizes: e.block_sizes,
        max_payload: DEFAULT_MAX_PAYLOAD,
    }
}

fn ro_params() -> TransmissionParams {
    let e = ExportInfo {
        read_only: true,
        ..ExportInfo::new("", 1 << 20)
    };
    TransmissionParams {
        read_only: true,
        transmission_flags: e.transmission_flags(false),
        ..params(false)
    }
}

fn hdr(command: Command, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        command,
        handle: 0xabcd,
        offset,
        length: u64::from(length),
    }
}

/// The reply to `handle` (at `offset`) in a session of `format`.
fn rt(handle: u64, offset: u64, format: ReplyFormat) -> ReplyTo {
    ReplyTo {
        handle,
        offset,
        format,
    }
}

fn check(
    p: &TransmissionParams,
    c: Command,
    flags: u16,
    off: u64,
    len: u32,
) -> Result<Op, ErrorCode> {
    validate(&hdr(c, flags, off, len), p)
}

#[test]
fn valid_requests() {
    let p = params(true);
    assert_eq!(
        check(&p, Command::Read, NBD_CMD_FLAG_DF, 0, 4096),
        Ok(Op::Read {
            offset: 0,
            length: 4096,
            df: true
        })
    );
    assert_eq!(
        check(&p, Command::Write, NBD_CMD_FLAG_FUA, 512, 512),
        Ok(Op::Write {
            offset: 512,
            length: 512
        })
    );
    assert_eq!(check(&p, Command::Flush, 0, 99, 99), Ok(Op::Flush));
    assert_eq!(check(&p, Command::Disc, 0xffff, 1, 1), Ok(Op::Disconnect));
    assert_eq!(
        check(
            &p,
            Command::WriteZeroes,
            NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
            0,
            1 << 20
        ),
        Ok(Op::WriteZeroes {
            offset: 0,
            length: 1 << 20,
            no_hole: true,
            fast_zero: true
        })
    );
    assert_eq!(
        check(&p, Command::BlockStatus, NBD_CMD_FLAG_REQ_ONE, 0, 1 << 20),
        Ok(Op::BlockStatus {
            offset: 0,
            length: 1 << 20,
            req_one: true,
            only: None
        })
    );
    assert_eq!(
        check(&p, Command::Trim, 0, 1 << 19, 1 << 19),
        Ok(Op::Trim {
            offset: 1 << 19,
            length: 1 << 19
        })
    );
    assert!(check(&p, Command::Cache, NBD_CMD_FLAG_FUA, 0, 10).is_ok());
    // Zero-length reads and writes at the very end are allowed.
    assert!(check(&p, Command::Read, 0, 1 << 20, 0).is_ok());
    assert!(check(&p, Command::Write, 0, 1 << 20, 0).is_ok());
}

#[test]
fn flag_errors() {
    let p = params(false);
    let e = Err(ErrorCode::Inval);
    assert_eq!(check(&p, Command::Unknown(42), 0, 0, 0), e);
    assert_eq!(check(&p, Command::Read, 1 << 7, 0, 512), e);
    // DF needs structured replies.
    assert_eq!(check(&p, Command::Read, NBD_CMD_FLAG_DF, 0, 512), e);
    assert_eq!(check(&p, Command::Write, NBD_CMD_FLAG_NO_HOLE, 0, 512), e);
    assert_eq!(check(&p, Command::Read, NBD_CMD_FLAG_REQ_ONE, 0, 512), e);
    assert_eq!(check(&p, Command::Trim, NBD_CMD_FLAG_FAST_ZERO, 0, 512), e);
    // Block status without structured replies / a context.
    assert_eq!(check(&p, Command::BlockStatus, 0, 0, 512), e);
    let mut p2 = params(true);
    p2.base_allocation = None;
    assert_eq!(check(&p2, Command::BlockStatus, 0, 0, 512), e);
    // FUA not advertised.
    let mut p3 = params(false);
    p3.transmission_flags &= !NBD_FLAG_SEND_FUA;
    assert_eq!(check(&p3, Command::Write, NBD_CMD_FLAG_FUA, 0, 512), e);
    // FAST_ZERO not advertised.
    p3.transmission_flags &= !NBD_FLAG_SEND_FAST_ZERO;
    assert_eq!(
        check(&p3, Command::WriteZeroes, NBD_CMD_FLAG_FAST_ZERO, 0, 512),
        e
    );
    // Flush / trim / write zeroes not advertised.
    p3.transmission_flags &=
        !(NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES);
    assert_eq!(check(&p3, Command::Flush, 0, 0, 0), e);
    assert_eq!(check(&p3, Command::Trim, 0, 0, 512), e);
    assert_eq!(check(&p3, Command::WriteZeroes, 0, 0, 512), e);
}

#[test]
fn read_only_gives_eperm() {
    let p = ro_params();
    for c in [Command::Write, Command::Trim, Command::WriteZeroes] {
        assert_eq!(check(&p, c, 0, 0, 512), Err(ErrorCode::Perm), "{c:?}");
        // EPERM even past the end.
        assert_eq!(check(&p, c, 0, 1 << 30, 512), Err(ErrorCode::Perm), "{c:?}");
    }
    assert!(check(&p, Command::Read, 0, 0, 512).is_ok());
    assert!(check(&p, Command::Flush, 0, 0, 0).is_ok());
}

#[test]
fn range_errors() {
    let p = params(true);
    let size = p.size;
    assert_eq!(
        check(&p, Command::Write, 0, size - 511, 512),
        Err(ErrorCode::NoSpc)
    );
    assert_eq!(
        check(&p, Command::WriteZeroes, 0, size, 1),
        Err(ErrorCode::NoSpc)
    );
    assert_eq!(
        check(&p, Command::Read, 0, size - 511, 512),
        Err(ErrorCode::Inval)
    );
    assert_eq!(check(&p, Command::Trim, 0, size, 1), Err(ErrorCode::Inval));
    assert_eq!(
        check(&p, Command::Cache, 0, size + 1, 0),
        Err(ErrorCode::Inval)
    );
    assert_eq!(
        check(&p, Command::BlockStatus, 0, size, 1),
        Err(ErrorCode::Inval)
    );
    assert_eq!(
        check(&p, Command::BlockStatus, 0, 0, 0),
        Err(ErrorCode::Inval)
    );
    // Offset overflow.
    assert_eq!(
        check(&p, Command::Read, 0, u64::MAX, 1),
        Err(ErrorCode::Inval)
    );
    assert_eq!(
        check(&p, Command::Write, 0, u64::MAX - 1, 2),
        Err(ErrorCode::NoSpc)
    );
}

#[test]
fn block_size_errors() {
    let mut p = params(true);
    p.size = 1 << 40;
    p.block_sizes = BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 1 << 20,
    };
    assert_eq!(check(&p, Command::Read, 0, 100, 512), Err(ErrorCode::Inval));
    assert_eq!(
        check(&p, Command::Write, 0, 512, 100),
        Err(ErrorCode::Inval)
    );
    assert_eq!(
        check(&p, Command::Read, 0, 0, (1 << 20) + 512),
        Err(ErrorCode::Inval)
    );
    assert_eq!(
        check(&p, Command::Write, 0, 0, (1 << 20) + 512),
        Err(ErrorCode::Inval)
    );
    // Not limited by the maximum (no payload): trim, block status,
    // write-zeroes with or without FAST_ZERO.
    assert!(check(&p, Command::WriteZeroes, 0, 0, 1 << 21).is_ok());
    assert!(check(&p, Command::Trim, 0, 0, 1 << 21).is_ok());
    assert!(check(&p, Command::BlockStatus, 0, 0, 1 << 21).is_ok());
    assert!(check(&p, Command::WriteZeroes, NBD_CMD_FLAG_FAST_ZERO, 0, 1 << 21).is_ok());
    assert!(check(&p, Command::Read, 0, 512, 1 << 20).is_ok());
}

#[test]
fn df_overflow() {
    let mut p = params(true);
    p.size = 1 << 40;
    p.block_sizes.maximum = u32::MAX;
    assert_eq!(
        check(&p, Command::Read, NBD_CMD_FLAG_DF, 0, u32::MAX - 7),
        Err(ErrorCode::Overflow)
    );
    assert!(check(&p, Command::Read, NBD_CMD_FLAG_DF, 0, u32::MAX - 8).is_ok());
    assert!(check(&p, Command::Read, 0, 0, u32::MAX).is_ok());
}

fn wire(h: RequestHeader, payload: &[u8]) -> Vec<u8> {
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn read_request_with_payload() {
    let p = params(false);
    let mut input = wire(hdr(Command::Write, NBD_CMD_FLAG_FUA, 0, 4), b"abcd");
    input.extend(wire(hdr(Command::Read, 0, 0, 4), b""));
    let mut r = Cursor::new(input);
    match read_request(&mut r, &p).unwrap() {
        Incoming::Request(req) => {
            assert!(req.fua);
            assert_eq!(req.payload, b"abcd");
            assert_eq!(
                req.op,
                Op::Write {
                    offset: 0,
                    length: 4
                }
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        read_request(&mut r, &p).unwrap(),
        Incoming::Request(Request {
            op: Op::Read { .. },
            ..
        })
    ));
    assert!(matches!(
        read_request(&mut r, &p),
        Err(ReadError::Disconnected)
    ));
}

#[test]
fn rejected_write_payload_is_skipped() {
    let p = ro_params();
    let mut input = wire(hdr(Command::Write, 0, 0, 6), b"xxxxxx");
    input.extend(wire(hdr(Command::Flush, 0, 0, 0), b""));
    let mut r = Cursor::new(input);
    match read_request(&mut r, &p).unwrap() {
        Incoming::Rejected { header, error } => {
            assert_eq!(error, ErrorCode::Perm);
            assert_eq!(header.handle, 0xabcd);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        read_request(&mut r, &p).unwrap(),
        Incoming::Request(Request { op: Op::Flush, .. })
    ));
}

#[test]
fn fatal_read_errors() {
    let p = params(false);
    let mut bad = hdr(Command::Read, 0, 0, 0).encode();
    bad[0] = 0x12;
    assert!(matches!(
        read_request(&mut Cursor::new(bad.to_vec()), &p),
        Err(ReadError::BadMagic(0x1260_9513))
    ));
    let big = hdr(Command::Write, 0, 0, DEFAULT_MAX_PAYLOAD + 1).encode();
    assert!(matches!(
        read_request(&mut Cursor::new(big.to_vec()), &p),
        Err(ReadError::PayloadTooLarge { .. })
    ));
    // Truncated payload, valid and rejected.
    let t = wire(hdr(Command::Write, 0, 0, 8), b"abc");
    assert!(matches!(
        read_request(&mut Cursor::new(t), &p),
        Err(ReadError::Disconnected)
    ));
    let t = wire(hdr(Command::Write, 0, 1 << 30, 8), b"abc");
    assert!(matches!(
        read_request(&mut Cursor::new(t), &p),
        Err(ReadError::Disconnected)
    ));
    let full = hdr(Command::Read, 0, 0, 1).encode();
    for cut in 0..full.len() {
        assert!(matches!(
            read_request(&mut Cursor::new(full[..cut].to_vec()), &p),
            Err(ReadError::Disconnected)
        ));
    }
}

#[test]
fn simple_replies_byte_for_byte() {
    let mut out = Vec::new();
    write_ok(&mut out, &rt(7, 0, ReplyFormat::Simple)).unwrap();
    assert_eq!(
        out,
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]
    );
    out.clear();
    write_error(
        &mut out,
        &rt(7, 0, ReplyFormat::Simple),
        ErrorCode::NoSpc,
        "ignored",
    )
    .unwrap();
    assert_eq!(
        out,
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 7]
    );
    out.clear();
    write_read_reply(&mut out, &rt(7, 0, ReplyFormat::Simple), b"hi", false).unwrap();
    assert_eq!(&out[16..], b"hi");
    out.clear();
    write_rejection(
        &mut out,
        &hdr(Command::Disc, 0, 0, 0),
        ErrorCode::Inval,
        ReplyFormat::Structured,
    )
    .unwrap();
    assert!(out.is_empty());
}

/// Splits a stream of structured chunks.
fn chunks(mut b: &[u8]) -> Vec<(ChunkHeader, Chunk)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let h = ChunkHeader::decode(b).unwrap();
        let end = STRUCTURED_REPLY_HEADER_LEN + h.length as usize;
        v.push((
            h,
            Chunk::decode(&h, &b[STRUCTURED_REPLY_HEADER_LEN..end]).unwrap(),
        ));
        b = &b[end..];
    }
    v
}

#[test]
fn structured_error_reply() {
    let mut out = Vec::new();
    write_rejection(
        &mut out,
        &hdr(Command::Read, 0, 0, 0),
        ErrorCode::Inval,
        ReplyFormat::Structured,
    )
    .unwrap();
    let c = chunks(&out);
    assert_eq!(c.len(), 1);
    assert!(c[0].0.is_done());
    assert_eq!(c[0].0.handle, 0xabcd);
    assert!(matches!(&c[0].1, Chunk::Error { error: 22, message } if !message.is_empty()));
}

#[test]
fn structured_read_splits_holes() {
    // [data 100 bytes][zero up to 8192][data 4096][zero tail 50]
    let offset = 3996u64; // so the first 4K boundary is 100 bytes in
    let mut data = vec![0u8; 100 + 8192 + 4096 + 50];
    data[..100].fill(1);
    data[100 + 8192..100 + 8192 + 4096].fill(2);
    let mut out = Vec::new();
    write_read_reply(
        &mut out,
        &rt(1, offset, ReplyFormat::Structured),
        &data,
        false,
    )
    .unwrap();
    let c = chunks(&out);
    let summary: Vec<_> = c
        .iter()
        .map(|(h, c)| match c {
            Chunk::OffsetData { offset, data } => ('D', *offset, data.len(), h.is_done()),
            Chunk::OffsetHole { offset, length } => ('H', *offset, *length as usize, h.is_done()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ('D', 3996, 100, false),
            ('H', 4096, 8192, false),
            ('D', 12288, 4096, false),
            ('H', 16384, 50, true),
        ]
    );
    // Reassemble and compare.
    let mut back = vec![0xffu8; data.len()];
    for (_, ch) in &c {
        match ch {
            Chunk::OffsetData { offset: o, data: d } => {
                let s = (o - offset) as usize;
                back[s..s + d.len()].copy_from_slice(d);
            }
            Chunk::OffsetHole { offset: o, length } => {
                let s = (o - offset) as usize;
                back[s..s + *length as usize].fill(0);
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(back, data);
}

#[test]
fn structured_read_splits_oversized_runs() {
    let mut data = vec![0u8; 10_000];
    data[..5000].fill(3);
    let mut out = Vec::new();
    let to = rt(1, 0, ReplyFormat::Structured);
    write_read_reply_limited(&mut out, &to, &data, false, 3000).unwrap();
    let lens: Vec<_> = chunks(&out)
        .iter()
        .map(|(h, c)| match c {
            Chunk::OffsetData { offset, data } => (*offset, data.len(), h.is_done()),
            Chunk::OffsetHole { offset, length } => (*offset, *length as usize, h.is_done()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // Data runs to the 4K boundary at 8192 (5000..8192 is zero but shares
    // a block with data), then a zero tail.
    assert_eq!(
        lens,
        vec![
            (0, 3000, false),
            (3000, 3000, false),
            (6000, 2192, false),
            (8192, 1808, true)
        ]
    );
    let mut out = Vec::new();
    assert!(write_read_reply_limited(&mut out, &to, &data, true, 3000).is_err());
}

#[test]
fn structured_read_df_and_empty() {
    let data = vec![0u8; 8192];
    let mut out = Vec::new();
    let to = rt(2, 0, ReplyFormat::Structured);
    write_read_reply(&mut out, &to, &data, true).unwrap();
    let c = chunks(&out);
    assert_eq!(c.len(), 1);
    assert!(c[0].0.is_done());
    assert!(matches!(&c[0].1, Chunk::OffsetData { offset: 0, data: d } if d.len() == 8192));

    out.clear();
    write_read_reply(&mut out, &to, &[], false).unwrap();
    let c = chunks(&out);
    assert_eq!(c.len(), 1);
    assert!(c[0].0.is_done());
    assert_eq!(c[0].1, Chunk::None);
}

#[test]
fn block_status_descriptor_shaping() {
    let hz = NBD_STATE_HOLE | NBD_STATE_ZERO;
    let ext = [
        Extent {
            length: 0,
            flags: 0,
        },
        Extent {
            length: 1000,
            flags: hz,
        },
        Extent {
            length: 24,
            flags: hz,
        },
        Extent {
            length: 5000,
            flags: 0,
        },
        Extent {
            length: 1 << 40,
            flags: hz,
        },
    ];
    let d = block_status_descriptors(&ext, 4096, false);
    assert_eq!(
        d,
        vec![
            BlockStatusDescriptor {
                length: 1024,
                flags: hz
            },
            BlockStatusDescriptor {
                length: 3072,
                flags: 0
            },
        ]
    );
    let d = block_status_descriptors(&ext, 512, true);
    assert_eq!(
        d,
        vec![BlockStatusDescriptor {
            length: 512,
            flags: hz
        }]
    );
    let d = block_status_descriptors(&[], 512, false);
    assert_eq!(
        d,
        vec![BlockStatusDescriptor {
            length: 512,
            flags: 0
        }]
    );
    let d = block_status_descriptors(&ext[4..], u64::from(u32::MAX), false);
    assert_eq!(
        d,
        vec![BlockStatusDescriptor {
            length: u64::from(u32::MAX),
            flags: hz
        }]
    );

    let mut out = Vec::new();
    let to = rt(3, 0, ReplyFormat::Structured);
    write_block_status_reply(&mut out, &to, 1, &ext, 4096, false).unwrap();
    let c = chunks(&out);
    assert!(c[0].0.is_done());
    assert!(
        matches!(&c[0].1, Chunk::BlockStatus { context_id: 1, descriptors } if descriptors.len() == 2)
    );
    assert!(write_block_status_reply(&mut out, &to, 1, &ext, 0, false).is_err());
    // Past 32 bits only extended headers can say it.
    assert!(write_block_status_reply(&mut out, &to, 1, &ext, 1 << 32, false).is_err());
}

#[test]
fn params_from_negotiated() {
    use crate::protocol::handshake::{negotiate, Duplex, HandshakeConfig};
    let cfg = HandshakeConfig::new(vec![ExportInfo::new("", 8192)]);
    let mut input = (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    input.extend(encode_option(OptionCode::ExportName, b""));
    let mut s = Duplex::new(Cursor::new(input), Vec::new());
    let n = negotiate(&mut s, &cfg).unwrap();
    let p = TransmissionParams::from_negotiated(&n);
    assert_eq!(p.size, 8192);
    assert!(!p.structured_replies);
    assert_eq!(p.max_payload, DEFAULT_MAX_PAYLOAD);
    assert_eq!(p.transmission_flags, n.transmission_flags);
}

/// An extended-header session on a 16 GiB export, with `base:allocation`
/// (id 1) and `qemu:allocation-depth` (id 2) selected and the block
/// status payload form advertised.
fn extended_params() -> TransmissionParams {
    let e = ExportInfo::new("", 16 << 30);
    TransmissionParams {
        size: e.size,
        transmission_flags: e.transmission_flags(true) | NBD_FLAG_BLOCK_STATUS_PAYLOAD,
        read_only: false,
        structured_replies: true,
        extended_headers: true,
        base_allocation: Some(1),
        qemu_contexts: vec![(2, QemuContext::AllocationDepth)],
        block_sizes: e.block_sizes,
        max_payload: DEFAULT_MAX_PAYLOAD,
    }
}

fn ext_wire(command: Command, flags: u16, offset: u64, length: u64, payload: &[u8]) -> Vec<u8> {
    let h = RequestHeader {
        flags,
        command,
        handle: 0xabcd,
        offset,
        length,
    };
    let mut v = h.encode_extended().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn extended_requests_carry_64_bit_lengths_and_flagged_payloads() {
    let p = extended_params();
    let mut input = ext_wire(Command::Write, NBD_CMD_FLAG_PAYLOAD_LEN, 512, 3, b"abc");
    // One write-zeroes of 5 GiB: compact headers would need 160 requests.
    input.extend(ext_wire(Command::WriteZeroes, 0, 1 << 30, 5 << 30, b""));
    // A payload the command does not take: skipped, refused, in sync.
    input.extend(ext_wire(
        Command::Read,
        NBD_CMD_FLAG_PAYLOAD_LEN,
        0,
        4,
        b"junk",
    ));
    // Reads stay bound by the maximum block size.
    input.extend(ext_wire(Command::Read, 0, 0, 1 << 32, b""));
    input.extend(ext_wire(Command::Flush, 0, 0, 0, b""));
    let mut r = Cursor::new(input);
    let next = |r: &mut Cursor<Vec<u8>>| read_request(r, &p).unwrap();
    match next(&mut r) {
        Incoming::Request(req) => {
            assert_eq!(req.payload, b"abc");
            assert_eq!(
                req.op,
                Op::Write {
                    offset: 512,
                    length: 3
                }
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        next(&mut r),
        Incoming::Request(Request {
            op: Op::WriteZeroes {
                offset: 0x4000_0000,
                length: 0x1_4000_0000,
                ..
            },
            ..
        })
    ));
    for _ in 0..2 {
        assert!(matches!(
            next(&mut r),
            Incoming::Rejected {
                error: ErrorCode::Inval,
                ..
            }
        ));
    }
    assert!(matches!(
        next(&mut r),
        Incoming::Request(Request { op: Op::Flush, .. })
    ));
}

#[test]
fn extended_framing_rules() {
    let p = extended_params();
    // A write without the flag still carries its data (QEMU's client
    // sends it so).
    let t = ext_wire(Command::Write, 0, 0, 3, b"abc");
    assert!(matches!(
        read_request(&mut Cursor::new(t), &p).unwrap(),
        Incoming::Request(Request { payload, .. }) if payload == b"abc"
    ));
    // A payload longer than the limit cannot be skipped.
    let t = ext_wire(
        Command::BlockStatus,
        NBD_CMD_FLAG_PAYLOAD_LEN,
        0,
        1 << 40,
        b"",
    );
    assert!(matches!(
        read_request(&mut Cursor::new(t), &p),
        Err(ReadError::PayloadTooLarge { .. })
    ));
    // A compact header in an extended session has the wrong magic.
    let t = wire(hdr(Command::Read, 0, 0, 512), b"....");
    assert!(matches!(
        read_request(&mut Cursor::new(t), &p),
        Err(ReadError::BadMagic(REQUEST_MAGIC))
    ));
    // And the flag means nothing without extended headers.
    let p = params(true);
    let t = wire(hdr(Command::Read, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 512), b"");
    assert!(matches!(
        read_request(&mut Cursor::new(t), &p).unwrap(),
        Incoming::Rejected {
            error: ErrorCode::Inval,
            ..
        }
    ));
}

#[test]
fn block_status_payload_names_contexts_and_effect_length() {
    let p = extended_params();
    let filter = |len: u64, ids: &[u32]| {
        let mut v = len.to_be_bytes().to_vec();
        ids.iter().for_each(|id| v.extend(id.to_be_bytes()));
        v
    };
    let flag = NBD_CMD_FLAG_PAYLOAD_LEN;
    let cases: [(Vec<u8>, Option<Vec<u32>>); 6] = [
        (filter(8 << 30, &[2]), Some(vec![2])),
        (filter(4096, &[2, 1]), Some(vec![2, 1])),
        // Named twice, unknown, none named, ragged, too long to be valid.
        (filter(4096, &[1, 1]), None),
        (filter(4096, &[7]), None),
        (filter(4096, &[]), None),
        (vec![0; 13], None),
    ];
    let mut input = Vec::new();
    for (payload, _) in &cases {
        let len = payload.len() as u64;
        input.extend(ext_wire(Command::BlockStatus, flag, 0, len, payload));
    }
    input.extend(ext_wire(Command::BlockStatus, flag, 0, 100, &[0; 100]));
    input.extend(ext_wire(Command::Flush, 0, 0, 0, b""));
    let mut r = Cursor::new(input);
    for (payload, want) in cases {
        match (read_request(&mut r, &p).unwrap(), want) {
            (Incoming::Request(req), Some(ids)) => {
                let length = u64::from_be_bytes(payload[..8].try_into().unwrap());
                assert_eq!(
                    req.op,
                    Op::BlockStatus {
                        offset: 0,
                        length,
                        req_one: false,
                        only: Some(ids)
                    }
                );
            }
            (Incoming::Rejected { error, .. }, None) => assert_eq!(error, ErrorCode::Inval),
            (other, want) => panic!("{other:?}, wanted {want:?}"),
        }
    }
    assert!(matches!(
        read_request(&mut r, &p).unwrap(),
        Incoming::Rejected { .. }
    ));
    assert!(matches!(
        read_request(&mut r, &p).unwrap(),
        Incoming::Request(Request { op: Op::Flush, .. })
    ));
}

#[test]
fn extended_replies_never_use_simple_headers() {
    let to = rt(7, 1 << 33, ReplyFormat::Extended);
    let mut out = Vec::new();
    write_ok(&mut out, &to).unwrap();
    let h = ExtendedChunkHeader::decode(&out).unwrap();
    assert_eq!(out.len(), EXTENDED_REPLY_HEADER_LEN);
    assert_eq!(
        (h.chunk_type, h.flags, h.handle, h.offset, h.length),
        (ChunkType::None, NBD_REPLY_FLAG_DONE, 7, 1 << 33, 0)
    );
    out.clear();
    write_error(&mut out, &to, ErrorCode::NoSpc, "full").unwrap();
    let h = ExtendedChunkHeader::decode(&out).unwrap();
    assert_eq!(h.chunk_type, ChunkType::Error);
    // Block status past 32 bits, in one descriptor.
    out.clear();
    let ext = [Extent {
        length: 6 << 30,
        flags: NBD_STATE_HOLE,
    }];
    write_block_status_reply(&mut out, &to, 1, &ext, 6 << 30, false).unwrap();
    let h = ExtendedChunkHeader::decode(&out).unwrap();
    let c = Chunk::decode(&h.to_structured().unwrap(), &out[32..]).unwrap();
    assert_eq!(
        c,
        Chunk::BlockStatus {
            context_id: 1,
            descriptors: vec![BlockStatusDescriptor {
                length: 6 << 30,
                flags: NBD_STATE_HOLE
            }]
        }
    );
}
