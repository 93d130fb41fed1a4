//! The order in which the cache reaches the file (QEMU's cache
//! dependencies: the L2 cache depends on the refcount cache, and on a
//! flush after copy-on-write).
//!
//! An L2 entry set in memory points at a cluster whose refcount was
//! raised in the cache and whose data was written before the entry was
//! set. On the disk the entry may only appear after both are durable. So
//! dirty L2 tables are written back in one go: the dirty refcount blocks
//! first, then a barrier (`fdatasync`: those blocks, the file's length and
//! every data write completed so far reach the disk), then the tables.
//! All of it under the metadata lock, so no entry can be set in memory
//! between the barrier and the write of its table.

use std::io;
use std::sync::atomic::Ordering;

use super::{Meta, Qcow2};

impl Qcow2 {
    /// Writes every dirty L2 table back, after what its entries depend on
    /// is durable; the tables themselves are durable only after the next
    /// barrier.
    pub(super) fn write_back(&self, meta: &mut Meta) -> io::Result<()> {
        // Entries change only under the metadata lock, which the caller
        // holds: these copies stay current until they are written.
        let dirty = self.lock_l2().dirty_tables();
        self.write_refblocks(meta)?;
        if dirty.is_empty() {
            return Ok(());
        }
        self.barrier()?;
        for (at, entries) in dirty {
            let raw: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.write_file(&raw, at)?;
            self.lock_l2().mark_clean(at);
        }
        Ok(())
    }

    /// FLUSH: the cache written back, then a barrier, then the clusters
    /// that waited for those L2 tables to be durable are freed.
    pub(super) fn flush_locked(&self, meta: &mut Meta) -> io::Result<()> {
        self.write_back(meta)?;
        self.barrier()?;
        if meta.alloc.has_deferred_frees() {
            self.apply_deferred_frees(meta)?;
            // Into the file (durable with the next barrier): a flushed
            // image that loses its process leaks nothing.
            self.write_refblocks(meta)?;
        }
        Ok(())
    }

    /// Makes every write completed before the call durable (`fdatasync`),
    /// so that what is written after it is ordered after them on the disk.
    ///
    /// Group commit: callers that arrive while a sync runs wait for it and
    /// share the next one; a caller whose writes a sync started after its
    /// arrival has already covered returns without one.
    pub(super) fn barrier(&self) -> io::Result<()> {
        let ticket = self.syncs_started.load(Ordering::Acquire);
        let _one_at_a_time = self.syncs.lock();
        // Sync number `ticket` started after this call: it covers our writes.
        if self.syncs_done.load(Ordering::Acquire) > ticket {
            return Ok(());
        }
        let number = self.syncs_started.fetch_add(1, Ordering::AcqRel);
        self.file.sync_data()?;
        self.syncs_done.store(number + 1, Ordering::Release);
        Ok(())
    }
}
