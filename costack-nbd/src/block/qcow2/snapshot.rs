//! Internal snapshots, read-only: the snapshot table (QEMU's
//! docs/interop/qcow2.txt, "Snapshots"), and which entry qemu-nbd's
//! `-l/--load-snapshot` names.

use std::io;

use super::bad_data;
use super::header::{be32, be64, Header};
use crate::block::ImageFile;

/// Most snapshots an image may list (QEMU's limit).
const MAX_SNAPSHOTS: u32 = 65536;

/// One entry of the snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Its unique id (QEMU numbers them "1", "2", ...).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where its L1 table is.
    pub l1_offset: u64,
    /// Entries in its L1 table.
    pub l1_size: u32,
    /// The disk's size when it was taken, if the entry records it (its
    /// extra data since QEMU 1.1).
    pub disk_size: Option<u64>,
}

/// The image's snapshot table.
///
/// # Errors
/// The table cannot be read or is malformed.
pub fn read_snapshots(file: &dyn ImageFile, header: &Header) -> io::Result<Vec<SnapshotEntry>> {
    if header.snapshots > MAX_SNAPSHOTS {
        return Err(bad_data(format!("{} snapshots", header.snapshots)));
    }
    let mut out = Vec::with_capacity(header.snapshots as usize);
    let mut at = header.snapshots_offset;
    for _ in 0..header.snapshots {
        let mut fixed = [0u8; 40];
        file.read_exact_at(&mut fixed, at)?;
        let l1_offset = be64(&fixed, 0);
        let l1_size = be32(&fixed, 8);
        let id_len = u64::from(u16::from_be_bytes([fixed[12], fixed[13]]));
        let name_len = u64::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        let extra_len = u64::from(be32(&fixed, 36));
        if extra_len > 1024 {
            return Err(bad_data(format!(
                "snapshot table entry at {at:#x} has {extra_len} bytes of extra data"
            )));
        }
        let mut rest = vec![0u8; (extra_len + id_len + name_len) as usize];
        file.read_exact_at(&mut rest, at + 40)?;
        let (extra, strings) = rest.split_at(extra_len as usize);
        let (id, name) = strings.split_at(id_len as usize);
        out.push(SnapshotEntry {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            l1_offset,
            l1_size,
            disk_size: (extra.len() >= 16).then(|| be64(extra, 8)),
        });
        // Entries are padded to a multiple of 8 bytes.
        at += (40 + extra_len + id_len + name_len).next_multiple_of(8);
    }
    Ok(out)
}

/// The entry `which` names, as qemu-nbd's `-l` reads it:
/// `snapshot.id=ID` and/or `snapshot.name=NAME` (comma-separated), or a
/// bare string that is an id, or else a name.
///
/// # Errors
/// `NotFound` when no entry matches; `InvalidInput` for an unknown key.
pub fn find<'a>(entries: &'a [SnapshotEntry], which: &str) -> io::Result<&'a SnapshotEntry> {
    let (mut id, mut name) = (None, None);
    if which.starts_with("snapshot.") {
        for part in which.split(',') {
            match part.split_once('=') {
                Some(("snapshot.id", v)) => id = Some(v),
                Some(("snapshot.name", v)) => name = Some(v),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("invalid snapshot option {part:?}"),
                    ))
                }
            }
        }
    }
    let found = match (id, name) {
        (None, None) => entries
            .iter()
            .find(|e| e.id == which)
            .or_else(|| entries.iter().find(|e| e.name == which)),
        (id, name) => entries
            .iter()
            .find(|e| id.is_none_or(|id| e.id == id) && name.is_none_or(|name| e.name == name)),
    };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("Failed to load snapshot: snapshot {which:?} not found"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str) -> SnapshotEntry {
        SnapshotEntry {
            id: id.into(),
            name: name.into(),
            l1_offset: 0,
            l1_size: 0,
            disk_size: None,
        }
    }

    #[test]
    fn ids_before_names_and_both_keys() {
        let e = [entry("1", "2"), entry("2", "one")];
        assert_eq!(find(&e, "2").unwrap().name, "one", "an id wins over a name");
        assert_eq!(find(&e, "one").unwrap().id, "2");
        assert_eq!(find(&e, "snapshot.name=2").unwrap().id, "1");
        assert_eq!(find(&e, "snapshot.id=2,snapshot.name=one").unwrap().id, "2");
        assert!(find(&e, "snapshot.id=1,snapshot.name=one").is_err());
        assert!(find(&e, "snapshot.size=1").is_err());
        assert_eq!(
            find(&e, "three").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
