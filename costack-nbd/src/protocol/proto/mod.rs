//! NBD wire format: constants, strong types and pure encode/decode functions.
//!
//! Everything in this module works on byte slices and `Vec<u8>`; nothing here
//! performs I/O. All integers on the wire are big-endian ("network byte
//! order"). The layout of every message follows the NBD protocol document
//! (`doc/proto.md` in the reference implementation's repository).
//!
//! Decoders never panic: a short or inconsistent input yields a
//! [`DecodeError`].
//!
//! The items live in files by subject and are all re-exported here:
//! `consts` (magic numbers, limits, flag bits), `codes` (the wire enums,
//! each declared once with its constants by `wire_enum!`), `decode`
//! (errors and byte helpers), `options` (the handshake's messages) and
//! `transmission` (requests, replies and chunks).

use std::fmt;
use std::io;

/// Declares a wire enum once: each variant with the constant it is sent
/// as and that constant's value. Generates the constants, the enum (with
/// `Unknown` carrying any other value) and both conversions.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ty {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $konst:ident = $value:expr,
            )*
        }
        $(#[$umeta:meta])*
        Unknown
    ) => {
        $(
            #[doc = concat!("`", stringify!($konst), "` ([`", stringify!($name), "::",
                stringify!($variant), "`]).")]
            pub const $konst: $repr = $value;
        )*

        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )*
            $(#[$umeta])*
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                match v {
                    $($konst => Self::$variant,)*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> $repr {
                match v {
                    $($name::$variant => $konst,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

mod codes;
mod consts;
mod decode;
mod options;
mod transmission;

pub use codes::*;
pub use consts::*;
pub use decode::*;
pub use options::*;
pub use transmission::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes_match_spec() {
        let g = encode_greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
        assert_eq!(decode_greeting(&g), Ok(3));
        assert!(matches!(
            decode_greeting(&g[..10]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = g;
        bad[0] = b'X';
        assert!(matches!(
            decode_greeting(&bad),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    #[test]
    fn code_round_trips() {
        for v in 0..20u32 {
            assert_eq!(u32::from(OptionCode::from(v)), v);
            assert_eq!(u16::from(Command::from(v as u16)), v as u16);
            assert_eq!(u16::from(InfoType::from(v as u16)), v as u16);
            assert_eq!(u16::from(ChunkType::from(v as u16)), v as u16);
            assert_eq!(u32::from(ReplyType::from(v)), v);
            assert_eq!(u32::from(ReplyType::from(v | (1 << 31))), v | (1 << 31));
        }
        assert_eq!(OptionCode::from(99), OptionCode::Unknown(99));
        assert_eq!(Command::from(8), Command::Unknown(8));
        assert!(ReplyType::ErrUnsup.is_error());
        assert!(!ReplyType::Ack.is_error());
        assert_eq!(NBD_REP_ERR_UNSUP, 0x8000_0001);
        assert_eq!(NBD_REP_ERR_TOO_BIG, 0x8000_0009);
        assert_eq!(NBD_REPLY_TYPE_ERROR, 0x8001);
        assert_eq!(NBD_REPLY_TYPE_ERROR_OFFSET, 0x8002);
    }

    #[test]
    fn error_codes() {
        for e in [
            ErrorCode::Perm,
            ErrorCode::Io,
            ErrorCode::NoMem,
            ErrorCode::Inval,
            ErrorCode::NoSpc,
            ErrorCode::Overflow,
            ErrorCode::NotSup,
            ErrorCode::Shutdown,
        ] {
            assert_eq!(ErrorCode::from_wire(e.to_wire()), Some(e));
        }
        assert_eq!(ErrorCode::from_wire(0), None);
        assert_eq!(ErrorCode::Inval.to_wire(), 22);
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(ErrorCode::from_io_error(&e), ErrorCode::Perm);
        let e = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(ErrorCode::from_io_error(&e), ErrorCode::NoSpc);
        #[cfg(target_os = "linux")]
        assert_eq!(
            ErrorCode::from_io_error(&io::Error::from_raw_os_error(122)),
            ErrorCode::NoSpc
        );
        let e = io::Error::other("boom");
        assert_eq!(ErrorCode::from_io_error(&e), ErrorCode::Io);
        assert_eq!(ErrorCode::Overflow.to_string(), "EOVERFLOW (75)");
    }

    #[test]
    fn option_header_round_trip() {
        let h = OptionHeader {
            option: OptionCode::Go,
            length: 42,
        };
        let b = h.encode();
        assert_eq!(&b[..8], b"IHAVEOPT");
        assert_eq!(&b[8..12], &[0, 0, 0, 7]);
        assert_eq!(&b[12..16], &[0, 0, 0, 42]);
        assert_eq!(OptionHeader::decode(&b), Ok(h));
        assert!(OptionHeader::decode(&b[..15]).is_err());
    }

    #[test]
    fn info_request_parsing() {
        let req = InfoRequest {
            name: b"disk".to_vec(),
            requests: vec![InfoType::BlockSize, InfoType::Unknown(77)],
        };
        let data = req.encode();
        assert_eq!(
            data,
            [0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 2, 0, 3, 0, 77]
        );
        assert_eq!(InfoRequest::decode(&data), Ok(req));
        // Name overruns (needs 6 bytes of trailer room).
        assert!(InfoRequest::decode(&[0, 0, 0, 9, 1, 2, 3]).is_err());
        // Count disagrees with the remaining length.
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0, 2, 0, 1]).is_err());
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            InfoRequest::decode(&[0, 0, 0, 0, 0, 0]),
            Ok(InfoRequest {
                name: vec![],
                requests: vec![]
            })
        );
        // Over-long name.
        let long = InfoRequest {
            name: vec![b'a'; MAX_STRING_LEN + 1],
            requests: vec![],
        };
        assert!(InfoRequest::decode(&long.encode()).is_err());
    }

    #[test]
    fn meta_context_request_parsing() {
        let req = MetaContextRequest {
            export: b"e".to_vec(),
            queries: vec![b"base:allocation".to_vec(), b"x-y:".to_vec()],
        };
        let data = req.encode();
        assert_eq!(MetaContextRequest::decode(&data), Ok(req));
        // Query length overruns.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, b'a']).is_err());
        // Absurd query count must not allocate.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Trailing garbage.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn option_reply_encoding() {
        let mut out = Vec::new();
        encode_option_reply(&mut out, NBD_OPT_LIST, ReplyType::Ack, &[]);
        assert_eq!(
            out,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert_eq!(h.reply, ReplyType::Ack);
        assert_eq!(h.option, NBD_OPT_LIST);
        assert_eq!(h.length, 0);
        assert_eq!(encode_rep_server("ab", "d"), [0, 0, 0, 2, b'a', b'b', b'd']);
        assert_eq!(
            encode_rep_meta_context(7, "x:y"),
            [0, 0, 0, 7, b'x', b':', b'y']
        );
    }

    #[test]
    fn info_payloads() {
        let e = encode_info_export(0x1_0000_0000, 0x1234);
        assert_eq!(e, [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(
            Info::decode(&e),
            Ok(Info::Export {
                size: 0x1_0000_0000,
                flags: 0x1234
            })
        );
        let b = encode_info_block_size(1, 4096, 1 << 25);
        assert_eq!(b.len(), 14);
        assert_eq!(
            Info::decode(&b),
            Ok(Info::BlockSize {
                minimum: 1,
                preferred: 4096,
                maximum: 1 << 25
            })
        );
        assert_eq!(
            Info::decode(&encode_info_name("n")),
            Ok(Info::Name(b"n".to_vec()))
        );
        assert_eq!(
            Info::decode(&encode_info_description("d")),
            Ok(Info::Description(b"d".to_vec()))
        );
        assert!(Info::decode(&e[..11]).is_err());
    }

    #[test]
    fn export_name_reply() {
        let r = encode_export_name_reply(512, 1, false);
        assert_eq!(r.len(), 8 + 2 + 124);
        assert!(r[10..].iter().all(|&b| b == 0));
        let r = encode_export_name_reply(512, 1, true);
        assert_eq!(r, [0, 0, 0, 0, 0, 0, 2, 0, 0, 1]);
    }

    #[test]
    fn request_header_round_trip() {
        let h = RequestHeader {
            flags: NBD_CMD_FLAG_FUA,
            command: Command::Write,
            handle: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512,
        };
        let b = h.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&b[4..8], &[0, 1, 0, 1]);
        assert_eq!(RequestHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[3] = 0;
        assert!(matches!(
            RequestHeader::decode(&bad),
            Err(DecodeError::BadMagic { .. })
        ));
        assert!(matches!(
            RequestHeader::decode(&b[..27]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn simple_reply_round_trip() {
        let h = SimpleReplyHeader {
            error: NBD_EIO,
            handle: 9,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9]
        );
        assert_eq!(SimpleReplyHeader::decode(&b), Ok(h));
    }

    #[test]
    fn extended_request_header_round_trip() {
        let h = RequestHeader {
            flags: NBD_CMD_FLAG_PAYLOAD_LEN,
            command: Command::WriteZeroes,
            handle: 3,
            offset: 1 << 40,
            length: 5 << 30,
        };
        let b = h.encode_extended();
        assert_eq!(&b[..4], &[0x21, 0xe4, 0x1c, 0x71]);
        assert_eq!(&b[24..32], &(5u64 << 30).to_be_bytes());
        assert_eq!(RequestHeader::decode_extended(&b), Ok(h));
        // Neither form decodes as the other.
        assert!(RequestHeader::decode(&b).is_err());
        let compact = RequestHeader { length: 512, ..h }.encode();
        assert!(RequestHeader::decode_extended(&compact).is_err());
    }

    fn to(handle: u64) -> ReplyTo {
        ReplyTo {
            handle,
            offset: 0,
            format: ReplyFormat::Structured,
        }
    }

    fn split(b: &[u8]) -> (ChunkHeader, Chunk) {
        let h = ChunkHeader::decode(&b[..20]).unwrap();
        let c = Chunk::decode(&h, &b[20..]).unwrap();
        (h, c)
    }

    #[test]
    fn structured_chunks_round_trip() {
        let mut out = Vec::new();
        encode_offset_data(&mut out, &to(5), 1024, b"hello", true);
        assert_eq!(&out[..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&out[4..8], &[0, 1, 0, 1]);
        assert_eq!(&out[16..20], &[0, 0, 0, 13]);
        let (h, c) = split(&out);
        assert!(h.is_done());
        assert_eq!(h.handle, 5);
        assert_eq!(
            c,
            Chunk::OffsetData {
                offset: 1024,
                data: b"hello".to_vec()
            }
        );

        let mut hole = Vec::new();
        encode_offset_hole(&mut hole, &to(6), 0, 4096, false);
        let (h, c) = split(&hole);
        assert!(!h.is_done());
        assert_eq!(
            c,
            Chunk::OffsetHole {
                offset: 0,
                length: 4096
            }
        );

        let mut out = Vec::new();
        let d = [
            BlockStatusDescriptor {
                length: 65536,
                flags: NBD_STATE_HOLE | NBD_STATE_ZERO,
            },
            BlockStatusDescriptor {
                length: 512,
                flags: 0,
            },
        ];
        encode_block_status(&mut out, &to(7), 1, &d, true);
        assert_eq!(out.len(), 20 + 4 + 16);
        let (_, c) = split(&out);
        assert_eq!(
            c,
            Chunk::BlockStatus {
                context_id: 1,
                descriptors: d.to_vec()
            }
        );

        let mut out = Vec::new();
        encode_error_chunk(&mut out, &to(8), ErrorCode::Inval, "bad", true);
        assert_eq!(&out[6..8], &[0x80, 0x01]);
        let (_, c) = split(&out);
        assert_eq!(
            c,
            Chunk::Error {
                error: 22,
                message: b"bad".to_vec()
            }
        );

        let mut out = Vec::new();
        encode_error_offset_chunk(&mut out, &to(8), ErrorCode::Io, "", 77, false);
        let (_, c) = split(&out);
        assert_eq!(
            c,
            Chunk::ErrorOffset {
                error: 5,
                message: vec![],
                offset: 77
            }
        );

        let mut none = Vec::new();
        encode_none_chunk(&mut none, &to(9));
        let (h, c) = split(&none);
        assert!(h.is_done());
        assert_eq!(c, Chunk::None);
    }

    /// Splits an extended chunk: its header, and the payload decoded.
    fn split_extended(b: &[u8]) -> (ExtendedChunkHeader, Chunk) {
        let h = ExtendedChunkHeader::decode(&b[..32]).unwrap();
        assert_eq!(h.length as usize, b.len() - 32);
        let c = Chunk::decode(&h.to_structured().unwrap(), &b[32..]).unwrap();
        (h, c)
    }

    #[test]
    fn extended_chunks_carry_the_request_offset() {
        let to = ReplyTo {
            handle: 5,
            offset: 1 << 33,
            format: ReplyFormat::Extended,
        };
        let mut out = Vec::new();
        encode_offset_data(&mut out, &to, (1 << 33) + 512, b"hi", false);
        assert_eq!(&out[..4], &[0x6e, 0x8a, 0x27, 0x8c]);
        let (h, c) = split_extended(&out);
        assert_eq!((h.handle, h.offset, h.flags), (5, 1 << 33, 0));
        assert_eq!(
            c,
            Chunk::OffsetData {
                offset: (1 << 33) + 512,
                data: b"hi".to_vec()
            }
        );

        // Status chunks become BLOCK_STATUS_EXT: a count, 64-bit lengths.
        let d = [
            BlockStatusDescriptor {
                length: 6 << 30,
                flags: NBD_STATE_HOLE,
            },
            BlockStatusDescriptor {
                length: 4096,
                flags: 0,
            },
        ];
        let mut out = Vec::new();
        encode_block_status(&mut out, &to, 2, &d, true);
        assert_eq!(out.len(), 32 + 8 + 2 * 16);
        assert_eq!(&out[6..8], &[0, 6]);
        assert_eq!(&out[36..40], &[0, 0, 0, 2]);
        let (h, c) = split_extended(&out);
        assert!(h.flags & NBD_REPLY_FLAG_DONE != 0);
        assert_eq!(
            c,
            Chunk::BlockStatus {
                context_id: 2,
                descriptors: d.to_vec()
            }
        );

        let mut out = Vec::new();
        encode_none_chunk(&mut out, &to);
        let (h, c) = split_extended(&out);
        assert_eq!((h.length, c), (0, Chunk::None));

        // A count that disagrees with the length is refused.
        let mut out = Vec::new();
        encode_block_status(&mut out, &to, 2, &d, true);
        out[39] = 3;
        let h = ExtendedChunkHeader::decode(&out[..32]).unwrap();
        assert!(Chunk::decode(&h.to_structured().unwrap(), &out[32..]).is_err());
    }

    #[test]
    fn long_error_message_is_clamped() {
        let mut out = Vec::new();
        let msg = "é".repeat(3000); // 6000 bytes
        encode_error_chunk(&mut out, &to(1), ErrorCode::Io, &msg, true);
        let (_, c) = split(&out);
        match c {
            Chunk::Error { message, .. } => {
                assert!(message.len() <= MAX_STRING_LEN);
                assert!(std::str::from_utf8(&message).is_ok());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_chunks_rejected() {
        let hdr = ChunkHeader {
            flags: 0,
            chunk_type: ChunkType::OffsetData,
            handle: 0,
            length: 8,
        };
        assert!(Chunk::decode(&hdr, &[0; 8]).is_err());
        let hdr = ChunkHeader {
            chunk_type: ChunkType::BlockStatus,
            length: 8,
            ..hdr
        };
        assert!(Chunk::decode(&hdr, &[0; 8]).is_err());
        let hdr = ChunkHeader {
            chunk_type: ChunkType::Error,
            length: 6,
            ..hdr
        };
        // Message length 1 but no room for it.
        assert!(Chunk::decode(&hdr, &[0, 0, 0, 5, 0, 1]).is_err());
        // Payload length mismatch.
        assert!(Chunk::decode(&hdr, &[0; 5]).is_err());
    }
}
