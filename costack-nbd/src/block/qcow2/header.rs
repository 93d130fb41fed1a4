//! The qcow2 header: parsed and checked by a pure function (the fuzzer's
//! target), with the feature bits and extensions it knows.

use std::fmt;

use super::bitmap::BitmapsExtension;

/// `QFI\xfb`, the first four bytes of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Largest L1 table accepted, in bytes (QEMU's `QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;

/// Incompatible feature bits (version 3).
pub(super) const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_BITMAPS: u32 = 0x2385_2875;

/// Auto-clear feature bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Largest bitmap directory accepted, in bytes (QEMU's limit).
const MAX_BITMAP_DIRECTORY_BYTES: u64 = 64 << 20;

/// Why an image is refused, naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(super) fn invalid(why: impl Into<String>) -> Invalid {
    Invalid(why.into())
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A qcow2 header, checked against itself and the file's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9 to 21).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table starts in the file.
    pub l1_offset: u64,
    /// The backing file's name as stored, if any.
    pub backing_file: Option<String>,
    /// The backing file's format, from the header extension, if stored.
    pub backing_format: Option<String>,
    /// The image was not closed cleanly (refcounts may be stale; reading
    /// is unaffected).
    pub dirty: bool,
    /// Where the refcount table starts in the file.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table takes.
    pub refcount_table_clusters: u32,
    /// log2 of the refcount width in bits (4: 16-bit refcounts).
    pub refcount_order: u32,
    /// Internal snapshots in the image.
    pub snapshots: u32,
    /// Where the snapshot table starts in the file.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (version 3), all known here.
    pub incompatible_features: u64,
    /// Auto-clear feature bits (version 3; bit 0: the bitmaps extension
    /// is consistent).
    pub autoclear_features: u64,
    /// The bitmaps extension, if present (consistent only with
    /// [`AUTOCLEAR_BITMAPS`] set).
    pub bitmaps: Option<BitmapsExtension>,
}

/// Largest refcount table accepted, in bytes (QEMU's
/// `QCOW_MAX_REFTABLE_SIZE`).
pub(super) const MAX_REFTABLE_BYTES: u64 = 8 << 20;

impl Header {
    /// Bytes of the file [`Header::parse`] wants: the first cluster at
    /// most, which holds the header, its extensions and the backing name.
    pub const READ_LEN: usize = 1 << 21;

    /// Parses the header at the start of `data` (the file's first bytes,
    /// up to [`Header::READ_LEN`]) of a file of `file_len` bytes.
    ///
    /// # Errors
    /// [`Invalid`] naming the first problem found.
    pub fn parse(data: &[u8], file_len: u64) -> Result<Header, Invalid> {
        if data.len() < 72 {
            return Err(invalid("the file is too short for a qcow2 header"));
        }
        if data[..4] != MAGIC {
            return Err(invalid(
                "no qcow2 magic (QFI\\xfb) at the start of the file",
            ));
        }
        let version = be32(data, 4);
        if version != 2 && version != 3 {
            return Err(invalid(format!(
                "qcow2 version {version} is not supported (2 or 3)"
            )));
        }
        let cluster_bits = be32(data, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(format!(
                "cluster size 2^{cluster_bits} is outside 512 B to 2 MiB"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if be32(data, 32) != 0 {
            return Err(invalid("encrypted qcow2 images are not supported"));
        }
        let size = be64(data, 24);
        let l1_size = be32(data, 36);
        let l1_offset = be64(data, 40);
        // One L1 entry maps cluster_size / 8 clusters.
        let per_l1 = 1u128 << (2 * cluster_bits - 3);
        let needed = (u128::from(size)).div_ceil(per_l1);
        if needed > u128::from(MAX_L1_BYTES / 8) {
            return Err(invalid(format!("virtual size {size} is too large")));
        }
        if u128::from(l1_size) < needed {
            return Err(invalid(format!(
                "L1 table of {l1_size} entries is too small for size {size} (needs {needed})"
            )));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(invalid(format!(
                "L1 table of {l1_size} entries is too large"
            )));
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_size > 0
            && (!l1_offset.is_multiple_of(cluster_size)
                || l1_offset < cluster_size
                || l1_offset
                    .checked_add(l1_bytes)
                    .is_none_or(|end| end > file_len))
        {
            return Err(invalid(format!(
                "L1 table at {l1_offset:#x} ({l1_bytes} bytes) is misaligned, in the header \
                 or past the end of the file ({file_len} bytes)"
            )));
        }

        let refcount_table_offset = be64(data, 48);
        let refcount_table_clusters = be32(data, 56);
        let reftable_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if reftable_bytes == 0
            || reftable_bytes > MAX_REFTABLE_BYTES
            || !refcount_table_offset.is_multiple_of(cluster_size)
            || refcount_table_offset < cluster_size
            || refcount_table_offset
                .checked_add(reftable_bytes)
                .is_none_or(|end| end > file_len)
        {
            return Err(invalid(format!(
                "refcount table at {refcount_table_offset:#x} ({refcount_table_clusters} \
                 clusters) is empty, too large, misaligned, in the header or past the end \
                 of the file"
            )));
        }
        let snapshots = be32(data, 60);
        let snapshots_offset = be64(data, 64);
        let mut refcount_order = 4;
        let (header_len, dirty) = if version == 2 {
            (72usize, false)
        } else {
            if data.len() < 104 {
                return Err(invalid("the file is too short for a version 3 header"));
            }
            let incompat = be64(data, 72);
            let header_len = be32(data, 100) as usize;
            if header_len < 104 || header_len as u64 > cluster_size || header_len > data.len() {
                return Err(invalid(format!("header length {header_len} is invalid")));
            }
            refcount_order = be32(data, 96);
            if refcount_order > 6 {
                return Err(invalid(format!(
                    "refcount order {refcount_order} is invalid"
                )));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(invalid(
                    "the image is marked corrupt (run qemu-img check -r all on it)",
                ));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(invalid(
                    "images with an external data file are not supported",
                ));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(invalid("images with extended L2 entries are not supported"));
            }
            if incompat & INCOMPAT_COMPRESSION != 0 {
                let ty = if header_len > 104 { data[104] } else { 0 };
                if ty != 0 {
                    return Err(invalid(format!(
                        "compression type {ty} (zstd) is not supported, only deflate"
                    )));
                }
            }
            let known = INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION
                | INCOMPAT_EXTL2;
            if incompat & !known != 0 {
                return Err(invalid(format!(
                    "unknown incompatible feature bits {:#x}",
                    incompat & !known
                )));
            }
            (header_len, incompat & INCOMPAT_DIRTY != 0)
        };

        // Header extensions, up to the end of the first cluster.
        let mut backing_format = None;
        let mut bitmaps = None;
        let end = (cluster_size as usize).min(data.len());
        let mut at = header_len;
        while at + 8 <= end {
            let ty = be32(data, at);
            let len = be32(data, at + 4) as usize;
            at += 8;
            if ty == EXT_END {
                break;
            }
            if len > end - at {
                return Err(invalid(format!(
                    "header extension {ty:#x} runs past the first cluster"
                )));
            }
            if ty == EXT_BITMAPS {
                bitmaps = Some(parse_bitmaps_extension(
                    &data[at..at + len],
                    cluster_size,
                    file_len,
                )?);
            }
            if ty == EXT_BACKING_FORMAT {
                let name = std::str::from_utf8(&data[at..at + len])
                    .map_err(|_| invalid("the backing format name is not UTF-8"))?;
                backing_format = Some(name.to_owned());
            }
            at += len.next_multiple_of(8);
        }

        let backing_offset = be64(data, 8);
        let backing_len = be32(data, 16) as u64;
        let backing_file = if backing_offset == 0 {
            None
        } else {
            if backing_len == 0 || backing_len > 1023 {
                return Err(invalid(format!(
                    "backing file name length {backing_len} is invalid"
                )));
            }
            let end = backing_offset
                .checked_add(backing_len)
                .filter(|&e| e <= cluster_size && e as usize <= data.len())
                .ok_or_else(|| {
                    invalid(format!(
                        "backing file name at {backing_offset:#x} lies outside the first cluster"
                    ))
                })?;
            let name = std::str::from_utf8(&data[backing_offset as usize..end as usize])
                .map_err(|_| invalid("the backing file name is not UTF-8"))?;
            Some(name.to_owned())
        };
        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            backing_file,
            backing_format,
            dirty,
            refcount_table_offset,
            refcount_table_clusters,
            refcount_order,
            snapshots,
            snapshots_offset,
            incompatible_features: if version >= 3 { be64(data, 72) } else { 0 },
            autoclear_features: if version >= 3 { be64(data, 88) } else { 0 },
            bitmaps,
        })
    }
}

/// The bitmaps extension's data (`ext`), checked against the file.
fn parse_bitmaps_extension(
    ext: &[u8],
    cluster_size: u64,
    file_len: u64,
) -> Result<BitmapsExtension, Invalid> {
    if ext.len() < 24 {
        return Err(invalid(format!(
            "the bitmaps extension is {} bytes, not 24",
            ext.len()
        )));
    }
    let count = be32(ext, 0);
    let directory_size = be64(ext, 8);
    let directory_offset = be64(ext, 16);
    if count == 0
        || directory_size == 0
        || directory_size > MAX_BITMAP_DIRECTORY_BYTES
        || !directory_offset.is_multiple_of(cluster_size)
        || directory_offset < cluster_size
        || directory_offset
            .checked_add(directory_size)
            .is_none_or(|end| end > file_len)
    {
        return Err(invalid(format!(
            "the bitmap directory ({count} bitmaps, {directory_size} bytes at \
             {directory_offset:#x}) is empty, too large, misaligned, in the header or past \
             the end of the file"
        )));
    }
    Ok(BitmapsExtension {
        count,
        directory_size,
        directory_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header with 64 KiB clusters for a 1 GiB disk.
    fn v3() -> Vec<u8> {
        let mut h = vec![0u8; 65536 * 2];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&65536u64.to_be_bytes());
        h[48..56].copy_from_slice(&65536u64.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    fn parse(h: &[u8]) -> Result<Header, Invalid> {
        Header::parse(h, h.len() as u64)
    }

    #[test]
    fn a_plain_header_parses() {
        let h = parse(&v3()).unwrap();
        assert_eq!(
            (h.version, h.cluster_bits, h.size, h.l1_size),
            (3, 16, 1 << 30, 2)
        );
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn bad_headers_are_named() {
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|h| h[0] = b'X'), "magic"),
            (Box::new(|h| h[7] = 4), "version 4"),
            (Box::new(|h| h[23] = 30), "cluster size"),
            (Box::new(|h| h[35] = 1), "encrypted"),
            (
                Box::new(|h| h[24..32].copy_from_slice(&u64::MAX.to_be_bytes())),
                "too large",
            ),
            (Box::new(|h| h[39] = 1), "too small"),
            (
                Box::new(|h| h[40..48].copy_from_slice(&0u64.to_be_bytes())),
                "L1 table",
            ),
            (
                Box::new(|h| h[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes())),
                "L1 table",
            ),
            (Box::new(|h| h[79] = 1 << 5), "unknown incompatible"),
            (Box::new(|h| h[79] = INCOMPAT_CORRUPT as u8), "corrupt"),
            (Box::new(|h| h[79] = INCOMPAT_EXTL2 as u8), "extended L2"),
            (Box::new(|h| h[103] = 50), "header length"),
            (Box::new(|h| h[59] = 0), "refcount table"),
            (
                Box::new(|h| h[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes())),
                "refcount table",
            ),
            (
                Box::new(|h| {
                    h[79] = INCOMPAT_COMPRESSION as u8;
                    h[103] = 112;
                    h[104] = 1;
                }),
                "zstd",
            ),
            (
                Box::new(|h| {
                    h[8..16].copy_from_slice(&65530u64.to_be_bytes());
                    h[19] = 100;
                }),
                "backing file name",
            ),
            (
                Box::new(|h| {
                    h[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
                    h[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
                }),
                "runs past",
            ),
        ];
        for (edit, why) in cases {
            let mut h = v3();
            edit(&mut h);
            let e = parse(&h).unwrap_err();
            assert!(e.0.contains(why), "{why}: {e}");
        }
        assert!(parse(&v3()[..50]).unwrap_err().0.contains("too short"));
    }
}
