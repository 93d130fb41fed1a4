//! The read path: L2 tables found in the cache or read from the file,
//! clusters read (data, zeros, compressed, the backing file's), and
//! `base:allocation`.

use std::io;
use std::sync::atomic::Ordering;

use super::cluster::{classify, inflate_cluster, Cluster, OFFSET_MASK};
use super::header::be64;
use super::{bad_data, Meta, Qcow2};
use crate::block::{BlockDevice, Extent};
use crate::block::{STATE_HOLE, STATE_ZERO};

/// Reads of an L2 table that found a table evicted meanwhile before the
/// reader takes the metadata lock to read it once more.
const L2_READ_TRIES: usize = 2;

impl Qcow2 {
    /// The raw L2 entry of cluster number `index` (0: no L2 table).
    pub(super) fn l2_entry(&self, index: u64) -> io::Result<u64> {
        self.l2_entry_with(index, None)
    }

    /// As [`l2_entry`](Self::l2_entry), by a caller holding the metadata
    /// lock.
    pub(super) fn l2_entry_locked(&self, meta: &mut Meta, index: u64) -> io::Result<u64> {
        self.l2_entry_with(index, Some(meta))
    }

    fn l2_entry_with(&self, index: u64, meta: Option<&mut Meta>) -> io::Result<u64> {
        let l1_index = (index / self.l2_entries()) as usize;
        let table = self.l1_entry(l1_index) & OFFSET_MASK;
        if table == 0 {
            return Ok(0);
        }
        let slot = (index % self.l2_entries()) as usize;
        if let Some(t) = self.lock_l2().get(table) {
            return Ok(t[slot]);
        }
        Ok(self.load_l2_table(table, meta.is_some())?[slot])
    }

    /// What the image holds for cluster number `index`.
    pub(super) fn cluster(&self, index: u64) -> io::Result<Cluster> {
        let entry = self.l2_entry(index)?;
        classify(entry, self.header.cluster_bits, self.header.version).map_err(|e| bad_data(e.0))
    }

    /// Reads the L2 table at `at` from the file and caches it if there is
    /// room.
    ///
    /// The file's copy is current unless the table was dirty in the cache
    /// and written back while the read ran; only then could it have been
    /// evicted meanwhile. So the copy read is used if the cache holds no
    /// newer one and nothing was evicted during the read, or if the caller
    /// holds the metadata lock (`locked`: no table changes then), or if
    /// the image is read-only; else it is read again, and after
    /// [`L2_READ_TRIES`] under the metadata lock.
    pub(super) fn load_l2_table(&self, at: u64, locked: bool) -> io::Result<Box<[u64]>> {
        let cs = self.cluster_size();
        if !at.is_multiple_of(cs) {
            return Err(bad_data(format!("L2 table at {at:#x} is misaligned")));
        }
        self.check_host(at, cs, "L2 table")?;
        let consistent_anyway = locked || self.meta.is_none();
        for _ in 0..L2_READ_TRIES {
            let evictions = self.lock_l2().evictions();
            // Read without the lock held: the read yields to other requests.
            let table = self.read_table(at)?;
            let mut cache = self.lock_l2();
            if let Some(t) = cache.get(at) {
                return Ok(t.into());
            }
            if consistent_anyway || cache.evictions() == evictions {
                // No room (every table dirty): used once, not kept.
                let _ = cache.insert(at, table.clone());
                return Ok(table);
            }
        }
        let _no_table_changes = self.meta()?.lock();
        self.load_l2_table(at, true)
    }

    /// The L2 table at `at` as the file holds it.
    fn read_table(&self, at: u64) -> io::Result<Box<[u64]>> {
        let mut raw = vec![0u8; self.cluster_size() as usize];
        self.file.read_exact_at(&mut raw, at)?;
        Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
    }

    /// Reads `buf.len()` bytes at guest `offset` inside one cluster.
    pub(super) fn read_in_cluster(
        &self,
        what: Cluster,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let in_cluster = offset & (self.cluster_size() - 1);
        match what {
            Cluster::Zero => buf.fill(0),
            Cluster::Unallocated => self.read_backing(buf, offset)?,
            Cluster::Data(host) => {
                self.read_data(buf, host + in_cluster)?;
            }
            Cluster::Compressed { at, len } => {
                // The last compressed cluster may end short of its last
                // sector: read what the file has.
                let file_len = self.file_len.load(Ordering::Acquire);
                let len = len.min(file_len.saturating_sub(at));
                self.check_host(at, len, "compressed cluster")?;
                let mut packed = vec![0u8; len as usize];
                self.file.read_exact_at(&mut packed, at)?;
                let cs = self.cluster_size() as usize;
                let cluster = if costack::in_coroutine() {
                    // Inflating takes a while: on the thread pool, as QEMU
                    // does, so the loop serves other requests meanwhile and
                    // a second core inflates too.
                    costack::aio::run_blocking(move || inflate_cluster(&packed, cs))?
                } else {
                    inflate_cluster(&packed, cs)?
                };
                let start = in_cluster as usize;
                buf.copy_from_slice(&cluster[start..start + buf.len()]);
            }
        }
        Ok(())
    }

    /// The backing file's bytes, zeros past its end or without one.
    fn read_backing(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let have = backing.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if have > 0 {
            backing.read_at(&mut buf[..have], offset)?;
        }
        buf[have..].fill(0);
        Ok(())
    }

    /// Fills `buf` from guest `offset` (the device's `read_at`).
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        let bits = self.header.cluster_bits;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = ((cs - (at & (cs - 1))) as usize).min(buf.len() - done);
            let what = self.cluster(at >> bits)?;
            let Cluster::Data(host) = what else {
                self.read_in_cluster(what, &mut buf[done..done + n], at)?;
                done += n;
                continue;
            };
            // Data clusters stored one after another: one read for the run.
            let host_at = host + (at & (cs - 1));
            let mut len = n;
            while done + len < buf.len() {
                match self.cluster((at + len as u64) >> bits)? {
                    Cluster::Data(h) if h == host_at + len as u64 => {
                        len += (cs as usize).min(buf.len() - done - len);
                    }
                    _ => break,
                }
            }
            self.read_data(&mut buf[done..done + len], host_at)?;
            done += len;
        }
        Ok(())
    }

    /// `base:allocation` extents from guest `offset` (the device's
    /// `block_status`).
    pub(super) fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.chain_extents::<Allocation>(offset, len)
    }

    /// `qemu:allocation-depth` extents from guest `offset`: 1 where this
    /// image holds the cluster (data, compressed or a zero cluster, which
    /// hides the backing file), the backing file's depth plus one where it
    /// reads through (2 past the backing file's end, as QEMU counts), 0
    /// where no layer holds it.
    pub(super) fn depth(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.chain_extents::<Depth>(offset, len)
    }

    /// Extents from guest `offset`, cluster by cluster: `M`'s value where
    /// this image decides, the backing file's (mapped by `M`) where it
    /// reads through.
    fn chain_extents<M: ChainMap>(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let cs = self.cluster_size();
        let end = offset.saturating_add(len).min(self.header.size);
        let mut extents: Vec<Extent> = Vec::new();
        let mut push = |length: u64, flags: u32| match extents.last_mut() {
            Some(last) if last.flags == flags => last.length += length,
            _ => extents.push(Extent { length, flags }),
        };
        let mut at = offset;
        // A bounded walk: the client asks again for the rest.
        let mut budget = 16384;
        while at < end && budget > 0 {
            budget -= 1;
            let n = (cs - (at & (cs - 1))).min(end - at);
            match (self.cluster(at >> self.header.cluster_bits)?, &self.backing) {
                (Cluster::Unallocated, Some(b)) => {
                    let mut pos = at;
                    while pos < at + n {
                        if pos >= b.size() {
                            push(at + n - pos, M::PAST_BACKING);
                            break;
                        }
                        let want = (at + n).min(b.size()) - pos;
                        let got = M::backing(&**b, pos, want)?;
                        let Some(first) = got.first().copied() else {
                            return Err(bad_data("backing file returned no extent"));
                        };
                        let l = first.length.min(want);
                        push(l, M::through(first.flags));
                        pos += l;
                    }
                }
                (what, _) => push(n, M::own(what)),
            }
            at += n;
        }
        Ok(extents)
    }
}

/// What one kind of extent makes of the backing chain: `allocation` and
/// `depth` walk it alike and differ only here.
trait ChainMap {
    /// The value past the backing file's end (it reads as zeros there).
    const PAST_BACKING: u32;
    /// The value of a cluster this image decides: held here, or
    /// unallocated without a backing file.
    fn own(what: Cluster) -> u32;
    /// The backing file's extents of this kind.
    fn backing(b: &dyn BlockDevice, offset: u64, len: u64) -> io::Result<Vec<Extent>>;
    /// A backing file's value as this image reports it.
    fn through(flags: u32) -> u32;
}

/// `base:allocation`: the backing file's status as it is.
struct Allocation;

impl ChainMap for Allocation {
    const PAST_BACKING: u32 = STATE_HOLE | STATE_ZERO;

    fn own(what: Cluster) -> u32 {
        match what {
            Cluster::Data(_) | Cluster::Compressed { .. } => 0,
            Cluster::Zero => STATE_ZERO,
            Cluster::Unallocated => STATE_HOLE | STATE_ZERO,
        }
    }

    fn backing(b: &dyn BlockDevice, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        b.block_status(offset, len)
    }

    fn through(flags: u32) -> u32 {
        flags
    }
}

/// `qemu:allocation-depth`: one deeper for each layer read through.
struct Depth;

impl ChainMap for Depth {
    /// As QEMU counts it: past its end, the backing file is what reads as
    /// zeros.
    const PAST_BACKING: u32 = 2;

    fn own(what: Cluster) -> u32 {
        match what {
            Cluster::Unallocated => 0,
            _ => 1,
        }
    }

    fn backing(b: &dyn BlockDevice, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        b.allocation_depth(offset, len)
    }

    fn through(flags: u32) -> u32 {
        if flags == 0 {
            0
        } else {
            flags + 1
        }
    }
}
