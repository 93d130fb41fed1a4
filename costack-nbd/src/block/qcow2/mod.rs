//! qcow2 images: QEMU's copy-on-write format as `qemu-img`
//! writes it (version 2 and 3, cluster sizes 512 B to 2 MiB).
//!
//! Served: allocated clusters, zero clusters (version 3), compressed
//! clusters (deflate, as `qemu-img convert -c` writes them), and backing
//! files (qcow2 or raw, to any depth up to [`MAX_BACKING_DEPTH`]) read
//! through for clusters the image does not hold. `base:allocation` reports
//! the image's own allocation, the backing file's where it reads through.
//! Writes allocate clusters (reusing freed ones) and L2 tables, keep
//! refcounts (growing the refcount table), free what discards and
//! write-zeroes unmap, and never touch a backing file; see
//! [`Qcow2::open_with`].
//!
//! Everything taken from the file is checked before use. The header is
//! parsed by [`Header::parse`], a pure function the fuzzer drives; a bad
//! header, L1 table or backing chain is refused at open with an error
//! naming the problem. A table entry that points outside the image (or
//! into its header) is found when a request reaches it, and that request
//! gets an I/O error; nothing outside the file is ever read.
//!
//! One concern a file: [`header`] (the header), `cluster` (L2 entries),
//! `read` (the read path), `write` (the write path), `alloc` (where
//! clusters go, freeing), `refcount` (refcount blocks and table), `cache`
//! (the tables in memory), `writeback` (the order they reach the file in).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};

use costack::aio;
use costack::fs::File;
use costack::sync::{CoMutex, CoQueue};

use crate::block::raw::FileDisk;
use crate::block::STATE_DIRTY;
use crate::block::{BlockDevice, Extent, ImageFile};

mod alloc;
pub mod bitmap;
mod bitmap_store;
mod cache;
mod cluster;
pub mod header;
mod read;
mod refcount;
mod repair;
pub mod snapshot;
mod write;
mod writeback;

pub use cluster::{classify, Cluster};
pub use header::{Header, Invalid, MAGIC};

use alloc::Allocator;
use bitmap_store::{Bitmaps, Tracked};
use cache::TableCache;
use cluster::OFFSET_MASK;
use header::be64;
use refcount::last_counted_end;

/// Longest backing chain followed (QEMU has no fixed limit; a chain this
/// deep is a mistake or an attack).
pub const MAX_BACKING_DEPTH: usize = 16;

/// How an image is opened: QEMU's `-drive` options that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Open for writing.
    pub writable: bool,
    /// Bytes of L2 tables kept in memory at most (QEMU's `l2-cache-size`;
    /// default 32 MiB, as QEMU's on Linux). Never more than the image's
    /// L2 tables take, never fewer than two tables.
    pub l2_cache_bytes: u64,
    /// Bytes of refcount blocks kept in memory at most (QEMU's
    /// `refcount-cache-size`); `None`: four clusters, QEMU's default and
    /// minimum.
    pub refcount_cache_bytes: Option<u64>,
    /// Discards and write-zeroes that may unmap free the clusters they
    /// cover, and freed clusters become holes in the file (qemu's
    /// `--discard=unmap`); off, a discard does nothing and write-zeroes
    /// keep the clusters allocated.
    pub discard: bool,
    /// Serve internal snapshot `Some(which)` instead of the active image
    /// (read-only; qemu-nbd's `-l`: an id, a name, or
    /// `snapshot.id=ID,snapshot.name=NAME`; see [`snapshot::find`]).
    pub snapshot: Option<String>,
}

impl Default for Options {
    /// Read-only, QEMU's cache sizes, discards honoured.
    fn default() -> Self {
        Options {
            writable: false,
            l2_cache_bytes: 32 << 20,
            refcount_cache_bytes: None,
            discard: true,
            snapshot: None,
        }
    }
}

/// A qcow2 image: read-only, or writable (see [`Qcow2::open_with`]).
pub struct Qcow2 {
    file: Box<dyn ImageFile>,
    header: Header,
    options: Options,
    /// Bytes in the file; grows as clusters are allocated.
    file_len: AtomicU64,
    /// The L1 table (never held across a yield).
    l1: RwLock<Vec<u64>>,
    backing: Option<Box<dyn BlockDevice + Send + Sync>>,
    /// L2 tables in memory, clean or dirty (a plain mutex: never held
    /// across a yield, so readers on any thread look tables up without
    /// the metadata lock). Tables change only under the metadata lock.
    l2: Mutex<TableCache<u64>>,
    /// Allocation state, for a writable image.
    meta: Option<CoMutex<Meta>>,
    /// Writers waiting for a cluster another request is allocating (QEMU's
    /// dependent requests), restarted when an allocation completes.
    allocations: CoQueue,
    /// Barriers, one at a time; see [`Qcow2::barrier`].
    syncs: CoMutex<()>,
    /// Barriers started and barriers completed (in order: one at a time).
    syncs_started: AtomicU64,
    syncs_done: AtomicU64,
    /// [`Qcow2::close`] ran.
    closed: AtomicBool,
    /// Persistent dirty bitmaps: those kept up to date, those read.
    bitmaps: Mutex<Bitmaps>,
    /// The names in the bitmap directory, read once (see
    /// [`Qcow2::own_bitmap_names`]).
    own_bitmaps: OnceLock<Vec<String>>,
}

/// What allocating writes change, under one coroutine lock (QEMU's
/// `s->lock`): the refcounts, where clusters go, the cache's write-backs.
struct Meta {
    refcount_table: Vec<u64>,
    refcount_table_offset: u64,
    /// Refcount blocks in memory, clean or dirty.
    refblocks: TableCache<u16>,
    alloc: Allocator,
    /// Guest clusters whose new data is being written, with the meta lock
    /// released; their L2 entries are set once it is.
    in_flight: HashSet<u64>,
}

impl fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2")
            .field("header", &self.header)
            .field("options", &self.options)
            .field("backing", &self.backing.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the file at `path` starts with the qcow2 magic (as qemu-nbd
/// probes an image given without `-f`).
///
/// # Errors
/// The file cannot be opened or read.
pub fn probe(path: &Path) -> io::Result<bool> {
    let f = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    match f.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(magic == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn bad_data(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Qcow2 {
    /// Opens the qcow2 image at `path` with default [`Options`], writable
    /// or not.
    ///
    /// # Errors
    /// As [`open_with`](Self::open_with).
    pub fn open(path: &Path, writable: bool) -> io::Result<Qcow2> {
        Self::open_with(
            path,
            &Options {
                writable,
                ..Options::default()
            },
        )
    }

    /// Opens the qcow2 image at `path` and its backing chain (always
    /// read-only). Writable images must have 16-bit refcounts, no internal
    /// snapshots and a clean shutdown behind them.
    ///
    /// L2 tables and refcount blocks are kept in a write-back cache, as
    /// QEMU does, and reach the file in an order that leaves a crash or a
    /// power loss at any point with leaked clusters at worst: a dirty L2
    /// table is written only after the refcount blocks and the data its
    /// entries depend on are durable (refcount blocks written, then an
    /// `fdatasync` barrier); a new L2 table or refcount block is durable
    /// before the L1 entry or refcount table entry that links it; a
    /// cluster whose last reference goes is freed (and reused) only once
    /// that change is durable. FLUSH writes the cache back, then syncs.
    /// `tests/crash_states.rs` checks this on the files a power cut could
    /// leave.
    ///
    /// # Errors
    /// The file cannot be read, or `InvalidData` naming what is wrong with
    /// the image or its backing chain (too deep, a loop, a file missing),
    /// or `Unsupported` for a writable image this driver cannot write.
    pub fn open_with(path: &Path, options: &Options) -> io::Result<Qcow2> {
        Self::open_in_chain(path, options, &mut Vec::new())
    }

    /// As [`open`](Self::open), with the image's own file given as `file`
    /// (opened for writing if `writable`): the seam where a test records
    /// every write and barrier the driver issues. `path` names the image:
    /// its backing file is found relative to it.
    ///
    /// # Errors
    /// As [`open_with`](Self::open_with).
    pub fn open_file(file: Box<dyn ImageFile>, path: &Path, writable: bool) -> io::Result<Qcow2> {
        let options = Options {
            writable,
            ..Options::default()
        };
        Self::open_file_with(file, path, &options)
    }

    /// As [`open_with`](Self::open_with), with the image's own file given
    /// as `file` (see [`open_file`](Self::open_file)).
    ///
    /// # Errors
    /// As [`open_with`](Self::open_with).
    pub fn open_file_with(
        file: Box<dyn ImageFile>,
        path: &Path,
        options: &Options,
    ) -> io::Result<Qcow2> {
        Self::open_parts(file, path, options, &mut Vec::new())
    }

    fn open_in_chain(
        path: &Path,
        options: &Options,
        chain: &mut Vec<PathBuf>,
    ) -> io::Result<Qcow2> {
        let std_file = std::fs::OpenOptions::new()
            .read(true)
            .write(options.writable)
            .open(path)?;
        Self::open_parts(Box::new(File::from_std(std_file)), path, options, chain)
    }

    fn open_parts(
        file: Box<dyn ImageFile>,
        path: &Path,
        options: &Options,
        chain: &mut Vec<PathBuf>,
    ) -> io::Result<Qcow2> {
        let canonical = std::fs::canonicalize(path)?;
        if chain.contains(&canonical) {
            return Err(bad_data(format!(
                "the backing chain loops back to {}",
                canonical.display()
            )));
        }
        if chain.len() > MAX_BACKING_DEPTH {
            return Err(bad_data(format!(
                "the backing chain is deeper than {MAX_BACKING_DEPTH} images"
            )));
        }
        chain.push(canonical.clone());
        let file_len = file.len()?;
        let mut head = vec![0u8; (Header::READ_LEN as u64).min(file_len) as usize];
        file.read_exact_at(&mut head, 0)?;
        let mut header = Header::parse(&head, file_len).map_err(|e| bad_data(e.0))?;
        if let Some(which) = &options.snapshot {
            if options.writable {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "an internal snapshot is served read-only",
                ));
            }
            // The snapshot's tables and size stand for the image's.
            let entries = snapshot::read_snapshots(&*file, &header)?;
            let entry = snapshot::find(&entries, which)?;
            header.l1_offset = entry.l1_offset;
            header.l1_size = entry.l1_size;
            header.size = entry.disk_size.unwrap_or(header.size);
            let l1_bytes = u64::from(entry.l1_size) * 8;
            if entry
                .l1_offset
                .checked_add(l1_bytes)
                .is_none_or(|end| end > file_len)
            {
                return Err(bad_data(format!(
                    "snapshot {which:?}: its L1 table lies past the end of the file"
                )));
            }
        }
        let mut raw_l1 = vec![0u8; header.l1_size as usize * 8];
        file.read_exact_at(&mut raw_l1, header.l1_offset)?;
        let l1 = raw_l1.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let cs = 1u64 << header.cluster_bits;
        let (meta, tracked) = if options.writable {
            let (meta, tracked) = Self::open_meta(&*file, &header, options, file_len)?;
            (Some(CoMutex::new(meta)), tracked)
        } else {
            (None, Vec::new())
        };
        let backing = match &header.backing_file {
            None => None,
            Some(name) => {
                let dir = canonical.parent().unwrap_or(Path::new("/"));
                let backing_path = dir.join(name);
                let format = header.backing_format.as_deref();
                let dev = open_backing(&backing_path, format, chain).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("backing file {}: {e}", backing_path.display()),
                    )
                })?;
                Some(dev)
            }
        };
        // No more tables than the image can have, and at least two (a
        // table being loaded must not push out the one being changed).
        let l2_tables = (options.l2_cache_bytes / cs)
            .min(u64::from(header.l1_size))
            .max(2);
        let mut image = Qcow2 {
            file,
            header,
            options: options.clone(),
            file_len: AtomicU64::new(file_len),
            l1: RwLock::new(l1),
            backing,
            l2: Mutex::new(TableCache::new(l2_tables as usize)),
            meta,
            allocations: CoQueue::new(),
            syncs: CoMutex::new(()),
            syncs_started: AtomicU64::new(0),
            syncs_done: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            bitmaps: Mutex::new(Bitmaps::new(tracked)),
            own_bitmaps: OnceLock::new(),
        };
        if image.meta.is_some() && image.header.dirty {
            // Left dirty by a writer with lazy refcounts: rebuilt before
            // anything is written, as the format asks.
            image.repair_refcounts()?;
        }
        Ok(image)
    }

    /// Checks that the image can be written and loads what writing needs.
    fn open_meta(
        file: &dyn ImageFile,
        header: &Header,
        options: &Options,
        file_len: u64,
    ) -> io::Result<(Meta, Vec<Tracked>)> {
        let unsupported = |why: &str| {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{why}: serve it read-only (-r)"),
            ))
        };
        if header.refcount_order != 4 {
            return unsupported("only 16-bit refcounts are written");
        }
        if header.snapshots != 0 {
            return unsupported("images with internal snapshots are not written");
        }
        // The bitmaps to keep up to date, or the reason why one cannot be.
        let tracked = bitmap_store::open_tracked(file, header)?;
        // Auto-clear features this driver does not know are cleared before
        // the first write, as the format requires; the bitmaps bit stays.
        let keep = bitmap_store::autoclear_to_keep(header);
        if header.version >= 3 && header.autoclear_features != keep {
            file.write_all_at(&keep.to_be_bytes(), 88)?;
        }
        bitmap_store::mark_in_use(file, &tracked)?;
        let mut raw = vec![0u8; (header.refcount_table_clusters as usize) << header.cluster_bits];
        file.read_exact_at(&mut raw, header.refcount_table_offset)?;
        let refcount_table: Vec<u64> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let cs = 1u64 << header.cluster_bits;
        // Nothing past the file's end nor past every counted cluster was
        // ever used (a power cut can leave clusters counted, even
        // referenced, beyond the end): new clusters start there, and read
        // as zeros.
        let counted = last_counted_end(file, &refcount_table, header.cluster_bits, file_len)?;
        let refblocks = options
            .refcount_cache_bytes
            .map_or(4, |bytes| (bytes / cs).max(4));
        let meta = Meta {
            refcount_table,
            refcount_table_offset: header.refcount_table_offset,
            refblocks: TableCache::new(refblocks as usize),
            alloc: Allocator::new(file_len.max(counted).div_ceil(cs)),
            in_flight: HashSet::new(),
        };
        Ok((meta, tracked))
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    fn cluster_size(&self) -> u64 {
        1 << self.header.cluster_bits
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Checks that `len` bytes at host offset `at` lie inside the file and
    /// outside its header cluster.
    fn check_host(&self, at: u64, len: u64, what: &str) -> io::Result<()> {
        let file_len = self.file_len.load(Ordering::Acquire);
        let inside =
            at >= self.cluster_size() && at.checked_add(len).is_some_and(|end| end <= file_len);
        if inside {
            Ok(())
        } else {
            Err(bad_data(format!(
                "{what} at {at:#x} ({len} bytes) lies outside the image ({file_len} bytes) \
                 or in its header"
            )))
        }
    }

    /// Checks that `len` bytes at host offset `at`, in data clusters, lie
    /// in clusters that start inside the file (the last one may end short:
    /// it reads as zeros past the end) and outside its header cluster.
    fn check_data(&self, at: u64, len: u64) -> io::Result<()> {
        let file_len = self.file_len.load(Ordering::Acquire);
        let cs = self.cluster_size();
        let inside = at >= cs
            && at
                .checked_add(len)
                .is_some_and(|end| (end.max(at + 1) - 1) / cs * cs < file_len);
        if inside {
            Ok(())
        } else {
            Err(bad_data(format!(
                "data cluster at {at:#x} ({len} bytes) lies outside the image ({file_len} \
                 bytes) or in its header"
            )))
        }
    }

    /// Reads data cluster bytes at host offset `at` (see
    /// [`check_data`](Self::check_data)): zeros past the end of the file.
    fn read_data(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.check_data(at, buf.len() as u64)?;
        let file_len = self.file_len.load(Ordering::Acquire);
        let have = file_len.saturating_sub(at).min(buf.len() as u64) as usize;
        self.file.read_exact_at(&mut buf[..have], at)?;
        buf[have..].fill(0);
        Ok(())
    }

    fn l1_entry(&self, index: usize) -> u64 {
        let l1 = self.l1.read().unwrap_or_else(|e| e.into_inner());
        l1.get(index).copied().unwrap_or(0)
    }

    fn lock_l2(&self) -> MutexGuard<'_, TableCache<u64>> {
        self.l2.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta(&self) -> io::Result<&CoMutex<Meta>> {
        self.meta.as_ref().ok_or_else(read_only)
    }

    fn write_file(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(buf, at)?;
        self.file_len
            .fetch_max(at + buf.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Writes everything back and makes it durable, and saves the dirty
    /// bitmaps. Dropping a writable image does this too, with
    /// errors only logged; call it to see them. Writes after it are
    /// refused.
    ///
    /// # Errors
    /// A write or sync failed: what the image holds is then as after a
    /// crash at that point (leaked clusters at worst).
    ///
    /// Runs to its end once started, even in a coroutine that is cancelled
    /// meanwhile (`costack::aio::shield`).
    pub fn close(&self) -> io::Result<()> {
        aio::shield(|| self.close_shielded())
    }

    fn close_shielded(&self) -> io::Result<()> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut meta = meta.lock();
        self.flush_locked(&mut meta)?;
        self.store_bitmaps(&mut meta)?;
        // The refcounts that flush dropped durable: nothing leaks from a
        // closed image.
        self.write_refblocks(&mut meta)?;
        self.barrier()
    }
}

/// Opens a backing file: `format` as the image names it, or probed.
fn open_backing(
    path: &Path,
    format: Option<&str>,
    chain: &mut Vec<PathBuf>,
) -> io::Result<Box<dyn BlockDevice + Send + Sync>> {
    let qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") => false,
        Some(other) => {
            return Err(bad_data(format!(
                "backing format {other:?} is not supported"
            )));
        }
        None => probe(path)?,
    };
    if qcow2 {
        Ok(Box::new(Qcow2::open_in_chain(
            path,
            &Options::default(),
            chain,
        )?))
    } else {
        Ok(Box::new(FileDisk::open(path, true, false)?))
    }
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the qcow2 image is closed")
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing the qcow2 image: {e}");
        }
    }
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn is_read_only(&self) -> bool {
        self.meta.is_none()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        self.mark_dirty(offset, buf.len() as u64);
        let cs = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = ((cs - at % cs) as usize).min(buf.len() - done);
            self.write_in_cluster(&buf[done..done + n], at)?;
            done += n;
        }
        Ok(())
    }

    /// Runs to its end once started, even if cancelled (shielded): the
    /// write-back it may do is a metadata update.
    fn flush(&self) -> io::Result<()> {
        aio::shield(|| self.flush_shielded())
    }

    /// Advisory: whole clusters are freed (see [`Options::discard`]).
    /// Cancellable between clusters, not within one.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        if !self.options.discard {
            return Ok(());
        }
        self.mark_dirty(offset, len);
        let cs = self.cluster_size();
        let (first, end) = (offset.div_ceil(cs), (offset + len) / cs);
        for index in first..end {
            aio::shield(|| self.discard_cluster(index))?;
        }
        Ok(())
    }

    /// Cancellable between clusters, not within one.
    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()> {
        self.writable()?;
        self.mark_dirty(offset, len);
        let cs = self.cluster_size();
        let unmap = may_punch_hole && self.options.discard;
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (cs - at % cs).min(end - at);
            if n == cs && self.header.version >= 3 {
                aio::shield(|| self.zero_cluster(at / cs, unmap))?;
            } else if !self.reads_as_zeros(at / cs)? {
                self.write_in_cluster(&vec![0u8; n as usize], at)?;
            }
            at += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.allocation(offset, len)
    }

    fn allocation_depth(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.depth(offset, len)
    }

    /// This image's bitmaps, then its backing chain's (QEMU's NBD export
    /// looks for a bitmap down the chain).
    fn bitmap_names(&self) -> io::Result<Vec<String>> {
        let mut names = self.own_bitmap_names()?.to_vec();
        if let Some(b) = &self.backing {
            for name in b.bitmap_names()? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn dirty_bitmap(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let own = self.own_bitmap_names()?.iter().any(|n| n == name);
        if let (false, Some(b)) = (own, &self.backing) {
            let end = offset.saturating_add(len).min(self.header.size);
            if offset >= b.size() {
                // Past the backing file's end its bitmap says nothing.
                return Ok(vec![Extent {
                    length: end.saturating_sub(offset).max(1),
                    flags: 0,
                }]);
            }
            return b.dirty_bitmap(name, offset, (end.min(b.size())) - offset);
        }
        let runs = self.dirty_extents(name, offset, len)?;
        Ok(runs
            .into_iter()
            .map(|(length, dirty)| Extent {
                length,
                flags: if dirty { STATE_DIRTY } else { 0 },
            })
            .collect())
    }

    fn close(&self) -> io::Result<()> {
        Qcow2::close(self)
    }
}

impl Qcow2 {
    fn flush_shielded(&self) -> io::Result<()> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let mut meta = meta.lock();
        let clean = meta.refblocks.dirty_count() == 0
            && self.lock_l2().dirty_count() == 0
            && !meta.alloc.has_deferred_frees();
        if clean {
            // Only data and tables already written: a sync covers them,
            // and allocations go on meanwhile.
            drop(meta);
            return self.barrier();
        }
        self.flush_locked(&mut meta)
    }
}
