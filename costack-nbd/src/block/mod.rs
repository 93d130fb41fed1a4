//! Block drivers: what the NBD protocol code serves, and the formats.
//!
//! The server only needs the operations of [`BlockDevice`]. Every method
//! takes `&self`: requests on one connection (and requests from several
//! connections) run concurrently, so implementations use interior
//! mutability. Callers validate offsets and lengths against
//! [`BlockDevice::size`] before calling; implementations still reject
//! out-of-range accesses with [`io::ErrorKind::InvalidInput`] rather than
//! panicking.
//!
//! Nothing here knows the NBD protocol (it depends on this layer, not the
//! other way round); the status bits of [`Extent`] are the block layer's,
//! equal to the wire's by a check in `protocol::request`.
//!
//! Each format is one module and the protocol code knows none of them:
//! [`mem`] (a sparse memory disk), [`raw`] (a raw image file) and
//! [`qcow2`] (qcow2 images).

use std::io;

pub mod image_file;
pub mod mem;
pub mod modes;
pub mod overlay;
pub mod qcow2;
pub mod raw;
pub mod window;

pub use image_file::ImageFile;
pub use mem::MemDisk;

/// [`Extent::flags`] of [`BlockDevice::block_status`]: the bytes are not
/// allocated (the wire's `NBD_STATE_HOLE`).
pub const STATE_HOLE: u32 = 1 << 0;
/// [`Extent::flags`] of [`BlockDevice::block_status`]: the bytes read as
/// zeros (`NBD_STATE_ZERO`).
pub const STATE_ZERO: u32 = 1 << 1;
/// [`Extent::flags`] of [`BlockDevice::dirty_bitmap`]: written since the
/// bitmap was cleared (`NBD_STATE_DIRTY`).
pub const STATE_DIRTY: u32 = 1 << 0;

/// One run of bytes sharing the same status in one metadata context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (non-zero).
    pub length: u64,
    /// The status, as the context defines it: for `base:allocation`
    /// ([`BlockDevice::block_status`]) [`STATE_HOLE`] and/or
    /// [`STATE_ZERO`]; for
    /// `qemu:allocation-depth` the depth; for `qemu:dirty-bitmap:NAME`
    /// [`STATE_DIRTY`] or 0.
    pub flags: u32,
}

/// What the NBD server needs from a storage backend.
///
/// Implementations that are shared between threads should also be
/// `Send + Sync` (the provided [`MemDisk`] is).
pub trait BlockDevice {
    /// Size of the device in bytes.
    fn size(&self) -> u64;

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The `len` bytes at `offset` as a range of the image file's
    /// mapping, to be sent from the page cache instead of read into a
    /// buffer ([`costack::fs::FileMap`]): `None` unless the device is a
    /// file that is mapped and every page of the range is cached (a send
    /// then does not wait for the disk). The default: `None`.
    fn read_mapped(&self, offset: u64, len: usize) -> Option<costack::net::SendSlice<'_>> {
        let _ = (offset, len);
        None
    }

    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Where the `len` bytes of a write at `offset` may be received
    /// straight from the socket into the image's page cache (one copy
    /// fewer than a receive into a buffer and a [`write_at`]): a range of
    /// the image file's writable mapping, offered only where touching it
    /// never waits for a disk (a memory file system) and where a write
    /// stores its bytes unchanged and does nothing else. Bytes received
    /// there are written; the write then needs nothing more but a
    /// [`flush`] for FUA. The default: `None`.
    ///
    /// [`write_at`]: BlockDevice::write_at
    /// [`flush`]: BlockDevice::flush
    fn write_mapped(&self, offset: u64, len: usize) -> Option<costack::net::RecvSlice<'_>> {
        let _ = (offset, len);
        None
    }

    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Discards (punches a hole in) `len` bytes at `offset`. Advisory: an
    /// implementation may discard less, and the contents of the range are
    /// unspecified afterwards.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read back as zero. With
    /// `may_punch_hole` false (`NBD_CMD_FLAG_NO_HOLE`) the range must stay
    /// allocated.
    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()>;

    /// Whether [`write_zeroes`](Self::write_zeroes) is cheaper than writing
    /// a buffer of zeroes (controls `NBD_FLAG_SEND_FAST_ZERO`).
    fn can_fast_zero(&self) -> bool {
        false
    }

    /// Allocation status of `len` bytes at `offset`, as consecutive extents
    /// starting at `offset`. The extents may cover less than `len` (but at
    /// least one byte when `len > 0`) and never extend past the end of the
    /// device.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>>;

    /// `qemu:allocation-depth` of `len` bytes at `offset`: extents (as for
    /// [`block_status`](Self::block_status)) whose `flags` is the layer of
    /// the backing chain that holds the bytes: 1 this image, 2 its backing
    /// file, and so on; 0 none (they read as zeros). The default, for
    /// devices without a backing file: 1 throughout.
    fn allocation_depth(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = self.size().min(offset.saturating_add(len));
        if offset >= end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "allocation depth past the end of the device",
            ));
        }
        Ok(vec![Extent {
            length: end - offset,
            flags: 1,
        }])
    }

    /// The persistent dirty bitmaps this device can export as
    /// `qemu:dirty-bitmap:NAME`. The default: none.
    fn bitmap_names(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Bitmap `name`'s view of `len` bytes at `offset`: extents (as for
    /// [`block_status`](Self::block_status)) whose `flags` is
    /// [`STATE_DIRTY`] where a
    /// write changed the bytes since the bitmap was cleared, else 0.
    ///
    /// # Errors
    /// `NotFound` when there is no such bitmap (the default: there are
    /// none).
    fn dirty_bitmap(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _ = (offset, len);
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no dirty bitmap {name:?}"),
        ))
    }

    /// Makes every completed write durable and finishes what only the
    /// end of serving does (qcow2: dirty bitmaps saved, the file trimmed).
    /// Called once, when the server stops; the default flushes.
    fn close(&self) -> io::Result<()> {
        self.flush()
    }

    /// Hint that `len` bytes at `offset` will be accessed soon
    /// (`NBD_CMD_CACHE`). The default does nothing.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}
