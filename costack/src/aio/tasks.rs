//! The coroutines a loop spawned, which it owns until they finish.

use crate::coroutine::control::CoId;
use crate::coroutine::Coroutine;

/// A slab of the loop's tasks: a slot each, reused once free.
#[derive(Default)]
pub(crate) struct Tasks {
    slots: Vec<Option<(CoId, Coroutine)>>,
    free: Vec<usize>,
    len: usize,
}

impl Tasks {
    /// A slot for a task about to be created.
    pub(crate) fn reserve(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    /// Gives back a slot whose task could not be created.
    pub(crate) fn unreserve(&mut self, index: usize) {
        self.free.push(index);
    }

    pub(crate) fn fill(&mut self, index: usize, co: Coroutine) {
        self.len += 1;
        self.slots[index] = Some((co.id(), co));
    }

    /// Takes the task in slot `index` out, if it is coroutine `id`.
    pub(crate) fn remove(&mut self, index: usize, id: CoId) -> Option<Coroutine> {
        match self.slots.get_mut(index) {
            Some(slot) if slot.as_ref().is_some_and(|(i, _)| *i == id) => {
                self.len -= 1;
                self.free.push(index);
                slot.take().map(|(_, co)| co)
            }
            _ => None,
        }
    }

    /// Takes every task out (loop shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Coroutine> {
        self.free.clear();
        self.len = 0;
        self.slots.drain(..).flatten().map(|(_, co)| co).collect()
    }

    /// Tasks not finished yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}
