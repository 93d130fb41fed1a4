//! Metadata tables kept in memory: L2 tables and refcount blocks, one
//! cluster each, a bounded number of them (QEMU's `l2-cache-size` and
//! `refcount-cache-size`).
//!
//! A table changed in memory is dirty until it is written back; a dirty
//! table is never evicted (the order in which dirty tables reach the file
//! is `writeback.rs`'s business, not this structure's). Eviction is CLOCK,
//! an approximation of least recently used that costs a flag per hit.

use std::collections::HashMap;

/// Tables by their offset in the image file.
pub(super) struct TableCache<T> {
    slots: Vec<Slot<T>>,
    index: HashMap<u64, usize>,
    capacity: usize,
    /// Where the CLOCK hand looks for a victim next.
    hand: usize,
    dirty: usize,
    /// Tables evicted so far: a table read from the file while this moved
    /// may predate a write-back (see `Qcow2::l2_table`).
    evictions: u64,
}

struct Slot<T> {
    at: u64,
    data: Box<[T]>,
    dirty: bool,
    referenced: bool,
}

impl<T: Copy> TableCache<T> {
    /// A cache of at most `capacity` tables (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        TableCache {
            slots: Vec::new(),
            index: HashMap::new(),
            capacity,
            hand: 0,
            dirty: 0,
            evictions: 0,
        }
    }

    /// The table at `at`, marked as used.
    pub(super) fn get(&mut self, at: u64) -> Option<&[T]> {
        let &i = self.index.get(&at)?;
        let slot = &mut self.slots[i];
        slot.referenced = true;
        Some(&slot.data)
    }

    /// Whether the table at `at` is held.
    pub(super) fn contains(&self, at: u64) -> bool {
        self.index.contains_key(&at)
    }

    /// Sets entry `i` of the table at `at`, which becomes dirty; false if
    /// the table is not held.
    pub(super) fn set(&mut self, at: u64, i: usize, value: T) -> bool {
        let Some(&s) = self.index.get(&at) else {
            return false;
        };
        let slot = &mut self.slots[s];
        slot.data[i] = value;
        slot.referenced = true;
        if !slot.dirty {
            slot.dirty = true;
            self.dirty += 1;
        }
        true
    }

    /// Adds the table at `at` as read from the file (clean), evicting a
    /// clean one if full. Gives `data` back if every table held is dirty.
    pub(super) fn insert(&mut self, at: u64, data: Box<[T]>) -> Result<(), Box<[T]>> {
        debug_assert!(!self.index.contains_key(&at), "table {at:#x} cached twice");
        let slot = Slot {
            at,
            data,
            dirty: false,
            referenced: true,
        };
        if self.slots.len() < self.capacity {
            self.index.insert(at, self.slots.len());
            self.slots.push(slot);
            return Ok(());
        }
        let Some(victim) = self.victim() else {
            return Err(slot.data);
        };
        self.index.remove(&self.slots[victim].at);
        self.index.insert(at, victim);
        self.slots[victim] = slot;
        self.evictions += 1;
        Ok(())
    }

    /// Whether [`insert`](Self::insert) would find room.
    pub(super) fn has_room(&self) -> bool {
        self.slots.len() < self.capacity || self.dirty < self.slots.len()
    }

    /// A clean slot not used since the hand last passed it (CLOCK); the
    /// hand clears use marks as it goes, so two turns always find one if
    /// any slot is clean.
    fn victim(&mut self) -> Option<usize> {
        if self.dirty == self.slots.len() {
            return None;
        }
        for _ in 0..2 * self.slots.len() {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[i];
            if slot.dirty {
                continue;
            }
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            return Some(i);
        }
        None
    }

    /// Tables evicted so far.
    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Dirty tables held.
    pub(super) fn dirty_count(&self) -> usize {
        self.dirty
    }

    /// Copies of the dirty tables, by offset (written in file order).
    pub(super) fn dirty_tables(&self) -> Vec<(u64, Vec<T>)> {
        let mut out: Vec<(u64, Vec<T>)> = self
            .slots
            .iter()
            .filter(|s| s.dirty)
            .map(|s| (s.at, s.data.to_vec()))
            .collect();
        out.sort_unstable_by_key(|&(at, _)| at);
        out
    }

    /// The table at `at` is in the file as held: clean again.
    pub(super) fn mark_clean(&mut self, at: u64) {
        if let Some(&i) = self.index.get(&at) {
            if self.slots[i].dirty {
                self.slots[i].dirty = false;
                self.dirty -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v: u64) -> Box<[u64]> {
        vec![v; 4].into_boxed_slice()
    }

    #[test]
    fn dirty_tables_are_never_evicted() {
        let mut c = TableCache::new(2);
        c.insert(0x1000, table(1)).unwrap();
        c.insert(0x2000, table(2)).unwrap();
        assert!(c.set(0x1000, 0, 9));
        assert!(c.set(0x2000, 1, 9));
        assert_eq!(c.dirty_count(), 2);
        assert!(!c.has_room());
        assert!(c.insert(0x3000, table(3)).is_err());
        let dirty = c.dirty_tables();
        assert_eq!(dirty.len(), 2);
        assert_eq!((dirty[0].0, dirty[0].1[0]), (0x1000, 9));
        c.mark_clean(0x1000);
        assert!(c.has_room());
        c.insert(0x3000, table(3)).unwrap();
        assert!(!c.contains(0x1000), "the clean table went");
        assert!(c.contains(0x2000), "the dirty one stayed");
        assert_eq!(c.evictions(), 1);
    }

    #[test]
    fn the_least_recently_used_clean_table_goes_first() {
        let mut c = TableCache::new(3);
        for at in 1..=3u64 {
            c.insert(at, table(at)).unwrap();
        }
        // One full turn clears every use mark; then 1 and 3 are used again.
        c.insert(4, table(4)).unwrap();
        assert!(!c.contains(1));
        c.get(3).unwrap();
        c.get(4).unwrap();
        c.insert(5, table(5)).unwrap();
        assert!(!c.contains(2), "2 was not used since the hand passed");
        assert!(c.contains(3) && c.contains(4));
    }
}
