//! [`RecvSlice`]: where a receive puts its bytes: memory the program owns,
//! or a range of a writable file mapping that only the kernel writes.

use std::marker::PhantomData;
use std::ptr::NonNull;

/// The destination of [`TcpStream::recv_slice`](super::TcpStream::recv_slice)
/// (and [`UnixStream`](super::UnixStream::recv_slice)'s): a mutable byte
/// slice, or a range of a writable [`FileMap`](crate::fs::FileMap), into
/// which the kernel copies the socket's bytes straight into the file's
/// page cache.
///
/// As with [`SendSlice`](super::SendSlice), Rust code never touches the
/// bytes of a mapped range: another process may truncate or rewrite the
/// file at any time. A receive into a page that is gone (or that the file
/// system cannot allocate: a full disk under a sparse file) fails with
/// `EFAULT` and leaves the bytes it did not take in the socket.
///
/// ```
/// use costack::net::RecvSlice;
///
/// let mut buf = [0u8; 8];
/// let mut r = RecvSlice::new(&mut buf);
/// r.advance(3);
/// assert_eq!(r.len(), 5);
/// assert!(!r.is_mapped());
/// ```
pub struct RecvSlice<'a> {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: a `RecvSlice` of memory is an exclusive borrow, as `&mut [u8]`
// is; one of a mapping points at bytes that only the kernel accesses (see
// `FileMap`, which is `Sync`). Neither lets two threads race in Rust code.
unsafe impl Send for RecvSlice<'_> {}
// SAFETY: `&RecvSlice` allows reading its length and nothing else.
unsafe impl Sync for RecvSlice<'_> {}

impl<'a> RecvSlice<'a> {
    /// A slice of memory.
    pub fn new(buf: &'a mut [u8]) -> RecvSlice<'a> {
        RecvSlice {
            ptr: NonNull::from(&mut *buf).cast(),
            len: buf.len(),
            mapped: false,
            _borrow: PhantomData,
        }
    }

    /// `len` bytes of a writable file mapping at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must lie in a writable mapping that stays mapped
    /// for `'a` and whose bytes no Rust code accesses.
    #[cfg(target_os = "linux")]
    pub(crate) unsafe fn mapped(ptr: NonNull<u8>, len: usize) -> RecvSlice<'a> {
        RecvSlice {
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

    /// Drops the first `n` bytes (those a receive filled).
    ///
    /// # Panics
    /// If `n` is more than its length.
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.len,
            "advancing a RecvSlice by {n} bytes past its length {}",
            self.len
        );
        // SAFETY: `n <= len`: within (or one past) the borrowed bytes.
        self.ptr = unsafe { self.ptr.add(n) };
        self.len -= n;
    }

    /// The start and length, for the kernel.
    pub(crate) fn raw_parts(&mut self) -> (*mut u8, usize) {
        (self.ptr.as_ptr(), self.len)
    }
}

impl std::fmt::Debug for RecvSlice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvSlice")
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .finish()
    }
}
