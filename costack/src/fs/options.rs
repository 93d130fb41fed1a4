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
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// let f = OpenOptions::new().read(true).write(true).create(true).open(&path).unwrap();
    /// f.write_all_at(b"rw", 0).unwrap();
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn new() -> OpenOptions {
        OpenOptions {
            std: std::fs::OpenOptions::new(),
            flags: 0,
        }
    }

    /// Opens for reading.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// std::fs::write(&path, b"ro").unwrap();
    /// let f = OpenOptions::new().read(true).open(&path).unwrap();
    /// assert!(f.write_all_at(b"x", 0).is_err()); // opened for reading only
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn read(&mut self, read: bool) -> &mut Self {
        self.std.read(read);
        self
    }

    /// Opens for writing.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// std::fs::write(&path, b"....").unwrap();
    /// let f = OpenOptions::new().write(true).open(&path).unwrap();
    /// f.write_all_at(b"ab", 1).unwrap();
    /// assert_eq!(std::fs::read(&path).unwrap(), b".ab.");
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.std.write(write);
        self
    }

    /// Opens for appending.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// let f = OpenOptions::new().append(true).create(true).open(&path).unwrap();
    /// assert_eq!(f.len().unwrap(), 0);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn append(&mut self, append: bool) -> &mut Self {
        self.std.append(append);
        self
    }

    /// Truncates to 0 bytes on open.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// std::fs::write(&path, b"old contents").unwrap();
    /// let f = OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    /// assert_eq!(f.len().unwrap(), 0);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.std.truncate(truncate);
        self
    }

    /// Creates the file if it does not exist.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// # std::fs::remove_file(&path).ok();
    /// let f = OpenOptions::new().write(true).create(true).open(&path).unwrap();
    /// assert!(f.is_empty().unwrap());
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.std.create(create);
        self
    }

    /// Creates the file, failing if it exists.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// std::fs::write(&path, b"exists").unwrap();
    /// let r = OpenOptions::new().write(true).create_new(true).open(&path);
    /// assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.std.create_new(create_new);
        self
    }

    /// Permission bits of a created file (before the umask).
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// use std::os::unix::fs::PermissionsExt;
    /// # std::fs::remove_file(&path).ok();
    /// let f = OpenOptions::new().write(true).create(true).mode(0o600).open(&path).unwrap();
    /// drop(f);
    /// assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.std.mode(mode);
        self
    }

    /// Bypasses the page cache (`O_DIRECT`): buffers, offsets and lengths
    /// must then be aligned to the device's logical block size.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// // tmpfs refuses O_DIRECT; real disks take it, with aligned buffers.
    /// match OpenOptions::new().read(true).write(true).create(true).direct(true).open(&path) {
    ///     Ok(f) => println!("direct I/O on {f:?}"),
    ///     Err(e) => println!("no O_DIRECT here: {e}"),
    /// }
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn direct(&mut self, direct: bool) -> &mut Self {
        if direct {
            self.flags |= libc::O_DIRECT;
        } else {
            self.flags &= !libc::O_DIRECT;
        }
        self
    }

    /// Extra `open(2)` flags, or-ed in.
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// const O_NOATIME: i32 = 0o1000000; // Linux
    /// std::fs::write(&path, b"x").unwrap();
    /// // O_NOATIME needs to own the file (we do); refused otherwise.
    /// let f = OpenOptions::new().read(true).custom_flags(O_NOATIME).open(&path);
    /// assert!(f.is_ok());
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.flags |= flags;
        self
    }

    /// Opens `path` (on the thread pool when called in a coroutine on an
    /// event loop).
    ///
    /// # Errors
    /// As `open(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("costack-doc-o-{}", std::process::id()));
    /// use costack::aio::EventLoop;
    ///
    /// let p = path.clone();
    /// EventLoop::new().unwrap().block_on(move || {
    ///     // In a coroutine on a loop, open(2) runs on the thread pool.
    ///     let f = OpenOptions::new().write(true).create(true).open(&p).unwrap();
    ///     f.write_all_at(b"ok", 0).unwrap();
    /// });
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn open<P: AsRef<Path>>(&self, path: P) -> io::Result<File> {
        let mut opts = self.std.clone();
        opts.custom_flags(self.flags);
        let path = path.as_ref().to_path_buf();
        let f = crate::aio::file_io::blocking(move || opts.open(path))?;
        Ok(File::from_std(f))
    }
}
