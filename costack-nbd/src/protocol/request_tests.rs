//! Unit tests of `request.rs` (a child module of it: private items are in
//! reach through `super`).

use super::*;
use crate::protocol::handshake::ExportInfo;
use crate::protocol::proto::*;
use std::io::Cursor;

pub(crate) fn params(structured: bool) -> TransmissionParams {
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

pub(crate) fn hdr(command: Command, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        command,
        handle: 0xabcd,
        offset,
        length: u64::from(length),
    }
}

/// The reply to `handle` (at `offset`) in a session of `format`.
pub(crate) fn rt(handle: u64, offset: u64, format: ReplyFormat) -> ReplyTo {
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
