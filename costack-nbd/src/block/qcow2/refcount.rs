//! Refcounts: read and set through the refcount block cache, blocks made
//! when missing, the table grown (and moved) when full.
//!
//! Refcount blocks may reach the file at any time, in any order: a
//! refcount only rises before anything on the disk can point at its
//! cluster (see `writeback.rs`), and only drops once nothing durable does
//! (`alloc.rs`). What does need ordering is linking: a new block is
//! durable before the table entry that points at it, a new table before
//! the header does.

use std::collections::HashMap;
use std::io;

use super::header::MAX_REFTABLE_BYTES;
use super::{bad_data, Meta, Qcow2, OFFSET_MASK};
use crate::block::ImageFile;

impl Qcow2 {
    /// The refcount of the cluster at host offset `host`.
    pub(super) fn refcount(&self, meta: &mut Meta, host: u64) -> io::Result<u16> {
        let index = host / self.cluster_size();
        Ok(self
            .refcounts_from(meta, index)?
            .map_or(0, |counts| counts[0]))
    }

    /// The refcounts of clusters `index` up to the end of its refcount
    /// block, or `None` if the block does not exist (all 0).
    pub(super) fn refcounts_from<'m>(
        &self,
        meta: &'m mut Meta,
        index: u64,
    ) -> io::Result<Option<&'m [u16]>> {
        let per_block = self.cluster_size() / 2;
        let t = (index / per_block) as usize;
        let block = meta.refcount_table.get(t).copied().unwrap_or(0) & OFFSET_MASK;
        if block == 0 {
            return Ok(None);
        }
        self.load_refblock(meta, block)?;
        let counts = meta.refblocks.get(block).expect("just loaded");
        Ok(Some(&counts[(index % per_block) as usize..]))
    }

    /// Sets the refcount of the cluster at host offset `host` to `value`,
    /// making a refcount block (and growing the refcount table) as needed.
    pub(super) fn set_refcount(&self, meta: &mut Meta, host: u64, value: u16) -> io::Result<()> {
        let cs = self.cluster_size();
        let index = host / cs;
        let block = self.refcount_block(meta, index)?;
        self.set_in_block(meta, block, (index % (cs / 2)) as usize, value)
    }

    /// Sets entry `i` of the refcount block at `block`, in the cache.
    fn set_in_block(&self, meta: &mut Meta, block: u64, i: usize, value: u16) -> io::Result<()> {
        self.load_refblock(meta, block)?;
        let set = meta.refblocks.set(block, i, value);
        debug_assert!(set, "refcount block {block:#x} was just loaded");
        Ok(())
    }

    /// Brings the refcount block at `block` into the cache, writing the
    /// dirty ones back first if they fill it.
    fn load_refblock(&self, meta: &mut Meta, block: u64) -> io::Result<()> {
        if meta.refblocks.contains(block) {
            return Ok(());
        }
        let cs = self.cluster_size();
        self.check_host(block, cs, "refcount block")?;
        let mut raw = vec![0u8; cs as usize];
        self.file.read_exact_at(&mut raw, block)?;
        let counts: Box<[u16]> = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        if !meta.refblocks.has_room() {
            self.write_refblocks(meta)?;
        }
        meta.refblocks
            .insert(block, counts)
            .map_err(|_| io::Error::other("the refcount cache is full of dirty blocks"))
    }

    /// Writes the dirty refcount blocks to the file (no barrier: see the
    /// module's documentation).
    pub(super) fn write_refblocks(&self, meta: &mut Meta) -> io::Result<()> {
        for (at, counts) in meta.refblocks.dirty_tables() {
            let raw: Vec<u8> = counts.iter().flat_map(|c| c.to_be_bytes()).collect();
            self.write_file(&raw, at)?;
            meta.refblocks.mark_clean(at);
        }
        Ok(())
    }

    /// The refcount block holding cluster number `index`'s refcount, made
    /// (and the refcount table grown) if missing.
    fn refcount_block(&self, meta: &mut Meta, index: u64) -> io::Result<u64> {
        let cs = self.cluster_size();
        let t = (index / (cs / 2)) as usize;
        if t >= meta.refcount_table.len() {
            self.grow_refcount_table(meta, t)?;
        }
        let mut block = meta.refcount_table[t] & OFFSET_MASK;
        if block == 0 {
            block = self.new_refcount_block(meta, t)?;
        }
        Ok(block)
    }

    /// Makes refcount block number `t` at the frontier. Its own refcount
    /// is set (in itself, or in another block) and durable before the
    /// refcount table points at it: a crash in between leaks, no more.
    fn new_refcount_block(&self, meta: &mut Meta, t: usize) -> io::Result<u64> {
        let cs = self.cluster_size();
        let per_block = cs / 2;
        let at = self.alloc_at_frontier(meta, 1);
        let mut counts = vec![0u16; per_block as usize].into_boxed_slice();
        let own = at / cs;
        let counts_itself = (own / per_block) as usize == t;
        if counts_itself {
            counts[(own % per_block) as usize] = 1;
        }
        let raw: Vec<u8> = counts.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.write_file(&raw, at)?;
        if !counts_itself {
            self.set_refcount(meta, at, 1)?;
        }
        // The block, with its refcount, before the table points at it.
        self.write_refblocks(meta)?;
        self.barrier()?;
        meta.refcount_table[t] = at;
        let entry_at = meta.refcount_table_offset + t as u64 * 8;
        self.write_file(&at.to_be_bytes(), entry_at)?;
        if !meta.refblocks.has_room() {
            self.write_refblocks(meta)?;
        }
        let _ = meta.refblocks.insert(at, counts);
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
            let table_at = meta.alloc.used_end(cs);
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
        let new_end = blocks
            .last()
            .map_or(table_at + table_clusters * cs, |&(_, at)| at + cs);
        let claimed = self.alloc_at_frontier(meta, (new_end - table_at) / cs);
        debug_assert_eq!(claimed, table_at);
        let mut table = meta.refcount_table.clone();
        table.resize(entries.next_multiple_of(entries_per_cluster), 0);
        for &(b, at) in &blocks {
            table[b] = at;
        }
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
                    // An existing block: through the cache.
                    let block = table[b] & OFFSET_MASK;
                    self.set_in_block(meta, block, i / 2, 1)?;
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
        self.write_refblocks(meta)?;
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
        // The old table's clusters are free now (the header no longer
        // points at them, durably).
        for k in 0..old_clusters {
            self.unalloc(meta, old_offset + k * cs)?;
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
