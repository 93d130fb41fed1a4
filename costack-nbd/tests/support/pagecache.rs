//! The page cache seen from a test: which pages of a file are dirty
//! (`/proc/self/pagemap` for the physical page behind a mapping of the
//! file, `/proc/kpageflags` for its dirty bit). Needs root.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The page size the checks assume.
pub const PAGE: usize = 4096;
/// `KPF_DIRTY` in /proc/kpageflags.
const KPF_DIRTY: u64 = 1 << 4;

/// How many of the pages of `path` in `offset..offset + len` are dirty in
/// the page cache; `None` when physical page numbers are hidden (not root).
pub fn dirty_pages(path: &Path, offset: u64, len: usize) -> Option<usize> {
    let file = File::open(path).unwrap();
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped
    // below; nothing else refers to it.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
    let mut pagemap = File::open("/proc/self/pagemap").unwrap();
    let mut kpageflags = File::open("/proc/kpageflags").ok();
    let mut dirty = Some(0);
    for i in 0..len / PAGE {
        // SAFETY: inside the mapping, which covers the file's pages; the
        // read faults the page-cache page in so that it has a frame.
        let addr = unsafe { map.cast::<u8>().add(i * PAGE) };
        // SAFETY: as above: a readable byte of the mapping.
        unsafe { std::ptr::read_volatile(addr) };
        let mut entry = [0u8; 8];
        pagemap
            .seek(SeekFrom::Start((addr as u64 / PAGE as u64) * 8))
            .unwrap();
        pagemap.read_exact(&mut entry).unwrap();
        let entry = u64::from_le_bytes(entry);
        let pfn = entry & ((1 << 55) - 1);
        let Some(flags_file) = kpageflags.as_mut().filter(|_| entry >> 63 == 1 && pfn != 0) else {
            dirty = None;
            break;
        };
        let mut flags = [0u8; 8];
        flags_file.seek(SeekFrom::Start(pfn * 8)).unwrap();
        flags_file.read_exact(&mut flags).unwrap();
        if u64::from_le_bytes(flags) & KPF_DIRTY != 0 {
            *dirty.as_mut().unwrap() += 1;
        }
    }
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(map, len) };
    dirty
}
