//! The file type.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use std::path::Path;

use super::OpenOptions;
use crate::aio::file_io::{blocking, FileIo};

/// A file with coroutine I/O (see the [module documentation](super)).
///
/// `Send + Sync`; all I/O is positional, so coroutines may share `&File`.
///
/// ```
/// use costack::aio::EventLoop;
/// use costack::fs::File;
///
/// let path = std::env::temp_dir().join(format!("costack-doc-file-{}", std::process::id()));
/// let p = path.clone();
/// EventLoop::new().unwrap().block_on(move || {
///     let f = File::create(&p).unwrap();
///     f.write_all_at(b"world", 6).unwrap(); // positional: no shared cursor
///     f.write_all_at(b"hello ", 0).unwrap();
///     f.sync_data().unwrap(); // on disk before going on
///     let mut buf = [0; 11];
///     f.read_exact_at(&mut buf, 0).unwrap();
///     assert_eq!(&buf, b"hello world");
///     assert_eq!(f.len().unwrap(), 11);
///     f.set_len(5).unwrap();
///     assert_eq!(f.len().unwrap(), 5);
/// });
/// std::fs::remove_file(path).unwrap();
/// ```
pub struct File {
    inner: std::fs::File,
    io: FileIo,
}

impl File {
    /// Opens `path` read-only.
    ///
    /// # Errors
    /// As `open(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// std::fs::write(&path, b"data").unwrap();
    /// let p = path.clone();
    /// let n = EventLoop::new().unwrap().block_on(move || File::open(&p).unwrap().len().unwrap());
    /// assert_eq!(n, 4);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn open<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        OpenOptions::new().read(true).open(path)
    }

    /// Opens `path` for reading and writing, creating it or truncating it.
    ///
    /// # Errors
    /// As `open(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let p = path.clone();
    /// EventLoop::new().unwrap().block_on(move || File::create(&p).unwrap().write_all_at(b"new", 0).unwrap());
    /// assert_eq!(std::fs::read(&path).unwrap(), b"new");
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn create<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// Options to open a file with (such as `O_DIRECT`).
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::options().write(true).create(true).open(&path).unwrap();
    /// f.write_all_at(b"x", 0).unwrap(); // outside a loop: plain blocking I/O
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Wraps an open std file.
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::from_std(std::fs::File::create(&path).unwrap());
    /// f.write_all_at(b"wrapped", 0).unwrap();
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn from_std(file: std::fs::File) -> File {
        File {
            inner: file,
            io: FileIo::default(),
        }
    }

    /// The std file.
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::create(&path).unwrap();
    /// let std_file: std::fs::File = f.into_std();
    /// assert_eq!(std_file.metadata().unwrap().len(), 0);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn into_std(self) -> std::fs::File {
        self.inner
    }

    /// Reads at `offset`; returns how many bytes were read (0 at the end).
    ///
    /// # Errors
    /// As `pread(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// std::fs::write(&path, b"hello").unwrap();
    /// let p = path.clone();
    /// let got = EventLoop::new().unwrap().block_on(move || {
    ///     let mut buf = [0; 16];
    ///     let n = File::open(&p).unwrap().read_at(&mut buf, 1).unwrap(); // may be short
    ///     buf[..n].to_vec()
    /// });
    /// assert_eq!(got, b"ello");
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.io.read_at(&self.inner, buf, offset)
    }

    /// Writes at `offset`; returns how many bytes were written.
    ///
    /// # Errors
    /// As `pwrite(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let p = path.clone();
    /// let n = EventLoop::new().unwrap().block_on(move || File::create(&p).unwrap().write_at(b"abc", 2).unwrap());
    /// assert_eq!(n, 3);
    /// assert_eq!(std::fs::read(&path).unwrap(), b"\0\0abc");
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.io.write_at(&self.inner, buf, offset)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the file ends first; else as `pread(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// std::fs::write(&path, b"0123456789").unwrap();
    /// let p = path.clone();
    /// let got = EventLoop::new().unwrap().block_on(move || {
    ///     let mut buf = [0; 4];
    ///     File::open(&p).unwrap().read_exact_at(&mut buf, 3).unwrap();
    ///     buf
    /// });
    /// assert_eq!(&got, b"3456");
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// `WriteZero` if the file takes no more; else as `pwrite(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let p = path.clone();
    /// EventLoop::new().unwrap().block_on(move || {
    ///     let f = File::create(&p).unwrap();
    ///     f.write_all_at(b"tail", 4).unwrap();
    ///     f.write_all_at(b"head", 0).unwrap();
    /// });
    /// assert_eq!(std::fs::read(&path).unwrap(), b"headtail");
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn fsync(&self, data_only: bool) -> io::Result<()> {
        self.io.sync(&self.inner, data_only)
    }

    /// Flushes written data to the device (`fdatasync`).
    ///
    /// # Errors
    /// As `fdatasync(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let p = path.clone();
    /// EventLoop::new().unwrap().block_on(move || {
    ///     let f = File::create(&p).unwrap();
    ///     f.write_all_at(b"durable", 0).unwrap();
    ///     f.sync_data().unwrap(); // fdatasync: on the device when this returns
    /// });
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn sync_data(&self) -> io::Result<()> {
        self.fsync(true)
    }

    /// Flushes written data and metadata to the device (`fsync`).
    ///
    /// # Errors
    /// As `fsync(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let p = path.clone();
    /// EventLoop::new().unwrap().block_on(move || {
    ///     let f = File::create(&p).unwrap();
    ///     f.set_len(4096).unwrap();
    ///     f.sync_all().unwrap(); // fsync: the size (metadata) too
    /// });
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn sync_all(&self) -> io::Result<()> {
        self.fsync(false)
    }

    /// The file's size in bytes.
    ///
    /// # Errors
    /// As `fstat(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// std::fs::write(&path, [0u8; 100]).unwrap();
    /// assert_eq!(File::open(&path).unwrap().len().unwrap(), 100);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.inner.metadata()?.len())
    }

    /// Whether the file is empty.
    ///
    /// # Errors
    /// As `fstat(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// assert!(File::create(&path).unwrap().is_empty().unwrap());
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncates or extends the file to `len` bytes (on the thread pool).
    ///
    /// # Errors
    /// As `ftruncate(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::create(&path).unwrap();
    /// f.set_len(1 << 20).unwrap(); // sparse: no data written
    /// assert_eq!(f.len().unwrap(), 1 << 20);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let f = &self.inner;
        blocking(move || f.set_len(len))
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        self.io.fallocate(&self.inner, mode, offset, len)
    }

    /// Deallocates `[offset, offset + len)`: it reads as zeroes afterwards
    /// and the file keeps its size (`fallocate(PUNCH_HOLE | KEEP_SIZE)`;
    /// NBD's TRIM).
    ///
    /// # Errors
    /// As `fallocate(2)`; `Unsupported`-like errors (`EOPNOTSUPP`) on file
    /// systems without holes.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::create(&path).unwrap();
    /// f.write_all_at(&[1u8; 8192], 0).unwrap();
    /// match f.punch_hole(0, 4096) {
    ///     Ok(()) => {
    ///         let mut b = [9u8; 4096];
    ///         f.read_exact_at(&mut b, 0).unwrap();
    ///         assert!(b.iter().all(|&x| x == 0)); // reads as zeroes now
    ///         assert_eq!(f.len().unwrap(), 8192); // same size
    ///     }
    ///     Err(e) => println!("no hole punching on this file system: {e}"),
    /// }
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `[offset, offset + len)` without writing data, keeping the
    /// size (`fallocate(ZERO_RANGE | KEEP_SIZE)`; NBD's WRITE_ZEROES).
    ///
    /// # Errors
    /// As `fallocate(2)`; `EOPNOTSUPP` where the file system cannot.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::create(&path).unwrap();
    /// f.write_all_at(&[1u8; 8192], 0).unwrap();
    /// if f.zero_range(4096, 4096).is_ok() {
    ///     let mut b = [9u8; 4096];
    ///     f.read_exact_at(&mut b, 4096).unwrap();
    ///     assert!(b.iter().all(|&x| x == 0));
    /// }
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// The first offset at or after `offset` that holds data, or `None` if
    /// there is only a hole up to the end (`lseek(SEEK_DATA)`; NBD's
    /// BLOCK_STATUS). In a coroutine on a loop, the call runs on the thread
    /// pool, as a file system may take a while to answer.
    ///
    /// # Errors
    /// As `lseek(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::create(&path).unwrap();
    /// f.set_len(1 << 20).unwrap();
    /// f.write_all_at(b"x", 512 << 10).unwrap();
    /// // Where data starts at or after 0 (file systems may round to their blocks).
    /// let data = f.seek_data(0).unwrap().unwrap();
    /// assert!(data <= 512 << 10);
    /// assert_eq!(f.seek_data(1 << 20).unwrap(), None); // at the end: no data
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let fd = self.as_raw_fd();
        // A file system may take its time to answer: off the loop's thread.
        match blocking(move || lseek(fd, offset, libc::SEEK_DATA)) {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            r => r.map(Some),
        }
    }

    /// The first offset at or after `offset` in a hole; the end of the file
    /// counts as one (`lseek(SEEK_HOLE)`). On the thread pool, as
    /// [`seek_data`](Self::seek_data).
    ///
    /// # Errors
    /// As `lseek(2)`; `ENXIO` when `offset` is past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::File;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-{}-{}", std::process::id(), line!()));
    /// let f = File::create(&path).unwrap();
    /// f.write_all_at(&[1u8; 4096], 0).unwrap();
    /// // The end of the file counts as a hole.
    /// assert_eq!(f.seek_hole(0).unwrap(), 4096);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        let fd = self.as_raw_fd();
        blocking(move || lseek(fd, offset, libc::SEEK_HOLE))
    }
}

fn lseek(fd: RawFd, offset: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain syscall on a borrowed fd. The file position it moves
    // is not used by this type's positional I/O.
    let r = unsafe { libc::lseek(fd, to_off(offset)?, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl IntoRawFd for File {
    fn into_raw_fd(self) -> RawFd {
        self.inner.into_raw_fd()
    }
}

impl From<File> for OwnedFd {
    fn from(f: File) -> OwnedFd {
        f.inner.into()
    }
}

impl From<std::fs::File> for File {
    fn from(f: std::fs::File) -> File {
        File::from_std(f)
    }
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}
