//! [`SendSlice`]: a buffer of a vectored send that may be memory the
//! program owns or bytes of a file mapping that only the kernel reads.

use std::marker::PhantomData;
use std::ptr::NonNull;

/// Most buffers one `sendmsg` takes (`UIO_MAXIOV`).
pub(crate) const MAX_IOV: usize = 1024;

/// One buffer of [`TcpStream::send_slices`](super::TcpStream::send_slices)
/// (and [`UnixStream`](super::UnixStream)'s): a byte slice, or a range of a
/// [`FileMap`](crate::fs::FileMap) that the kernel copies straight from the
/// page cache into the socket.
///
/// The bytes of a mapped range are never read by Rust code, here or by
/// the caller ([`as_bytes`](SendSlice::as_bytes) is `None` for them): a
/// file another process truncates or rewrites under the mapping would
/// otherwise be a `SIGBUS` or a data race. The kernel reads them, and a
/// page that is gone ends the send with `EFAULT` instead.
///
/// ```
/// use costack::net::SendSlice;
///
/// let head = [1u8, 2, 3];
/// let s = SendSlice::new(&head);
/// assert_eq!(s.len(), 3);
/// assert_eq!(s.as_bytes(), Some(&head[..]));
/// assert!(!s.is_mapped());
/// ```
#[derive(Clone, Copy)]
pub struct SendSlice<'a> {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
    _borrow: PhantomData<&'a [u8]>,
}

// SAFETY: a `SendSlice` is a shared borrow of bytes (memory, or a mapping
// that is `Sync` and read only by the kernel), as `&[u8]` is: sharing or
// sending it lets no thread write through it.
unsafe impl Send for SendSlice<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendSlice<'_> {}

impl<'a> SendSlice<'a> {
    /// A slice of memory.
    pub fn new(buf: &'a [u8]) -> SendSlice<'a> {
        SendSlice {
            // A slice's pointer is never null (dangling but aligned when
            // empty).
            ptr: NonNull::from(buf).cast(),
            len: buf.len(),
            mapped: false,
            _borrow: PhantomData,
        }
    }

    /// `len` bytes of a file mapping at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must lie in a mapping that stays mapped for `'a`
    /// (its pages may fault: the kernel's copy fails cleanly).
    #[cfg(target_os = "linux")]
    pub(crate) unsafe fn mapped(ptr: NonNull<u8>, len: usize) -> SendSlice<'a> {
        SendSlice {
            ptr,
            len,
            mapped: true,
            _borrow: PhantomData,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it points into a file mapping.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The bytes, if they are memory (`None` for a mapped range, which
    /// only the kernel reads).
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        // SAFETY: not mapped, so `ptr`/`len` came from a `&'a [u8]`.
        (!self.mapped).then(|| unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) })
    }

    /// The bytes of `range` (as `&buf[range]` for a slice).
    ///
    /// # Panics
    /// If `range` is not within it.
    ///
    /// ```
    /// use costack::net::SendSlice;
    ///
    /// let s = SendSlice::new(b"abcdef");
    /// assert_eq!(s.slice(1..3).as_bytes(), Some(&b"bc"[..]));
    /// ```
    pub fn slice(&self, range: std::ops::Range<usize>) -> SendSlice<'a> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "SendSlice range {range:?} out of bounds for length {}",
            self.len
        );
        let mut s = *self;
        s.advance(range.start);
        s.len = range.end - range.start;
        s
    }

    /// Drops the first `n` bytes.
    ///
    /// # Panics
    /// If `n` exceeds its length.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len, "advancing a SendSlice past its end");
        // SAFETY: `n <= len`, so the result stays in (or one past the end
        // of) the same buffer.
        self.ptr = unsafe { self.ptr.add(n) };
        self.len -= n;
    }

    /// Drops the first `n` bytes of `bufs`, as a send of `n` bytes used
    /// them: fully sent slices leave `bufs`, and the first one left starts
    /// where the send stopped (as [`std::io::IoSlice::advance_slices`]).
    ///
    /// # Panics
    /// If `n` exceeds their total length.
    pub fn advance_slices(bufs: &mut &mut [SendSlice<'a>], mut n: usize) {
        let mut skip = 0;
        for b in bufs.iter() {
            if n < b.len {
                break;
            }
            n -= b.len;
            skip += 1;
        }
        *bufs = &mut std::mem::take(bufs)[skip..];
        match bufs.first_mut() {
            Some(first) => first.advance(n),
            None => assert!(n == 0, "advancing SendSlices past their end"),
        }
    }

    /// As the kernel's `iovec`.
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr().cast(),
            iov_len: self.len,
        }
    }
}

impl<'a> From<&'a [u8]> for SendSlice<'a> {
    fn from(buf: &'a [u8]) -> SendSlice<'a> {
        SendSlice::new(buf)
    }
}

impl std::fmt::Debug for SendSlice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendSlice")
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .finish()
    }
}

/// Runs `f` with the `iovec`s of (at most [`MAX_IOV`] of) `bufs`: on the
/// stack for the usual handful, so that a send allocates nothing.
pub(crate) fn with_iovecs<T>(bufs: &[SendSlice<'_>], f: impl FnOnce(&[libc::iovec]) -> T) -> T {
    const ON_STACK: usize = 32;
    let bufs = &bufs[..bufs.len().min(MAX_IOV)];
    if bufs.len() <= ON_STACK {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iovecs = [empty; ON_STACK];
        for (v, b) in iovecs.iter_mut().zip(bufs) {
            *v = b.iovec();
        }
        f(&iovecs[..bufs.len()])
    } else {
        f(&bufs.iter().map(SendSlice::iovec).collect::<Vec<_>>())
    }
}

/// No `SIGPIPE` for a closed peer (`EPIPE` instead). macOS has no such
/// flag; its sockets from std are created with `SO_NOSIGPIPE`.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const NO_SIGPIPE: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const NO_SIGPIPE: libc::c_int = 0;

/// `sendmsg(2)` of `iovecs` on the non-blocking socket `fd`, without
/// `SIGPIPE` where the platform allows (a closed peer is `EPIPE`).
///
/// # Safety
/// The `iovec`s must describe buffers that stay mapped for the call.
pub(crate) unsafe fn sendmsg(fd: libc::c_int, iovecs: &[libc::iovec]) -> std::io::Result<usize> {
    let msg = crate::sys::msghdr(iovecs);
    // SAFETY: `msg` points to `iovecs`, which the caller keeps mapped;
    // the kernel only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, NO_SIGPIPE) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
