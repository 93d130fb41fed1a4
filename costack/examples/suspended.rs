//! A coroutine suspended deep in its own call chain, for debugger tests:
//! `tools/test-gdb.sh` stops in `breakpoint_here` and backtraces the
//! suspended coroutine with `costack-bt co` (tools/costack-gdb.py).

use costack::Coroutine;

#[inline(never)]
fn deep_in_the_coroutine(depth: u32) {
    if depth == 0 {
        costack::yield_now();
    } else {
        deep_in_the_coroutine(depth - 1);
    }
    std::hint::black_box(depth);
}

#[inline(never)]
fn breakpoint_here(co: &Coroutine) {
    std::hint::black_box(co);
}

fn main() {
    let co = Coroutine::builder()
        .name("sleeper")
        .create(|| deep_in_the_coroutine(3))
        .unwrap();
    co.enter();
    for info in costack::debug::coroutines() {
        println!("{info:?}");
    }
    breakpoint_here(&co);
    co.enter();
    assert!(co.is_finished());
}
