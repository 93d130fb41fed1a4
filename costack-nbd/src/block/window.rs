//! A device seen from an offset on: qemu-nbd's `-o/--offset`, which puts
//! a raw layer with an `offset` over the image, so the export is the
//! image's bytes from that offset to its end.

use std::io;
use std::ops::Deref;

use super::{BlockDevice, Extent};

/// `inner`'s bytes from `offset` on; `D` is any pointer to a device.
pub struct Window<D> {
    inner: D,
    offset: u64,
}

impl<D: Deref> Window<D>
where
    D::Target: BlockDevice,
{
    /// The bytes of `inner` from `offset` to its end.
    ///
    /// # Errors
    /// `InvalidInput` if `offset` is past the end of `inner`.
    ///
    /// ```
    /// use costack_nbd::block::window::Window;
    /// use costack_nbd::block::{BlockDevice, MemDisk};
    ///
    /// let disk = MemDisk::new(8192);
    /// disk.write_at(b"tail", 4096).unwrap();
    /// let w = Window::new(&disk, 4096).unwrap();
    /// let mut buf = [0u8; 4];
    /// w.read_at(&mut buf, 0).unwrap();
    /// assert_eq!((&buf, w.size()), (b"tail", 4096));
    /// ```
    pub fn new(inner: D, offset: u64) -> io::Result<Self> {
        if offset > inner.size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} is past the end of the image ({} bytes)",
                    inner.size()
                ),
            ));
        }
        Ok(Window { inner, offset })
    }

    /// `at` in the window as an offset of `inner`, for `len` bytes that
    /// must lie inside the window.
    fn map(&self, at: u64, len: u64) -> io::Result<u64> {
        match at.checked_add(len) {
            Some(end) if end <= self.size() => Ok(at + self.offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request beyond the end of the disk",
            )),
        }
    }
}

impl<D: Deref> BlockDevice for Window<D>
where
    D::Target: BlockDevice,
{
    fn size(&self) -> u64 {
        self.inner.size() - self.offset
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self.map(offset, buf.len() as u64)?;
        self.inner.read_at(buf, at)
    }

    fn read_mapped(&self, offset: u64, len: usize) -> Option<costack::net::SendSlice<'_>> {
        let at = self.map(offset, len as u64).ok()?;
        self.inner.read_mapped(at, len)
    }

    fn write_mapped(&self, offset: u64, len: usize) -> Option<costack::net::RecvSlice<'_>> {
        let at = self.map(offset, len as u64).ok()?;
        self.inner.write_mapped(at, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = self.map(offset, buf.len() as u64)?;
        self.inner.write_at(buf, at)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        let at = self.map(offset, len)?;
        self.inner.trim(at, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()> {
        let at = self.map(offset, len)?;
        self.inner.write_zeroes(at, len, may_punch_hole)
    }

    fn can_fast_zero(&self) -> bool {
        self.inner.can_fast_zero()
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let at = self.map(offset, len)?;
        self.inner.block_status(at, len)
    }

    fn allocation_depth(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let at = self.map(offset, len)?;
        self.inner.allocation_depth(at, len)
    }

    fn bitmap_names(&self) -> io::Result<Vec<String>> {
        self.inner.bitmap_names()
    }

    fn dirty_bitmap(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let at = self.map(offset, len)?;
        self.inner.dirty_bitmap(name, at, len)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let at = self.map(offset, len)?;
        self.inner.cache(at, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;

    #[test]
    fn every_operation_is_shifted_and_bounded() {
        let disk = MemDisk::new(1 << 20);
        let w = Window::new(&disk, 1000).unwrap();
        assert_eq!(w.size(), (1 << 20) - 1000);
        w.write_at(b"abc", 0).unwrap();
        let mut buf = [0u8; 3];
        disk.read_at(&mut buf, 1000).unwrap();
        assert_eq!(&buf, b"abc");
        w.write_zeroes(1, 2, false).unwrap();
        disk.read_at(&mut buf, 1000).unwrap();
        assert_eq!(&buf, b"a\0\0");
        let end = w.size();
        assert!(
            w.read_at(&mut buf, end - 2).is_err(),
            "past the window's end"
        );
        assert!(w.write_at(b"x", end).is_err());
        assert!(w.trim(end - 1, 2).is_err());
        w.read_at(&mut buf, end - 3).unwrap();
        let total: u64 = w
            .block_status(0, end)
            .unwrap()
            .iter()
            .map(|e| e.length)
            .sum();
        assert!(total <= end && total > 0);
        assert!(Window::new(&disk, (1 << 20) + 1).is_err());
        assert_eq!(Window::new(&disk, 1 << 20).unwrap().size(), 0);
    }
}
