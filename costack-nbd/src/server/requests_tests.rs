//! Unit tests of `requests.rs` (a child module of it: private items are in
//! reach through `super`).

use std::io::Read;

use super::*;

fn flatten(r: &Reply) -> Vec<u8> {
    r.slices()
        .flat_map(|s| s.as_bytes().expect("memory").to_vec())
        .collect()
}

#[test]
fn planned_read_replies_encode_like_written_ones() {
    use crate::protocol::proto::ReplyFormat;
    use crate::protocol::reply::write_read_reply;
    // Data with zero runs (holes in structured replies) and without.
    let mut mixed = vec![0u8; 3 * 65536];
    mixed[70000..80000].fill(7);
    let cases: [(Vec<u8>, u64); 3] = [(vec![0xAB; 4096], 4096), (mixed, 0), (Vec::new(), 0)];
    for (data, offset) in cases {
        let formats = [
            ReplyFormat::Simple,
            ReplyFormat::Structured,
            ReplyFormat::Extended,
        ];
        for (format, df) in formats.into_iter().flat_map(|f| [(f, false), (f, true)]) {
            if format == ReplyFormat::Simple && df {
                continue;
            }
            let to = ReplyTo {
                handle: 42,
                offset,
                format,
            };
            let mut written = Vec::new();
            write_read_reply(&mut written, &to, &data, df).unwrap();
            let plan = plan_read_reply(&to, &data, df).unwrap();
            // The data is referenced, not copied.
            assert!(plan.head.len() < 128 + data.len() / 2);
            let reply = Reply {
                plan,
                data: data.clone(),
                mapped: None,
            };
            assert_eq!(flatten(&reply), written, "{format:?} df={df}");
        }
    }
}

#[test]
fn send_all_writes_every_reply_in_order() {
    struct Sink(RefCell<Vec<u8>>);
    impl Write for &Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            // Short writes, to exercise the resumption.
            let n = b.len().min(5);
            self.0.borrow_mut().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl ReplySink for Sink {
        fn takes_mapped(&self) -> bool {
            false
        }
        fn send_slices(&self, bufs: &[SendSlice<'_>]) -> io::Result<usize> {
            write_memory_slices(self, bufs)
        }
    }
    let batch: Vec<Reply> = (0..3000u32)
        .map(|i| Reply::bytes(i.to_be_bytes().to_vec()))
        .collect();
    let sink = Sink(RefCell::new(Vec::new()));
    let refs: Vec<&Reply> = batch.iter().collect();
    send_all(&sink, &refs).unwrap();
    let want: Vec<u8> = (0..3000u32).flat_map(u32::to_be_bytes).collect();
    assert_eq!(sink.0.into_inner(), want);
}

/// A raw image in a temporary file (in the page cache, just written).
fn temp_image(name: &str, data: &[u8]) -> (std::path::PathBuf, crate::block::raw::FileDisk) {
    let path = std::env::temp_dir().join(format!("costack-nbd-req-{}-{name}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let disk = crate::block::raw::FileDisk::open(&path, false, false).unwrap();
    (path, disk)
}

#[test]
fn large_reads_of_a_mapped_file_go_out_unscanned_and_read_back_the_same() {
    use crate::protocol::proto::{Command, ReplyFormat};
    use crate::protocol::reply::write_read_reply;
    use crate::protocol::request::tests::{hdr, params};
    // Zero blocks too: sent as data from the mapping, as holes otherwise.
    let mut data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    data[65536..131072].fill(0);
    let (path, disk) = temp_image("mapped", &data);
    for format in [
        ReplyFormat::Simple,
        ReplyFormat::Structured,
        ReplyFormat::Extended,
    ] {
        let params = TransmissionParams {
            extended_headers: format == ReplyFormat::Extended,
            ..params(format != ReplyFormat::Simple)
        };
        for (offset, length, expect_mapped) in [(4096u64, 512u32 << 10, true), (0, 4096, false)] {
            let req = Request {
                header: hdr(Command::Read, 0, offset, length),
                op: Op::Read {
                    offset,
                    length,
                    df: false,
                },
                fua: false,
                payload: Vec::new(),
                stored: 0..0,
            };
            let pool = Pool::default();
            let reply = execute(&disk, &params, &req, &pool, true);
            assert_eq!(reply.mapped.is_some(), expect_mapped, "{format:?} {length}");
            let to = params.reply_to(&req.header);
            let range = offset as usize..(offset + u64::from(length)) as usize;
            let mut want = Vec::new();
            write_read_reply(&mut want, &to, &data[range], expect_mapped).unwrap();
            // Through a socket: mapped bytes are only the kernel's to read.
            let (a, mut b) = costack::net::UnixStream::pair().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                b.read_to_end(&mut got).unwrap();
                got
            });
            send_all(&a, &[&reply]).unwrap();
            drop(a);
            assert_eq!(reader.join().unwrap(), want, "{format:?} {length}");
            // Not to a stream that would read them.
            let refused = execute(&disk, &params, &req, &pool, false);
            assert!(refused.mapped.is_none());
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn mapped_slices_are_refused_by_streams_that_read_them() {
    let (path, disk) = temp_image("refused", &[1; 65536]);
    let slice = disk.read_mapped(0, 65536).expect("cached and mapped");
    let err = write_memory_slices(Vec::new(), &[slice]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn pool_reuses_buffers_without_growing_copies() {
    let pool = Pool::default();
    let mut a = pool.take(4096);
    assert_eq!(a.len(), 4096);
    a[0] = 1;
    let ptr = a.as_ptr();
    pool.give(a);
    let b = pool.take(1024);
    assert_eq!((b.len(), b.as_ptr()), (1024, ptr));
    pool.give(b);
    let c = pool.take(1 << 20);
    assert_eq!(c.len(), 1 << 20);
    pool.give(Vec::new());
    assert!(pool.0.borrow().is_empty());
}

#[test]
fn block_status_answers_every_selected_context_the_last_chunk_done() {
    use crate::block::MemDisk;
    use crate::protocol::proto::{NBD_STATE_HOLE, NBD_STATE_ZERO};
    let disk = MemDisk::new(1 << 20);
    disk.write_at(&[1; 4096], 0).unwrap();
    let params = TransmissionParams {
        size: 1 << 20,
        transmission_flags: crate::protocol::proto::NBD_FLAG_HAS_FLAGS,
        read_only: false,
        structured_replies: true,
        extended_headers: false,
        base_allocation: Some(1),
        qemu_contexts: vec![(2, QemuContext::AllocationDepth)],
        block_sizes: Default::default(),
        max_payload: 1 << 16,
    };
    let mut out = Vec::new();
    let to = params.reply_to(&crate::protocol::proto::RequestHeader {
        flags: 0,
        command: crate::protocol::proto::Command::BlockStatus,
        handle: 9,
        offset: 0,
        length: 1 << 20,
    });
    block_status(&mut out, &disk, &params, &to, (0, 1 << 20), false, &None).unwrap();
    // Two chunks: 20-byte header (magic, flags, type, handle, length),
    // then the context id and (length, flags) pairs.
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
    let mut chunks = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let len = be32(&rest[16..]) as usize;
        let body = &rest[20..20 + len];
        let pairs: Vec<(u32, u32)> = body[4..]
            .chunks(8)
            .map(|p| (be32(p), be32(&p[4..])))
            .collect();
        chunks.push((be16(&rest[4..]), be32(body), pairs));
        rest = &rest[20 + len..];
    }
    // The memory disk allocates in 64 KiB chunks.
    let data_then_hole = vec![
        (65536, 0),
        ((1 << 20) - 65536, NBD_STATE_HOLE | NBD_STATE_ZERO),
    ];
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0].0 & 1, 0, "the first chunk is not the last");
    assert_eq!(chunks[0].1, 1);
    assert_eq!(chunks[0].2, data_then_hole);
    assert_eq!(chunks[1].0 & 1, 1, "the last chunk is marked done");
    assert_eq!(chunks[1].1, 2);
    assert_eq!(
        chunks[1].2,
        vec![(1 << 20, 1)],
        "a memory disk is all depth 1"
    );
}

#[test]
fn block_status_payload_answers_only_the_contexts_named() {
    use crate::block::MemDisk;
    use crate::protocol::proto::{
        Chunk, Command, ExtendedChunkHeader, RequestHeader, EXTENDED_REPLY_HEADER_LEN,
    };
    let disk = MemDisk::new(1 << 20);
    let params = TransmissionParams {
        size: 1 << 20,
        transmission_flags: crate::protocol::proto::NBD_FLAG_HAS_FLAGS,
        read_only: false,
        structured_replies: true,
        extended_headers: true,
        base_allocation: Some(1),
        qemu_contexts: vec![(2, QemuContext::AllocationDepth)],
        block_sizes: Default::default(),
        max_payload: 1 << 16,
    };
    let to = params.reply_to(&RequestHeader {
        flags: 0,
        command: Command::BlockStatus,
        handle: 9,
        offset: 4096,
        length: 8192,
    });
    for (only, want) in [(None, vec![1, 2]), (Some(vec![2]), vec![2])] {
        let mut out = Vec::new();
        block_status(&mut out, &disk, &params, &to, (4096, 8192), false, &only).unwrap();
        let mut ids = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let h = ExtendedChunkHeader::decode(rest).unwrap();
            assert_eq!((h.handle, h.offset), (9, 4096));
            let end = EXTENDED_REPLY_HEADER_LEN + h.length as usize;
            let chunk = Chunk::decode(&h.to_structured().unwrap(), &rest[32..end]).unwrap();
            let Chunk::BlockStatus { context_id, .. } = chunk else {
                panic!("{chunk:?}")
            };
            ids.push(context_id);
            rest = &rest[end..];
            assert_eq!(h.flags & 1 == 1, rest.is_empty(), "only the last is done");
        }
        assert_eq!(ids, want);
    }
}
