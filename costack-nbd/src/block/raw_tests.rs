//! Unit tests of `raw.rs`: a guessed format's sector-0 guard and its
//! block status in whole sectors.

use super::*;
use crate::block::qcow2::MAGIC;

fn temp_image(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("raw-{name}-{}.img", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_guessed_image_keeps_sector_zero_from_becoming_qcow2() {
    let path = temp_image("guard", &[0u8; 4096]);
    let disk = FileDisk::open(&path, false, false).unwrap().guessed();
    let refused = |r: io::Result<()>| r.unwrap_err().kind() == io::ErrorKind::PermissionDenied;
    assert!(refused(disk.write_at(&MAGIC, 0)));
    // The magic completed by a write that starts inside it.
    disk.write_at(b"QF", 0).unwrap();
    assert!(refused(disk.write_at(&MAGIC[2..], 2)));
    let mut head = [0u8; 4];
    disk.read_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"QF\0\0", "a refused write changes nothing");
    // Anything else goes, sector 0 included, and so does the magic
    // anywhere but at the start.
    disk.write_at(b"QFI!", 0).unwrap();
    disk.write_at(&MAGIC, 512).unwrap();
    // Given the format, the image is the client's to make what it wants.
    let given = FileDisk::open(&path, false, false).unwrap();
    given.write_at(&MAGIC, 0).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn whole_sectors_count_as_data_if_any_byte_is() {
    let e = |length, flags| Extent { length, flags };
    let hz = STATE_HOLE | STATE_ZERO;
    // A 1000-byte file exported as 1024: data, then the zero tail.
    assert_eq!(in_sectors(&[e(1000, 0), e(24, hz)]), [e(1024, 0)]);
    assert_eq!(
        in_sectors(&[e(512, hz), e(100, 0), e(924, hz), e(512, hz)]),
        [e(512, hz), e(512, 0), e(1024, hz)]
    );
    // Runs of parts of sectors: a sector is a hole only if all of it is.
    assert_eq!(
        in_sectors(&[e(300, hz), e(300, hz), e(424, hz), e(1, 0), e(1023, hz)]),
        [e(1024, hz), e(512, 0), e(512, hz)]
    );
    // A walk cut short mid-sector ends at the last whole one...
    assert_eq!(in_sectors(&[e(1000, 0), e(100, hz)]), [e(1024, 0)]);
    // ... unless there is none: a short export's end is still described.
    assert_eq!(in_sectors(&[e(100, 0)]), [e(100, 0)]);
}

#[test]
fn a_guessed_image_reports_block_status_in_sectors() {
    let mut bytes = vec![0u8; 1000];
    bytes[0] = 1;
    let path = temp_image("status", &bytes);
    let given = FileDisk::open(&path, true, false).unwrap();
    let guessed = FileDisk::open(&path, true, false).unwrap().guessed();
    assert_eq!(given.size(), 1024);
    let total = |v: &[Extent]| v.iter().map(|e| e.length).sum::<u64>();
    let status = guessed.block_status(0, 1024).unwrap();
    assert_eq!(
        status,
        [Extent {
            length: 1024,
            flags: 0
        }]
    );
    assert_eq!(total(&given.block_status(0, 1024).unwrap()), 1024);
    // An unaligned start is answered from there.
    assert_eq!(
        guessed.block_status(100, 900).unwrap(),
        [Extent {
            length: 924,
            flags: 0
        }]
    );
    std::fs::remove_file(&path).unwrap();
}
