//! Arbitrary bytes through every decoder in `proto`.
//!
//! Decoders must never panic; whatever decodes must re-encode to the same
//! bytes (where an encoder exists) and decode again to the same value.

#![no_main]

use costack_nbd::protocol::proto::{
    self, Chunk, ChunkHeader, ChunkType, Info, InfoRequest, MetaContextRequest, OptionHeader,
    OptionReplyHeader, Reader, RequestHeader, SimpleReplyHeader, STRUCTURED_REPLY_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    match selector % 10 {
        0 => {
            if let Ok(flags) = proto::decode_greeting(input) {
                assert_eq!(
                    &proto::encode_greeting(flags)[..],
                    &input[..proto::GREETING_LEN]
                );
            }
        }
        1 => {
            if let Ok(h) = OptionHeader::decode(input) {
                assert_eq!(&h.encode()[..], &input[..16]);
                assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));
            }
        }
        2 => {
            if let Ok(r) = InfoRequest::decode(input) {
                assert_eq!(r.encode(), input);
                assert_eq!(InfoRequest::decode(&r.encode()), Ok(r));
            }
        }
        3 => {
            if let Ok(r) = MetaContextRequest::decode(input) {
                assert_eq!(r.encode(), input);
                assert_eq!(MetaContextRequest::decode(&r.encode()), Ok(r));
            }
        }
        4 => {
            if let Ok(h) = OptionReplyHeader::decode(input) {
                assert_eq!(
                    u32::from(h.reply),
                    u32::from_be_bytes(input[12..16].try_into().unwrap())
                );
            }
        }
        5 => {
            if let Ok(i) = Info::decode(input) {
                let again = match &i {
                    Info::Export { size, flags } => proto::encode_info_export(*size, *flags),
                    Info::BlockSize {
                        minimum,
                        preferred,
                        maximum,
                    } => proto::encode_info_block_size(*minimum, *preferred, *maximum),
                    _ => input.to_vec(),
                };
                assert_eq!(Info::decode(&again), Ok(i));
            }
        }
        6 => {
            if let Ok(h) = RequestHeader::decode(input) {
                assert_eq!(&h.encode()[..], &input[..28]);
                assert_eq!(RequestHeader::decode(&h.encode()), Ok(h));
            }
            if let Ok(h) = RequestHeader::decode_extended(input) {
                assert_eq!(&h.encode_extended()[..], &input[..32]);
            }
        }
        7 => {
            if let Ok(h) = SimpleReplyHeader::decode(input) {
                assert_eq!(&h.encode()[..], &input[..16]);
            }
        }
        8 => {
            // A chunk header followed by its payload.
            if let Ok(h) = ChunkHeader::decode(input) {
                assert_eq!(&h.encode()[..], &input[..STRUCTURED_REPLY_HEADER_LEN]);
                let payload = &input[STRUCTURED_REPLY_HEADER_LEN..];
                if let Ok(c) = Chunk::decode(&h, payload) {
                    let mut out = Vec::new();
                    let to = proto::ReplyTo {
                        handle: h.handle,
                        offset: 0,
                        format: proto::ReplyFormat::Structured,
                    };
                    match &c {
                        Chunk::OffsetData { offset, data } => {
                            proto::encode_offset_data(
                                &mut out,
                                &to,
                                *offset,
                                data,
                                h.is_done(),
                            );
                        }
                        Chunk::BlockStatus {
                            context_id,
                            descriptors,
                        } => {
                            proto::encode_block_status(
                                &mut out,
                                &to,
                                *context_id,
                                descriptors,
                                h.is_done(),
                            );
                        }
                        _ => {}
                    }
                    if !out.is_empty() && h.flags & !proto::NBD_REPLY_FLAG_DONE == 0 {
                        assert_eq!(out, input);
                    }
                }
                // The chunk type decides the payload layout whatever it is.
                let _ = Chunk::decode(
                    &ChunkHeader {
                        chunk_type: ChunkType::from(h.flags),
                        ..h
                    },
                    payload,
                );
            }
        }
        _ => {
            // The byte reader itself, driven by the input.
            let mut r = Reader::new(input);
            for op in input.iter().copied().take(64) {
                let before = r.remaining();
                let ok = match op % 6 {
                    0 => r.u16().is_ok(),
                    1 => r.u32().is_ok(),
                    2 => r.u64().is_ok(),
                    3 => r.bytes(usize::from(op)).is_ok(),
                    4 => r.bytes(usize::MAX - usize::from(op)).is_ok(),
                    _ => {
                        r.rest();
                        true
                    }
                };
                assert!(r.remaining() <= before);
                if !ok {
                    assert_eq!(r.remaining(), before, "failed read consumed bytes");
                }
            }
            let _ = r.finish();
        }
    }
});
