//! Code that reads as if it blocked, while it yields: a producer and a
//! consumer share a one-slot channel whose `send` and `recv` wait by
//! yielding. Each side is a plain loop; the main thread enters whichever
//! coroutine has not finished, like a tiny event loop.
//!
//! ```text
//! cargo run --example yielding
//! ```

use std::cell::Cell;
use std::rc::Rc;

use costack::{yield_now, Coroutine, Generator};

/// Holds at most one value; waiting is just `yield_now()` in a loop.
#[derive(Default)]
struct Channel(Cell<Option<u64>>);

impl Channel {
    fn send(&self, value: u64) {
        while self.0.get().is_some() {
            println!("  producer: slot full, yields");
            yield_now();
        }
        self.0.set(Some(value));
    }

    fn recv(&self) -> u64 {
        loop {
            if let Some(value) = self.0.take() {
                return value;
            }
            println!("  consumer: slot empty, yields");
            yield_now();
        }
    }
}

fn main() {
    // A generator is a coroutine too: its body suspends with each value.
    let squares = Generator::new(|y| (1..=4u64).for_each(|n| y.suspend(n * n)));

    let chan = Rc::new(Channel::default());
    let tx = chan.clone();
    let producer = Coroutine::new(move || {
        for value in squares {
            println!("producer: sending {value}");
            tx.send(value);
        }
    });
    let consumer = Coroutine::new(move || {
        let total: u64 = (0..4)
            .map(|_| chan.recv())
            .inspect(|v| println!("consumer: got {v}"))
            .sum();
        println!("consumer: total {total}");
    });

    let (mut round, all) = (0, [&consumer, &producer]);
    while !all.iter().all(|co| co.is_finished()) {
        round += 1;
        println!("-- round {round}");
        for co in all {
            co.enter_if_inactive();
        }
    }
}
