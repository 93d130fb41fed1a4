//! Where qemu-nbd's behaviour is observable by a client, costack-nbd's
//! matches it: the differences QEMU's own iotests showed (issue 23, the
//! yardstick: `scripts/qemu-iotests.sh`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_STARTTLS: u32 = 5;
const REP_ERR_POLICY: u32 = (1 << 31) | 2;

/// A raw file of 1000 bytes, as iotest 241 makes it (`printf %01000d 0`).
fn thousand_byte_file(name: &str) -> std::path::PathBuf {
    let path = scratch(name);
    std::fs::write(&path, vec![b'0'; 1000]).unwrap();
    path
}

fn block_status(c: &mut Client, offset: u64, length: u32) -> Vec<(u32, u32)> {
    let r = c
        .request(CMD_BLOCK_STATUS, 0, offset, length, &[])
        .expect("block status");
    assert_eq!(r.error, 0, "block status failed");
    r.extents
}

#[test]
fn unaligned_raw_file_is_exported_rounded_up_with_a_zero_tail() {
    let path = thousand_byte_file("unaligned");
    let server = Server::start(&["-f", "raw", path.to_str().unwrap()]);
    let mut c = server.connect(Opts::FULL);
    assert_eq!(c.export.size, 1024, "qemu-nbd exports 1024 bytes");
    assert_eq!(c.export.min_block, 1, "-f raw: byte granularity");
    let all = c.read(0, 1024).expect("read the whole export");
    assert_eq!(&all[..1000], &[b'0'; 1000][..]);
    assert_eq!(&all[1000..], &[0u8; 24][..], "the tail reads as zeroes");
    // Reads wholly inside the tail, and across its start.
    assert_eq!(c.read(1010, 10).unwrap(), vec![0u8; 10]);
    assert_eq!(c.read(990, 20).unwrap()[..10], [b'0'; 10]);
    // As qemu-img map sees it through qemu-nbd: data, then a zero hole.
    assert_eq!(
        block_status(&mut c, 0, 1024),
        vec![(1000, 0), (24, STATE_HOLE | STATE_ZERO)]
    );
    // A write into the tail lands in the file (extending it), and reads
    // back from the export.
    c.write(1016, b"tailtail", 0).expect("write into the tail");
    c.flush().unwrap();
    assert_eq!(c.read(1000, 24).unwrap()[16..], *b"tailtail");
    assert_eq!(c.read(1000, 16).unwrap(), vec![0u8; 16]);
    drop(c);
    drop(server);
    let file = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(file.len(), 1024, "the write extended the file");
    assert_eq!(&file[1016..], b"tailtail");
    assert_eq!(&file[1000..1016], &[0u8; 16][..]);
}

#[test]
fn starttls_without_tls_is_refused_in_qemu_nbd_words() {
    // iotest 233 compares the text: "server reported: TLS not configured".
    let server = Server::start(&["--size", "1M"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend(OPT_STARTTLS.to_be_bytes());
    m.extend(0u32.to_be_bytes());
    s.write_all(&m).unwrap();
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u32::from_be_bytes(h[8..12].try_into().unwrap()),
        OPT_STARTTLS
    );
    assert_eq!(
        u32::from_be_bytes(h[12..16].try_into().unwrap()),
        REP_ERR_POLICY
    );
    let mut text = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
    s.read_exact(&mut text).unwrap();
    assert_eq!(String::from_utf8_lossy(&text), "TLS not configured");
}
