//! `auto` bitmaps kept up to date while the image is written, as QEMU
//! keeps them: loaded at open and marked in use on the disk (durably,
//! before any write), every write, write-zeroes and honoured discard
//! recorded in memory, and saved at close: the bits into new clusters, the
//! directory entry pointed at them, then the in-use flag cleared, then the
//! old clusters freed, a barrier between each step, so that a power cut
//! leaves each bitmap either in use (qemu then knows it is stale) or
//! complete. A bitmap this driver cannot keep (an unknown type or flag,
//! extra data it does not understand) makes a writable open fail rather
//! than be silently dropped.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, MutexGuard};

use super::bitmap::{read_bits, read_directory, read_table, BitmapEntry, Bits, FLAG_IN_USE};
use super::cluster::OFFSET_MASK;
use super::header::{Header, AUTOCLEAR_BITMAPS};
use super::{Meta, Qcow2};
use crate::block::ImageFile;

/// An `auto` bitmap being kept up to date.
pub(super) struct Tracked {
    entry: BitmapEntry,
    bits: Bits,
    /// Bits set since open (else only the in-use flag needs clearing).
    changed: bool,
}

/// The image's bitmaps in memory.
#[derive(Default)]
pub(super) struct Bitmaps {
    /// Kept up to date (writable images).
    tracked: Vec<Tracked>,
    /// Read from the file on demand, for [`Qcow2::dirty_extents`].
    loaded: HashMap<String, Arc<Bits>>,
}

/// The auto-clear bits a writer that keeps the bitmaps leaves set: the
/// bitmaps bit if the extension is there and consistent, no other.
pub(super) fn autoclear_to_keep(header: &Header) -> u64 {
    if header.bitmaps.is_some() {
        header.autoclear_features & AUTOCLEAR_BITMAPS
    } else {
        0
    }
}

/// At a writable open: the consistent `auto` bitmaps, loaded, or an error
/// naming a bitmap that cannot be kept (nothing is written).
pub(super) fn open_tracked(file: &dyn ImageFile, header: &Header) -> io::Result<Vec<Tracked>> {
    let Some(ext) = header.bitmaps else {
        return Ok(Vec::new());
    };
    if header.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
        // Inconsistent already: qemu ignores them, and so do writes here.
        return Ok(Vec::new());
    }
    let cs = 1u64 << header.cluster_bits;
    let entries = read_directory(file, &ext, cs)?;
    let mut tracked = Vec::new();
    for entry in entries {
        if !entry.is_auto() || entry.in_use() {
            // Disabled bitmaps stay as they are; one in use is stale.
            continue;
        }
        if let Some(why) = entry.unusable() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{why}: its dirty tracking cannot be kept up to date, so the image is \
                     not written: serve it read-only (-r)"
                ),
            ));
        }
        let bits = read_bits(file, &entry, header.size, cs)?;
        tracked.push(Tracked {
            entry,
            bits,
            changed: false,
        });
    }
    Ok(tracked)
}

/// Marks `tracked` in use on the disk, durably (before any write to the
/// image can be).
pub(super) fn mark_in_use(file: &dyn ImageFile, tracked: &[Tracked]) -> io::Result<()> {
    for t in tracked {
        let flags = t.entry.flags | FLAG_IN_USE;
        file.write_all_at(&flags.to_be_bytes(), t.entry.entry_offset + 12)?;
    }
    if !tracked.is_empty() {
        file.sync_data()?;
    }
    Ok(())
}

impl Bitmaps {
    /// The bitmaps of an image opened with `tracked` kept up to date.
    pub(super) fn new(tracked: Vec<Tracked>) -> Bitmaps {
        Bitmaps {
            tracked,
            loaded: HashMap::new(),
        }
    }
}

impl Qcow2 {
    fn lock_bitmaps(&self) -> MutexGuard<'_, Bitmaps> {
        self.bitmaps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change of `len` bytes at guest `offset` in every bitmap
    /// kept up to date.
    pub(super) fn mark_dirty(&self, offset: u64, len: u64) {
        let mut bitmaps = self.lock_bitmaps();
        for t in &mut bitmaps.tracked {
            t.bits.set_range(offset, len);
            t.changed = true;
        }
    }

    /// The persistent bitmaps, as the image's bitmap directory lists them
    /// now (in use while this image is open for writing).
    ///
    /// # Errors
    /// The directory cannot be read or is malformed.
    pub fn bitmaps(&self) -> io::Result<Vec<BitmapEntry>> {
        match (
            &self.header.bitmaps,
            self.header.autoclear_features & AUTOCLEAR_BITMAPS,
        ) {
            (Some(ext), AUTOCLEAR_BITMAPS) => read_directory(&*self.file, ext, self.cluster_size()),
            _ => Ok(Vec::new()),
        }
    }

    /// The names of this image's own bitmaps (not its backing chain's),
    /// read from the directory once: they cannot change while it is open
    /// (the directory's place and size are the header's, and only an
    /// entry's table and flags are ever rewritten). A failed read is not
    /// kept: the next call reads again.
    ///
    /// # Errors
    /// As [`bitmaps`](Self::bitmaps).
    pub(super) fn own_bitmap_names(&self) -> io::Result<&[String]> {
        if let Some(names) = self.own_bitmaps.get() {
            return Ok(names);
        }
        let names = self.bitmaps()?.into_iter().map(|b| b.name).collect();
        Ok(self.own_bitmaps.get_or_init(|| names))
    }

    /// The bitmap `name`'s view of `len` bytes at guest `offset`: runs of
    /// `(length, dirty)` from `offset`, covering at least one byte and at
    /// most the disk. Live for a bitmap kept up to date by this image's
    /// writes; else as the file holds it.
    ///
    /// # Errors
    /// `NotFound` if no bitmap has that name; the bitmap is unusable, in
    /// use by a writer (stale), or cannot be read.
    pub fn dirty_extents(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        let bits = self.bits_of(name)?;
        let end = offset.saturating_add(len).min(self.header.size);
        let g = bits.granularity();
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut at = offset;
        // A bounded walk: the client asks again for the rest.
        let mut budget = 1 << 16;
        while at < end && budget > 0 {
            budget -= 1;
            let n = (g - at % g).min(end - at);
            let dirty = bits.is_dirty(at);
            match out.last_mut() {
                Some(last) if last.1 == dirty => last.0 += n,
                _ => out.push((n, dirty)),
            }
            at += n;
        }
        Ok(out)
    }

    /// The bits of bitmap `name`: the live copy, or read once from the
    /// file.
    fn bits_of(&self, name: &str) -> io::Result<Arc<Bits>> {
        {
            let bitmaps = self.lock_bitmaps();
            if let Some(t) = bitmaps.tracked.iter().find(|t| t.entry.name == name) {
                return Ok(Arc::new(t.bits.clone()));
            }
            if let Some(bits) = bitmaps.loaded.get(name) {
                return Ok(bits.clone());
            }
        }
        let entry = self
            .bitmaps()?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no bitmap {name:?}"))
            })?;
        if entry.in_use() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bitmap {name:?} is in use (it may be stale)"),
            ));
        }
        let bits = Arc::new(read_bits(
            &*self.file,
            &entry,
            self.header.size,
            self.cluster_size(),
        )?);
        self.lock_bitmaps()
            .loaded
            .insert(name.to_owned(), bits.clone());
        Ok(bits)
    }

    /// Saves the bitmaps kept up to date (at close, after the final
    /// flush): see the module's documentation for the order.
    pub(super) fn store_bitmaps(&self, meta: &mut Meta) -> io::Result<()> {
        let tracked = std::mem::take(&mut self.lock_bitmaps().tracked);
        if tracked.is_empty() {
            return Ok(());
        }
        let cs = self.cluster_size();
        let mut moved = Vec::new();
        for t in tracked.iter().filter(|t| t.changed) {
            let new_table = self.write_bits(meta, &t.bits)?;
            moved.push((t, new_table));
        }
        // The new tables and bits, with their refcounts, before a directory
        // entry points at them.
        self.write_refblocks(meta)?;
        self.barrier()?;
        for (t, (table_at, table_size)) in &moved {
            // The table's size depends on the disk's only, so it is the
            // same: one aligned 8-byte field changes.
            self.write_file(&table_at.to_be_bytes(), t.entry.entry_offset)?;
            if *table_size != t.entry.table_size {
                self.write_file(&table_size.to_be_bytes(), t.entry.entry_offset + 8)?;
            }
        }
        if !moved.is_empty() {
            self.barrier()?;
        }
        for t in &tracked {
            let flags = t.entry.flags & !FLAG_IN_USE;
            self.write_file(&flags.to_be_bytes(), t.entry.entry_offset + 12)?;
        }
        self.barrier()?;
        // Nothing durable points at the old tables and bits any more.
        for (t, _) in &moved {
            let old = read_table(&*self.file, t.entry.table_offset, t.entry.table_size)?;
            for e in old {
                if e & OFFSET_MASK != 0 {
                    self.drop_reference(meta, e & OFFSET_MASK)?;
                }
            }
            let table_clusters = (u64::from(t.entry.table_size) * 8).div_ceil(cs);
            for k in 0..table_clusters {
                self.drop_reference(meta, t.entry.table_offset + k * cs)?;
            }
        }
        Ok(())
    }

    /// Writes `bits` into new clusters (clusters of zeros are not
    /// written: their table entry is 0) and a new table, contiguous, as
    /// the format wants; returns the table's offset and size.
    fn write_bits(&self, meta: &mut Meta, bits: &Bits) -> io::Result<(u64, u32)> {
        let cs = self.cluster_size();
        let mut table = Vec::new();
        for chunk in bits.as_bytes().chunks(cs as usize) {
            if chunk.iter().all(|&b| b == 0) {
                table.push(0u64);
                continue;
            }
            let (host, _) = self.alloc_cluster(meta)?;
            let mut cluster = chunk.to_vec();
            cluster.resize(cs as usize, 0);
            self.write_file(&cluster, host)?;
            table.push(host);
        }
        let table_clusters = (table.len() as u64 * 8).div_ceil(cs).max(1);
        let table_at = self.alloc_at_frontier(meta, table_clusters);
        for k in 0..table_clusters {
            self.set_refcount(meta, table_at + k * cs, 1)?;
        }
        let mut raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        raw.resize((table_clusters * cs) as usize, 0);
        self.write_file(&raw, table_at)?;
        Ok((table_at, table.len() as u32))
    }

    /// One reference to host cluster `host` goes (its refcount drops).
    fn drop_reference(&self, meta: &mut Meta, host: u64) -> io::Result<()> {
        let n = self.refcount(meta, host)?;
        if n <= 1 {
            self.unalloc(meta, host)
        } else {
            self.set_refcount(meta, host, n - 1)
        }
    }
}
