//! The write path: copy on write into new clusters, L2 entries and
//! tables, zero clusters, the barrier.

use std::io;
use std::sync::atomic::Ordering;

use costack::sync::CoMutexGuard;

use super::cluster::{classify, Cluster, COPIED, L2_ZERO, OFFSET_MASK};
use super::{bad_data, Meta, Qcow2};

impl Qcow2 {
    /// The L2 table for guest cluster `index`, made if missing (a zeroed
    /// cluster, its refcount, then the L1 entry).
    pub(super) fn l2_table_for_write(&self, meta: &mut Meta, index: u64) -> io::Result<u64> {
        let l1_index = (index / self.l2_entries()) as usize;
        let entry = self.l1_entry(l1_index);
        let table = entry & OFFSET_MASK;
        if table != 0 {
            if entry & COPIED == 0 {
                return Err(bad_data(format!(
                    "L2 table at {table:#x} is shared (a snapshot's); not written"
                )));
            }
            return Ok(table);
        }
        if l1_index >= self.header.l1_size as usize {
            return Err(bad_data("write past the L1 table"));
        }
        let at = self.take_cluster(meta);
        self.write_file(&vec![0u8; self.cluster_size() as usize], at)?;
        self.set_refcount(meta, at, 1)?;
        // The table and its refcount before the L1 entry points at it.
        self.barrier()?;
        let l1_entry = at | COPIED;
        self.write_file(
            &l1_entry.to_be_bytes(),
            self.header.l1_offset + l1_index as u64 * 8,
        )?;
        self.l1.write().unwrap_or_else(|e| e.into_inner())[l1_index] = l1_entry;
        Ok(at)
    }

    /// Points guest cluster `index` at `entry`, in the cache and on disk.
    pub(super) fn set_l2_entry(&self, meta: &mut Meta, index: u64, entry: u64) -> io::Result<()> {
        let at = self.prepare_l2_entry(meta, index, entry)?;
        self.write_l2_entry(at, entry)
    }

    /// The first half of [`set_l2_entry`](Self::set_l2_entry), under the
    /// meta lock: makes the L2 table if missing and updates the cached
    /// entry; returns where the entry goes in the file.
    pub(super) fn prepare_l2_entry(
        &self,
        meta: &mut Meta,
        index: u64,
        entry: u64,
    ) -> io::Result<u64> {
        let table = self.l2_table_for_write(meta, index)?;
        let slot = (index % self.l2_entries()) as usize;
        let at = table + slot as u64 * 8;
        self.l2_epoch.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.lock_cache();
        if let Some(t) = cache.tables.get_mut(&table) {
            t[slot] = entry;
        }
        cache.unwritten.insert(at, entry);
        Ok(at)
    }

    /// The second half: the entry into the file. Until it is there, the
    /// cluster must stay in `in_flight` (a writer reloading the table from
    /// the file would see the old entry).
    pub(super) fn write_l2_entry(&self, at: u64, entry: u64) -> io::Result<()> {
        let written = self.write_file(&entry.to_be_bytes(), at);
        // Again once the entry is in the file: a table read from the file
        // while it was being written is not cached either.
        self.l2_epoch.fetch_add(1, Ordering::AcqRel);
        if written.is_ok() {
            self.lock_cache().unwritten.remove(&at);
        }
        written
    }

    /// Gives back what an L2 entry being replaced held: a compressed
    /// cluster's host clusters, or a preallocated zero cluster.
    pub(super) fn release(&self, meta: &mut Meta, old: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        match classify(old, self.header.cluster_bits, self.header.version) {
            Ok(Cluster::Compressed { at, len }) => {
                let (first, last) = (at / cs, (at + len - 1) / cs);
                meta.deferred_frees.extend((first..=last).map(|c| c * cs));
            }
            Ok(Cluster::Zero) if old & OFFSET_MASK != 0 => {
                meta.deferred_frees.push(old & OFFSET_MASK);
            }
            _ => {}
        }
        Ok(())
    }

    /// Decrements the refcounts [`release`](Self::release) deferred; only
    /// after an `fdatasync` made the L2 entries that replaced them durable.
    pub(super) fn apply_deferred_frees(&self, meta: &mut Meta) -> io::Result<()> {
        for host in std::mem::take(&mut meta.deferred_frees) {
            let n = self.refcount(meta, host)?;
            self.set_refcount(meta, host, n.saturating_sub(1))?;
        }
        Ok(())
    }

    /// Makes every write completed before the call durable (`fdatasync`),
    /// so that what is written after it is ordered after them on the disk:
    /// a power loss, like a crash, leaks at worst. Taken once per 64
    /// allocated clusters, per new L2 table or refcount block, per
    /// copy-on-write of old data, twice per refcount table move, and by
    /// FLUSH.
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
                self.check_host(host + in_cluster, buf.len() as u64, "data cluster")?;
                return self.file.write_all_at(buf, host + in_cluster);
            }
        }
        let meta = self.lock_cluster(index)?;
        // Look again: another request may have allocated it meanwhile.
        let entry = self.l2_entry(index)?;
        let what = classify(entry, self.header.cluster_bits, self.header.version)
            .map_err(|e| bad_data(e.0))?;
        if let Cluster::Data(host) = what {
            if entry & COPIED != 0 {
                drop(meta);
                self.check_host(host + in_cluster, buf.len() as u64, "data cluster")?;
                return self.file.write_all_at(buf, host + in_cluster);
            }
            return Err(bad_data(format!(
                "data cluster at {host:#x} is shared (a snapshot's); not written"
            )));
        }
        // Copy on write into a new cluster: its data is written with the
        // lock released (other clusters allocate meanwhile; writers of
        // this one wait), then its refcount and L2 entry under the lock.
        let mut meta = meta;
        let host = self.take_data_cluster(&mut meta)?;
        meta.in_flight.insert(index);
        drop(meta);
        // Old bytes copied into the new cluster (a backing file's, a
        // compressed cluster's) were durable where they were: they must be
        // on the disk before the L2 entry that moves them is (QEMU's
        // dependency of the L2 table on a flush after copy-on-write).
        let copies_old_data = buf.len() as u64 != cs
            && match what {
                Cluster::Compressed { .. } => true,
                Cluster::Unallocated => self.backing.is_some(),
                Cluster::Zero | Cluster::Data(_) => false,
            };
        let written = if buf.len() as u64 == cs {
            self.write_file(buf, host)
        } else {
            let mut cluster = vec![0u8; cs as usize];
            self.read_in_cluster(what, &mut cluster, index * cs)
                .and_then(|()| {
                    cluster[in_cluster as usize..in_cluster as usize + buf.len()]
                        .copy_from_slice(buf);
                    self.write_file(&cluster, host)
                })
        };
        let written = if copies_old_data {
            written.and_then(|()| self.barrier())
        } else {
            written
        };
        let mut meta = self.meta()?.lock();
        let linked = written.and_then(|()| self.prepare_l2_entry(&mut meta, index, host | COPIED));
        let at = match linked {
            Ok(at) => at,
            Err(e) => {
                meta.in_flight.remove(&index);
                self.allocations.restart_all();
                // Not referenced: free it again.
                self.set_refcount(&mut meta, host, 0)?;
                return Err(e);
            }
        };
        // The entry goes to the file with the lock released; the cluster
        // stays in flight until it is there.
        drop(meta);
        let stored = self.write_l2_entry(at, host | COPIED);
        let mut meta = self.meta()?.lock();
        meta.in_flight.remove(&index);
        self.allocations.restart_all();
        stored?;
        self.release(&mut meta, entry)
    }

    /// The meta lock, once no other request is allocating cluster `index`.
    pub(super) fn lock_cluster(&self, index: u64) -> io::Result<CoMutexGuard<'_, Meta>> {
        let mut meta = self.meta()?.lock();
        while meta.in_flight.contains(&index) {
            meta = self.allocations.wait_with(meta);
        }
        Ok(meta)
    }

    /// Makes whole cluster `index` read as zeros with the version 3 zero
    /// flag, keeping a data cluster allocated (preallocated zero).
    pub(super) fn zero_cluster(&self, index: u64) -> io::Result<()> {
        let mut meta = self.lock_cluster(index)?;
        let entry = self.l2_entry(index)?;
        let what = classify(entry, self.header.cluster_bits, self.header.version)
            .map_err(|e| bad_data(e.0))?;
        let new = match what {
            Cluster::Data(host) if entry & COPIED != 0 => host | COPIED | L2_ZERO,
            Cluster::Zero => return Ok(()),
            _ => L2_ZERO,
        };
        self.set_l2_entry(&mut meta, index, new)?;
        self.release(&mut meta, entry)
    }
}
