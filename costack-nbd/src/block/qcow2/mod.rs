//! qcow2 images: QEMU's copy-on-write format as `qemu-img`
//! writes it (version 2 and 3, cluster sizes 512 B to 2 MiB).
//!
//! Served: allocated clusters, zero clusters (version 3), compressed
//! clusters (deflate, as `qemu-img convert -c` writes them), and backing
//! files (qcow2 or raw, to any depth up to [`MAX_BACKING_DEPTH`]) read
//! through for clusters the image does not hold. `base:allocation` reports
//! the image's own allocation, the backing file's where it reads through.
//! Writes allocate clusters and L2 tables, keep refcounts (growing the
//! refcount table) and never touch a backing file; see [`Qcow2::open`].
//!
//! Everything taken from the file is checked before use. The header is
//! parsed by [`Header::parse`], a pure function the fuzzer drives; a bad
//! header, L1 table or backing chain is refused at open with an error
//! naming the problem. A table entry that points outside the image (or
//! into its header) is found when a request reaches it, and that request
//! gets an I/O error; nothing outside the file is ever read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use costack::fs::File;
use costack::sync::{CoMutex, CoQueue};

use crate::block::raw::FileDisk;
use crate::block::{BlockDevice, Extent, ImageFile};
use crate::protocol::proto::{NBD_STATE_HOLE, NBD_STATE_ZERO};

mod cluster;
mod header;
mod refcount;
mod write;

pub use cluster::{classify, Cluster};
pub use header::{Header, Invalid, MAGIC};

use cluster::{inflate_cluster, OFFSET_MASK};
use header::be64;
use refcount::last_counted_end;

/// Longest backing chain followed (QEMU has no fixed limit; a chain this
/// deep is a mistake or an attack).
pub const MAX_BACKING_DEPTH: usize = 16;

/// L2 tables kept in memory (each one cluster).
const L2_CACHE_TABLES: usize = 64;

/// A qcow2 image: read-only, or writable (see [`Qcow2::open`]).
pub struct Qcow2 {
    file: Box<dyn ImageFile>,
    header: Header,
    /// Bytes in the file; grows as clusters are allocated.
    file_len: AtomicU64,
    /// The L1 table (never held across a yield).
    l1: RwLock<Vec<u64>>,
    backing: Option<Box<dyn BlockDevice + Send + Sync>>,
    l2_cache: Mutex<L2Cache>,
    /// Bumped by every L2 change: a table read from the file while it
    /// changed is used once but not cached (it may predate the change).
    l2_epoch: AtomicU64,
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
}

#[derive(Default)]
struct L2Cache {
    tables: HashMap<u64, Vec<u64>>,
    order: VecDeque<u64>,
    /// L2 entries set in memory but not yet in the file, by file offset:
    /// a table read from the file meanwhile gets them laid over it.
    unwritten: HashMap<u64, u64>,
}

/// What allocating writes change, under one coroutine lock (QEMU's
/// `s->lock`): the refcount table and where the next cluster goes.
/// Clusters are allocated past the end of the file and past the last
/// cluster any refcount counts, never reused.
struct Meta {
    refcount_table: Vec<u64>,
    refcount_table_offset: u64,
    next_free: u64,
    /// Guest clusters whose new data is being written, with the meta lock
    /// released; their L2 entries are set once it is.
    in_flight: HashSet<u64>,
    /// Data clusters whose refcounts are set already, `next..end`: taken
    /// without a refcount write each. The file already extends over them,
    /// durably, so an L2 entry may point at one before its data is on the
    /// disk. A crash leaks what is left of them; a FLUSH gives them back.
    reserved: std::ops::Range<u64>,
    /// Host clusters whose refcounts drop once the L2 entries that stopped
    /// referring to them are durable: applied after the next FLUSH's
    /// `fdatasync` (a crash before it leaks them, no worse).
    deferred_frees: Vec<u64>,
}

/// Data clusters reserved by one refcount write.
const RESERVE_CLUSTERS: u64 = 64;

impl fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2")
            .field("header", &self.header)
            .field("writable", &self.meta.is_some())
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
    /// Opens the qcow2 image at `path` and its backing chain (always
    /// read-only). `writable` images must have 16-bit refcounts, no
    /// internal snapshots and a clean shutdown behind them.
    ///
    /// Writes allocate clusters past the end of the file and past the last
    /// cluster a refcount counts (a power cut can leave counted clusters
    /// beyond the end), in an order that a crash or a power loss at any
    /// point leaves at worst leaked clusters: refcounts reserved 64
    /// clusters at a time with the file extended over them, then an
    /// `fdatasync` barrier; the data; a barrier if the data carries old
    /// bytes over (copy-on-write from a backing file or a compressed
    /// cluster); the L2 entry. A new L2 table is written with its
    /// refcount, then a barrier, then the L1 entry. Refcounts that drop (a
    /// rewritten compressed cluster) drop after the next FLUSH, which is
    /// `fdatasync` of the image. `tests/crash_states.rs` checks this on
    /// every file a power cut could leave.
    ///
    /// # Errors
    /// The file cannot be read, or `InvalidData` naming what is wrong with
    /// the image or its backing chain (too deep, a loop, a file missing),
    /// or `Unsupported` for a writable image this driver cannot write.
    pub fn open(path: &Path, writable: bool) -> io::Result<Qcow2> {
        Self::open_in_chain(path, writable, &mut Vec::new())
    }

    /// As [`open`](Self::open), with the image's own file given as `file`
    /// (opened for writing if `writable`): the seam where a test records
    /// every write and barrier the driver issues. `path` names the image:
    /// its backing file is found relative to it.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_file(file: Box<dyn ImageFile>, path: &Path, writable: bool) -> io::Result<Qcow2> {
        Self::open_parts(file, path, writable, &mut Vec::new())
    }

    fn open_in_chain(path: &Path, writable: bool, chain: &mut Vec<PathBuf>) -> io::Result<Qcow2> {
        let std_file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)?;
        Self::open_parts(Box::new(File::from_std(std_file)), path, writable, chain)
    }

    fn open_parts(
        file: Box<dyn ImageFile>,
        path: &Path,
        writable: bool,
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
        let header = Header::parse(&head, file_len).map_err(|e| bad_data(e.0))?;
        let mut raw_l1 = vec![0u8; header.l1_size as usize * 8];
        file.read_exact_at(&mut raw_l1, header.l1_offset)?;
        let l1 = raw_l1.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let meta = if writable {
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
            if header.dirty {
                return unsupported(
                    "the image was not closed cleanly (repair it with qemu-img check -r all)",
                );
            }
            // Auto-clear features (bitmaps, say) this driver does not keep
            // up to date are cleared before the first write, as the format
            // requires of writers that do not know them.
            if header.version >= 3 && be64(&head, 88) != 0 {
                file.write_all_at(&[0u8; 8], 88)?;
            }
            let mut raw =
                vec![0u8; (header.refcount_table_clusters as usize) << header.cluster_bits];
            file.read_exact_at(&mut raw, header.refcount_table_offset)?;
            let refcount_table: Vec<u64> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
            let cs = 1u64 << header.cluster_bits;
            // Past the file's end and past every counted cluster: a power
            // cut can leave clusters counted (and referenced) beyond the end.
            let counted = last_counted_end(&*file, &refcount_table, header.cluster_bits, file_len)?;
            Some(CoMutex::new(Meta {
                refcount_table,
                refcount_table_offset: header.refcount_table_offset,
                next_free: file_len.max(counted).next_multiple_of(cs),
                in_flight: HashSet::new(),
                reserved: 0..0,
                deferred_frees: Vec::new(),
            }))
        } else {
            None
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
        Ok(Qcow2 {
            file,
            header,
            file_len: AtomicU64::new(file_len),
            l1: RwLock::new(l1),
            backing,
            l2_cache: Mutex::new(L2Cache::default()),
            l2_epoch: AtomicU64::new(0),
            meta,
            allocations: CoQueue::new(),
            syncs: CoMutex::new(()),
            syncs_started: AtomicU64::new(0),
            syncs_done: AtomicU64::new(0),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
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

    fn l1_entry(&self, index: usize) -> u64 {
        let l1 = self.l1.read().unwrap_or_else(|e| e.into_inner());
        l1.get(index).copied().unwrap_or(0)
    }

    /// The raw L2 entry of cluster number `index` (0: no L2 table).
    fn l2_entry(&self, index: u64) -> io::Result<u64> {
        let l1_index = (index / self.l2_entries()) as usize;
        let table = self.l1_entry(l1_index) & OFFSET_MASK;
        if table == 0 {
            return Ok(0);
        }
        let slot = (index % self.l2_entries()) as usize;
        if let Some(t) = self.lock_cache().tables.get(&table) {
            return Ok(t[slot]);
        }
        Ok(self.load_l2_table(table)?[slot])
    }

    /// What the image holds for cluster number `index`.
    fn cluster(&self, index: u64) -> io::Result<Cluster> {
        let entry = self.l2_entry(index)?;
        classify(entry, self.header.cluster_bits, self.header.version).map_err(|e| bad_data(e.0))
    }

    /// Reads the L2 table at `at` from the file, and caches it unless an
    /// L2 entry changed meanwhile (the copy read may predate it).
    fn load_l2_table(&self, at: u64) -> io::Result<Vec<u64>> {
        if !at.is_multiple_of(self.cluster_size()) {
            return Err(bad_data(format!("L2 table at {at:#x} is misaligned")));
        }
        self.check_host(at, self.cluster_size(), "L2 table")?;
        // Read without the lock held: the read yields to other requests.
        let epoch = self.l2_epoch.load(Ordering::Acquire);
        let mut raw = vec![0u8; self.cluster_size() as usize];
        self.file.read_exact_at(&mut raw, at)?;
        let mut table: Vec<u64> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let mut cache = self.lock_cache();
        let end = at + self.cluster_size();
        for (&entry_at, &entry) in &cache.unwritten {
            if (at..end).contains(&entry_at) {
                table[((entry_at - at) / 8) as usize] = entry;
            }
        }
        if self.l2_epoch.load(Ordering::Acquire) == epoch && !cache.tables.contains_key(&at) {
            cache.tables.insert(at, table.clone());
            cache.order.push_back(at);
            if cache.order.len() > L2_CACHE_TABLES {
                let old = cache.order.pop_front().expect("non-empty");
                cache.tables.remove(&old);
            }
        }
        Ok(table)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, L2Cache> {
        self.l2_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `buf.len()` bytes at guest `offset` inside one cluster.
    fn read_in_cluster(&self, what: Cluster, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let in_cluster = offset & (self.cluster_size() - 1);
        match what {
            Cluster::Zero => buf.fill(0),
            Cluster::Unallocated => self.read_backing(buf, offset)?,
            Cluster::Data(host) => {
                let at = host + in_cluster;
                self.check_host(at, buf.len() as u64, "data cluster")?;
                self.file.read_exact_at(buf, at)?;
            }
            Cluster::Compressed { at, len } => {
                // The last compressed cluster may end short of its last
                // sector: read what the file has.
                let file_len = self.file_len.load(Ordering::Acquire);
                let len = len.min(file_len.saturating_sub(at));
                self.check_host(at, len, "compressed cluster")?;
                let mut packed = vec![0u8; len as usize];
                self.file.read_exact_at(&mut packed, at)?;
                let cluster = inflate_cluster(&packed, self.cluster_size() as usize)?;
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

    // --- Writing -------------------------------------------------------

    fn meta(&self) -> io::Result<&CoMutex<Meta>> {
        self.meta.as_ref().ok_or_else(read_only)
    }

    fn write_file(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(buf, at)?;
        self.file_len
            .fetch_max(at + buf.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Extends the file (sparsely) to at least `len` bytes.
    fn extend_file(&self, len: u64) -> io::Result<()> {
        if len > self.file_len.load(Ordering::Acquire) {
            self.file.set_len(len)?;
            self.file_len.fetch_max(len, Ordering::AcqRel);
        }
        Ok(())
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
        Ok(Box::new(Qcow2::open_in_chain(path, false, chain)?))
    } else {
        Ok(Box::new(FileDisk::open(path, true, false)?))
    }
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn is_read_only(&self) -> bool {
        self.meta.is_none()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
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
            self.check_host(host_at, len as u64, "data cluster")?;
            self.file
                .read_exact_at(&mut buf[done..done + len], host_at)?;
            done += len;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.meta()?;
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

    fn flush(&self) -> io::Result<()> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        // Nothing leaks from a flushed image: reserved clusters go back, and
        // clusters no longer referenced once this makes the L2 entries
        // durable are freed.
        let mut meta = meta.lock();
        self.release_reserved(&mut meta)?;
        self.barrier()?;
        self.apply_deferred_frees(&mut meta)
    }

    /// Advisory: whole clusters of a version 3 image become zero clusters
    /// (their space stays allocated); anything else is left as it is.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.meta()?;
        if self.header.version < 3 {
            return Ok(());
        }
        let cs = self.cluster_size();
        let (first, end) = (offset.div_ceil(cs), (offset + len) / cs);
        for index in first..end {
            self.zero_cluster(index)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_punch_hole: bool) -> io::Result<()> {
        self.meta()?;
        let cs = self.cluster_size();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (cs - at % cs).min(end - at);
            if n == cs && self.header.version >= 3 {
                self.zero_cluster(at / cs)?;
            } else {
                self.write_in_cluster(&vec![0u8; n as usize], at)?;
            }
            at += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let cs = self.cluster_size();
        let end = offset.saturating_add(len).min(self.size());
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
            match self.cluster(at >> self.header.cluster_bits)? {
                Cluster::Data(_) | Cluster::Compressed { .. } => push(n, 0),
                Cluster::Zero => push(n, NBD_STATE_ZERO),
                Cluster::Unallocated => match &self.backing {
                    None => push(n, NBD_STATE_HOLE | NBD_STATE_ZERO),
                    Some(b) => {
                        // The backing file's allocation, zeros past its end.
                        let mut pos = at;
                        while pos < at + n {
                            if pos >= b.size() {
                                push(at + n - pos, NBD_STATE_HOLE | NBD_STATE_ZERO);
                                break;
                            }
                            let want = (at + n).min(b.size()) - pos;
                            let got = b.block_status(pos, want)?;
                            let Some(first) = got.first().copied() else {
                                return Err(bad_data("backing file returned no extent"));
                            };
                            let l = first.length.min(want);
                            push(l, first.flags);
                            pos += l;
                        }
                    }
                },
            }
            at += n;
        }
        Ok(extents)
    }
}
