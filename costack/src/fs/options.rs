//! Options for opening files, with `O_DIRECT`.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::File;

/// How to open a [`File`], as `std::fs::OpenOptions`, plus
/// [`direct`](OpenOptions::direct) for `O_DIRECT` (QEMU's `cache=none`).
///
/// ```no_run
/// let f = costack::fs::OpenOptions::new()
///     .read(true)
///     .write(true)
///     .direct(true)
///     .open("/var/lib/disk.img")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OpenOptions {
    std: std::fs::OpenOptions,
    flags: i32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// No access mode set yet (as std).
    pub fn new() -> OpenOptions {
        OpenOptions {
            std: std::fs::OpenOptions::new(),
            flags: 0,
        }
    }

    /// Opens for reading.
    pub fn read(&mut self, read: bool) -> &mut Self {
        self.std.read(read);
        self
    }

    /// Opens for writing.
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.std.write(write);
        self
    }

    /// Opens for appending.
    pub fn append(&mut self, append: bool) -> &mut Self {
        self.std.append(append);
        self
    }

    /// Truncates to 0 bytes on open.
    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.std.truncate(truncate);
        self
    }

    /// Creates the file if it does not exist.
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.std.create(create);
        self
    }

    /// Creates the file, failing if it exists.
    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.std.create_new(create_new);
        self
    }

    /// Permission bits of a created file (before the umask).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.std.mode(mode);
        self
    }

    /// Bypasses the page cache (`O_DIRECT`): buffers, offsets and lengths
    /// must then be aligned to the device's logical block size.
    pub fn direct(&mut self, direct: bool) -> &mut Self {
        if direct {
            self.flags |= libc::O_DIRECT;
        } else {
            self.flags &= !libc::O_DIRECT;
        }
        self
    }

    /// Extra `open(2)` flags, or-ed in.
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.flags |= flags;
        self
    }

    /// Opens `path` (on the thread pool when called in a coroutine on an
    /// event loop).
    ///
    /// # Errors
    /// As `open(2)`.
    pub fn open<P: AsRef<Path>>(&self, path: P) -> io::Result<File> {
        let mut opts = self.std.clone();
        opts.custom_flags(self.flags);
        let path = path.as_ref().to_path_buf();
        let f = super::file::blocking(move || opts.open(path))?;
        Ok(File::from_std(f))
    }
}
