//! The write path: in place where a cluster is the image's alone, else
//! copy on write into a new cluster; zero clusters and discards; L2 tables
//! made and changed in the cache.

use std::io;
use std::sync::atomic::Ordering;

use costack::aio;
use costack::sync::CoMutexGuard;

use super::cluster::{classify, Cluster, COPIED, L2_ZERO, OFFSET_MASK};
use super::{bad_data, closed, read_only, Meta, Qcow2};

impl Qcow2 {
    /// Writes are refused on a read-only or closed image.
    pub(super) fn writable(&self) -> io::Result<()> {
        if self.meta.is_none() {
            return Err(read_only());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(())
    }

    /// The L2 table for guest cluster `index`, in the cache; made if
    /// missing: a zeroed cluster with its refcount, durable before the L1
    /// entry that links it is written.
    fn l2_table_for_write(&self, meta: &mut Meta, index: u64) -> io::Result<u64> {
        let l1_index = (index / self.l2_entries()) as usize;
        let entry = self.l1_entry(l1_index);
        let table = entry & OFFSET_MASK;
        if table != 0 {
            if entry & COPIED == 0 {
                return Err(bad_data(format!(
                    "L2 table at {table:#x} is shared (a snapshot's); not written"
                )));
            }
            if !self.lock_l2().contains(table) {
                self.cache_l2_table(meta, table, None)?;
            }
            return Ok(table);
        }
        if l1_index >= self.header.l1_size as usize {
            return Err(bad_data("write past the L1 table"));
        }
        let cs = self.cluster_size();
        let (at, _) = self.alloc_cluster(meta)?;
        self.write_file(&vec![0u8; cs as usize], at)?;
        // The zeroed table and its refcount before the L1 entry points at
        // it.
        self.write_refblocks(meta)?;
        self.barrier()?;
        let l1_entry = at | COPIED;
        self.write_file(
            &l1_entry.to_be_bytes(),
            self.header.l1_offset + l1_index as u64 * 8,
        )?;
        self.l1.write().unwrap_or_else(|e| e.into_inner())[l1_index] = l1_entry;
        let zeros = vec![0u64; self.l2_entries() as usize].into_boxed_slice();
        self.cache_l2_table(meta, at, Some(zeros))?;
        Ok(at)
    }

    /// Puts the L2 table at `at` into the cache (`table`, or as the file
    /// holds it), writing the dirty tables back first if they fill it.
    /// Under the metadata lock the file's copy is current: only a dirty
    /// table differs from it, and dirty tables stay in the cache.
    fn cache_l2_table(
        &self,
        meta: &mut Meta,
        at: u64,
        table: Option<Box<[u64]>>,
    ) -> io::Result<()> {
        let table = match table {
            Some(t) => t,
            None => self.load_l2_table(at, true)?,
        };
        if !self.lock_l2().has_room() {
            self.write_back(meta)?;
        }
        let mut cache = self.lock_l2();
        if cache.contains(at) {
            return Ok(());
        }
        cache
            .insert(at, table)
            .map_err(|_| io::Error::other("the L2 cache is full of dirty tables"))
    }

    /// Points guest cluster `index` at `entry`, in the cache (the table
    /// becomes dirty).
    fn set_l2_entry(&self, meta: &mut Meta, index: u64, entry: u64) -> io::Result<()> {
        let slot = (index % self.l2_entries()) as usize;
        loop {
            let table = self.l2_table_for_write(meta, index)?;
            // A reader on another thread may have evicted the (clean)
            // table meanwhile: then load it again.
            if self.lock_l2().set(table, slot, entry) {
                return Ok(());
            }
        }
    }

    /// Gives back, once the change is durable, the host clusters `old`
    /// held that `new` does not keep: a compressed cluster's, a data or
    /// preallocated zero cluster's.
    fn release(&self, meta: &mut Meta, old: u64, new: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        let keeps = |host: u64| new & L2_ZERO != 0 && new & OFFSET_MASK == host;
        match classify(old, self.header.cluster_bits, self.header.version) {
            Ok(Cluster::Compressed { at, len }) => {
                for c in at / cs..=(at + len - 1) / cs {
                    self.free_later(meta, c * cs)?;
                }
                Ok(())
            }
            Ok(Cluster::Data(host)) if !keeps(host) => self.free_later(meta, host),
            Ok(Cluster::Zero) if old & OFFSET_MASK != 0 && !keeps(old & OFFSET_MASK) => {
                self.free_later(meta, old & OFFSET_MASK)
            }
            _ => Ok(()),
        }
    }

    /// Writes `buf` at guest `offset`, inside one cluster.
    pub(super) fn write_in_cluster(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        let index = offset / cs;
        let in_cluster = offset % cs;
        // In place when the cluster is ours alone.
        let entry = self.l2_entry(index)?;
        if let Ok(Cluster::Data(host)) =
            classify(entry, self.header.cluster_bits, self.header.version)
        {
            if entry & COPIED != 0 {
                self.check_data(host + in_cluster, buf.len() as u64)?;
                return self.write_file(buf, host + in_cluster);
            }
        }
        // From here on metadata changes: a cancellation waits for the end
        // (an allocation cancelled half-way would leave `in_flight` set,
        // stalling every later writer of the cluster, and the cluster
        // counted but unlinked).
        aio::shield(|| self.write_allocating(buf, offset))
    }

    /// [`write_in_cluster`](Self::write_in_cluster)'s path under the
    /// metadata lock: in place if another request allocated the cluster
    /// meanwhile, else copy on write into a new cluster.
    fn write_allocating(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        let index = offset / cs;
        let in_cluster = offset % cs;
        let mut meta = self.lock_cluster(index)?;
        // Look again: another request may have allocated it meanwhile.
        let entry = self.l2_entry_locked(&mut meta, index)?;
        let what = classify(entry, self.header.cluster_bits, self.header.version)
            .map_err(|e| bad_data(e.0))?;
        if let Cluster::Data(host) = what {
            if entry & COPIED != 0 {
                drop(meta);
                self.check_data(host + in_cluster, buf.len() as u64)?;
                return self.write_file(buf, host + in_cluster);
            }
            return Err(bad_data(format!(
                "data cluster at {host:#x} is shared (a snapshot's); not written"
            )));
        }
        // Copy on write into a new cluster: its data is written with the
        // lock released (other clusters allocate meanwhile; writers of
        // this one wait), then its L2 entry is set under the lock. Nothing
        // orders the data before the entry here: the entry reaches the
        // file only in a write-back, after a barrier.
        let (host, fresh) = self.alloc_cluster(&mut meta)?;
        meta.in_flight.insert(index);
        drop(meta);
        let was_zeros = match what {
            Cluster::Zero => true,
            Cluster::Unallocated => self.backing.is_none(),
            Cluster::Compressed { .. } | Cluster::Data(_) => false,
        };
        let written = if buf.len() as u64 == cs {
            self.write_file(buf, host)
        } else if fresh && was_zeros {
            // The rest of a fresh cluster reads as zeros already.
            self.write_file(buf, host + in_cluster)
        } else {
            let mut cluster = vec![0u8; cs as usize];
            self.read_in_cluster(what, &mut cluster, index * cs)
                .and_then(|()| {
                    cluster[in_cluster as usize..in_cluster as usize + buf.len()]
                        .copy_from_slice(buf);
                    self.write_file(&cluster, host)
                })
        };
        let mut meta = self.meta()?.lock();
        let linked = written.and_then(|()| self.set_l2_entry(&mut meta, index, host | COPIED));
        meta.in_flight.remove(&index);
        self.allocations.restart_all();
        if let Err(e) = linked {
            // Not referenced: free it again.
            self.unalloc(&mut meta, host)?;
            return Err(e);
        }
        self.release(&mut meta, entry, host | COPIED)
    }

    /// The meta lock, once no other request is allocating cluster `index`.
    fn lock_cluster(&self, index: u64) -> io::Result<CoMutexGuard<'_, Meta>> {
        let mut meta = self.meta()?.lock();
        while meta.in_flight.contains(&index) {
            meta = self.allocations.wait_with(meta);
        }
        Ok(meta)
    }

    /// Makes whole cluster `index` read as zeros with the version 3 zero
    /// flag: its host cluster freed if `unmap`, else kept allocated
    /// (preallocated zero).
    pub(super) fn zero_cluster(&self, index: u64, unmap: bool) -> io::Result<()> {
        let mut meta = self.lock_cluster(index)?;
        let entry = self.l2_entry_locked(&mut meta, index)?;
        let what = classify(entry, self.header.cluster_bits, self.header.version)
            .map_err(|e| bad_data(e.0))?;
        let new = match what {
            Cluster::Data(host) if entry & COPIED != 0 && !unmap => host | COPIED | L2_ZERO,
            Cluster::Zero if !unmap || entry & OFFSET_MASK == 0 => return Ok(()),
            // A hole may stay a hole: it reads as zeros already.
            Cluster::Unallocated if unmap && self.backing.is_none() => return Ok(()),
            _ => L2_ZERO,
        };
        self.set_l2_entry(&mut meta, index, new)?;
        self.release(&mut meta, entry, new)
    }

    /// Discards whole cluster `index` (QEMU's discard): its host cluster
    /// is freed; it reads as zeros after (version 3; version 2 has no zero
    /// flag, so it reads through to the backing file, as QEMU's do).
    pub(super) fn discard_cluster(&self, index: u64) -> io::Result<()> {
        let mut meta = self.lock_cluster(index)?;
        let entry = self.l2_entry_locked(&mut meta, index)?;
        let what = classify(entry, self.header.cluster_bits, self.header.version)
            .map_err(|e| bad_data(e.0))?;
        let new = match what {
            Cluster::Unallocated if self.backing.is_none() => return Ok(()),
            Cluster::Zero if entry & OFFSET_MASK == 0 => return Ok(()),
            _ if self.header.version >= 3 => L2_ZERO,
            _ => 0,
        };
        if new == entry {
            return Ok(());
        }
        self.set_l2_entry(&mut meta, index, new)?;
        self.release(&mut meta, entry, new)
    }

    /// Whether guest cluster `index` reads as zeros without a write (so a
    /// partial write of zeros there has nothing to do).
    pub(super) fn reads_as_zeros(&self, index: u64) -> io::Result<bool> {
        Ok(match self.cluster(index)? {
            Cluster::Zero => true,
            Cluster::Unallocated => self.backing.is_none(),
            Cluster::Data(_) | Cluster::Compressed { .. } => false,
        })
    }
}
