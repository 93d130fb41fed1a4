//! A copy-on-write layer in memory over a read-only device: qemu-nbd's
//! `-s/--snapshot`, where writes go to a temporary overlay and the image
//! never changes. qemu-nbd puts the overlay in a temporary qcow2 file;
//! here it is a sparse [`MemDisk`], so it costs memory for what clients
//! write (in whole 4 KiB blocks), and is gone when the server exits, as
//! qemu-nbd's temporary file is.
//!
//! Each 4 KiB block is read from the base until it is first written; a
//! write that covers part of a block copies the rest from the base first
//! (under a lock, so two partial writes to one block do not both copy).

use std::io;
use std::ops::Deref;
use std::sync::Mutex;

use costack::sync::CoMutex;

use super::{BlockDevice, Extent, MemDisk};

/// The overlay's block: what is copied from the base at a time.
pub const BLOCK: u64 = 4096;

/// Writes of zeroes are done in pieces of this many bytes.
const ZERO_CHUNK: u64 = 1 << 20;

/// `base` (any pointer to a device) seen through a writable overlay.
pub struct Overlay<D> {
    base: D,
    top: MemDisk,
    /// One bit per [`BLOCK`]: set once the block lives in `top`.
    written: Mutex<Vec<u64>>,
    /// Serializes copies of partly written blocks from the base (a base
    /// read may suspend the coroutine: not under a plain mutex).
    copying: CoMutex<()>,
}

impl<D: Deref> Overlay<D>
where
    D::Target: BlockDevice,
{
    /// An overlay over `base`, of its size, empty.
    pub fn new(base: D) -> Self {
        let size = base.size();
        let blocks = size.div_ceil(BLOCK);
        Overlay {
            top: MemDisk::new(size),
            written: Mutex::new(vec![0; blocks.div_ceil(64) as usize]),
            copying: CoMutex::new(()),
            base,
        }
    }

    fn is_written(&self, block: u64) -> bool {
        let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn mark_written(&self, first: u64, end: u64) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        for b in first..end {
            w[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    /// Makes `block` live in the overlay, its bytes copied from the base.
    fn copy_up(&self, block: u64) -> io::Result<()> {
        if self.is_written(block) {
            return Ok(());
        }
        let _copying = self.copying.lock();
        if self.is_written(block) {
            return Ok(());
        }
        let start = block * BLOCK;
        let len = BLOCK.min(self.top.size() - start) as usize;
        let mut buf = vec![0; len];
        self.base.read_at(&mut buf, start)?;
        self.top.write_at(&buf, start)?;
        self.mark_written(block, block + 1);
        Ok(())
    }

    /// Copies up the blocks that `offset..offset + len` covers only in
    /// part (its first and last), then marks every block it covers.
    fn prepare_write(&self, offset: u64, len: u64) -> io::Result<(u64, u64)> {
        let (first, end) = (offset / BLOCK, (offset + len).div_ceil(BLOCK));
        let block_end = |b: u64| ((b + 1) * BLOCK).min(self.top.size());
        if !offset.is_multiple_of(BLOCK) || block_end(first) > offset + len {
            self.copy_up(first)?;
        }
        let last = end - 1;
        if last != first && block_end(last) > offset + len {
            self.copy_up(last)?;
        }
        Ok((first, end))
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.top.size() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request beyond the end of the disk",
            )),
        }
    }
}

impl<D: Deref> BlockDevice for Overlay<D>
where
    D::Target: BlockDevice,
{
    fn size(&self) -> u64 {
        self.top.size()
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        // Runs of blocks from the same side, one read each.
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let in_top = self.is_written(at / BLOCK);
            let mut end = ((at / BLOCK + 1) * BLOCK - offset).min(buf.len() as u64) as usize;
            while end < buf.len() && self.is_written((offset + end as u64) / BLOCK) == in_top {
                end = ((offset + end as u64) / BLOCK * BLOCK + BLOCK - offset).min(buf.len() as u64)
                    as usize;
            }
            let piece = &mut buf[pos..end];
            if in_top {
                self.top.read_at(piece, at)?;
            } else {
                self.base.read_at(piece, at)?;
            }
            pos = end;
        }
        Ok(())
    }

    /// The base's mapping, for a range no write has reached: a write that
    /// lands after this only changes the overlay, never the bytes sent.
    fn read_mapped(&self, offset: u64, len: usize) -> Option<costack::net::SendSlice<'_>> {
        self.check(offset, len as u64).ok()?;
        let (first, end) = (offset / BLOCK, (offset + len as u64).div_ceil(BLOCK));
        if (first..end).any(|b| self.is_written(b)) {
            return None;
        }
        self.base.read_mapped(offset, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let (first, end) = self.prepare_write(offset, buf.len() as u64)?;
        self.top.write_at(buf, offset)?;
        self.mark_written(first, end);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        // Nothing to make durable: the overlay dies with the server.
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        // Advisory: the data stays what it was, which a discard allows.
        self.check(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_punch_hole: bool) -> io::Result<()> {
        self.check(offset, len)?;
        let zeroes = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK);
            self.write_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check(offset, len)?;
        // Data everywhere: always true of an overlay's contents (flags 0:
        // allocated, not known to be zero).
        Ok(vec![Extent {
            length: len,
            flags: 0,
        }])
    }

    /// Blocks written since the start are this layer's (depth 1); the rest
    /// is the base's, one layer further down.
    fn allocation_depth(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check(offset, len)?;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let push = |out: &mut Vec<Extent>, length: u64, flags: u32| match out.last_mut() {
            Some(e) if e.flags == flags => e.length += length,
            _ => out.push(Extent { length, flags }),
        };
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let run_end = ((block + 1) * BLOCK).min(end);
            if self.is_written(block) {
                push(&mut out, run_end - at, 1);
                at = run_end;
                continue;
            }
            // Up to the next written block, from the base.
            let mut stop = run_end;
            while stop < end && !self.is_written(stop / BLOCK) {
                stop = ((stop / BLOCK + 1) * BLOCK).min(end);
            }
            let mut covered = at;
            for e in self.base.allocation_depth(at, stop - at)? {
                let n = e.length.min(stop - covered);
                if n == 0 {
                    break;
                }
                push(&mut out, n, if e.flags == 0 { 0 } else { e.flags + 1 });
                covered += n;
            }
            if covered < stop {
                // The base answered for less: report what is known.
                break;
            }
            at = stop;
        }
        Ok(out)
    }

    fn bitmap_names(&self) -> io::Result<Vec<String>> {
        self.base.bitmap_names()
    }

    fn dirty_bitmap(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.base.dirty_bitmap(name, offset, len)
    }

    fn close(&self) -> io::Result<()> {
        // The base was opened read-only; the overlay is dropped.
        self.base.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use costack::aio::EventLoop;
    use std::sync::Arc;

    fn base(size: usize) -> Arc<MemDisk> {
        let disk = MemDisk::new(size as u64);
        let pattern: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        disk.write_at(&pattern, 0).unwrap();
        Arc::new(disk)
    }

    /// The base never changes, and reads see the base under the writes.
    #[test]
    fn writes_land_in_the_overlay_and_the_base_is_untouched() {
        EventLoop::new().unwrap().block_on(|| {
            let size = 10 * BLOCK as usize + 100; // a partial last block
            let b = base(size);
            let before = {
                let mut v = vec![0; size];
                b.read_at(&mut v, 0).unwrap();
                v
            };
            let o = Overlay::new(b.clone());
            let mut model = before.clone();
            let writes: &[(u64, usize, u8)] = &[
                (100, 50, 1),                // inside one block
                (4000, 200, 2),              // across a block boundary
                (8192, 4096, 3),             // one whole block
                (3 * 4096 + 10, 9000, 4),    // partial, whole, partial
                (size as u64 - 150, 150, 5), // the partial last block
            ];
            for &(off, len, v) in writes {
                o.write_at(&vec![v; len], off).unwrap();
                model[off as usize..off as usize + len].fill(v);
            }
            o.write_zeroes(6 * 4096 + 1, 5000, true).unwrap();
            model[6 * 4096 + 1..6 * 4096 + 5001].fill(0);
            o.trim(0, 4096).unwrap();
            let mut got = vec![0; size];
            o.read_at(&mut got, 0).unwrap();
            assert!(got == model, "overlay contents differ from the model");
            for off in [0, 17, 4095, 4097, 9000] {
                let mut piece = vec![0; 700];
                o.read_at(&mut piece, off).unwrap();
                assert_eq!(piece, model[off as usize..off as usize + 700]);
            }
            let mut after = vec![0; size];
            b.read_at(&mut after, 0).unwrap();
            assert!(after == before, "the base changed");
            assert!(o.read_at(&mut [0; 2], size as u64 - 1).is_err());
            assert!(o.write_at(&[0; 2], size as u64 - 1).is_err());
        });
    }

    /// Unwritten ranges are sent from the base's mapping; written ones
    /// are not.
    #[test]
    fn only_unwritten_ranges_are_read_from_the_base_mapping() {
        use crate::block::raw::FileDisk;
        let path = std::env::temp_dir().join(format!("costack-overlay-map-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 64 * BLOCK as usize]).unwrap();
        let b = Arc::new(FileDisk::open(&path, true, false).unwrap());
        EventLoop::new().unwrap().block_on(move || {
            let o = Overlay::new(b);
            assert!(o.read_mapped(0, 16 * BLOCK as usize).is_some());
            o.write_at(&[1; 10], 5 * BLOCK + 3).unwrap();
            assert!(o.read_mapped(0, 16 * BLOCK as usize).is_none());
            assert!(o.read_mapped(4 * BLOCK, BLOCK as usize).is_some());
            assert!(o.read_mapped(5 * BLOCK + 4000, 10).is_none());
            assert!(o.read_mapped(6 * BLOCK, 16 * BLOCK as usize).is_some());
            assert!(o.read_mapped(63 * BLOCK, 2 * BLOCK as usize).is_none());
        });
        std::fs::remove_file(&path).unwrap();
    }
}
