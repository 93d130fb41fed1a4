//! [`FileMap`]: a file's bytes mapped so that sockets can send them from
//! the page cache, or receive into it, one copy fewer than going through
//! a buffer.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;

use crate::net::{RecvSlice, SendSlice};

/// A read-only shared mapping of a file, for sending ranges of it with
/// [`TcpStream::send_slices`] (or [`UnixStream`]'s): the kernel copies
/// them from the page cache straight into the socket, where a read would
/// first copy them into a buffer.
///
/// The program never reads the mapped bytes (there is no `&[u8]` to
/// them): another process may truncate or rewrite the file at any time,
/// which would make such a read a `SIGBUS` or a data race. A send of a
/// page the file no longer has fails with `EFAULT` instead.
///
/// A send of pages that are not in the page cache reads them from the
/// disk first, blocking the loop's thread while it does; ask
/// [`is_cached`](FileMap::is_cached) first and read the range the usual
/// way when they are not.
///
/// A writable mapping ([`new_writable`](FileMap::new_writable)) also
/// takes receives: [`TcpStream::recv_slice`] has the kernel copy
/// socket bytes straight into the file's page cache, where a receive into
/// a buffer and a `pwrite` would copy them twice. The bytes are written
/// back as a `pwrite`'s are: `fdatasync` makes them durable.
///
/// The mapping covers the file's length when it was made; later growth
/// is not in it.
///
/// ```
/// use costack::fs::FileMap;
/// use costack::net::{SendSlice, UnixStream};
/// use std::io::Read;
///
/// # let path = std::env::temp_dir().join(format!("costack-map-doc-{}", std::process::id()));
/// std::fs::write(&path, b"hello, page cache").unwrap();
/// let file = std::fs::File::open(&path).unwrap();
/// let map = FileMap::new(&file).unwrap();
/// let (a, mut b) = UnixStream::pair().unwrap();
/// let bytes = map.slice(7, 10).unwrap();
/// a.send_slices(&[SendSlice::new(b">"), bytes]).unwrap();
/// let mut got = [0; 11];
/// b.read_exact(&mut got).unwrap();
/// assert_eq!(&got, b">page cache");
/// # std::fs::remove_file(&path).unwrap();
/// ```
///
/// A slice borrows the map, so it cannot outlive the mapping:
///
/// ```compile_fail
/// # let file = std::fs::File::open("/etc/hostname").unwrap();
/// let slice = {
///     let map = costack::fs::FileMap::new(&file).unwrap();
///     map.slice(0, 1).unwrap()
/// }; // error: `map` does not live long enough
/// # drop(slice);
/// ```
///
/// [`TcpStream::send_slices`]: crate::net::TcpStream::send_slices
/// [`TcpStream::recv_slice`]: crate::net::TcpStream::recv_slice
/// [`UnixStream`]: crate::net::UnixStream::send_slices
pub struct FileMap {
    /// The mapping's start (dangling when `len` is 0: nothing mapped).
    ptr: NonNull<u8>,
    len: usize,
    /// Whether `mincore` reports the page cache for this file (see
    /// [`FileMap::is_cached`]).
    residency_known: bool,
    /// Mapped `PROT_WRITE`: receives may write into it.
    writable: bool,
    /// On a memory file system (see [`FileMap::is_in_memory`]).
    in_memory: bool,
}

// SAFETY: only the kernel reads or writes the mapped bytes (sends,
// receives, `mincore`); no Rust reference to them exists. The address is
// valid from every thread of the process until `drop`.
unsafe impl Send for FileMap {}
// SAFETY: as for `Send`: `&FileMap` allows nothing but sends, receives
// and `mincore` on it, all system calls.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps `file` (opened for reading), all of its current length.
    ///
    /// # Errors
    /// As `fstat(2)` and `mmap(2)`: the file cannot be mapped (a pipe, a
    /// socket) or is larger than the address space.
    pub fn new(file: &impl AsFd) -> io::Result<FileMap> {
        Self::map(file.as_fd().as_raw_fd(), false)
    }

    /// Maps `file` (opened for reading and writing), all of its current
    /// length, for sends and for receives
    /// ([`TcpStream::recv_slice`](crate::net::TcpStream::recv_slice)).
    ///
    /// ```
    /// use costack::fs::FileMap;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-map-w-doc-{}", std::process::id()));
    /// std::fs::write(&path, [0u8; 8]).unwrap();
    /// let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    /// assert!(FileMap::new_writable(&file).unwrap().is_writable());
    /// let read_only = std::fs::File::open(&path).unwrap();
    /// assert!(FileMap::new_writable(&read_only).is_err()); // EACCES
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`new`](FileMap::new); `PermissionDenied` if `file` is not open
    /// for writing.
    pub fn new_writable(file: &impl AsFd) -> io::Result<FileMap> {
        Self::map(file.as_fd().as_raw_fd(), true)
    }

    fn map(fd: libc::c_int, writable: bool) -> io::Result<FileMap> {
        // SAFETY: `fd` is open (borrowed); F_GETFL only reads its flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let open_for_writing = flags >= 0 && flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable && flags >= 0 && !open_for_writing {
            // (mmap would say EACCES, but not for an empty file.)
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        // SAFETY: an all-zero `stat` is a valid buffer for `fstat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open (borrowed) and `st` is writable.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only a regular file can be mapped",
            ));
        }
        let len = usize::try_from(st.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        let residency_known = residency_known(&st, open_for_writing);
        let in_memory = crate::aio::inline::on_memory_fs(fd) == Some(true);
        if len == 0 {
            return Ok(FileMap {
                ptr: NonNull::dangling(),
                len,
                residency_known,
                writable,
                in_memory,
            });
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel, aliasing nothing
        // of ours; `fd` is open.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(FileMap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned a null mapping"),
            len,
            residency_known,
            writable,
            in_memory,
        })
    }

    /// Whether the file lives on a memory file system (tmpfs, ramfs), where
    /// touching a mapped page never waits for a disk. Elsewhere a receive
    /// into a page that is not cached reads it from the disk first, and
    /// one into a page written back since it was last dirtied may wait
    /// for the file system, on the calling thread: ask
    /// [`is_cached`](FileMap::is_cached), or receive into a buffer and
    /// write it with [`File`](crate::fs::File).
    pub fn is_in_memory(&self) -> bool {
        self.in_memory
    }

    /// Whether receives may write into the mapping (it was made by
    /// [`new_writable`](FileMap::new_writable)).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The `len` bytes at `offset`, for a receive
    /// ([`TcpStream::recv_slice`](crate::net::TcpStream::recv_slice));
    /// `None` unless the map is writable and holds them all.
    ///
    /// Two slices of the same bytes may be received into at once: the
    /// kernel writes both, and the last write wins, as with two
    /// `pwrite`s. A slice borrows the map, so it cannot outlive the
    /// mapping:
    ///
    /// ```compile_fail
    /// # let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").unwrap();
    /// let slice = {
    ///     let map = costack::fs::FileMap::new_writable(&file).unwrap();
    ///     map.slice_mut(0, 0).unwrap()
    /// }; // error: `map` does not live long enough
    /// # drop(slice);
    /// ```
    pub fn slice_mut(&self, offset: u64, len: usize) -> Option<RecvSlice<'_>> {
        if !self.writable {
            return None;
        }
        let start = self.start_of(offset, len)?;
        // SAFETY: `start + len <= self.len`, so the range lies in the
        // writable mapping, which outlives the slice (it borrows `self`)
        // and whose bytes no Rust code accesses.
        unsafe { Some(RecvSlice::mapped(self.ptr.add(start), len)) }
    }

    /// The length mapped: the file's when the map was made.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether nothing is mapped (the file was empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `len` bytes at `offset`, for a send; `None` if they are not
    /// all in the mapping.
    pub fn slice(&self, offset: u64, len: usize) -> Option<SendSlice<'_>> {
        let start = self.start_of(offset, len)?;
        // SAFETY: `start + len <= self.len`, so the range lies in the
        // mapping, which outlives the slice (it borrows `self`).
        unsafe { Some(SendSlice::mapped(self.ptr.add(start), len)) }
    }

    /// `offset` as an index into the mapping, if all `len` bytes there
    /// are in it.
    fn start_of(&self, offset: u64, len: usize) -> Option<usize> {
        let start = usize::try_from(offset).ok()?;
        (start.checked_add(len)? <= self.len).then_some(start)
    }

    /// Whether every page of the `len` bytes at `offset` is in the page
    /// cache (`mincore(2)`), so that sending them does not wait for the
    /// disk. A hint: a page may be evicted right after.
    ///
    /// # Errors
    /// `Unsupported` when the kernel would not say: since Linux 5.0 it
    /// answers only for files the process owns or may write (or as
    /// root), and pretends every page is cached otherwise. `InvalidInput`
    /// if the range is not in the mapping.
    pub fn is_cached(&self, offset: u64, len: usize) -> io::Result<bool> {
        if !self.residency_known {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel does not report the page cache of this file to this process",
            ));
        }
        if self.slice(offset, len).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the mapping",
            ));
        }
        let page = page_size();
        let first = offset as usize / page * page;
        let end = offset as usize + len;
        // A page of the answer at a time: one byte per page.
        let mut vec = [0u8; 256];
        let mut at = first;
        while at < end {
            let n = (end - at).div_ceil(page).min(vec.len());
            // SAFETY: `at` is page-aligned and in the mapping, and `vec`
            // has room for the `n` pages asked about; `mincore` reads no
            // mapped byte.
            let rc = unsafe {
                libc::mincore(
                    self.ptr.as_ptr().add(at).cast(),
                    n * page,
                    vec.as_mut_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if vec[..n].iter().any(|b| b & 1 == 0) {
                return Ok(false);
            }
            at += n * page;
        }
        Ok(true)
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `new`, of `len` bytes; no slice
            // of it outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

impl std::fmt::Debug for FileMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileMap")
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// Whether `mincore` tells this process the truth about `fd`'s pages:
/// as root, as the file's owner, or with the file open for writing (the
/// kernel's `can_do_mincore`).
fn residency_known(st: &libc::stat, open_for_writing: bool) -> bool {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || st.st_uid == euid || open_for_writing
}
