//! A sparse in-memory disk (the export without a FILE).

use std::collections::HashMap;
use std::io;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{STATE_HOLE, STATE_ZERO};
use crate::block::{BlockDevice, Extent};

/// Size of one [`MemDisk`] allocation unit.
pub const MEM_CHUNK_SIZE: usize = 64 * 1024;
const CHUNK: u64 = MEM_CHUNK_SIZE as u64;
const SHARDS: usize = 64;

type Chunk = Box<[u8]>;

/// A sparse in-memory disk.
///
/// Storage is allocated in [`MEM_CHUNK_SIZE`] chunks on first write, so a
/// large disk costs nothing until it is written to. Unallocated chunks read
/// as zeroes and are reported as `HOLE | ZERO`. Chunks live in a fixed
/// number of shards, each behind its own [`RwLock`], so concurrent requests
/// touching different regions rarely contend.
///
/// Requests are not atomic across chunks: two overlapping concurrent writes
/// may interleave at chunk granularity, which NBD permits.
#[derive(Debug)]
pub struct MemDisk {
    size: u64,
    read_only: bool,
    shards: Box<[RwLock<HashMap<u64, Chunk>>]>,
}

impl MemDisk {
    /// Creates a zero-filled, writable disk of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            read_only: false,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    /// Sets whether the disk refuses writes (builder style).
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Number of bytes of chunk storage currently allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| read_lock(s).len() as u64 * CHUNK)
            .sum()
    }

    fn shard(&self, idx: u64) -> &RwLock<HashMap<u64, Chunk>> {
        &self.shards[(idx % SHARDS as u64) as usize]
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "access beyond the end of the device",
            )),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "device is read-only",
            ))
        } else {
            Ok(())
        }
    }

    /// Calls `f(chunk_index, offset_in_chunk, len_in_chunk, position_in_range)`
    /// for each chunk piece of `[offset, offset + len)`.
    fn for_each_piece(offset: u64, len: u64, mut f: impl FnMut(u64, usize, usize, usize)) {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let idx = pos / CHUNK;
            let within = (pos % CHUNK) as usize;
            let n = (CHUNK - within as u64).min(end - pos) as usize;
            f(idx, within, n, (pos - offset) as usize);
            pos += n as u64;
        }
    }

    fn is_allocated(&self, idx: u64) -> bool {
        read_lock(self.shard(idx)).contains_key(&idx)
    }
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn new_chunk() -> Chunk {
    vec![0u8; MEM_CHUNK_SIZE].into_boxed_slice()
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        Self::for_each_piece(offset, buf.len() as u64, |idx, within, n, at| {
            let dst = &mut buf[at..at + n];
            match read_lock(self.shard(idx)).get(&idx) {
                Some(c) => dst.copy_from_slice(&c[within..within + n]),
                None => dst.fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        Self::for_each_piece(offset, buf.len() as u64, |idx, within, n, at| {
            let src = &buf[at..at + n];
            let mut shard = write_lock(self.shard(idx));
            match shard.get_mut(&idx) {
                Some(c) => c[within..within + n].copy_from_slice(src),
                // Writing zeroes into a hole changes nothing.
                None if src.iter().all(|&b| b == 0) => {}
                None => {
                    let mut c = new_chunk();
                    c[within..within + n].copy_from_slice(src);
                    shard.insert(idx, c);
                }
            }
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        // Freeing whole chunks is the useful part; partial chunks are zeroed
        // so reads stay deterministic.
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        Self::for_each_piece(offset, len, |idx, within, n, _| {
            let mut shard = write_lock(self.shard(idx));
            let whole = within == 0 && n == MEM_CHUNK_SIZE;
            if whole && may_punch_hole {
                shard.remove(&idx);
            } else if let Some(c) = shard.get_mut(&idx) {
                c[within..within + n].fill(0);
            } else if !may_punch_hole {
                shard.insert(idx, new_chunk());
            }
        });
        Ok(())
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        Self::for_each_piece(offset, len, |idx, _, n, _| {
            let flags = if self.is_allocated(idx) {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += n as u64,
                _ => out.push(Extent {
                    length: n as u64,
                    flags,
                }),
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_sync() {
        assert_send_sync::<MemDisk>();
    }

    #[test]
    fn empty_disk_is_free_and_zero() {
        let d = MemDisk::new(1 << 30);
        assert_eq!(d.allocated_bytes(), 0);
        let mut buf = vec![0xaa; 10_000];
        d.read_at(&mut buf, 12345).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(
            d.block_status(0, 1 << 30).unwrap(),
            vec![Extent {
                length: 1 << 30,
                flags: STATE_HOLE | STATE_ZERO
            }]
        );
    }

    #[test]
    fn write_then_read_across_chunks() {
        let d = MemDisk::new(4 * CHUNK);
        let data: Vec<u8> = (0..(CHUNK as usize + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        let off = CHUNK - 50;
        d.write_at(&data, off).unwrap();
        assert_eq!(d.allocated_bytes(), 3 * CHUNK);
        let mut back = vec![0; data.len()];
        d.read_at(&mut back, off).unwrap();
        assert_eq!(back, data);
        // Bytes around the write are still zero.
        let mut edge = [1u8; 10];
        d.read_at(&mut edge, off - 10).unwrap();
        assert_eq!(edge, [0; 10]);
    }

    #[test]
    fn zero_write_into_hole_allocates_nothing() {
        let d = MemDisk::new(CHUNK * 2);
        d.write_at(&[0; 4096], 0).unwrap();
        assert_eq!(d.allocated_bytes(), 0);
    }

    #[test]
    fn block_status_reports_data_and_holes() {
        let d = MemDisk::new(4 * CHUNK + 100);
        d.write_at(&[1], CHUNK + 5).unwrap();
        let ext = d.block_status(10, 4 * CHUNK + 90).unwrap();
        let hz = STATE_HOLE | STATE_ZERO;
        assert_eq!(
            ext,
            vec![
                Extent {
                    length: CHUNK - 10,
                    flags: hz
                },
                Extent {
                    length: CHUNK,
                    flags: 0
                },
                Extent {
                    length: 2 * CHUNK + 100,
                    flags: hz
                },
            ]
        );
        assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), 4 * CHUNK + 90);
    }

    #[test]
    fn trim_and_write_zeroes() {
        let d = MemDisk::new(3 * CHUNK);
        d.write_at(&vec![7; 3 * MEM_CHUNK_SIZE], 0).unwrap();
        assert_eq!(d.allocated_bytes(), 3 * CHUNK);
        // Whole middle chunk is freed, partial pieces zeroed.
        d.trim(CHUNK - 10, CHUNK + 20).unwrap();
        assert_eq!(d.allocated_bytes(), 2 * CHUNK);
        let mut buf = vec![9; 30];
        d.read_at(&mut buf, CHUNK - 15).unwrap();
        assert_eq!(&buf[..5], &[7; 5]);
        assert!(buf[5..].iter().all(|&b| b == 0));
        let mut buf = vec![9; 30];
        d.read_at(&mut buf, 2 * CHUNK).unwrap();
        assert_eq!(&buf[..10], &[0; 10]);
        assert_eq!(&buf[10..], &[7; 20]);

        // NO_HOLE keeps (or creates) allocation.
        d.write_zeroes(CHUNK, CHUNK, false).unwrap();
        assert_eq!(d.allocated_bytes(), 3 * CHUNK);
        assert_eq!(d.block_status(CHUNK, CHUNK).unwrap()[0].flags, 0);
        let mut buf = vec![9; MEM_CHUNK_SIZE];
        d.read_at(&mut buf, CHUNK).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        d.write_zeroes(0, 3 * CHUNK, true).unwrap();
        assert_eq!(d.allocated_bytes(), 0);
    }

    #[test]
    fn bounds_and_read_only() {
        let d = MemDisk::new(1000);
        let mut buf = [0u8; 10];
        assert_eq!(
            d.read_at(&mut buf, 995).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(d.read_at(&mut buf, u64::MAX - 2).is_err());
        assert!(d.write_at(&buf, 991).is_err());
        assert!(d.block_status(1000, 1).is_err());
        d.read_at(&mut buf, 990).unwrap();
        d.write_at(&[1; 10], 990).unwrap();

        let ro = MemDisk::new(1000).with_read_only(true);
        assert!(ro.is_read_only());
        assert_eq!(
            ro.write_at(&[1], 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert!(ro.trim(0, 10).is_err());
        assert!(ro.write_zeroes(0, 10, true).is_err());
        ro.read_at(&mut buf, 0).unwrap();
        ro.flush().unwrap();
    }

    #[test]
    fn concurrent_writers_to_distinct_regions() {
        let d = MemDisk::new(16 * CHUNK);
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let d = &d;
                s.spawn(move || {
                    let buf = vec![t + 1; 2 * MEM_CHUNK_SIZE];
                    d.write_at(&buf, u64::from(t) * 2 * CHUNK).unwrap();
                });
            }
        });
        for t in 0..8u8 {
            let mut buf = vec![0; 2 * MEM_CHUNK_SIZE];
            d.read_at(&mut buf, u64::from(t) * 2 * CHUNK).unwrap();
            assert!(buf.iter().all(|&b| b == t + 1));
        }
    }
}
