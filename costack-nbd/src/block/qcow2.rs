//! qcow2 images, read-only: QEMU's copy-on-write format as `qemu-img`
//! writes it (version 2 and 3, cluster sizes 512 B to 2 MiB).
//!
//! Served: allocated clusters, zero clusters (version 3), compressed
//! clusters (deflate, as `qemu-img convert -c` writes them), and backing
//! files (qcow2 or raw, to any depth up to [`MAX_BACKING_DEPTH`]) read
//! through for clusters the image does not hold. `base:allocation` reports
//! the image's own allocation, the backing file's where it reads through.
//! Writing to qcow2 is not implemented: [`Qcow2::open`] serves it read-only.
//!
//! Everything taken from the file is checked before use. The header is
//! parsed by [`Header::parse`], a pure function the fuzzer drives; a bad
//! header, L1 table or backing chain is refused at open with an error
//! naming the problem. A table entry that points outside the image (or
//! into its header) is found when a request reaches it, and that request
//! gets an I/O error; nothing outside the file is ever read.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use costack::fs::File;

use crate::block::raw::FileDisk;
use crate::block::{BlockDevice, Extent};
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
}

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
            let refcount_order = be32(data, 96);
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

/// A read-only qcow2 image.
pub struct Qcow2 {
    file: File,
    file_len: u64,
    header: Header,
    l1: Vec<u64>,
    backing: Option<Box<dyn BlockDevice + Send + Sync>>,
    l2_cache: Mutex<L2Cache>,
}

#[derive(Default)]
struct L2Cache {
    tables: HashMap<u64, Arc<[u64]>>,
    order: VecDeque<u64>,
}

impl fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2")
            .field("header", &self.header)
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
    /// Opens the qcow2 image at `path` and its backing chain, read-only.
    ///
    /// # Errors
    /// The file cannot be read, or `InvalidData` naming what is wrong with
    /// the image or its backing chain (too deep, a loop, a file missing).
    pub fn open(path: &Path) -> io::Result<Qcow2> {
        Self::open_in_chain(path, &mut Vec::new())
    }

    fn open_in_chain(path: &Path, chain: &mut Vec<PathBuf>) -> io::Result<Qcow2> {
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
        let std_file = std::fs::File::open(path)?;
        let file_len = std_file.metadata()?.len();
        let mut head = vec![0u8; (Header::READ_LEN as u64).min(file_len) as usize];
        std_file.read_exact_at(&mut head, 0)?;
        let header = Header::parse(&head, file_len).map_err(|e| bad_data(e.0))?;
        let mut raw_l1 = vec![0u8; header.l1_size as usize * 8];
        std_file.read_exact_at(&mut raw_l1, header.l1_offset)?;
        let l1 = raw_l1.chunks_exact(8).map(|c| be64(c, 0)).collect();
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
            file: File::from_std(std_file),
            file_len,
            header,
            l1,
            backing,
            l2_cache: Mutex::new(L2Cache::default()),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn cluster_size(&self) -> u64 {
        1 << self.header.cluster_bits
    }

    /// Checks that `len` bytes at host offset `at` lie inside the file and
    /// outside its header cluster.
    fn check_host(&self, at: u64, len: u64, what: &str) -> io::Result<()> {
        let inside = at >= self.cluster_size()
            && at.checked_add(len).is_some_and(|end| end <= self.file_len);
        if inside {
            Ok(())
        } else {
            Err(bad_data(format!(
                "{what} at {at:#x} ({len} bytes) lies outside the image ({} bytes) or in its header",
                self.file_len
            )))
        }
    }

    /// What the image holds for cluster number `index`.
    fn cluster(&self, index: u64) -> io::Result<Cluster> {
        let l2_bits = self.header.cluster_bits - 3;
        let l1_index = (index >> l2_bits) as usize;
        let Some(&l1_entry) = self.l1.get(l1_index) else {
            return Ok(Cluster::Unallocated);
        };
        let table = l1_entry & OFFSET_MASK;
        if table == 0 {
            return Ok(Cluster::Unallocated);
        }
        let table = self.l2_table(table)?;
        let entry = table[(index & ((1 << l2_bits) - 1)) as usize];
        classify(entry, self.header.cluster_bits, self.header.version).map_err(|e| bad_data(e.0))
    }

    fn l2_table(&self, at: u64) -> io::Result<Arc<[u64]>> {
        if let Some(t) = self.lock_cache().tables.get(&at) {
            return Ok(t.clone());
        }
        if !at.is_multiple_of(self.cluster_size()) {
            return Err(bad_data(format!("L2 table at {at:#x} is misaligned")));
        }
        self.check_host(at, self.cluster_size(), "L2 table")?;
        // Read without the lock held: the read yields to other requests.
        let mut raw = vec![0u8; self.cluster_size() as usize];
        self.file.read_exact_at(&mut raw, at)?;
        let table: Arc<[u64]> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let mut cache = self.lock_cache();
        if cache.tables.insert(at, table.clone()).is_none() {
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
                let len = len.min(self.file_len.saturating_sub(at));
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
        Ok(Box::new(Qcow2::open_in_chain(path, chain)?))
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
        true
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

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _may_punch_hole: bool) -> io::Result<()> {
        Err(read_only())
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
