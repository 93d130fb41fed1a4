//! Unit tests of `incoming.rs` (a child module of it: private items are in
//! reach through `super`).

use std::io::Write;

use super::*;
use crate::protocol::proto::{Command, NBD_CMD_FLAG_FUA};
use crate::protocol::request::tests::{hdr, params};
use crate::protocol::request::Request;
use crate::server::requests::execute;
use crate::server::MAX_BYTES_IN_FLIGHT;

#[test]
fn read_incoming_matches_read_request() {
    use crate::protocol::proto::RequestHeader;
    use crate::protocol::proto::{Command, NBD_CMD_FLAG_FUA};
    use crate::protocol::request::read_request;
    let params = TransmissionParams {
        size: 1 << 20,
        transmission_flags: crate::protocol::proto::NBD_FLAG_HAS_FLAGS
            | crate::protocol::proto::NBD_FLAG_SEND_FUA
            | crate::protocol::proto::NBD_FLAG_SEND_FLUSH,
        read_only: false,
        structured_replies: true,
        extended_headers: false,
        base_allocation: None,
        qemu_contexts: Vec::new(),
        block_sizes: Default::default(),
        max_payload: 1 << 16,
    };
    let req = |command, flags, offset, length: u32| RequestHeader {
        flags,
        command,
        handle: offset ^ 0x55,
        offset,
        length: u64::from(length),
    };
    let mut wire = Vec::new();
    let mut push = |h: RequestHeader, payload: &[u8]| {
        wire.extend_from_slice(&h.encode());
        wire.extend_from_slice(payload);
    };
    push(req(Command::Write, NBD_CMD_FLAG_FUA, 4096, 5), b"hello");
    push(req(Command::Read, 0, 0, 512), b"");
    // Past the end: rejected, payload consumed.
    push(req(Command::Write, 0, 1 << 20, 3), b"xyz");
    push(req(Command::Write, 0, 0, 4), b"abcd");
    let long: Vec<u8> = (0..100u8).collect();
    push(req(Command::Write, 0, 8192, 100), &long);
    push(req(Command::Flush, 0, 0, 0), b"");
    // Too large: fatal.
    push(req(Command::Write, 0, 0, 1 << 17), b"");
    let pool = Pool::default();
    pool.give(vec![0xEE; 100]);
    // Never short here, so no waiting (which only works in a coroutine).
    let budget = CoSemaphore::new(MAX_BYTES_IN_FLIGHT);
    // Reads of at most 7 bytes through a 16-byte buffer: payloads come
    // partly from the buffer, partly straight from the stream.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }
    impl PayloadSource for Trickle<'_> {
        fn recv_slice(&self, _: &mut RecvSlice<'_>) -> Option<io::Result<usize>> {
            None
        }
    }
    let mut a = &wire[..];
    let mut b = BufReader::with_capacity(16, Trickle(&wire));
    for _ in 0..6 {
        let want = read_request(&mut a, &params).unwrap();
        let got = read_incoming(&mut b, &params, &pool, &budget, None).unwrap();
        assert_eq!(got, want);
    }
    assert!(matches!(
        read_request(&mut a, &params),
        Err(ReadError::PayloadTooLarge { .. })
    ));
    assert!(matches!(
        read_incoming(&mut b, &params, &pool, &budget, None),
        Err(ReadError::PayloadTooLarge { .. })
    ));
    // A payload cut short is a disconnection, as there.
    let short = [&req(Command::Write, 0, 0, 8).encode()[..], b"abc"].concat();
    assert!(matches!(
        read_incoming(
            &mut BufReader::new(Trickle(&short)),
            &params,
            &pool,
            &budget,
            None
        ),
        Err(ReadError::Disconnected)
    ));
}

/// A raw image of `len` zero bytes in /dev/shm (a tmpfs, where writes may
/// be received into the mapping) or, without one, the temp directory.
fn shm_image(name: &str, len: usize) -> (std::path::PathBuf, crate::block::raw::FileDisk) {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!(
        "costack-nbd-incoming-{}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, vec![0u8; len]).unwrap();
    let disk = crate::block::raw::FileDisk::open(&path, false, false).unwrap();
    (path, disk)
}

/// Sends one write request of `data` at `offset` (FUA) through a socket
/// pair and reads it back with [`read_incoming`], offering `device`'s
/// mapping when `map`; the reader's buffer is `buffer` bytes.
fn write_through(
    disk: &crate::block::raw::FileDisk,
    data: &[u8],
    offset: u64,
    buffer: usize,
    map: bool,
) -> Request {
    let params = params(true);
    let mut wire = hdr(Command::Write, NBD_CMD_FLAG_FUA, offset, data.len() as u32)
        .encode()
        .to_vec();
    wire.extend_from_slice(data);
    let (a, b) = costack::net::UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || (&a).write_all(&wire));
    let pool = Pool::default();
    let budget = CoSemaphore::new(MAX_BYTES_IN_FLIGHT);
    let mut r = BufReader::with_capacity(buffer, &b);
    let device = map.then_some(disk as &dyn BlockDevice);
    let incoming = read_incoming(&mut r, &params, &pool, &budget, device).unwrap();
    writer.join().unwrap().unwrap();
    let Incoming::Request(req) = incoming else {
        panic!("refused: {incoming:?}");
    };
    // The write completes with what was not stored (the callers read the
    // file back).
    drop(execute(disk, &params, &req, &pool, true));
    req
}

#[test]
fn large_write_payloads_are_received_into_the_mapping_and_read_back() {
    let data: Vec<u8> = (0..256 << 10).map(|i| (i % 251) as u8).collect();
    let (path, disk) = shm_image("mapped", 1 << 20);
    let in_memory = disk.write_mapped(0, 4096).is_some();
    for (offset, buffer) in [(65536u64, 1000usize), (8192, 16)] {
        let req = write_through(&disk, &data, offset, buffer, true);
        if in_memory {
            // All but what the reader had buffered went to the mapping.
            assert!(
                req.stored.start <= buffer && req.stored.end == data.len(),
                "{:?}",
                req.stored
            );
        } else {
            assert!(
                req.stored.is_empty(),
                "no mapped writes off a memory file system"
            );
        }
        let file = std::fs::read(&path).unwrap();
        assert_eq!(
            &file[offset as usize..offset as usize + data.len()],
            &data[..]
        );
    }
    // Small writes, or none offered: through the buffer.
    let small = write_through(&disk, &data[..4096], 0, 1000, true);
    let unoffered = write_through(&disk, &data, 512 << 10, 1000, false);
    assert!(small.stored.is_empty() && unoffered.stored.is_empty());
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[..4096], &data[..4096]);
    assert_eq!(&file[512 << 10..(512 << 10) + data.len()], &data[..]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_file_truncated_under_the_mapping_takes_the_write_through_the_buffer() {
    let data: Vec<u8> = (0..128 << 10).map(|i| (i % 249) as u8).collect();
    let (path, disk) = shm_image("truncated", 1 << 20);
    // Another process's truncation: the mapping still spans 1 MiB.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let req = write_through(&disk, &data, 65536, 1000, true);
    assert!(req.stored.is_empty(), "nothing stored: {:?}", req.stored);
    // `pwrite` extended the file, as it does without a mapping.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 65536 + data.len());
    assert_eq!(&file[65536..], &data[..]);
    std::fs::remove_file(&path).unwrap();
}
