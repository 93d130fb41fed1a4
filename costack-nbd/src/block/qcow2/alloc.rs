//! Where clusters go, and how they come back.
//!
//! A new cluster is the first one from a hint upward whose refcount is 0
//! (QEMU's `free_cluster_index`): freed clusters are reused before the file
//! grows. Past the *frontier* nothing was ever used, so a cluster taken
//! there reads as zeros already (past the end of the file, or a hole once
//! a later cluster's data extends it), and a partial write into it needs no
//! zeros around it. The file is never extended ahead: its last cluster may
//! end short of a cluster when only its start was written, and reads as
//! zeros past the end (as QEMU reads it; `qemu-img check` objects only to
//! a reference a whole cluster past the end, which the data written
//! before the entry rules out).
//!
//! A cluster stops being used when its last L2 entry changes (a discard, a
//! zeroed or rewritten compressed cluster). Its refcount drops only once
//! that change is durable: before that, a power cut could bring the old
//! entry back, pointing at a cluster reused meanwhile for other data. So
//! the clusters wait in a list until a write-back and its barrier have
//! made every L2 table durable (a FLUSH, or a reclaim before the file
//! would grow), then are freed and, with [`Options::discard`], punched
//! out of the file.
//!
//! [`Options::discard`]: super::Options::discard

use std::io;

use super::{Meta, Qcow2};

/// Clusters waiting to be freed that make it worth a write-back before
/// the file grows.
const RECLAIM_CLUSTERS: usize = 256;

/// Clusters waiting to be freed at most (a write-back frees them).
const MAX_DEFERRED: usize = 1 << 16;

/// Allocation state (under the metadata lock).
pub(super) struct Allocator {
    /// No cluster below this index is free.
    free_hint: u64,
    /// First cluster index never used: from here on the file holds
    /// nothing.
    frontier: u64,
    /// Host clusters (offsets) whose refcount drops once the L2 tables
    /// that stopped referring to them are durable.
    deferred_frees: Vec<u64>,
}

impl Allocator {
    /// Allocation state of an image whose clusters from `frontier` on were
    /// never used.
    pub(super) fn new(frontier: u64) -> Allocator {
        Allocator {
            free_hint: 0,
            frontier,
            deferred_frees: Vec::new(),
        }
    }

    /// Whether clusters wait to be freed.
    pub(super) fn has_deferred_frees(&self) -> bool {
        !self.deferred_frees.is_empty()
    }

    /// Moves the frontier to cluster `index` at least: nothing before it is
    /// handed out fresh.
    pub(super) fn reserve_to(&mut self, index: u64) {
        self.frontier = self.frontier.max(index);
    }

    /// Where the clusters ever used end (bytes, for clusters of `cs`).
    pub(super) fn used_end(&self, cs: u64) -> u64 {
        self.frontier * cs
    }
}

impl Qcow2 {
    /// A cluster for data or an L2 table, its refcount set to 1 in the
    /// cache; returns its host offset and whether it reads as zeros
    /// (never used before).
    pub(super) fn alloc_cluster(&self, meta: &mut Meta) -> io::Result<(u64, bool)> {
        let cs = self.cluster_size();
        if meta.alloc.free_hint >= meta.alloc.frontier
            && meta.alloc.deferred_frees.len() >= RECLAIM_CLUSTERS
        {
            // Space freed meanwhile comes back before the file grows.
            self.reclaim(meta)?;
        }
        let index = self.first_free(meta)?;
        let fresh = index >= meta.alloc.frontier;
        if fresh {
            meta.alloc.frontier = index + 1;
        }
        meta.alloc.free_hint = index + 1;
        // May make a refcount block, at the frontier: past this cluster.
        self.set_refcount(meta, index * cs, 1)?;
        Ok((index * cs, fresh))
    }

    /// The first cluster index from the hint on whose refcount is 0 (the
    /// frontier if none below it is).
    fn first_free(&self, meta: &mut Meta) -> io::Result<u64> {
        let per_block = self.cluster_size() / 2;
        let mut index = meta.alloc.free_hint;
        while index < meta.alloc.frontier {
            let end = ((index / per_block + 1) * per_block).min(meta.alloc.frontier);
            match self.refcounts_from(meta, index)? {
                // No refcount block: every cluster it would count is free.
                None => return Ok(index),
                Some(counts) => {
                    let n = (end - index) as usize;
                    if let Some(i) = counts[..n].iter().position(|&c| c == 0) {
                        return Ok(index + i as u64);
                    }
                }
            }
            index = end;
        }
        Ok(meta.alloc.frontier)
    }

    /// `n` clusters in a row at the frontier (for refcount blocks and
    /// tables, written whole by the caller, who sets their refcounts).
    /// Returns the host offset of the first.
    pub(super) fn alloc_at_frontier(&self, meta: &mut Meta, n: u64) -> u64 {
        let at = meta.alloc.frontier * self.cluster_size();
        meta.alloc.frontier += n;
        at
    }

    /// A cluster the caller took but never linked: free at once (nothing
    /// can point at it).
    pub(super) fn unalloc(&self, meta: &mut Meta, host: u64) -> io::Result<()> {
        self.set_refcount(meta, host, 0)?;
        let index = host / self.cluster_size();
        meta.alloc.free_hint = meta.alloc.free_hint.min(index);
        Ok(())
    }

    /// Host cluster `host` loses one reference once the L2 change that
    /// dropped it is durable.
    pub(super) fn free_later(&self, meta: &mut Meta, host: u64) -> io::Result<()> {
        meta.alloc.deferred_frees.push(host);
        if meta.alloc.deferred_frees.len() >= MAX_DEFERRED {
            // Discards without FLUSHes: the list stays bounded.
            self.reclaim(meta)?;
        }
        Ok(())
    }

    /// Drops the refcounts deferred so far. Only after a write-back and a
    /// barrier made every L2 table durable (the caller's duty). Clusters
    /// whose refcount reaches 0 are reused from then on and, with
    /// discards on, punched out of the file.
    pub(super) fn apply_deferred_frees(&self, meta: &mut Meta) -> io::Result<()> {
        let cs = self.cluster_size();
        let mut freed = Vec::new();
        for host in std::mem::take(&mut meta.alloc.deferred_frees) {
            let n = self.refcount(meta, host)?;
            self.set_refcount(meta, host, n.saturating_sub(1))?;
            if n <= 1 {
                let index = host / cs;
                meta.alloc.free_hint = meta.alloc.free_hint.min(index);
                freed.push(index);
            }
        }
        if self.options.discard {
            self.punch(&mut freed);
        }
        Ok(())
    }

    /// Punches the clusters `indexes` out of the file, runs at a time. A
    /// failure (a file system without holes) only costs the space.
    fn punch(&self, indexes: &mut [u64]) {
        let cs = self.cluster_size();
        indexes.sort_unstable();
        let mut i = 0;
        while i < indexes.len() {
            let mut j = i + 1;
            while j < indexes.len() && indexes[j] <= indexes[j - 1] + 1 {
                j += 1;
            }
            let (first, last) = (indexes[i], indexes[j - 1]);
            if let Err(e) = self.file.punch_hole(first * cs, (last - first + 1) * cs) {
                tracing::debug!("qcow2: freed clusters stay in the file: {e}");
                return;
            }
            i = j;
        }
    }

    /// Makes every L2 change durable and frees what waited for it.
    fn reclaim(&self, meta: &mut Meta) -> io::Result<()> {
        self.write_back(meta)?;
        self.barrier()?;
        self.apply_deferred_frees(meta)
    }
}
