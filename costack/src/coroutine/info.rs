//! What [`debug::coroutines`](crate::debug::coroutines) lists.

use super::control::{self, State};

/// One live coroutine, as listed by [`debug::coroutines`](crate::debug::coroutines).
#[derive(Debug, Clone)]
pub struct CoroutineInfo {
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// "created", "suspended", "entered" or "finished".
    pub state: &'static str,
    /// Usable stack bytes (0 once finished).
    pub stack_size: usize,
    /// The deepest the stack has been used, in bytes from its top, in whole
    /// pages: an upper bound, since a pooled stack remembers earlier
    /// coroutines' use too.
    /// `None` where it cannot be told: no stack, no `mincore`, or the
    /// thread backend (whose coroutines run on OS thread stacks).
    pub stack_high_water: Option<usize>,
}

pub(crate) fn live_coroutines() -> Vec<CoroutineInfo> {
    let mut out = Vec::new();
    control::for_each_live(|co| {
        let finished = co.state() == State::Finished;
        out.push(CoroutineInfo {
            name: co.name().map(str::to_owned),
            state: match co.state() {
                State::Ready if co.is_unstarted() => "created",
                State::Ready => "suspended",
                State::Entered => "entered",
                State::Finished => "finished",
                State::Free => "free",
            },
            stack_size: if finished {
                0
            } else {
                co.stack().map_or(0, |s| s.size())
            },
            stack_high_water: co
                .stack()
                .filter(|_| !finished)
                .and_then(|s| s.high_water()),
        });
    });
    out
}
