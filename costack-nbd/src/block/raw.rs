//! A raw image file as a [`BlockDevice`], through its [`ImageFile`]: in
//! production a `costack::fs::File` (io_uring where the kernel has it, the
//! thread pool elsewhere), in the crash tests a recorder.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use costack::fs::{File, FileMap};
use costack::net::{RecvSlice, SendSlice};

use super::{STATE_HOLE, STATE_ZERO};
use crate::block::{BlockDevice, Extent, ImageFile};

/// Alignment `O_DIRECT` needs for buffers, offsets and lengths.
pub const DIRECT_ALIGN: usize = 4096;

/// qemu's sector: as qemu-nbd, a raw file whose length is not a multiple
/// of it is exported rounded up, the bytes past the file's end reading as
/// zeroes (and a write there extending the file).
pub const SECTOR: u64 = 512;

/// A raw image file.
pub struct FileDisk {
    file: Box<dyn ImageFile>,
    /// The exported size: the file's length at open, rounded up to a
    /// [`SECTOR`] (except with `O_DIRECT`, whose reads cannot stop at an
    /// unaligned end).
    size: u64,
    /// The file's length as far as this device knows: reads past it are
    /// zeroes without asking the file; writes past it raise it.
    len: AtomicU64,
    read_only: bool,
    direct: bool,
    /// The format was guessed (see [`FileDisk::guessed`]).
    guessed: bool,
    /// The file mapped, for reads sent from the page cache
    /// ([`BlockDevice::read_mapped`]); not with `O_DIRECT`.
    map: Option<FileMap>,
}

impl FileDisk {
    /// Opens `path`; `direct` bypasses the page cache (`--cache none`).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<FileDisk> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let std_file = options.open(path)?;
        let metadata = std_file.metadata()?;
        // Read-only, a directory opens fine and fails at the first read.
        if metadata.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory, not a disk image",
            ));
        }
        // Mapping fails only for files no one would serve (a FIFO), or
        // beyond the address space: reads and writes then go through
        // buffers.
        let map = match (direct, read_only) {
            (true, _) => None,
            (false, true) => FileMap::new(&std_file).ok(),
            (false, false) => FileMap::new_writable(&std_file).ok(),
        };
        let disk = Self::open_file(Box::new(File::from_std(std_file)), read_only, direct)?;
        Ok(FileDisk { map, ..disk })
    }

    /// A raw image in `file` (opened for writing unless `read_only`, with
    /// `O_DIRECT` if `direct`), served at its length: the seam where a
    /// test records every write and barrier.
    ///
    /// # Errors
    /// The file's length cannot be read.
    pub fn open_file(
        file: Box<dyn ImageFile>,
        read_only: bool,
        direct: bool,
    ) -> io::Result<FileDisk> {
        let len = file.len()?;
        let size = if direct {
            len
        } else {
            len.next_multiple_of(SECTOR)
        };
        Ok(FileDisk {
            file,
            size,
            len: AtomicU64::new(len),
            read_only,
            direct,
            guessed: false,
            map: None,
        })
    }

    /// Serves the image as one whose raw format was guessed, not given, as
    /// qemu-nbd does: a write may not give sector 0 another format's magic
    /// (a guest could otherwise turn the image into a qcow2 whose backing
    /// file is any file of the host, the next time the format is guessed),
    /// and block status is reported in whole sectors, the minimum block
    /// size qemu-nbd then advertises.
    ///
    /// ```
    /// # use costack_nbd::block::{BlockDevice, raw::FileDisk};
    /// # let path = std::env::temp_dir().join(format!("guessed-{}.raw", std::process::id()));
    /// std::fs::write(&path, [0u8; 4096]).unwrap();
    /// let disk = FileDisk::open(&path, false, false).unwrap().guessed();
    /// assert!(disk.write_at(b"QFI\xfb", 0).is_err());
    /// disk.write_at(b"raw!", 0).unwrap();
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn guessed(self) -> FileDisk {
        FileDisk {
            guessed: true,
            ..self
        }
    }

    /// Whether the page cache is bypassed, so requests must be aligned to
    /// [`DIRECT_ALIGN`].
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

/// A heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN)
            .expect("buffer size fits a layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: we own `layout.size()` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn is_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && buf.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

impl BlockDevice for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.len.load(Ordering::Acquire);
        if !self.direct && offset + buf.len() as u64 > len {
            // The rounded-up tail past the file's end reads as zeroes.
            let inside = len.saturating_sub(offset).min(buf.len() as u64) as usize;
            let (head, tail) = buf.split_at_mut(inside);
            tail.fill(0);
            return if head.is_empty() {
                Ok(())
            } else {
                self.file.read_exact_at(head, offset)
            };
        }
        if self.direct && !is_aligned(buf, offset) {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            self.file
                .read_exact_at(&mut bounce.as_mut_slice()[..buf.len()], offset)?;
            buf.copy_from_slice(&bounce.as_mut_slice()[..buf.len()]);
            return Ok(());
        }
        self.file.read_exact_at(buf, offset)
    }

    fn read_mapped(&self, offset: u64, len: usize) -> Option<SendSlice<'_>> {
        let map = self.map.as_ref()?;
        // `None` out of the mapping, which ends where the file did at open.
        let slice = map.slice(offset, len)?;
        // Pages not cached are read the usual way (and cached by it): a
        // send would fault them in on the loop thread, blocking it.
        map.is_cached(offset, len).ok()?.then_some(slice)
    }

    fn write_mapped(&self, offset: u64, len: usize) -> Option<RecvSlice<'_>> {
        let map = self.map.as_ref()?;
        // Sector 0 of a guessed image is checked before it is written; a
        // fault on a disk file system's page could block the loop.
        if (self.guessed && offset < SECTOR) || !map.is_in_memory() {
            return None;
        }
        // `None` out of the mapping (and for a read-only one).
        map.slice_mut(offset, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.guessed && offset < SECTOR {
            self.check_sector_zero(buf, offset)?;
        }
        if self.direct && !is_aligned(buf, offset) {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            bounce.as_mut_slice()[..buf.len()].copy_from_slice(buf);
            return self
                .file
                .write_all_at(&bounce.as_mut_slice()[..buf.len()], offset);
        }
        self.file.write_all_at(buf, offset)?;
        // A write into the rounded-up tail extended the file.
        self.len
            .fetch_max(offset + buf.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        // fallocate(2) rejects an empty range; for NBD it is a no-op.
        if len == 0 {
            return Ok(());
        }
        match self.file.punch_hole(offset, len) {
            // Advisory: a file system without holes keeps the data.
            Err(e) if no_holes(&e) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let done = if may_punch_hole {
            self.file.punch_hole(offset, len)
        } else {
            self.file.zero_range(offset, len)
        };
        match done {
            Err(e) if no_holes(&e) => {
                // The file system cannot do it in place: write zeroes.
                let chunk = AlignedBuf::zeroed(len.min(1 << 20) as usize);
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(chunk.layout.size() as u64) as usize;
                    // SAFETY: `chunk` owns at least `n` zeroed bytes.
                    let zeroes = unsafe { std::slice::from_raw_parts(chunk.ptr.as_ptr(), n) };
                    self.file.write_all_at(zeroes, offset + done)?;
                    done += n as u64;
                }
                self.len.fetch_max(offset + len, Ordering::AcqRel);
                Ok(())
            }
            other => other,
        }
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        if self.guessed {
            // Whole sectors: a partly allocated one counts as data.
            let start = offset - offset % SECTOR;
            let end = (offset + len).next_multiple_of(SECTOR).min(self.size);
            let mut extents = in_sectors(&self.extents(start, end - start)?);
            // The request's own start, which the client chose.
            if let Some(first) = extents.first_mut() {
                first.length -= (offset - start).min(first.length);
            }
            extents.retain(|e| e.length > 0);
            return Ok(extents);
        }
        self.extents(offset, len)
    }
}

impl FileDisk {
    /// Refuses a write at `offset` (in sector 0) that would leave sector 0
    /// starting with a qcow2 image's magic.
    fn check_sector_zero(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // O_DIRECT reads whole blocks; the file may be shorter than the
        // magic (its missing bytes read as zeroes).
        let block = if self.direct { DIRECT_ALIGN } else { 4 };
        let mut first = vec![0u8; block.min(self.size as usize)];
        self.read_at(&mut first, 0)?;
        let mut head = [0u8; 4];
        let n = first.len().min(4);
        head[..n].copy_from_slice(&first[..n]);
        for (i, b) in head.iter_mut().enumerate() {
            if let Some(&new) = (i as u64)
                .checked_sub(offset)
                .and_then(|at| buf.get(at as usize))
            {
                *b = new;
            }
        }
        if head == crate::block::qcow2::MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the image's format was guessed: sector 0 may not be made a qcow2 header \
                 (give -f raw to allow it)",
            ));
        }
        Ok(())
    }

    /// The file's data and holes from `offset`, as `SEEK_DATA`/`SEEK_HOLE`
    /// find them.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = (offset + len).min(self.size);
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match self.file.seek_data(pos) {
                Ok(Some(d)) => d,
                // No data after `pos`: the rest is a hole.
                Ok(None) => end,
                Err(e) if no_holes(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                    // No SEEK_DATA: report everything as data.
                    extents.push(Extent {
                        length: end - pos,
                        flags: 0,
                    });
                    break;
                }
                Err(e) => return Err(e),
            };
            if data > pos {
                let hole_end = data.min(end);
                extents.push(Extent {
                    length: hole_end - pos,
                    flags: STATE_HOLE | STATE_ZERO,
                });
                pos = hole_end;
                continue;
            }
            let hole = self.file.seek_hole(pos).unwrap_or(end).min(end);
            extents.push(Extent {
                length: hole - pos,
                flags: 0,
            });
            pos = hole;
            if extents.len() >= 1024 {
                break;
            }
        }
        Ok(extents)
    }
}

/// `extents` (starting at a sector boundary) in whole sectors: a sector
/// holding any data is data, as a client honouring a 512-byte minimum block
/// would see it.
fn in_sectors(extents: &[Extent]) -> Vec<Extent> {
    fn push(out: &mut Vec<Extent>, length: u64, flags: u32) {
        match out.last_mut() {
            _ if length == 0 => {}
            Some(last) if last.flags == flags => last.length += length,
            _ => out.push(Extent { length, flags }),
        }
    }
    let mut out = Vec::new();
    // A sector split between extents: its length so far and its flags.
    let mut partial: Option<(u64, u32)> = None;
    for e in extents {
        let mut rest = e.length;
        if let Some((have, flags)) = partial.take() {
            let take = rest.min(SECTOR - have);
            rest -= take;
            let (have, flags) = (have + take, flags & e.flags);
            if have < SECTOR {
                partial = Some((have, flags));
                continue;
            }
            push(&mut out, SECTOR, flags);
        }
        push(&mut out, rest - rest % SECTOR, e.flags);
        if rest % SECTOR != 0 {
            partial = Some((rest % SECTOR, e.flags));
        }
    }
    // A part sector left over: the end of a walk cut short (the client
    // asks again from the last whole sector), or of an export whose size
    // is not whole sectors (`O_DIRECT`), which must still be described.
    if let Some((have, flags)) = partial.filter(|_| out.is_empty()) {
        push(&mut out, have, flags);
    }
    out
}

/// Whether `e` says the file (system) has no holes or cannot zero in
/// place.
fn no_holes(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
