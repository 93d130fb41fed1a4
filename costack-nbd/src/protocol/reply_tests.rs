//! Unit tests of `reply.rs` (a child module of it: private items are in
//! reach through `super`). Requests come from `request.rs`'s tests.

use super::*;
use crate::protocol::proto::*;
use crate::protocol::request::tests::{hdr, rt};

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
