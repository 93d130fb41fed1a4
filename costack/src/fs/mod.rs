//! Files whose I/O, in a coroutine on an event loop, suspends the
//! coroutine instead of blocking the thread.
//!
//! Reads and writes that cannot wait for a device are done right on the
//! loop thread: on memory file systems (tmpfs, ramfs) always, elsewhere
//! with `RWF_NOWAIT` (page-cache hits), never for `O_DIRECT` files. This
//! saves the round trip below for page-cache hits; a coroutine whose I/O
//! all completes this way yields to the loop every few dozen calls so that
//! it cannot starve the loop's other work.
//!
//! Other reads and writes, syncs and `fallocate` go to the loop's io_uring
//! when the kernel offers one (see [`EventLoop::uses_io_uring`]), else to the
//! [thread pool](crate::aio::thread_pool) (QEMU's `aio=io_uring` and
//! `aio=threads`). Set `COSTACK_NO_IO_URING=1`, or create the loop with
//! [`EventLoop::without_io_uring`], to force the thread pool. Opening and
//! resizing always use the thread pool; `len` and the extent queries are
//! direct system calls (metadata lookups that do not wait for the disk on
//! local file systems).
//!
//! Outside a coroutine on an event loop the calls simply block the thread,
//! like std's.
//!
//! All I/O is positional (`pread`/`pwrite`), so coroutines can share a
//! `&File`.
//!
//! A [`FileMap`] sends a file's bytes to a socket from the page cache,
//! without reading them into a buffer first.
//!
//! ```
//! use costack::aio::EventLoop;
//! use costack::fs::File;
//!
//! let dir = std::env::temp_dir().join(format!("costack-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("f");
//! EventLoop::new().unwrap().block_on(move || {
//!     let f = File::create(&path).unwrap();
//!     f.write_all_at(b"hello", 0).unwrap();
//!     let mut buf = [0; 5];
//!     f.read_exact_at(&mut buf, 0).unwrap();
//!     assert_eq!(&buf, b"hello");
//!     assert_eq!(f.len().unwrap(), 5);
//!     std::fs::remove_file(&path).unwrap();
//! });
//! ```
//!
//! [`EventLoop::uses_io_uring`]: crate::aio::EventLoop::uses_io_uring
//! [`EventLoop::without_io_uring`]: crate::aio::EventLoop::without_io_uring

mod file;
mod map;
mod options;

pub use file::File;
pub use map::FileMap;
pub use options::OpenOptions;
