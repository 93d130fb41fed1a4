//! Property tests: the parsers must never panic on arbitrary input, and
//! encoders/decoders must round-trip.

use std::io::Cursor;

use costack_nbd::protocol::handshake::{negotiate, Duplex, ExportInfo, HandshakeConfig};
use costack_nbd::protocol::proto::{
    self, ChunkHeader, Command, InfoRequest, MetaContextRequest, OptionCode, RequestHeader,
    NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, REQUEST_MAGIC,
};
use costack_nbd::protocol::request::{read_request, validate, Incoming, Op, TransmissionParams};
use proptest::prelude::*;

fn config() -> HandshakeConfig {
    let mut ro = ExportInfo::new("ro", 1 << 16);
    ro.read_only = true;
    HandshakeConfig::new(vec![ExportInfo::new("", 1 << 20), ro])
}

/// A session with simple replies (`format` 0), structured replies (1) or
/// extended headers (2, with the block status payload form).
fn params(format: u8) -> TransmissionParams {
    let e = ExportInfo::new("", 1 << 20);
    let (structured, extended) = (format >= 1, format >= 2);
    let payload_form = if extended {
        proto::NBD_FLAG_BLOCK_STATUS_PAYLOAD
    } else {
        0
    };
    TransmissionParams {
        size: e.size,
        transmission_flags: e.transmission_flags(structured) | payload_form,
        read_only: false,
        structured_replies: structured,
        extended_headers: extended,
        base_allocation: structured.then_some(1),
        qemu_contexts: Vec::new(),
        block_sizes: e.block_sizes,
        max_payload: 1 << 16,
    }
}

/// A byte stream that is mostly well-formed options, so the fuzzer gets past
/// the greeting and magic checks often.
fn option_stream() -> impl Strategy<Value = Vec<u8>> {
    let opt = (0u32..14, proptest::collection::vec(any::<u8>(), 0..40));
    (
        prop_oneof![Just(3u32), any::<u32>()],
        proptest::collection::vec(opt, 0..8),
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(flags, opts, tail)| {
            let mut v = flags.to_be_bytes().to_vec();
            for (o, d) in opts {
                v.extend(proto::encode_option(OptionCode::from(o), &d));
            }
            v.extend(tail);
            v
        })
}

/// Request streams with the right magic (extended or compact headers)
/// and plausible fields.
fn request_stream(extended: bool) -> impl Strategy<Value = Vec<u8>> {
    let long = if extended {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    let req = (
        any::<u16>(),
        0u16..10,
        prop_oneof![0u64..(1 << 21), any::<u64>()],
        prop_oneof![0u64..70_000, 0..=long],
        proptest::collection::vec(any::<u8>(), 0..64),
    );
    proptest::collection::vec(req, 0..6).prop_map(move |reqs| {
        let mut v = Vec::new();
        for (flags, cmd, offset, length, payload) in reqs {
            let h = RequestHeader {
                flags: flags & 0x3f,
                command: Command::from(cmd),
                handle: 1,
                offset,
                length,
            };
            if extended {
                v.extend(h.encode_extended());
            } else {
                v.extend(h.encode());
            }
            v.extend(payload);
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn negotiate_never_panics_on_random_bytes(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut s = Duplex::new(Cursor::new(input), Vec::new());
        let _ = negotiate(&mut s, &config());
    }

    #[test]
    fn negotiate_never_panics_on_option_streams(input in option_stream()) {
        let mut s = Duplex::new(Cursor::new(input), Vec::new());
        let r = negotiate(&mut s, &config());
        if let Ok(n) = r {
            // Whatever was agreed must name a real export.
            prop_assert!(n.export_index < 2);
            prop_assert!(n.client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) == 0);
        }
    }

    #[test]
    fn read_request_never_panics(input in proptest::collection::vec(any::<u8>(), 0..128), format in 0u8..3) {
        let p = params(format);
        let mut r = Cursor::new(input);
        for _ in 0..8 {
            if read_request(&mut r, &p).is_err() {
                break;
            }
        }
    }

    #[test]
    fn read_request_on_plausible_streams((format, input) in (0u8..3).prop_flat_map(|f| (Just(f), request_stream(f == 2)))) {
        let p = params(format);
        let mut r = Cursor::new(input);
        for _ in 0..8 {
            match read_request(&mut r, &p) {
                Ok(Incoming::Request(req)) => {
                    // A validated request is within the export.
                    let (offset, length) = match req.op {
                        Op::BlockStatus { offset, length, .. } => (offset, length),
                        _ => (req.header.offset, req.header.length),
                    };
                    // (Offset and length of flush and disconnect mean nothing.)
                    if req.header.command != Command::Flush && req.header.command != Command::Disc {
                        prop_assert!(offset.checked_add(length).is_some_and(|end| end <= p.size));
                    }
                    prop_assert_eq!(req.payload.len(), if req.header.command == Command::Write { req.header.length as usize } else { 0 });
                }
                Ok(Incoming::Rejected { .. }) => {}
                Err(_) => break,
            }
        }
    }

    #[test]
    fn validate_is_total(flags: u16, cmd: u16, offset: u64, length: u64, format in 0u8..3) {
        let h = RequestHeader { flags, command: Command::from(cmd), handle: 0, offset, length };
        let _ = validate(&h, &params(format));
    }

    #[test]
    fn request_header_round_trip(flags: u16, cmd: u16, handle: u64, offset: u64, length: u32, long: u64) {
        let h = RequestHeader { flags, command: Command::from(cmd), handle, offset, length: u64::from(length) };
        let b = h.encode();
        prop_assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]), REQUEST_MAGIC);
        prop_assert_eq!(RequestHeader::decode(&b), Ok(h));
        let h = RequestHeader { length: long, ..h };
        prop_assert_eq!(RequestHeader::decode_extended(&h.encode_extended()), Ok(h));
    }

    #[test]
    fn option_payload_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = InfoRequest::decode(&data);
        let _ = MetaContextRequest::decode(&data);
        let _ = proto::Info::decode(&data);
        let _ = proto::OptionHeader::decode(&data);
        let _ = proto::OptionReplyHeader::decode(&data);
        let _ = proto::decode_greeting(&data);
        if let Ok(h) = ChunkHeader::decode(&data) {
            let _ = proto::Chunk::decode(&h, &data[proto::STRUCTURED_REPLY_HEADER_LEN..]);
        }
    }

    #[test]
    fn meta_context_round_trip(
        export in proptest::collection::vec(any::<u8>(), 0..20),
        queries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..5),
    ) {
        let req = MetaContextRequest { export, queries };
        prop_assert_eq!(MetaContextRequest::decode(&req.encode()), Ok(req));
    }
}
