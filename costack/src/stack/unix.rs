//! Unix stacks: carved from large `mmap` arenas, each with a guard page
//! below it.
//!
//! An arena is one lazily committed mapping (`MAP_NORESERVE` on Linux;
//! macOS and FreeBSD commit anonymous memory lazily anyway) cut into equal
//! slots; only the pages a coroutine touches cost memory. On Linux, guard
//! pages are installed with `madvise(MADV_GUARD_INSTALL)` (Linux 6.13+),
//! which marks page-table entries and so does not split the mapping: a
//! million stacks stay a few dozen kernel mappings. Where the kernel lacks
//! guard regions (older Linux, and always on macOS and FreeBSD), each guard
//! is an `mprotect(PROT_NONE)` page, which costs two mappings per stack; on
//! Linux that runs into `vm.max_map_count`, and that failure is reported by
//! name. The `mprotect` path is the one Linux takes with
//! `COSTACK_MPROTECT_GUARDS` set, so the other systems share a tested path.

use std::collections::VecDeque;
use std::io;
use std::ptr;
use std::sync::Mutex;

/// One guard page below each stack.
pub(super) const GUARD_PAGES: usize = 1;

/// Maps a stack of `size` usable bytes (whole pages); returns its bottom.
pub(super) fn alloc(size: usize) -> io::Result<*mut u8> {
    ARENAS.lock().unwrap_or_else(|e| e.into_inner()).alloc(size)
}

/// Gives a stack from `alloc` back for reuse. The last [`WARM_SLOTS`]
/// freed of its size keep their pages, and the next stacks of that size
/// are taken from them, newest first; older ones have their pages offered
/// back to the kernel (`MADV_FREE`) in batches: the slots of a batch that
/// lie next to each other in an arena go in one `madvise` (a burst of
/// finished coroutines costs a few system calls, not one each). A reused
/// stack's contents are undefined: nothing reads a stack before writing it.
///
/// # Safety
/// Nothing may use the stack any more.
pub(super) unsafe fn free(bottom: *mut u8, size: usize) {
    ARENAS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .free(bottom, size);
}

/// Slots whose pages are discarded together.
const DISCARD_BATCH: usize = 64;

/// Freed slots per size whose pages are kept for the next stacks of that
/// size. Discarding costs the kernel about a microsecond per page that a
/// coroutine touched (each page moves to the lazily freed list), three
/// times what a whole short coroutine costs otherwise; a burst of up to
/// this many coroutines after another pays none of it, on pages already
/// faulted in. The price is memory: what these slots' coroutines touched
/// (one 4 KiB page for most, so 128 MiB at most for them) stays resident
/// until the slots are reused or [`release_freed`] (`pool::trim`) runs.
#[cfg(not(test))]
const WARM_SLOTS: usize = 32 << 10;
#[cfg(test)]
const WARM_SLOTS: usize = 256;

/// The advice for freed stacks: `MADV_FREE` lets the kernel take the pages
/// when it needs memory, and costs nothing if the slot is reused first (a
/// write cancels the free: no page fault, no zeroing), so a burst of
/// coroutines after another runs on warm pages.
const DISCARD_ADVICE: libc::c_int = libc::MADV_FREE;

/// The advice that gives pages back at once ([`release_freed`]). Linux's
/// `MADV_DONTNEED` frees them right away; on macOS and FreeBSD it only
/// lowers their priority, and `MADV_FREE` is all there is.
#[cfg(target_os = "linux")]
const RELEASE_ADVICE: libc::c_int = libc::MADV_DONTNEED;
#[cfg(not(target_os = "linux"))]
const RELEASE_ADVICE: libc::c_int = libc::MADV_FREE;

/// Arena mappings are committed page by page as touched. Only Linux needs
/// asking (`MAP_NORESERVE`): macOS ignores the flag and FreeBSD has none.
#[cfg(target_os = "linux")]
const MAP_LAZY: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(target_os = "linux"))]
const MAP_LAZY: libc::c_int = 0;

pub(crate) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize })
}

/// Puts a guard on the page at `addr`.
fn install_guard(addr: *mut u8) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(done) = guard_region::install(addr) {
        return done;
    }
    mprotect_guard(addr)
}

/// The portable guard: the page made inaccessible.
fn mprotect_guard(addr: *mut u8) -> io::Result<()> {
    // SAFETY: `addr` is a page of an anonymous private mapping we own and
    // that nothing uses; PROT_NONE only makes it fault.
    if unsafe { libc::mprotect(addr.cast(), page_size(), libc::PROT_NONE) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    #[cfg(target_os = "linux")]
    if err.raw_os_error() == Some(libc::ENOMEM) {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "cannot install a stack guard page: out of kernel memory mappings \
                 (this kernel lacks MADV_GUARD_INSTALL, so every stack costs two \
                 mappings; raise vm.max_map_count, currently {})",
                guard_region::read_max_map_count()
            ),
        ));
    }
    Err(err)
}

/// Linux guard regions (`MADV_GUARD_INSTALL`), probed once; `mprotect`
/// where the kernel has none.
#[cfg(target_os = "linux")]
mod guard_region {
    use super::page_size;
    use std::io;
    use std::sync::atomic::{AtomicU8, Ordering};

    const MADV_GUARD_INSTALL: libc::c_int = 102;
    const MADV_GUARD_REMOVE: libc::c_int = 103;

    /// How guard pages are made; probed once.
    static GUARD_KIND: AtomicU8 = AtomicU8::new(GUARD_UNKNOWN);
    const GUARD_UNKNOWN: u8 = 0;
    const GUARD_MADVISE: u8 = 1;
    const GUARD_MPROTECT: u8 = 2;

    /// Installs a guard region on the page at `addr`; `None` when the
    /// caller must use `mprotect` instead.
    pub(super) fn install(addr: *mut u8) -> Option<io::Result<()>> {
        let page = page_size();
        if GUARD_KIND.load(Ordering::Relaxed) == GUARD_UNKNOWN
            && std::env::var_os("COSTACK_MPROTECT_GUARDS").is_some()
        {
            // Forces the fallback, as on a kernel without guard regions (for
            // tests, and to compare the two).
            GUARD_KIND.store(GUARD_MPROTECT, Ordering::Relaxed);
        }
        if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MPROTECT {
            return None;
        }
        // SAFETY: `addr` is a page of an anonymous private mapping we own
        // and that nothing uses; a guard marker only makes it fault.
        if unsafe { libc::madvise(addr.cast(), page, MADV_GUARD_INSTALL) } == 0 {
            if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MADVISE || guard_holds(addr) {
                GUARD_KIND.store(GUARD_MADVISE, Ordering::Relaxed);
                return Some(Ok(()));
            }
            // An emulator (qemu-user) accepted the advice without acting on
            // it: take the marker away again and use mprotect for good.
            // SAFETY: as above; removing a marker that may not exist is a
            // no-op.
            unsafe { libc::madvise(addr.cast(), page, MADV_GUARD_REMOVE) };
            GUARD_KIND.store(GUARD_MPROTECT, Ordering::Relaxed);
        } else {
            let err = io::Error::last_os_error();
            if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MADVISE {
                return Some(Err(err));
            }
            // EINVAL: this kernel has no guard regions. Fall back for good.
            GUARD_KIND.store(GUARD_MPROTECT, Ordering::Relaxed);
        }
        None
    }

    /// Whether the kernel refuses to read the page at `addr`, as it must
    /// once a guard marker is installed: a `write` from it into a pipe
    /// fails with EFAULT instead of faulting. Checked once, on the first
    /// guard.
    pub(super) fn guard_holds(addr: *mut u8) -> bool {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return true; // Cannot check: trust the kernel's answer.
        }
        // SAFETY: the kernel validates the source range itself; a guarded
        // page makes the call fail, it never faults in user space. The
        // descriptors are ours and closed right after.
        let n = unsafe { libc::write(fds[1], addr.cast(), 1) };
        let err = io::Error::last_os_error();
        // SAFETY: as above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        n < 0 && err.raw_os_error() == Some(libc::EFAULT)
    }

    pub(super) fn read_max_map_count() -> String {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned())
    }
}

/// All arenas of the process, by slot size.
struct Arenas {
    classes: Vec<SizeClass>,
}

// SAFETY: the raw pointers are addresses of mappings owned by the allocator;
// they are only dereferenced by the stack's user, never through `Arenas`.
unsafe impl Send for Arenas {}

static ARENAS: Mutex<Arenas> = Mutex::new(Arenas {
    classes: Vec::new(),
});

struct SizeClass {
    /// Usable bytes of each slot (the guard page comes on top).
    size: usize,
    /// Bottoms of freed slots whose pages were discarded, ready for reuse.
    free: Vec<*mut u8>,
    /// Bottoms of freed slots that keep their pages, oldest first: reused
    /// newest first, discarded oldest first (see [`WARM_SLOTS`]).
    warm: VecDeque<*mut u8>,
    /// The arena being carved, and how many of its slots are handed out.
    current: Option<(*mut u8, usize, usize)>,
    /// Slots in the next arena to map.
    next_slots: usize,
}

const FIRST_ARENA_SLOTS: usize = 16;
const MAX_ARENA_BYTES: usize = 1 << 30;

impl Arenas {
    fn class(&mut self, size: usize) -> &mut SizeClass {
        let i = match self.classes.iter().position(|c| c.size == size) {
            Some(i) => i,
            None => {
                self.classes.push(SizeClass {
                    size,
                    free: Vec::new(),
                    warm: VecDeque::new(),
                    current: None,
                    next_slots: FIRST_ARENA_SLOTS,
                });
                self.classes.len() - 1
            }
        };
        &mut self.classes[i]
    }

    fn alloc(&mut self, size: usize) -> io::Result<*mut u8> {
        let class = self.class(size);
        if let Some(bottom) = class.warm.pop_back().or_else(|| class.free.pop()) {
            return Ok(bottom);
        }
        let page = page_size();
        let slot = size + page;
        let (base, used, slots) = match class.current {
            Some(cur) if cur.1 < cur.2 => cur,
            _ => {
                let slots = class.next_slots;
                let len = slots * slot;
                // SAFETY: a fresh anonymous mapping; no existing memory is
                // affected. Only touched pages are committed (MAP_LAZY).
                let base = unsafe {
                    libc::mmap(
                        ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | MAP_LAZY,
                        -1,
                        0,
                    )
                };
                if base == libc::MAP_FAILED {
                    return Err(io::Error::last_os_error());
                }
                class.next_slots = (slots * 2).min((MAX_ARENA_BYTES / slot).max(1));
                (base.cast::<u8>(), 0, slots)
            }
        };
        let guard = base.wrapping_add(used * slot);
        class.current = Some((base, used, slots));
        install_guard(guard)?;
        class.current = Some((base, used + 1, slots));
        Ok(guard.wrapping_add(page))
    }

    fn free(&mut self, bottom: *mut u8, size: usize) {
        // Arenas are never unmapped: a freed slot keeps its guard; once its
        // pages are discarded it costs only address space.
        let class = self.class(size);
        class.warm.push_back(bottom);
        if class.warm.len() >= WARM_SLOTS + DISCARD_BATCH {
            let mut oldest: Vec<*mut u8> = class.warm.drain(..DISCARD_BATCH).collect();
            class.discard(&mut oldest, DISCARD_ADVICE);
        }
    }
}

/// Gives the pages of every freed stack back to the kernel at once (for
/// `pool::trim`: `MADV_FREE`'d pages count as used until the kernel needs
/// them).
pub(super) fn release_freed() {
    let mut arenas = ARENAS.lock().unwrap_or_else(|e| e.into_inner());
    for class in &mut arenas.classes {
        let mut freed = std::mem::take(&mut class.free);
        freed.extend(class.warm.drain(..));
        class.discard(&mut freed, RELEASE_ADVICE);
    }
}

impl SizeClass {
    /// Discards the pages of the freed `slots` with `advice`, runs of
    /// neighbours at a time, and makes the slots reusable. A run's range
    /// takes in the guard pages between its slots: discarding keeps guards
    /// (guard regions survive `MADV_DONTNEED`; `mprotect` guards are their
    /// own mappings).
    fn discard(&mut self, slots: &mut Vec<*mut u8>, advice: libc::c_int) {
        slots.sort_unstable();
        let slot = self.size + page_size();
        let mut i = 0;
        while i < slots.len() {
            let start = slots[i];
            let mut end = i + 1;
            while end < slots.len() && slots[end] == slots[end - 1].wrapping_add(slot) {
                end += 1;
            }
            let len = (end - i - 1) * slot + self.size;
            // SAFETY: `[start, start + len)` lies in our arenas, private
            // anonymous mappings; its slots are freed (nothing runs on
            // them) and the guard pages between them are ours too. The
            // advice only drops pages.
            unsafe { libc::madvise(start.cast(), len, advice) };
            i = end;
        }
        self.free.append(slots);
    }
}

/// How many freed slots of `size` keep their pages (for tests).
#[cfg(all(test, target_os = "linux"))]
fn warm_len(size: usize) -> usize {
    ARENAS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .class(size)
        .warm
        .len()
}

#[cfg(all(test, target_os = "linux"))]
#[path = "unix_tests.rs"]
mod tests;
