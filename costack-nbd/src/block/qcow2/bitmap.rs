//! Persistent dirty bitmaps (the qcow2 bitmaps extension): the directory
//! parsed, a bitmap's bits read, and what reading them needs, for any user
//! (the write path keeps `auto` bitmaps up to date in `bitmap_store.rs`; an
//! NBD `qemu:dirty-bitmap:NAME` exporter reads them).
//!
//! The format: a header extension points at a directory of entries, one
//! per bitmap (its name, flags, granularity and bitmap table); the table
//! lists the clusters holding the bits, one bit per `granularity` bytes of
//! the virtual disk, least significant bit first within each byte. A table
//! entry of 0 is a cluster of zeros (bit 0 set: of ones).
//!
//! Public API:
//! - [`parse_directory`]: the directory's bytes to [`BitmapEntry`]s (pure);
//! - [`read_directory`]: the same, from an image file;
//! - [`read_bits`]: a bitmap's [`Bits`];
//! - [`Bits::dirty_ranges`]: its dirty byte ranges of the virtual disk;
//! - `Qcow2::bitmaps` and `Qcow2::dirty_extents` (in `bitmap_store.rs`):
//!   the same on an open image, live while it is written.

use std::io;
use std::ops::Range;

use super::cluster::OFFSET_MASK;
use super::header::{be32, be64, invalid, Invalid};
use crate::block::ImageFile;

/// Flag: the bitmap was not saved since the image was last written (it
/// may be stale).
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Flag: writes to the image must be recorded in the bitmap.
pub const FLAG_AUTO: u32 = 1 << 1;
/// Flag: the bitmap may be used though its extra data is not understood.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// The flags the format defines.
pub const KNOWN_FLAGS: u32 = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE;
/// The one bitmap type: a dirty tracking bitmap.
pub const TYPE_DIRTY_TRACKING: u8 = 1;

/// Longest bitmap name (QEMU's limit).
const MAX_NAME: usize = 1023;
/// Most bitmaps in one image (QEMU's limit).
const MAX_BITMAPS: u32 = 65535;

/// The bitmaps header extension: where the directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExtension {
    /// Bitmaps in the directory.
    pub count: u32,
    /// The directory's size in bytes.
    pub directory_size: u64,
    /// Where the directory starts in the file (cluster-aligned).
    pub directory_offset: u64,
}

/// One bitmap, as its directory entry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapEntry {
    /// Its name (unique in the image).
    pub name: String,
    /// Where its bitmap table starts in the file.
    pub table_offset: u64,
    /// Entries in its bitmap table.
    pub table_size: u32,
    /// [`FLAG_IN_USE`], [`FLAG_AUTO`], [`FLAG_EXTRA_DATA_COMPATIBLE`] (and
    /// any unknown bits as stored).
    pub flags: u32,
    /// Its type ([`TYPE_DIRTY_TRACKING`] is the one defined).
    pub kind: u8,
    /// log2 of the bytes of virtual disk one bit stands for.
    pub granularity_bits: u8,
    /// Bytes of type-specific extra data.
    pub extra_data_size: u32,
    /// Where this entry starts in the file.
    pub entry_offset: u64,
}

impl BitmapEntry {
    /// It may be stale: not saved since the image was last written.
    pub fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }

    /// Writes must be recorded in it.
    pub fn is_auto(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }

    /// Bytes of virtual disk one bit stands for.
    pub fn granularity(&self) -> u64 {
        1 << self.granularity_bits
    }

    /// Why its contents cannot be used (or kept up to date), if so: an
    /// unknown type or flag, or extra data not marked compatible.
    pub fn unusable(&self) -> Option<String> {
        if self.kind != TYPE_DIRTY_TRACKING {
            return Some(format!(
                "bitmap {:?} has unknown type {}",
                self.name, self.kind
            ));
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Some(format!(
                "bitmap {:?} has unknown flags {:#x}",
                self.name,
                self.flags & !KNOWN_FLAGS
            ));
        }
        if self.extra_data_size != 0 && self.flags & FLAG_EXTRA_DATA_COMPATIBLE == 0 {
            return Some(format!(
                "bitmap {:?} has extra data not marked compatible",
                self.name
            ));
        }
        if !(9..=31).contains(&self.granularity_bits) {
            return Some(format!(
                "bitmap {:?} has granularity 2^{} (9 to 31 are supported)",
                self.name, self.granularity_bits
            ));
        }
        None
    }
}

/// Bytes the bits of a disk of `disk_size` take at `granularity_bits`.
pub fn bitmap_bytes(disk_size: u64, granularity_bits: u8) -> u64 {
    disk_size.div_ceil(1 << granularity_bits).div_ceil(8)
}

/// Parses the bitmap directory `raw` (read from `directory_offset`), of
/// `count` entries, for an image of clusters of `cluster_size` whose file
/// is `file_len` bytes long.
///
/// # Errors
/// [`Invalid`] naming the first problem: an entry that runs past the
/// directory, a bad name, a table misaligned or outside the file, nonzero
/// padding, a name used twice, entries left over.
pub fn parse_directory(
    raw: &[u8],
    count: u32,
    directory_offset: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<Vec<BitmapEntry>, Invalid> {
    if count > MAX_BITMAPS {
        return Err(invalid(format!("{count} bitmaps are too many")));
    }
    let mut entries: Vec<BitmapEntry> = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    for _ in 0..count {
        if raw.len() - at < 24 {
            return Err(invalid("a bitmap directory entry runs past the directory"));
        }
        let e = &raw[at..];
        let table_offset = be64(e, 0);
        let table_size = be32(e, 8);
        let flags = be32(e, 12);
        let kind = e[16];
        let granularity_bits = e[17];
        let name_size = u16::from_be_bytes([e[18], e[19]]) as usize;
        let extra_data_size = be32(e, 20);
        let len = 24 + extra_data_size as usize + name_size;
        if name_size == 0 || name_size > MAX_NAME || len > e.len() {
            return Err(invalid(format!(
                "a bitmap directory entry ({name_size}-byte name, {extra_data_size} bytes of \
                 extra data) is malformed or runs past the directory"
            )));
        }
        let name_at = 24 + extra_data_size as usize;
        let name = std::str::from_utf8(&e[name_at..name_at + name_size])
            .map_err(|_| invalid("a bitmap name is not UTF-8"))?
            .to_owned();
        let padded = len.next_multiple_of(8).min(e.len());
        if e[len..padded].iter().any(|&b| b != 0) {
            return Err(invalid(format!(
                "bitmap {name:?}: its directory entry's padding is not zero"
            )));
        }
        let table_bytes = u64::from(table_size) * 8;
        if table_offset & !OFFSET_MASK != 0
            || !table_offset.is_multiple_of(cluster_size)
            || table_offset < cluster_size
            || table_offset
                .checked_add(table_bytes)
                .is_none_or(|end| end > file_len)
        {
            return Err(invalid(format!(
                "bitmap {name:?}: its table at {table_offset:#x} ({table_size} entries) is \
                 misaligned, in the header or past the end of the file"
            )));
        }
        if entries.iter().any(|other| other.name == name) {
            return Err(invalid(format!("bitmap {name:?} is named twice")));
        }
        entries.push(BitmapEntry {
            name,
            table_offset,
            table_size,
            flags,
            kind,
            granularity_bits,
            extra_data_size,
            entry_offset: directory_offset + at as u64,
        });
        at += padded;
    }
    if at != raw.len() {
        return Err(invalid(format!(
            "the bitmap directory holds {} bytes past its {count} entries",
            raw.len() - at
        )));
    }
    Ok(entries)
}

/// The bitmap directory of the image in `file` that `ext` describes.
///
/// # Errors
/// The read fails, or `InvalidData` naming what is wrong.
pub fn read_directory(
    file: &dyn ImageFile,
    ext: &BitmapsExtension,
    cluster_size: u64,
) -> io::Result<Vec<BitmapEntry>> {
    let mut raw = vec![0u8; ext.directory_size as usize];
    file.read_exact_at(&mut raw, ext.directory_offset)?;
    parse_directory(
        &raw,
        ext.count,
        ext.directory_offset,
        cluster_size,
        file.len()?,
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))
}

/// A bitmap's bits in memory: bit `k` stands for bytes
/// `k * granularity .. (k + 1) * granularity` of the virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bits {
    /// The bytes as the file stores them (least significant bit first).
    bytes: Vec<u8>,
    granularity_bits: u8,
    disk_size: u64,
}

impl Bits {
    /// All clear, for a disk of `disk_size` bytes.
    pub fn new(disk_size: u64, granularity_bits: u8) -> Bits {
        Bits {
            bytes: vec![0; bitmap_bytes(disk_size, granularity_bits) as usize],
            granularity_bits,
            disk_size,
        }
    }

    /// The bytes as stored in the file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of virtual disk one bit stands for.
    pub fn granularity(&self) -> u64 {
        1 << self.granularity_bits
    }

    /// Whether the bit of the byte at guest `offset` is set.
    pub fn is_dirty(&self, offset: u64) -> bool {
        let k = (offset >> self.granularity_bits) as usize;
        self.bytes
            .get(k / 8)
            .is_some_and(|b| b & (1 << (k % 8)) != 0)
    }

    /// Sets the bits of `len` bytes at guest `offset` (a write there).
    pub fn set_range(&mut self, offset: u64, len: u64) {
        if len == 0 || offset >= self.disk_size {
            return;
        }
        let end = (offset + len).min(self.disk_size);
        let (first, last) = (
            offset >> self.granularity_bits,
            (end - 1) >> self.granularity_bits,
        );
        for k in first..=last {
            self.bytes[(k / 8) as usize] |= 1 << (k % 8);
        }
    }

    /// The dirty byte ranges of the virtual disk, in order, merged.
    pub fn dirty_ranges(&self) -> Vec<Range<u64>> {
        let g = self.granularity();
        let mut out: Vec<Range<u64>> = Vec::new();
        for (i, &byte) in self.bytes.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            for bit in 0..8 {
                if byte & (1 << bit) == 0 {
                    continue;
                }
                let start = (i as u64 * 8 + bit) * g;
                let end = (start + g).min(self.disk_size);
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => out.push(start..end),
                }
            }
        }
        out
    }
}

/// Reads the bits of bitmap `entry` of a disk of `disk_size` bytes from
/// an image of `cluster_size` clusters.
///
/// # Errors
/// The bitmap is unusable ([`BitmapEntry::unusable`]), its table is too
/// small for the disk or points outside the file (`InvalidData`), or a
/// read fails.
pub fn read_bits(
    file: &dyn ImageFile,
    entry: &BitmapEntry,
    disk_size: u64,
    cluster_size: u64,
) -> io::Result<Bits> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if let Some(why) = entry.unusable() {
        return Err(bad(why));
    }
    let mut bits = Bits::new(disk_size, entry.granularity_bits);
    let clusters = (bits.bytes.len() as u64).div_ceil(cluster_size);
    if u64::from(entry.table_size) < clusters {
        return Err(bad(format!(
            "bitmap {:?}: a table of {} entries is too small for {clusters} clusters of bits",
            entry.name, entry.table_size
        )));
    }
    let table = read_table(file, entry.table_offset, entry.table_size)?;
    let file_len = file.len()?;
    for (k, chunk) in bits.bytes.chunks_mut(cluster_size as usize).enumerate() {
        let e = table[k];
        let host = e & OFFSET_MASK;
        if host == 0 {
            chunk.fill(if e & 1 != 0 { 0xff } else { 0 });
            continue;
        }
        if !host.is_multiple_of(cluster_size) || host + chunk.len() as u64 > file_len {
            return Err(bad(format!(
                "bitmap {:?}: data cluster at {host:#x} is misaligned or outside the file",
                entry.name
            )));
        }
        file.read_exact_at(chunk, host)?;
    }
    // Bits past the end of the disk must be zero; a set one is ignored.
    let tail = bits.disk_size.div_ceil(bits.granularity());
    if !tail.is_multiple_of(8) {
        if let Some(last) = bits.bytes.last_mut() {
            *last &= (1u8 << (tail % 8)) - 1;
        }
    }
    Ok(bits)
}

/// The `size` entries of the bitmap table at `offset`.
pub fn read_table(file: &dyn ImageFile, offset: u64, size: u32) -> io::Result<Vec<u64>> {
    let mut raw = vec![0u8; size as usize * 8];
    file.read_exact_at(&mut raw, offset)?;
    Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory entry (padded) for `name`.
    fn entry(name: &str, table: u64, size: u32, flags: u32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&table.to_be_bytes());
        e.extend_from_slice(&size.to_be_bytes());
        e.extend_from_slice(&flags.to_be_bytes());
        e.extend_from_slice(&[TYPE_DIRTY_TRACKING, 16]);
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(&0u32.to_be_bytes());
        e.extend_from_slice(name.as_bytes());
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    #[test]
    fn directories_parse_and_bad_ones_are_named() {
        let cs = 65536;
        let mut raw = entry("b0", 3 * cs, 1, FLAG_AUTO);
        raw.extend(entry("backup-1", 4 * cs, 1, FLAG_IN_USE));
        let list = parse_directory(&raw, 2, cs, cs, 8 * cs).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "b0");
        assert!(list[0].is_auto() && !list[0].in_use());
        assert_eq!(list[1].entry_offset, cs + 32);
        assert!(list[1].in_use());
        assert_eq!(list[0].unusable(), None);

        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (raw.clone(), 3, "runs past"),
            (raw[..raw.len() - 8].to_vec(), 2, "runs past"),
            ([raw.clone(), vec![0; 8]].concat(), 2, "past its 2 entries"),
            (entry("b0", 3 * cs + 512, 1, 0), 1, "misaligned"),
            (entry("b0", 9 * cs, 1, 0), 1, "past the end"),
            (
                [entry("x", 3 * cs, 1, 0), entry("x", 4 * cs, 1, 0)].concat(),
                2,
                "named twice",
            ),
        ];
        for (raw, count, why) in cases {
            let e = parse_directory(&raw, count, cs, cs, 8 * cs).unwrap_err();
            assert!(e.0.contains(why), "{why}: {e}");
        }
        let mut odd = entry("b0", 3 * cs, 1, 1 << 7);
        let list = parse_directory(&odd, 1, cs, cs, 8 * cs).unwrap();
        assert!(list[0].unusable().unwrap().contains("unknown flags"));
        odd[16] = 2;
        let list = parse_directory(&odd, 1, cs, cs, 8 * cs).unwrap();
        assert!(list[0].unusable().unwrap().contains("unknown type"));
    }

    #[test]
    fn bits_are_least_significant_first_and_ranges_merge() {
        // 1 MiB disk, 64 KiB granularity: 16 bits in 2 bytes.
        let mut b = Bits::new(1 << 20, 16);
        b.set_range(0, 1);
        b.set_range(65536 * 3 - 1, 2);
        b.set_range(65536 * 9, 65536);
        assert_eq!(b.as_bytes(), &[0b0000_1101, 0b0000_0010]);
        assert_eq!(
            b.dirty_ranges(),
            vec![0..65536, 2 * 65536..4 * 65536, 9 * 65536..10 * 65536]
        );
        assert!(b.is_dirty(65536 * 9 + 5) && !b.is_dirty(65536 * 4));
        // Past the end of the disk: nothing.
        b.set_range(1 << 20, 4096);
        assert_eq!(b.dirty_ranges().len(), 3);
    }
}
