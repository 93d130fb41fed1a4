//! The block layer's modes that qemu-nbd sets per export, around any
//! driver: what discards do (`--discard`), whether writes of zeroes
//! become write-zeroes (`--detect-zeroes`), and when writes reach the disk
//! (`--cache`: flushed after each write, or flushes ignored).

use std::io;
use std::ops::Deref;

use super::{BlockDevice, Extent};

/// When data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On flush (and FUA) requests: writeback and none.
    OnFlush,
    /// After every write, before its reply: writethrough and directsync.
    EveryWrite,
    /// Flush requests do nothing: unsafe. Closing the device still writes
    /// back what the driver holds.
    Never,
}

/// What zero-filled writes become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroDetection {
    /// Nothing: they are written.
    Off,
    /// Write-zeroes that keep the space allocated.
    Zero,
    /// Write-zeroes that may free the space.
    Unmap,
}

/// The modes of one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// Discards free space (`--discard=unmap`); else they succeed and do
    /// nothing, and write-zeroes never punch holes.
    pub unmap: bool,
    /// `--detect-zeroes`.
    pub detect_zeroes: ZeroDetection,
    /// `--cache`'s flushing part.
    pub durability: Durability,
}

impl Modes {
    /// Whether these modes change nothing about a device's behaviour
    /// (then it need not be wrapped).
    pub fn are_plain(&self) -> bool {
        self.unmap
            && self.detect_zeroes == ZeroDetection::Off
            && self.durability == Durability::OnFlush
    }
}

/// A device served with [`Modes`]: `D` is any pointer to a device (an
/// `Arc<dyn BlockDevice + ...>`, a reference).
pub struct WithModes<D> {
    inner: D,
    modes: Modes,
}

impl<D: Deref> WithModes<D>
where
    D::Target: BlockDevice,
{
    /// `inner` served with `modes`.
    pub fn new(inner: D, modes: Modes) -> Self {
        WithModes { inner, modes }
    }

    fn after_write(&self) -> io::Result<()> {
        match self.modes.durability {
            Durability::EveryWrite => self.inner.flush(),
            Durability::OnFlush | Durability::Never => Ok(()),
        }
    }
}

impl<D: Deref> BlockDevice for WithModes<D>
where
    D::Target: BlockDevice,
{
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn read_mapped(&self, offset: u64, len: usize) -> Option<costack::net::SendSlice<'_>> {
        self.inner.read_mapped(offset, len)
    }

    fn write_mapped(&self, offset: u64, len: usize) -> Option<costack::net::RecvSlice<'_>> {
        // Only where `write_at` would store the bytes as they are and do
        // nothing after: no zero detection (it reads them), no flush.
        let plain = self.modes.detect_zeroes == ZeroDetection::Off
            && self.modes.durability != Durability::EveryWrite;
        plain.then(|| self.inner.write_mapped(offset, len))?
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let zeroes = self.modes.detect_zeroes != ZeroDetection::Off
            && !buf.is_empty()
            && buf.iter().all(|&b| b == 0);
        if zeroes {
            let punch = self.modes.detect_zeroes == ZeroDetection::Unmap && self.modes.unmap;
            self.inner.write_zeroes(offset, buf.len() as u64, punch)?;
        } else {
            self.inner.write_at(buf, offset)?;
        }
        self.after_write()
    }

    fn flush(&self) -> io::Result<()> {
        match self.modes.durability {
            Durability::Never => Ok(()),
            Durability::OnFlush | Durability::EveryWrite => self.inner.flush(),
        }
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.modes.unmap {
            // qemu's discard=ignore: the request succeeds, nothing is freed.
            return Ok(());
        }
        self.inner.trim(offset, len)?;
        self.after_write()
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()> {
        self.inner
            .write_zeroes(offset, len, may_punch_hole && self.modes.unmap)?;
        self.after_write()
    }

    fn can_fast_zero(&self) -> bool {
        self.inner.can_fast_zero()
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }

    fn allocation_depth(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.allocation_depth(offset, len)
    }

    fn bitmap_names(&self) -> io::Result<Vec<String>> {
        self.inner.bitmap_names()
    }

    fn dirty_bitmap(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.dirty_bitmap(name, offset, len)
    }

    fn close(&self) -> io::Result<()> {
        // Also under `unsafe`: what the driver holds reaches the file.
        self.inner.close()
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.cache(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory disk that counts the calls the wrapper makes.
    #[derive(Default)]
    struct Counted {
        disk: Option<MemDisk>,
        writes: AtomicUsize,
        zeroes: AtomicUsize,
        punches: AtomicUsize,
        trims: AtomicUsize,
        flushes: AtomicUsize,
    }

    impl Counted {
        fn new() -> Self {
            Counted {
                disk: Some(MemDisk::new(1 << 20)),
                ..Default::default()
            }
        }
        fn disk(&self) -> &MemDisk {
            self.disk.as_ref().unwrap()
        }
        fn n(c: &AtomicUsize) -> usize {
            c.load(Ordering::SeqCst)
        }
    }

    impl BlockDevice for Counted {
        fn size(&self) -> u64 {
            self.disk().size()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.disk().read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.disk().write_at(buf, offset)
        }
        fn flush(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
            self.trims.fetch_add(1, Ordering::SeqCst);
            self.disk().trim(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> io::Result<()> {
            self.zeroes.fetch_add(1, Ordering::SeqCst);
            if punch {
                self.punches.fetch_add(1, Ordering::SeqCst);
            }
            self.disk().write_zeroes(offset, len, punch)
        }
        fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
            self.disk().block_status(offset, len)
        }
    }

    fn modes(unmap: bool, detect_zeroes: ZeroDetection, durability: Durability) -> Modes {
        Modes {
            unmap,
            detect_zeroes,
            durability,
        }
    }

    #[test]
    fn discards_are_ignored_unless_unmap() {
        let c = Counted::new();
        let d = WithModes::new(&c, modes(false, ZeroDetection::Off, Durability::OnFlush));
        d.write_at(&[7; 4096], 0).unwrap();
        d.trim(0, 4096).unwrap();
        assert_eq!(Counted::n(&c.trims), 0);
        let mut buf = [0; 4096];
        d.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [7; 4096], "an ignored discard leaves the data");
        d.write_zeroes(0, 4096, true).unwrap();
        assert_eq!(Counted::n(&c.punches), 0, "no hole without unmap");

        let d = WithModes::new(&c, modes(true, ZeroDetection::Off, Durability::OnFlush));
        d.trim(0, 4096).unwrap();
        d.write_zeroes(0, 4096, true).unwrap();
        assert_eq!((Counted::n(&c.trims), Counted::n(&c.punches)), (1, 1));
        assert!(d.are_plain_modes());
    }

    #[test]
    fn zero_writes_become_write_zeroes_when_detected() {
        let c = Counted::new();
        let off = WithModes::new(&c, modes(true, ZeroDetection::Off, Durability::OnFlush));
        off.write_at(&[0; 512], 0).unwrap();
        assert_eq!((Counted::n(&c.writes), Counted::n(&c.zeroes)), (1, 0));
        let on = WithModes::new(&c, modes(true, ZeroDetection::Zero, Durability::OnFlush));
        on.write_at(&[0; 512], 0).unwrap();
        on.write_at(&[0, 1], 0).unwrap();
        assert_eq!((Counted::n(&c.writes), Counted::n(&c.zeroes)), (2, 1));
        assert_eq!(Counted::n(&c.punches), 0);
        let unmap = WithModes::new(&c, modes(true, ZeroDetection::Unmap, Durability::OnFlush));
        unmap.write_at(&[0; 512], 0).unwrap();
        assert_eq!((Counted::n(&c.zeroes), Counted::n(&c.punches)), (2, 1));
    }

    #[test]
    fn cache_modes_flush_after_writes_or_never() {
        let c = Counted::new();
        let through = WithModes::new(&c, modes(true, ZeroDetection::Off, Durability::EveryWrite));
        through.write_at(&[1; 512], 0).unwrap();
        through.write_zeroes(0, 512, false).unwrap();
        through.trim(0, 512).unwrap();
        assert_eq!(Counted::n(&c.flushes), 3);
        let unsafe_ = WithModes::new(&c, modes(true, ZeroDetection::Off, Durability::Never));
        unsafe_.write_at(&[1; 512], 0).unwrap();
        unsafe_.flush().unwrap();
        assert_eq!(Counted::n(&c.flushes), 3, "unsafe: flush does nothing");
        unsafe_.close().unwrap();
        assert_eq!(Counted::n(&c.flushes), 4, "closing still flushes");
    }

    impl<D> WithModes<D> {
        fn are_plain_modes(&self) -> bool {
            self.modes.are_plain()
        }
    }
}
