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
use costack::sync::{CoMutex, CoMutexGuard, CoQueue};

use crate::block::raw::FileDisk;
use crate::block::{BlockDevice, Extent, ImageFile};
use crate::protocol::proto::{NBD_STATE_HOLE, NBD_STATE_ZERO};

/// `QFI\xfb`, the first four bytes of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Longest backing chain followed (QEMU has no fixed limit; a chain this
/// deep is a mistake or an attack).
pub const MAX_BACKING_DEPTH: usize = 16;

/// Largest L1 table accepted, in bytes (QEMU's `QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;

/// Host offsets in L1 and standard L2 entries: bits 9 to 55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry: the cluster is compressed.
const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry (version 3): the cluster reads as zeros.
const L2_ZERO: u64 = 1;

/// Incompatible feature bits (version 3).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// L2 tables kept in memory (each one cluster).
const L2_CACHE_TABLES: usize = 64;

/// Why an image is refused, naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(why: impl Into<String>) -> Invalid {
    Invalid(why.into())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A qcow2 header, checked against itself and the file's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9 to 21).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table starts in the file.
    pub l1_offset: u64,
    /// The backing file's name as stored, if any.
    pub backing_file: Option<String>,
    /// The backing file's format, from the header extension, if stored.
    pub backing_format: Option<String>,
    /// The image was not closed cleanly (refcounts may be stale; reading
    /// is unaffected).
    pub dirty: bool,
    /// Where the refcount table starts in the file.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table takes.
    pub refcount_table_clusters: u32,
    /// log2 of the refcount width in bits (4: 16-bit refcounts).
    pub refcount_order: u32,
    /// Internal snapshots in the image.
    pub snapshots: u32,
}

/// Largest refcount table accepted, in bytes (QEMU's
/// `QCOW_MAX_REFTABLE_SIZE`).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

impl Header {
    /// Bytes of the file [`Header::parse`] wants: the first cluster at
    /// most, which holds the header, its extensions and the backing name.
    pub const READ_LEN: usize = 1 << 21;

    /// Parses the header at the start of `data` (the file's first bytes,
    /// up to [`Header::READ_LEN`]) of a file of `file_len` bytes.
    ///
    /// # Errors
    /// [`Invalid`] naming the first problem found.
    pub fn parse(data: &[u8], file_len: u64) -> Result<Header, Invalid> {
        if data.len() < 72 {
            return Err(invalid("the file is too short for a qcow2 header"));
        }
        if data[..4] != MAGIC {
            return Err(invalid(
                "no qcow2 magic (QFI\\xfb) at the start of the file",
            ));
        }
        let version = be32(data, 4);
        if version != 2 && version != 3 {
            return Err(invalid(format!(
                "qcow2 version {version} is not supported (2 or 3)"
            )));
        }
        let cluster_bits = be32(data, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(format!(
                "cluster size 2^{cluster_bits} is outside 512 B to 2 MiB"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if be32(data, 32) != 0 {
            return Err(invalid("encrypted qcow2 images are not supported"));
        }
        let size = be64(data, 24);
        let l1_size = be32(data, 36);
        let l1_offset = be64(data, 40);
        // One L1 entry maps cluster_size / 8 clusters.
        let per_l1 = 1u128 << (2 * cluster_bits - 3);
        let needed = (u128::from(size)).div_ceil(per_l1);
        if needed > u128::from(MAX_L1_BYTES / 8) {
            return Err(invalid(format!("virtual size {size} is too large")));
        }
        if u128::from(l1_size) < needed {
            return Err(invalid(format!(
                "L1 table of {l1_size} entries is too small for size {size} (needs {needed})"
            )));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(invalid(format!(
                "L1 table of {l1_size} entries is too large"
            )));
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_size > 0
            && (!l1_offset.is_multiple_of(cluster_size)
                || l1_offset < cluster_size
                || l1_offset
                    .checked_add(l1_bytes)
                    .is_none_or(|end| end > file_len))
        {
            return Err(invalid(format!(
                "L1 table at {l1_offset:#x} ({l1_bytes} bytes) is misaligned, in the header \
                 or past the end of the file ({file_len} bytes)"
            )));
        }

        let refcount_table_offset = be64(data, 48);
        let refcount_table_clusters = be32(data, 56);
        let reftable_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if reftable_bytes == 0
            || reftable_bytes > MAX_REFTABLE_BYTES
            || !refcount_table_offset.is_multiple_of(cluster_size)
            || refcount_table_offset < cluster_size
            || refcount_table_offset
                .checked_add(reftable_bytes)
                .is_none_or(|end| end > file_len)
        {
            return Err(invalid(format!(
                "refcount table at {refcount_table_offset:#x} ({refcount_table_clusters} \
                 clusters) is empty, too large, misaligned, in the header or past the end \
                 of the file"
            )));
        }
        let snapshots = be32(data, 60);
        let mut refcount_order = 4;
        let (header_len, dirty) = if version == 2 {
            (72usize, false)
        } else {
            if data.len() < 104 {
                return Err(invalid("the file is too short for a version 3 header"));
            }
            let incompat = be64(data, 72);
            let header_len = be32(data, 100) as usize;
            if header_len < 104 || header_len as u64 > cluster_size || header_len > data.len() {
                return Err(invalid(format!("header length {header_len} is invalid")));
            }
            refcount_order = be32(data, 96);
            if refcount_order > 6 {
                return Err(invalid(format!(
                    "refcount order {refcount_order} is invalid"
                )));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(invalid(
                    "the image is marked corrupt (run qemu-img check -r all on it)",
                ));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(invalid(
                    "images with an external data file are not supported",
                ));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(invalid("images with extended L2 entries are not supported"));
            }
            if incompat & INCOMPAT_COMPRESSION != 0 {
                let ty = if header_len > 104 { data[104] } else { 0 };
                if ty != 0 {
                    return Err(invalid(format!(
                        "compression type {ty} (zstd) is not supported, only deflate"
                    )));
                }
            }
            let known = INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION
                | INCOMPAT_EXTL2;
            if incompat & !known != 0 {
                return Err(invalid(format!(
                    "unknown incompatible feature bits {:#x}",
                    incompat & !known
                )));
            }
            (header_len, incompat & INCOMPAT_DIRTY != 0)
        };

        // Header extensions, up to the end of the first cluster.
        let mut backing_format = None;
        let end = (cluster_size as usize).min(data.len());
        let mut at = header_len;
        while at + 8 <= end {
            let ty = be32(data, at);
            let len = be32(data, at + 4) as usize;
            at += 8;
            if ty == EXT_END {
                break;
            }
            if len > end - at {
                return Err(invalid(format!(
                    "header extension {ty:#x} runs past the first cluster"
                )));
            }
            if ty == EXT_BACKING_FORMAT {
                let name = std::str::from_utf8(&data[at..at + len])
                    .map_err(|_| invalid("the backing format name is not UTF-8"))?;
                backing_format = Some(name.to_owned());
            }
            at += len.next_multiple_of(8);
        }

        let backing_offset = be64(data, 8);
        let backing_len = be32(data, 16) as u64;
        let backing_file = if backing_offset == 0 {
            None
        } else {
            if backing_len == 0 || backing_len > 1023 {
                return Err(invalid(format!(
                    "backing file name length {backing_len} is invalid"
                )));
            }
            let end = backing_offset
                .checked_add(backing_len)
                .filter(|&e| e <= cluster_size && e as usize <= data.len())
                .ok_or_else(|| {
                    invalid(format!(
                        "backing file name at {backing_offset:#x} lies outside the first cluster"
                    ))
                })?;
            let name = std::str::from_utf8(&data[backing_offset as usize..end as usize])
                .map_err(|_| invalid("the backing file name is not UTF-8"))?;
            Some(name.to_owned())
        };
        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            backing_file,
            backing_format,
            dirty,
            refcount_table_offset,
            refcount_table_clusters,
            refcount_order,
            snapshots,
        })
    }
}

/// What one L2 entry says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Not in this image: the backing file's, or zeros without one.
    Unallocated,
    /// Reads as zeros (version 3 zero flag).
    Zero,
    /// Stored as is at this host offset.
    Data(u64),
    /// Deflate-compressed: `len` bytes at host offset `at`.
    Compressed {
        /// Host byte offset.
        at: u64,
        /// Bytes to read (whole 512-byte sectors, less the start's offset).
        len: u64,
    },
}

/// Decodes an L2 entry of an image with `cluster_bits`, of `version`.
///
/// # Errors
/// A standard entry whose host offset is not cluster-aligned.
pub fn classify(entry: u64, cluster_bits: u32, version: u32) -> Result<Cluster, Invalid> {
    if entry & L2_COMPRESSED != 0 {
        // Offset in the low 62 - (cluster_bits - 8) bits, then the count
        // of further 512-byte sectors up to bit 61.
        let offset_bits = 62 - (cluster_bits - 8);
        let at = entry & ((1 << offset_bits) - 1);
        let sectors = ((entry & ((1 << 62) - 1)) >> offset_bits) + 1;
        let len = sectors * 512 - (at & 511);
        return Ok(Cluster::Compressed { at, len });
    }
    if version >= 3 && entry & L2_ZERO != 0 {
        return Ok(Cluster::Zero);
    }
    let host = entry & OFFSET_MASK;
    if host == 0 {
        return Ok(Cluster::Unallocated);
    }
    if !host.is_multiple_of(1 << cluster_bits) {
        return Err(invalid(format!("data cluster at {host:#x} is misaligned")));
    }
    Ok(Cluster::Data(host))
}

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

/// L1 and L2 entries: the cluster (or table) has refcount 1, so it may be
/// written in place.
const COPIED: u64 = 1 << 63;

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

    /// Takes the next cluster at the end of the file (its refcount is the
    /// caller's to set).
    fn take_cluster(&self, meta: &mut Meta) -> u64 {
        let at = meta.next_free;
        meta.next_free += self.cluster_size();
        at
    }

    /// A cluster for guest data, with its refcount set: from the clusters
    /// reserved, or a new run of them reserved at the end of the file.
    fn take_data_cluster(&self, meta: &mut Meta) -> io::Result<u64> {
        let cs = self.cluster_size();
        if meta.reserved.is_empty() {
            let per_block = cs / 2;
            let start = meta.next_free;
            let index = start / cs;
            // One refcount write: the run stays inside one refcount block.
            let n = RESERVE_CLUSTERS.min(per_block - index % per_block);
            meta.next_free += n * cs;
            let block = self.refcount_block(meta, index)?;
            let ones: Vec<u8> = (0..n).flat_map(|_| 1u16.to_be_bytes()).collect();
            self.write_file(&ones, block + (index % per_block) * 2)?;
            // The file covers the run before anything points into it: the
            // data written there later is not what extends the file, so an
            // L2 entry that reaches the disk before its data still points
            // inside the file.
            self.extend_file(start + n * cs)?;
            // Refcounts and length durable before any L2 entry can point
            // at these clusters.
            self.barrier()?;
            meta.reserved = start..start + n * cs;
        }
        let host = meta.reserved.start;
        meta.reserved.start += cs;
        Ok(host)
    }

    /// Gives the reserved clusters not taken back (refcount 0).
    fn release_reserved(&self, meta: &mut Meta) -> io::Result<()> {
        let cs = self.cluster_size();
        if meta.reserved.is_empty() {
            return Ok(());
        }
        let index = meta.reserved.start / cs;
        let n = (meta.reserved.end - meta.reserved.start) / cs;
        let block = self.refcount_block(meta, index)?;
        self.write_file(&vec![0u8; n as usize * 2], block + (index % (cs / 2)) * 2)?;
        // A run at the end is handed out again next (the file keeps its
        // length: extending it again would be a wasted sync).
        if meta.reserved.end == meta.next_free {
            meta.next_free = meta.reserved.start;
        }
        meta.reserved = 0..0;
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
        self.check_host(block, cs, "refcount block")?;
        Ok(block)
    }

    /// Sets the refcount of the cluster at host offset `host` to `value`,
    /// making a refcount block (and growing the refcount table) as needed.
    fn set_refcount(&self, meta: &mut Meta, host: u64, value: u16) -> io::Result<()> {
        let cs = self.cluster_size();
        let index = host / cs;
        let block = self.refcount_block(meta, index)?;
        self.write_file(&value.to_be_bytes(), block + (index % (cs / 2)) * 2)
    }

    fn refcount(&self, meta: &Meta, host: u64) -> io::Result<u16> {
        let cs = self.cluster_size();
        let index = host / cs;
        let t = (index / (cs / 2)) as usize;
        let block = meta.refcount_table.get(t).copied().unwrap_or(0) & OFFSET_MASK;
        if block == 0 {
            return Ok(0);
        }
        self.check_host(block, cs, "refcount block")?;
        let mut b = [0u8; 2];
        self.file
            .read_exact_at(&mut b, block + (index % (cs / 2)) * 2)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Makes refcount block number `t` at the end of the file. Its own
    /// refcount is set (in itself, or in another block first) before the
    /// refcount table points at it: a crash in between leaks, no more.
    fn new_refcount_block(&self, meta: &mut Meta, t: usize) -> io::Result<u64> {
        let cs = self.cluster_size();
        let per_block = cs / 2;
        let at = self.take_cluster(meta);
        let mut block = vec![0u8; cs as usize];
        let own = at / cs;
        if (own / per_block) as usize == t {
            let i = ((own % per_block) * 2) as usize;
            block[i..i + 2].copy_from_slice(&1u16.to_be_bytes());
            self.write_file(&block, at)?;
        } else {
            self.write_file(&block, at)?;
            self.set_refcount(meta, at, 1)?;
        }
        // The block, with its refcount, before the table points at it.
        self.barrier()?;
        meta.refcount_table[t] = at;
        let entry_at = meta.refcount_table_offset + t as u64 * 8;
        self.write_file(&at.to_be_bytes(), entry_at)?;
        Ok(at)
    }

    /// Moves the refcount table to the end of the file, large enough for
    /// block number `t` and the blocks that describe the table itself.
    /// The new table and blocks are written first, then the header is
    /// switched to them in one write; the old table's clusters are freed
    /// last.
    fn grow_refcount_table(&self, meta: &mut Meta, t: usize) -> io::Result<()> {
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
            let table_at = meta.next_free;
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
        let mut table = meta.refcount_table.clone();
        table.resize(entries.next_multiple_of(entries_per_cluster), 0);
        for &(b, at) in &blocks {
            table[b] = at;
        }
        let new_end = blocks
            .last()
            .map_or(table_at + table_clusters * cs, |&(_, at)| at + cs);
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
                    // An existing block: written in place.
                    let at = table[b] + i as u64;
                    self.check_host(table[b] & OFFSET_MASK, cs, "refcount block")?;
                    self.write_file(&1u16.to_be_bytes(), at)?;
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
        meta.next_free = new_end;
        // The old table's clusters are free now.
        for k in 0..old_clusters {
            self.set_refcount(meta, old_offset + k * cs, 0)?;
        }
        Ok(())
    }

    /// The L2 table for guest cluster `index`, made if missing (a zeroed
    /// cluster, its refcount, then the L1 entry).
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
    fn set_l2_entry(&self, meta: &mut Meta, index: u64, entry: u64) -> io::Result<()> {
        let at = self.prepare_l2_entry(meta, index, entry)?;
        self.write_l2_entry(at, entry)
    }

    /// The first half of [`set_l2_entry`](Self::set_l2_entry), under the
    /// meta lock: makes the L2 table if missing and updates the cached
    /// entry; returns where the entry goes in the file.
    fn prepare_l2_entry(&self, meta: &mut Meta, index: u64, entry: u64) -> io::Result<u64> {
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
    fn write_l2_entry(&self, at: u64, entry: u64) -> io::Result<()> {
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
    fn release(&self, meta: &mut Meta, old: u64) -> io::Result<()> {
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
    fn apply_deferred_frees(&self, meta: &mut Meta) -> io::Result<()> {
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
    fn barrier(&self) -> io::Result<()> {
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
    fn write_in_cluster(&self, buf: &[u8], offset: u64) -> io::Result<()> {
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
    fn lock_cluster(&self, index: u64) -> io::Result<CoMutexGuard<'_, Meta>> {
        let mut meta = self.meta()?.lock();
        while meta.in_flight.contains(&index) {
            meta = self.allocations.wait_with(meta);
        }
        Ok(meta)
    }

    /// Makes whole cluster `index` read as zeros with the version 3 zero
    /// flag, keeping a data cluster allocated (preallocated zero).
    fn zero_cluster(&self, index: u64) -> io::Result<()> {
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

/// The end of the last cluster whose refcount is not zero, per the
/// refcount table `table` of an image of `file_len` bytes: blocks are
/// read from the last one back until one counts a cluster.
fn last_counted_end(
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

/// Inflates one compressed cluster (raw deflate) to exactly `cluster_size`
/// bytes.
fn inflate_cluster(packed: &[u8], cluster_size: usize) -> io::Result<Vec<u8>> {
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(packed, cluster_size)
        .map_err(|e| bad_data(format!("compressed cluster does not inflate: {e:?}")))?;
    if out.len() != cluster_size {
        return Err(bad_data(format!(
            "compressed cluster inflates to {} bytes, not {cluster_size}",
            out.len()
        )));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header with 64 KiB clusters for a 1 GiB disk.
    fn v3() -> Vec<u8> {
        let mut h = vec![0u8; 65536 * 2];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&65536u64.to_be_bytes());
        h[48..56].copy_from_slice(&65536u64.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    fn parse(h: &[u8]) -> Result<Header, Invalid> {
        Header::parse(h, h.len() as u64)
    }

    #[test]
    fn a_plain_header_parses() {
        let h = parse(&v3()).unwrap();
        assert_eq!(
            (h.version, h.cluster_bits, h.size, h.l1_size),
            (3, 16, 1 << 30, 2)
        );
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn bad_headers_are_named() {
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|h| h[0] = b'X'), "magic"),
            (Box::new(|h| h[7] = 4), "version 4"),
            (Box::new(|h| h[23] = 30), "cluster size"),
            (Box::new(|h| h[35] = 1), "encrypted"),
            (
                Box::new(|h| h[24..32].copy_from_slice(&u64::MAX.to_be_bytes())),
                "too large",
            ),
            (Box::new(|h| h[39] = 1), "too small"),
            (
                Box::new(|h| h[40..48].copy_from_slice(&0u64.to_be_bytes())),
                "L1 table",
            ),
            (
                Box::new(|h| h[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes())),
                "L1 table",
            ),
            (Box::new(|h| h[79] = 1 << 5), "unknown incompatible"),
            (Box::new(|h| h[79] = INCOMPAT_CORRUPT as u8), "corrupt"),
            (Box::new(|h| h[79] = INCOMPAT_EXTL2 as u8), "extended L2"),
            (Box::new(|h| h[103] = 50), "header length"),
            (Box::new(|h| h[59] = 0), "refcount table"),
            (
                Box::new(|h| h[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes())),
                "refcount table",
            ),
            (
                Box::new(|h| {
                    h[79] = INCOMPAT_COMPRESSION as u8;
                    h[103] = 112;
                    h[104] = 1;
                }),
                "zstd",
            ),
            (
                Box::new(|h| {
                    h[8..16].copy_from_slice(&65530u64.to_be_bytes());
                    h[19] = 100;
                }),
                "backing file name",
            ),
            (
                Box::new(|h| {
                    h[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
                    h[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
                }),
                "runs past",
            ),
        ];
        for (edit, why) in cases {
            let mut h = v3();
            edit(&mut h);
            let e = parse(&h).unwrap_err();
            assert!(e.0.contains(why), "{why}: {e}");
        }
        assert!(parse(&v3()[..50]).unwrap_err().0.contains("too short"));
    }

    #[test]
    fn l2_entries() {
        // 64 KiB clusters: compressed offsets in bits 0..54.
        assert_eq!(classify(0, 16, 3), Ok(Cluster::Unallocated));
        assert_eq!(classify(1, 16, 3), Ok(Cluster::Zero));
        assert_eq!(
            classify(0x30000 | 1 << 63, 16, 3),
            Ok(Cluster::Data(0x30000))
        );
        assert!(classify(0x30200, 16, 3).is_err());
        let e = L2_COMPRESSED | (3 << 54) | 0x12345;
        assert_eq!(
            classify(e, 16, 3),
            Ok(Cluster::Compressed {
                at: 0x12345,
                len: 4 * 512 - 0x145
            })
        );
    }
}
