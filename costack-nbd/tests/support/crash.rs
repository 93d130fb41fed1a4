//! Power cuts, replayed (after CrashMonkey and ALICE): a recorder put under
//! a block driver as its [`ImageFile`] logs every write, length change and
//! barrier the driver issues; [`Replay`] rebuilds from that log the files a
//! power cut could have left.
//!
//! The model of the disk: a write is in the log once it completed, a
//! barrier as two events, when it was called and when it returned. A
//! barrier that returned before the cut makes durable every write logged
//! before it was called; every other write logged before the cut may have
//! reached the disk or not, in any combination (a disk cache persists them
//! in any order). Writes are logged on completion, so a write still in
//! flight when a barrier was called counts as after it: the model errs
//! towards more states, never fewer. Holes punched and ranges zeroed are
//! writes of zeros here. A disk persists a 512-byte sector atomically and
//! a larger write in any pieces: [`Subset::Torn`] tears writes so.

use std::sync::{Arc, Mutex};

use costack::fs::File;
use costack_nbd::block::ImageFile;

use super::Rng;

/// One thing the driver did to its file.
#[derive(Debug, Clone)]
pub enum Event {
    /// A write that completed.
    Write { at: u64, data: Vec<u8> },
    /// The file's length set.
    SetLen(u64),
    /// A range made to read as zeros without writing it (a punched hole,
    /// a zeroed range): on the disk, like a write of zeros.
    Zero { at: u64, len: u64 },
    /// A barrier called ...
    SyncStart,
    /// ... and returned.
    SyncEnd,
}

/// The shared log a [`Recorder`] appends to.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }

    /// Events so far: a position in the log.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The events recorded.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// An [`ImageFile`] that logs what is done to it.
pub struct Recorder {
    file: File,
    log: Log,
}

impl Recorder {
    pub fn new(file: File, log: Log) -> Recorder {
        Recorder { file, log }
    }
}

impl ImageFile for Recorder {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        self.log.push(Event::Write {
            at: offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.log.push(Event::SyncStart);
        self.file.sync_data()?;
        self.log.push(Event::SyncEnd);
        Ok(())
    }

    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.log.push(Event::SetLen(len));
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.file.punch_hole(offset, len)?;
        self.log.push(Event::Zero { at: offset, len });
        Ok(())
    }

    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.file.zero_range(offset, len)?;
        self.log.push(Event::Zero { at: offset, len });
        Ok(())
    }

    fn seek_data(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.file.seek_data(offset)
    }

    fn seek_hole(&self, offset: u64) -> std::io::Result<u64> {
        self.file.seek_hole(offset)
    }
}

/// A crash state in memory as an [`ImageFile`], for the driver to read
/// back (read-only).
pub struct MemFile(pub Vec<u8>);

impl ImageFile for MemFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.0.get(start..).and_then(|rest| rest.get(..buf.len())) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EROFS))
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }

    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EROFS))
    }
}

/// How the writes whose fate a power cut leaves open are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    /// All of them reached the disk.
    All,
    /// None did.
    None,
    /// Each did with even odds (seeded).
    Random(u64),
    /// Only the small ones (metadata: table entries, refcounts) did: the
    /// cut that finds a pointer on the disk without what it points at.
    SmallOnly,
    /// Only the large ones (data, whole tables) did.
    LargeOnly,
    /// Torn writes (seeded): each write was lost, reached the disk whole,
    /// or reached it in part, each of its 512-byte sectors on its own (a
    /// disk persists a sector atomically, a larger write in any pieces).
    Torn(u64),
}

/// What a disk persists atomically.
pub const SECTOR: u64 = 512;

/// Writes of at most this many bytes count as small for [`Subset`].
const SMALL: usize = 64;

/// A crash state: the cut after the first `at` events of the log, with the
/// undecided writes chosen by `subset`.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    pub at: usize,
    pub subset: Subset,
}

/// The files a power cut could leave, from the file as it was before the
/// recording (`base`, durable) and the log.
pub struct Replay {
    base: Vec<u8>,
    events: Vec<Event>,
    /// For each position: where the last barrier completed by then started
    /// (every write before it is durable).
    durable: Vec<usize>,
}

impl Replay {
    pub fn new(base: Vec<u8>, events: Vec<Event>) -> Replay {
        let mut durable = Vec::with_capacity(events.len() + 1);
        let (mut started, mut last) = (Vec::new(), 0);
        durable.push(0);
        for (i, e) in events.iter().enumerate() {
            match e {
                Event::SyncStart => started.push(i),
                // Barriers do not nest here, but may overlap: the one that
                // returns covers what was logged before its own start, the
                // earliest still open at worst.
                Event::SyncEnd => last = last.max(started.remove(0)),
                _ => {}
            }
            durable.push(last);
        }
        Replay {
            base,
            events,
            durable,
        }
    }

    /// Events in the log.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Positions worth cutting at: just before each barrier is called and
    /// just after each returns, then evenly spread ones; about `n` of them,
    /// sorted, chosen with `rng`.
    pub fn cut_points(&self, n: usize, rng: &mut Rng) -> Vec<usize> {
        let mut at: Vec<usize> = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            match e {
                Event::SyncStart => at.push(i),
                Event::SyncEnd => at.push(i + 1),
                _ => {}
            }
        }
        // Keep at most two thirds of `n` from the barriers, spread evenly.
        let keep = (n * 2 / 3).max(1);
        if at.len() > keep {
            let step = at.len() as f64 / keep as f64;
            at = (0..keep).map(|k| at[(k as f64 * step) as usize]).collect();
        }
        while at.len() < n && !self.events.is_empty() {
            at.push(rng.below(self.events.len() as u64 + 1) as usize);
        }
        at.push(self.events.len());
        at.sort_unstable();
        at.dedup();
        at
    }

    /// Builds the file of each cut (sorted by position) in turn and hands
    /// it to `check` with its cut. Durable prefixes are applied once,
    /// incrementally.
    pub fn for_each_state(&self, cuts: &[Cut], mut check: impl FnMut(Cut, &[u8])) {
        let mut durable_image = self.base.clone();
        let mut applied = 0;
        for &cut in cuts {
            let durable = self.durable[cut.at];
            assert!(durable >= applied, "cuts must come sorted by position");
            for e in &self.events[applied..durable] {
                apply(&mut durable_image, e);
            }
            applied = durable;
            let mut image = durable_image.clone();
            let mut rng = match cut.subset {
                Subset::Random(seed) | Subset::Torn(seed) => Some(Rng::new(seed)),
                _ => None,
            };
            for e in &self.events[durable..cut.at] {
                let small = match e {
                    Event::Write { data, .. } => data.len() <= SMALL,
                    Event::SetLen(_) => true,
                    Event::Zero { len, .. } => *len as usize <= SMALL,
                    Event::SyncStart | Event::SyncEnd => continue,
                };
                let keep = match cut.subset {
                    Subset::All => true,
                    Subset::None => false,
                    Subset::Random(_) => rng.as_mut().expect("seeded").chance(50),
                    Subset::SmallOnly => small,
                    Subset::LargeOnly => !small,
                    Subset::Torn(_) => {
                        let rng = rng.as_mut().expect("seeded");
                        match rng.below(3) {
                            0 => false,
                            1 => true,
                            _ => {
                                apply_torn(&mut image, e, rng);
                                false
                            }
                        }
                    }
                };
                if keep {
                    apply(&mut image, e);
                }
            }
            check(cut, &image);
        }
    }
}

/// Applies the sectors of write `e` that `rng` picks, each whole or not
/// at all (a length change happens or not).
fn apply_torn(image: &mut Vec<u8>, e: &Event, rng: &mut Rng) {
    let (at, len) = match e {
        Event::Write { at, data } => (*at, data.len() as u64),
        Event::Zero { at, len } => (*at, *len),
        other => {
            if rng.chance(50) {
                apply(image, other);
            }
            return;
        }
    };
    let mut start = at;
    while start < at + len {
        let end = ((start / SECTOR + 1) * SECTOR).min(at + len);
        if rng.chance(50) {
            let piece = match e {
                Event::Write { data, .. } => Event::Write {
                    at: start,
                    data: data[(start - at) as usize..(end - at) as usize].to_vec(),
                },
                _ => Event::Zero {
                    at: start,
                    len: end - start,
                },
            };
            apply(image, &piece);
        }
        start = end;
    }
}

fn apply(image: &mut Vec<u8>, e: &Event) {
    match e {
        Event::Write { at, data } => {
            let (at, end) = (*at as usize, *at as usize + data.len());
            if image.len() < end {
                image.resize(end, 0);
            }
            image[at..end].copy_from_slice(data);
        }
        // Files only grow here; a shorter length lost to the cut is the
        // same file.
        Event::SetLen(len) => {
            if image.len() < *len as usize {
                image.resize(*len as usize, 0);
            }
        }
        // Holes punched and ranges zeroed keep the length.
        Event::Zero { at, len } => {
            let end = ((*at + *len) as usize).min(image.len());
            if (*at as usize) < end {
                image[*at as usize..end].fill(0);
            }
        }
        Event::SyncStart | Event::SyncEnd => {}
    }
}
