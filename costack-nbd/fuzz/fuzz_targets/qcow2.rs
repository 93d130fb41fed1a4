//! Arbitrary bytes as a qcow2 image's first cluster, and as L2 entries.
//!
//! The header parser must never panic, and a header it accepts must keep
//! its promises: a supported cluster size, an L1 table inside the file and
//! past the header, a virtual size its L1 table covers.

#![no_main]

use costack_nbd::block::qcow2::{classify, Cluster, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len_bytes, image)) = data.split_first_chunk::<8>() else {
        return;
    };
    // The file's length: at least what we have, perhaps (claimed) more.
    let file_len = (image.len() as u64).max(u64::from_le_bytes(*len_bytes) >> 20);
    if let Ok(h) = Header::parse(image, file_len) {
        assert!((9..=21).contains(&h.cluster_bits));
        let cluster = 1u64 << h.cluster_bits;
        let l1_end = h.l1_offset + u64::from(h.l1_size) * 8;
        if h.l1_size > 0 {
            assert!(h.l1_offset >= cluster && h.l1_offset.is_multiple_of(cluster));
            assert!(l1_end <= file_len);
        }
        let per_l1 = 1u128 << (2 * h.cluster_bits - 3);
        assert!(u128::from(h.l1_size) * per_l1 >= u128::from(h.size));
        assert!(h.backing_file.as_ref().is_none_or(|b| !b.is_empty() && b.len() <= 1023));
        // Every L2 entry decodes without panicking; data offsets are
        // cluster-aligned.
        for entry in image.chunks_exact(8).take(64) {
            let entry = u64::from_be_bytes(entry.try_into().unwrap());
            if let Ok(Cluster::Data(host)) = classify(entry, h.cluster_bits, h.version) {
                assert!(host.is_multiple_of(cluster));
            }
        }
    }
});
