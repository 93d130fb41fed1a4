//! The file an image format lives in, as its driver uses it: positioned
//! reads and writes, the write barrier, the length, and holes.
//!
//! Format drivers reach their file only through [`ImageFile`], so one seam
//! sits under all of them: production passes a [`costack::fs::File`]
//! (io_uring where the kernel has it); a test can pass a recorder that logs
//! every write and barrier, and rebuild from the log every image a power
//! cut could have left (see `tests/crash_states.rs`).

use std::io;

use costack::fs::File;

/// Positioned I/O on an image's file.
///
/// What a driver may rely on after a power cut is only what a barrier
/// ([`sync_data`](Self::sync_data)) made durable: every write completed
/// before the barrier was called is on the device once it returns; writes
/// after it, or not completed when it was called, may reach the device in
/// any order, or not at all.
pub trait ImageFile: Send + Sync {
    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the file ends first; else the read's error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`, extending the file if needed.
    ///
    /// # Errors
    /// The write's error (part of `buf` may have been written).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// The barrier: every write completed before this call is durable when
    /// it returns, the file's length included (`fdatasync`).
    ///
    /// # Errors
    /// The sync's error; nothing is known durable then.
    fn sync_data(&self) -> io::Result<()>;

    /// The file's length in bytes.
    ///
    /// # Errors
    /// As `fstat(2)`.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    ///
    /// # Errors
    /// As [`len`](Self::len).
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncates or extends (sparsely) the file to `len` bytes.
    ///
    /// # Errors
    /// As `ftruncate(2)`.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Deallocates `len` bytes at `offset`: they read as zeros after, and
    /// the length stays (`fallocate(PUNCH_HOLE | KEEP_SIZE)`). Like a
    /// write, durable only after a barrier.
    ///
    /// # Errors
    /// `Unsupported` (the default) or `EOPNOTSUPP` where the file cannot
    /// have holes; else as `fallocate(2)`.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Makes `len` bytes at `offset` read as zeros without writing them,
    /// keeping them allocated (`fallocate(ZERO_RANGE | KEEP_SIZE)`).
    ///
    /// # Errors
    /// As [`punch_hole`](Self::punch_hole).
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// The first offset at or after `offset` that holds data, `None` if
    /// only a hole follows (`lseek(SEEK_DATA)`).
    ///
    /// # Errors
    /// `Unsupported` (the default) where holes cannot be found; else as
    /// `lseek(2)`.
    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let _ = offset;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// The first offset at or after `offset` in a hole, the end of the
    /// file counting as one (`lseek(SEEK_HOLE)`).
    ///
    /// # Errors
    /// As [`seek_data`](Self::seek_data).
    fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        let _ = offset;
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl ImageFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        File::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        File::write_all_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn len(&self) -> io::Result<u64> {
        File::len(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        File::punch_hole(self, offset, len)
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        File::zero_range(self, offset, len)
    }

    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        File::seek_data(self, offset)
    }

    fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        File::seek_hole(self, offset)
    }
}
