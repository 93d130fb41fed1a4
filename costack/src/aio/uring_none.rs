//! Where there is no io_uring: a loop never has a ring, and `fs` I/O (Linux
//! only) goes to the thread pool.

use super::readiness::Readiness;

pub(crate) struct Uring;

impl Uring {
    pub(crate) fn new(_allowed: bool, _sockets: bool) -> Uring {
        Uring
    }

    pub(crate) fn flush(&self) -> bool {
        false
    }

    pub(crate) fn sleeping(&self, _asleep: bool) -> bool {
        false
    }

    pub(crate) fn available(&self, _readiness: &Readiness) -> bool {
        false
    }

    pub(crate) fn busy(&self) -> bool {
        false
    }

    pub(crate) fn reap(&self) -> bool {
        false
    }

    pub(crate) fn shutdown(&self) {}
}
