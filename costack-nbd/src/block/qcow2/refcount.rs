//! Refcounts: blocks, the table (grown and moved when full), and where
//! new clusters go.

use std::collections::HashMap;
use std::io;

use super::header::MAX_REFTABLE_BYTES;
use super::{bad_data, Meta, Qcow2, OFFSET_MASK, RESERVE_CLUSTERS};
use crate::block::ImageFile;

impl Qcow2 {
    /// Takes the next cluster at the end of the file (its refcount is the
    /// caller's to set).
    pub(super) fn take_cluster(&self, meta: &mut Meta) -> u64 {
        let at = meta.next_free;
        meta.next_free += self.cluster_size();
        at
    }

    /// A cluster for guest data, with its refcount set: from the clusters
    /// reserved, or a new run of them reserved at the end of the file.
    pub(super) fn take_data_cluster(&self, meta: &mut Meta) -> io::Result<u64> {
        let cs = self.cluster_size();
        if meta.reserved.is_empty() {
            let per_block = cs / 2;
            let start = meta.next_free;
            let index = start / cs;
            // One refcount write: the run stays inside one refcount block.
            let n = RESERVE_CLUSTERS.min(per_block - index % per_block);
            meta.next_free += n * cs;
            let block = self.refcount_block(meta, index)?;
            let ones: Vec<u8> = (0..n).flat_map(|_| 1u16.to_be_bytes()).collect();
            self.write_file(&ones, block + (index % per_block) * 2)?;
            // The file covers the run before anything points into it: the
            // data written there later is not what extends the file, so an
            // L2 entry that reaches the disk before its data still points
            // inside the file.
            self.extend_file(start + n * cs)?;
            // Refcounts and length durable before any L2 entry can point
            // at these clusters.
            self.barrier()?;
            meta.reserved = start..start + n * cs;
        }
        let host = meta.reserved.start;
        meta.reserved.start += cs;
        Ok(host)
    }

    /// Gives the reserved clusters not taken back (refcount 0).
    pub(super) fn release_reserved(&self, meta: &mut Meta) -> io::Result<()> {
        let cs = self.cluster_size();
        if meta.reserved.is_empty() {
            return Ok(());
        }
        let index = meta.reserved.start / cs;
        let n = (meta.reserved.end - meta.reserved.start) / cs;
        let block = self.refcount_block(meta, index)?;
        self.write_file(&vec![0u8; n as usize * 2], block + (index % (cs / 2)) * 2)?;
        // A run at the end is handed out again next (the file keeps its
        // length: extending it again would be a wasted sync).
        if meta.reserved.end == meta.next_free {
            meta.next_free = meta.reserved.start;
        }
        meta.reserved = 0..0;
        Ok(())
    }

    /// The refcount block holding cluster number `index`'s refcount, made
    /// (and the refcount table grown) if missing.
    pub(super) fn refcount_block(&self, meta: &mut Meta, index: u64) -> io::Result<u64> {
        let cs = self.cluster_size();
        let t = (index / (cs / 2)) as usize;
        if t >= meta.refcount_table.len() {
            self.grow_refcount_table(meta, t)?;
        }
        let mut block = meta.refcount_table[t] & OFFSET_MASK;
        if block == 0 {
            block = self.new_refcount_block(meta, t)?;
        }
        self.check_host(block, cs, "refcount block")?;
        Ok(block)
    }

    /// Sets the refcount of the cluster at host offset `host` to `value`,
    /// making a refcount block (and growing the refcount table) as needed.
    pub(super) fn set_refcount(&self, meta: &mut Meta, host: u64, value: u16) -> io::Result<()> {
        let cs = self.cluster_size();
        let index = host / cs;
        let block = self.refcount_block(meta, index)?;
        self.write_file(&value.to_be_bytes(), block + (index % (cs / 2)) * 2)
    }

    pub(super) fn refcount(&self, meta: &Meta, host: u64) -> io::Result<u16> {
        let cs = self.cluster_size();
        let index = host / cs;
        let t = (index / (cs / 2)) as usize;
        let block = meta.refcount_table.get(t).copied().unwrap_or(0) & OFFSET_MASK;
        if block == 0 {
            return Ok(0);
        }
        self.check_host(block, cs, "refcount block")?;
        let mut b = [0u8; 2];
        self.file
            .read_exact_at(&mut b, block + (index % (cs / 2)) * 2)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Makes refcount block number `t` at the end of the file. Its own
    /// refcount is set (in itself, or in another block first) before the
    /// refcount table points at it: a crash in between leaks, no more.
    pub(super) fn new_refcount_block(&self, meta: &mut Meta, t: usize) -> io::Result<u64> {
        let cs = self.cluster_size();
        let per_block = cs / 2;
        let at = self.take_cluster(meta);
        let mut block = vec![0u8; cs as usize];
        let own = at / cs;
        if (own / per_block) as usize == t {
            let i = ((own % per_block) * 2) as usize;
            block[i..i + 2].copy_from_slice(&1u16.to_be_bytes());
            self.write_file(&block, at)?;
        } else {
            self.write_file(&block, at)?;
            self.set_refcount(meta, at, 1)?;
        }
        // The block, with its refcount, before the table points at it.
        self.barrier()?;
        meta.refcount_table[t] = at;
        let entry_at = meta.refcount_table_offset + t as u64 * 8;
        self.write_file(&at.to_be_bytes(), entry_at)?;
        Ok(at)
    }

    /// Moves the refcount table to the end of the file, large enough for
    /// block number `t` and the blocks that describe the table itself.
    /// The new table and blocks are written first, then the header is
    /// switched to them in one write; the old table's clusters are freed
    /// last.
    pub(super) fn grow_refcount_table(&self, meta: &mut Meta, t: usize) -> io::Result<()> {
        let cs = self.cluster_size();
        let per_block = cs / 2;
        let entries_per_cluster = (cs / 8) as usize;
        let old_offset = meta.refcount_table_offset;
        let old_clusters = meta.refcount_table.len().div_ceil(entries_per_cluster) as u64;
        let mut entries = (t + 1).max(meta.refcount_table.len() * 2);
        // Lay out [new table][new blocks] from the end of the file, until
        // the blocks cover everything up to their own end.
        let (table_at, table_clusters, blocks) = loop {
            let table_clusters = entries.div_ceil(entries_per_cluster) as u64;
            let table_at = meta.next_free;
            let mut end = table_at + table_clusters * cs;
            let mut blocks = Vec::new();
            loop {
                let last = (end - 1) / cs / per_block;
                let mut missing = false;
                for b in 0..=last as usize {
                    let have = meta
                        .refcount_table
                        .get(b)
                        .is_some_and(|&e| e & OFFSET_MASK != 0)
                        || blocks.iter().any(|&(i, _)| i == b);
                    if !have {
                        blocks.push((b, end));
                        end += cs;
                        missing = true;
                        break;
                    }
                }
                if !missing {
                    break;
                }
            }
            let needed = blocks.iter().map(|&(b, _)| b + 1).max().unwrap_or(0);
            if needed <= entries {
                break (table_at, table_clusters, blocks);
            }
            entries = needed.max(entries * 2);
        };
        if table_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the refcount table would exceed its limit",
            ));
        }
        let mut table = meta.refcount_table.clone();
        table.resize(entries.next_multiple_of(entries_per_cluster), 0);
        for &(b, at) in &blocks {
            table[b] = at;
        }
        let new_end = blocks
            .last()
            .map_or(table_at + table_clusters * cs, |&(_, at)| at + cs);
        // The new blocks, with the refcounts of the table and of
        // themselves; then the table.
        let mut block_data: HashMap<usize, Vec<u8>> = blocks
            .iter()
            .map(|&(b, _)| (b, vec![0u8; cs as usize]))
            .collect();
        let mut c = table_at;
        while c < new_end {
            let index = c / cs;
            let b = (index / per_block) as usize;
            let i = ((index % per_block) * 2) as usize;
            match block_data.get_mut(&b) {
                Some(data) => data[i..i + 2].copy_from_slice(&1u16.to_be_bytes()),
                None => {
                    // An existing block: written in place.
                    let at = table[b] + i as u64;
                    self.check_host(table[b] & OFFSET_MASK, cs, "refcount block")?;
                    self.write_file(&1u16.to_be_bytes(), at)?;
                }
            }
            c += cs;
        }
        for &(b, at) in &blocks {
            self.write_file(&block_data[&b], at)?;
        }
        let mut raw = Vec::with_capacity(table.len() * 8);
        for e in &table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.write_file(&raw, table_at)?;
        self.barrier()?;
        // Switch the header to the new table in one write of its two fields.
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&table_at.to_be_bytes());
        fields[8..].copy_from_slice(&((raw.len() as u64 / cs) as u32).to_be_bytes());
        self.write_file(&fields, 48)?;
        // The header on disk before the old table's clusters are freed.
        self.barrier()?;
        meta.refcount_table = table;
        meta.refcount_table_offset = table_at;
        meta.next_free = new_end;
        // The old table's clusters are free now.
        for k in 0..old_clusters {
            self.set_refcount(meta, old_offset + k * cs, 0)?;
        }
        Ok(())
    }
}

/// The end of the last cluster whose refcount is not zero, per the
/// refcount table `table` of an image of `file_len` bytes: blocks are
/// read from the last one back until one counts a cluster.
pub(super) fn last_counted_end(
    file: &dyn ImageFile,
    table: &[u64],
    cluster_bits: u32,
    file_len: u64,
) -> io::Result<u64> {
    let cs = 1u64 << cluster_bits;
    let per_block = cs / 2;
    let mut block = vec![0u8; cs as usize];
    for (t, &entry) in table.iter().enumerate().rev() {
        let at = entry & OFFSET_MASK;
        if at == 0 {
            continue;
        }
        if !at.is_multiple_of(cs) || at < cs || at + cs > file_len {
            return Err(bad_data(format!(
                "refcount block at {at:#x} is misaligned or outside the image \
                 (repair it with qemu-img check -r all)"
            )));
        }
        file.read_exact_at(&mut block, at)?;
        if let Some(i) = block.chunks_exact(2).rposition(|r| r != [0, 0]) {
            return Ok((t as u64 * per_block + i as u64 + 1) * cs);
        }
    }
    Ok(0)
}
