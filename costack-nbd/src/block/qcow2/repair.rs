//! The dirty bit: an image left by a writer that postponed refcount
//! updates (QEMU with `lazy_refcounts=on`) and did not close it carries the
//! incompatible feature bit 0, and its refcounts may lag behind its L1 and
//! L2 tables. The format asks to rebuild them from those tables before
//! anything else is done, as QEMU does when it opens such an image for
//! writing; this module does it.
//!
//! This driver never sets the bit: it never postpones refcounts (its
//! write-back cache writes refcount blocks before the L2 tables that need
//! them, see `writeback.rs`), so a crash leaves leaked clusters at worst,
//! whatever the `lazy_refcounts` compatible bit says.

use std::collections::BTreeMap;
use std::io;

use super::bitmap::{read_directory, read_table};
use super::cluster::{classify, Cluster, OFFSET_MASK};
use super::header::{AUTOCLEAR_BITMAPS, INCOMPAT_DIRTY};
use super::{bad_data, Meta, Qcow2};

impl Qcow2 {
    /// Counts every reference the image's metadata makes, sets each
    /// cluster's refcount to it (leaks included), makes that durable, then
    /// clears the dirty bit. Called at a writable open of a dirty image.
    pub(super) fn repair_refcounts(&mut self) -> io::Result<()> {
        let references = self.count_references()?;
        let incompat = self.header.incompatible_features & !INCOMPAT_DIRTY;
        self.rebuild(&references, incompat)?;
        self.header.incompatible_features = incompat;
        self.header.dirty = false;
        Ok(())
    }

    /// The refcounts set to `references`, durably, then the header's
    /// incompatible features to `incompat`.
    fn rebuild(&self, references: &BTreeMap<u64, u16>, incompat: u64) -> io::Result<()> {
        let mut meta = self.meta()?.lock();
        // Clusters the metadata uses, and clusters counted now: every
        // refcount below the end of both is compared.
        let end = references
            .last_key_value()
            .map_or(0, |(&c, _)| c + 1)
            .max(meta.alloc.used_end(self.cluster_size()) / self.cluster_size());
        self.set_counts(&mut meta, references, end)?;
        self.write_refblocks(&mut meta)?;
        self.barrier()?;
        self.write_file(&incompat.to_be_bytes(), 72)?;
        self.barrier()
    }

    /// Sets the refcount of clusters `0..end` to their `references`.
    /// Refcount blocks made on the way lie at the frontier, past `end`,
    /// and count themselves.
    fn set_counts(
        &self,
        meta: &mut Meta,
        references: &BTreeMap<u64, u16>,
        end: u64,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        // Nothing new may land inside the range being rebuilt.
        let frontier = meta.alloc.used_end(cs).max(end * cs);
        meta.alloc.reserve_to(frontier / cs);
        for index in 0..end {
            let want = references.get(&index).copied().unwrap_or(0);
            if self.refcount(meta, index * cs)? != want {
                self.set_refcount(meta, index * cs, want)?;
            }
        }
        Ok(())
    }

    /// How many times the metadata refers to each cluster: the header,
    /// the L1 table, the refcount table and blocks, L2 tables, data and
    /// compressed clusters, the bitmap directory, tables and bits.
    fn count_references(&self) -> io::Result<BTreeMap<u64, u16>> {
        let cs = self.cluster_size();
        let mut refs: BTreeMap<u64, u16> = BTreeMap::new();
        let mut count = |at: u64, len: u64| {
            for c in at / cs..(at + len).div_ceil(cs) {
                let n = refs.entry(c).or_insert(0);
                *n = n.saturating_add(1);
            }
        };
        count(0, cs);
        count(self.header.l1_offset, u64::from(self.header.l1_size) * 8);
        count(
            self.header.refcount_table_offset,
            u64::from(self.header.refcount_table_clusters) * cs,
        );
        let table = self.meta()?.lock().refcount_table.clone();
        for e in table {
            if e & OFFSET_MASK != 0 {
                count(e & OFFSET_MASK, cs);
            }
        }
        let l1: Vec<u64> = self.l1.read().unwrap_or_else(|e| e.into_inner()).clone();
        for e in l1 {
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            count(l2, cs);
            self.check_host(l2, cs, "L2 table")?;
            for entry in self.load_l2_table(l2, true)?.iter() {
                match classify(*entry, self.header.cluster_bits, self.header.version)
                    .map_err(|e| bad_data(e.0))?
                {
                    Cluster::Data(host) => count(host, cs),
                    Cluster::Zero if entry & OFFSET_MASK != 0 => count(entry & OFFSET_MASK, cs),
                    Cluster::Compressed { at, len } => count(at, len),
                    _ => {}
                }
            }
        }
        if let (Some(ext), AUTOCLEAR_BITMAPS) = (
            &self.header.bitmaps,
            self.header.autoclear_features & AUTOCLEAR_BITMAPS,
        ) {
            count(ext.directory_offset, ext.directory_size);
            for b in read_directory(&*self.file, ext, cs)? {
                count(b.table_offset, u64::from(b.table_size) * 8);
                for e in read_table(&*self.file, b.table_offset, b.table_size)? {
                    if e & OFFSET_MASK != 0 {
                        count(e & OFFSET_MASK, cs);
                    }
                }
            }
        }
        Ok(refs)
    }
}
