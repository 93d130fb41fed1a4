//! L2 entries: what one says about its guest cluster, and compressed
//! clusters inflated.

use std::io;

use super::bad_data;
use super::header::{invalid, Invalid};

/// Host offsets in L1 and standard L2 entries: bits 9 to 55.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry: the cluster is compressed.
pub(super) const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry (version 3): the cluster reads as zeros.
pub(super) const L2_ZERO: u64 = 1;

/// L1 and L2 entries: the cluster (or table) has refcount 1, so it may be
/// written in place.
pub(super) const COPIED: u64 = 1 << 63;

/// What one L2 entry says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Not in this image: the backing file's, or zeros without one.
    Unallocated,
    /// Reads as zeros (version 3 zero flag).
    Zero,
    /// Stored as is at this host offset.
    Data(u64),
    /// Deflate-compressed: `len` bytes at host offset `at`.
    Compressed {
        /// Host byte offset.
        at: u64,
        /// Bytes to read (whole 512-byte sectors, less the start's offset).
        len: u64,
    },
}

/// Decodes an L2 entry of an image with `cluster_bits`, of `version`.
///
/// # Errors
/// A standard entry whose host offset is not cluster-aligned.
pub fn classify(entry: u64, cluster_bits: u32, version: u32) -> Result<Cluster, Invalid> {
    if entry & L2_COMPRESSED != 0 {
        // Offset in the low 62 - (cluster_bits - 8) bits, then the count
        // of further 512-byte sectors up to bit 61.
        let offset_bits = 62 - (cluster_bits - 8);
        let at = entry & ((1 << offset_bits) - 1);
        let sectors = ((entry & ((1 << 62) - 1)) >> offset_bits) + 1;
        let len = sectors * 512 - (at & 511);
        return Ok(Cluster::Compressed { at, len });
    }
    if version >= 3 && entry & L2_ZERO != 0 {
        return Ok(Cluster::Zero);
    }
    let host = entry & OFFSET_MASK;
    if host == 0 {
        return Ok(Cluster::Unallocated);
    }
    if !host.is_multiple_of(1 << cluster_bits) {
        return Err(invalid(format!("data cluster at {host:#x} is misaligned")));
    }
    Ok(Cluster::Data(host))
}

/// Inflates one compressed cluster (raw deflate) to exactly `cluster_size`
/// bytes, with libdeflate, whose whole-buffer inflate fits a cluster of
/// known size (compressed reads through costack-nbd ran 1.20–1.29× faster
/// than with miniz_oxide, BENCHMARKS.md). The bytes after the deflate
/// stream (the stored size is rounded up to sectors) are ignored.
pub(super) fn inflate_cluster(packed: &[u8], cluster_size: usize) -> io::Result<Vec<u8>> {
    thread_local! {
        static INFLATER: std::cell::RefCell<libdeflater::Decompressor> =
            std::cell::RefCell::new(libdeflater::Decompressor::new());
    }
    let mut out = vec![0u8; cluster_size];
    let n = INFLATER
        .with(|d| d.borrow_mut().deflate_decompress(packed, &mut out))
        .map_err(|e| bad_data(format!("compressed cluster does not inflate: {e:?}")))?;
    if n != cluster_size {
        return Err(bad_data(format!(
            "compressed cluster inflates to {n} bytes, not {cluster_size}"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn clusters_inflate_to_their_size_and_nothing_else() {
        let cluster: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 251) as u8).collect();
        let mut packed = deflate(&cluster);
        // The stored size is rounded up to sectors: bytes follow the stream.
        packed.resize(packed.len().next_multiple_of(512) + 512, 0xee);
        assert_eq!(inflate_cluster(&packed, 65536).unwrap(), cluster);
        // A stream of half a cluster, or one with no room for it, is an error.
        let half = deflate(&cluster[..32768]);
        assert!(inflate_cluster(&half, 65536).is_err());
        assert!(inflate_cluster(&packed, 32768).is_err());
        assert!(inflate_cluster(&[0xff; 64], 65536).is_err());
    }

    #[test]
    fn l2_entries() {
        // 64 KiB clusters: compressed offsets in bits 0..54.
        assert_eq!(classify(0, 16, 3), Ok(Cluster::Unallocated));
        assert_eq!(classify(1, 16, 3), Ok(Cluster::Zero));
        assert_eq!(
            classify(0x30000 | 1 << 63, 16, 3),
            Ok(Cluster::Data(0x30000))
        );
        assert!(classify(0x30200, 16, 3).is_err());
        let e = L2_COMPRESSED | (3 << 54) | 0x12345;
        assert_eq!(
            classify(e, 16, 3),
            Ok(Cluster::Compressed {
                at: 0x12345,
                len: 4 * 512 - 0x145
            })
        );
    }
}
