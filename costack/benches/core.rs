//! Core benchmarks (issue 2): costack against corosensei 0.3 and a plain
//! non-inlined call, measured in the same run.
//!
//! ```text
//! cargo bench -p costack --bench core            # criterion, then a ratio table
//! target/release/deps/core-<hash> --count <case> <iterations>
//! ```
//!
//! `--count` runs one case in a plain loop without criterion, for
//! `valgrind --tool=callgrind` (instruction counts per iteration are the
//! difference of two runs with different iteration counts, divided by the
//! difference in iterations); `--count list` names the cases.
//!
//! Cases: `round_trip` (enter + yield back; `corosensei_tracked` is
//! corosensei doing by hand the bookkeeping costack's API requires, see
//! [`Tracked`]), `lifecycle` (create, enter,
//! finish with a pooled/reused stack), `nesting_1000` (a coroutine creates and
//! enters a child, 1000 deep, 16 KiB stacks, as QEMU's perf/nesting) and
//! `drop_suspended` (drop a coroutine suspended once, which unwinds it).

use std::cell::Cell;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine as CsCoroutine, Yielder};
use costack::{yield_now, Coroutine};
use criterion::{BatchSize, Criterion};

/// Stack size of the nesting case, for both libraries.
const NEST_STACK: usize = 16 << 10;
const NEST_DEPTH: u32 = 1000;
/// Suspended coroutines alive at once in the drop case: below costack's
/// pool capacity, so both sides drop coroutines whose stacks were reused.
const DROP_BATCH: u64 = 64;

/// The baseline: one call the optimizer cannot see through.
#[inline(never)]
fn call(x: u64) -> u64 {
    black_box(x).wrapping_add(1)
}

thread_local! {
    /// Touched by the suspended coroutines' destructors, so unwinding has
    /// real work to do.
    static DROPPED: Cell<u64> = const { Cell::new(0) };
}

/// A value with a destructor, held across the yield in the drop case.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        DROPPED.with(|d| d.set(d.get() + 1));
    }
}

// ---- the cases, each as a constructor of "one iteration" ----

fn costack_yielder() -> Coroutine {
    Coroutine::new(|| loop {
        yield_now();
    })
}

type CsLoop = CsCoroutine<(), (), ()>;

fn corosensei_yielder() -> CsLoop {
    CsCoroutine::new(|y: &Yielder<(), ()>, ()| loop {
        y.suspend(());
    })
}

/// What `enter` and `yield_now` keep besides the switch, for a peer doing
/// the same work: the thread's current coroutine (for `current()`,
/// `in_coroutine()` and a handle-less `yield_now`), saved and restored
/// around each entry, and a status byte (for `is_entered`, misuse checks and
/// the cancel flag of an unwinding drop), checked before and after.
struct Tracked {
    status: Cell<u8>,
    caller: Cell<*const Tracked>,
}

const TRACKED_READY: u8 = 1;
const TRACKED_ENTERED: u8 = 2;
const TRACKED_CANCELLED: u8 = 8;

thread_local! {
    static TRACKED_CURRENT: Cell<*const Tracked> = const { Cell::new(std::ptr::null()) };
}

/// corosensei's loop with [`Tracked`]'s bookkeeping; resume it through
/// [`tracked_resume`].
fn corosensei_tracked() -> (Box<Tracked>, CsLoop) {
    let ctl = Box::new(Tracked {
        status: Cell::new(TRACKED_READY),
        caller: Cell::new(std::ptr::null()),
    });
    let co = CsCoroutine::new(|y: &Yielder<(), ()>, ()| loop {
        let cur = TRACKED_CURRENT.with(Cell::get);
        assert!(!cur.is_null(), "yield outside a coroutine");
        // SAFETY: the current block is live while its coroutine runs.
        let ctl = unsafe { &*cur };
        ctl.status.set(ctl.status.get() - 1);
        TRACKED_CURRENT.with(|c| c.set(ctl.caller.get()));
        y.suspend(());
        assert!(ctl.status.get() & TRACKED_CANCELLED == 0, "cancelled");
    });
    (ctl, co)
}

fn tracked_resume(ctl: &Tracked, co: &mut CsLoop) {
    assert!(ctl.status.get() == TRACKED_READY, "cannot enter");
    ctl.caller.set(TRACKED_CURRENT.with(|c| c.replace(ctl)));
    ctl.status.set(TRACKED_ENTERED);
    co.resume(());
    assert!(ctl.status.get() == TRACKED_READY, "finished");
}

fn costack_lifecycle() {
    Coroutine::new(|| {}).enter();
}

fn corosensei_lifecycle(slot: &mut Option<DefaultStack>) {
    let stack = slot.take().expect("stack");
    let mut co: CsCoroutine<(), (), (), DefaultStack> = CsCoroutine::with_stack(stack, |_, ()| {});
    co.resume(());
    *slot = Some(co.into_stack());
}

fn costack_nest(level: u32) {
    if level < NEST_DEPTH {
        let child = Coroutine::builder()
            .stack_size(NEST_STACK)
            .create(move || costack_nest(level + 1))
            .expect("stack");
        child.enter();
    }
}

/// corosensei with a fresh stack per coroutine (mmap + munmap each).
fn corosensei_nest_fresh(level: u32) {
    if level < NEST_DEPTH {
        let stack = DefaultStack::new(NEST_STACK).expect("stack");
        let mut child: CsCoroutine<(), (), (), DefaultStack> =
            CsCoroutine::with_stack(stack, move |_, ()| corosensei_nest_fresh(level + 1));
        child.resume(());
    }
}

thread_local! {
    /// corosensei has no pool; the pooled nesting case keeps one by hand.
    static CS_POOL: std::cell::RefCell<Vec<DefaultStack>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn corosensei_nest_pooled(level: u32) {
    if level < NEST_DEPTH {
        let stack = CS_POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| DefaultStack::new(NEST_STACK).expect("stack"));
        let mut child: CsCoroutine<(), (), (), DefaultStack> =
            CsCoroutine::with_stack(stack, move |_, ()| corosensei_nest_pooled(level + 1));
        child.resume(());
        let stack = child.into_stack();
        CS_POOL.with(|p| p.borrow_mut().push(stack));
    }
}

fn costack_suspended() -> Coroutine {
    let co = Coroutine::new(|| {
        let _guard = Guard;
        yield_now();
    });
    co.enter();
    co
}

type CsSuspended = CsCoroutine<(), (), ()>;

fn corosensei_suspended() -> CsSuspended {
    let mut co = CsCoroutine::new(|y: &Yielder<(), ()>, ()| {
        let _guard = Guard;
        y.suspend(());
    });
    co.resume(());
    co
}

fn corosensei_suspended_on(stack: DefaultStack) -> CsCoroutine<(), (), (), DefaultStack> {
    let mut co = CsCoroutine::with_stack(stack, |y: &Yielder<(), ()>, ()| {
        let _guard = Guard;
        y.suspend(());
    });
    co.resume(());
    co
}

// ---- criterion ----

/// Empties costack's stack pool, so that each case starts from the same
/// state: the pool is bounded by count, and 128 pooled 16 KiB stacks left
/// by the nesting case would turn every 1 MiB stack of a later case into a
/// pool miss.
fn fresh_pool() {
    costack::pool::trim();
}

/// The call baseline is measured once, in this group.
fn round_trip(c: &mut Criterion) {
    fresh_pool();
    let mut g = c.benchmark_group("round_trip");
    g.bench_function("call", |b| b.iter(|| call(black_box(1))));
    let co = costack_yielder();
    g.bench_function("costack", |b| b.iter(|| co.enter()));
    drop(co);
    let mut cs = corosensei_yielder();
    g.bench_function("corosensei", |b| b.iter(|| cs.resume(())));
    drop(cs);
    let (ctl, mut cs) = corosensei_tracked();
    g.bench_function("corosensei_tracked", |b| {
        b.iter(|| tracked_resume(&ctl, &mut cs))
    });
    drop(cs);
    g.finish();
}

fn lifecycle(c: &mut Criterion) {
    fresh_pool();
    let mut g = c.benchmark_group("lifecycle");
    g.bench_function("costack", |b| b.iter(costack_lifecycle));
    let mut slot = Some(DefaultStack::default());
    g.bench_function("corosensei", |b| b.iter(|| corosensei_lifecycle(&mut slot)));
    g.finish();
}

fn nesting(c: &mut Criterion) {
    fresh_pool();
    let mut g = c.benchmark_group("nesting_1000");
    g.bench_function("costack", |b| {
        b.iter(|| Coroutine::new(|| costack_nest(1)).enter())
    });
    g.bench_function("corosensei", |b| b.iter(|| corosensei_nest_pooled(0)));
    g.bench_function("corosensei_fresh", |b| b.iter(|| corosensei_nest_fresh(0)));
    CS_POOL.with(|p| p.borrow_mut().clear());
    g.finish();
}

fn drop_suspended(c: &mut Criterion) {
    fresh_pool();
    let mut g = c.benchmark_group("drop_suspended");
    let batch = BatchSize::NumIterations(DROP_BATCH);
    g.bench_function("costack", |b| {
        b.iter_batched(costack_suspended, drop, batch)
    });
    // What the issue measured: drop unwinds, then unmaps the stack.
    g.bench_function("corosensei", |b| {
        b.iter_batched(corosensei_suspended, drop, batch)
    });
    // The unwind alone: the stack is kept for reuse, as costack's pool does.
    let stacks = std::cell::RefCell::new(Vec::with_capacity(2 * DROP_BATCH as usize));
    g.bench_function("corosensei_unwind_only", |b| {
        b.iter_batched(
            || {
                let stack = stacks.borrow_mut().pop().unwrap_or_default();
                corosensei_suspended_on(stack)
            },
            |mut co| {
                co.force_unwind();
                stacks.borrow_mut().push(co.into_stack());
            },
            batch,
        );
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .output_directory(&criterion_dir())
}

/// Where criterion keeps its estimates: `target/criterion`, as it would
/// find by itself.
fn criterion_dir() -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(home) => PathBuf::from(home),
        None => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("criterion"),
    }
}

/// criterion's estimate of the time per iteration (the slope of the
/// linear fit when it has one, else the mean), in ns, if `group/id` was
/// measured since `since`.
fn estimate(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json = std::fs::read_to_string(path).ok()?;
    ["\"slope\":{", "\"mean\":{"]
        .iter()
        .find_map(|key| point_estimate(&json, key))
}

fn point_estimate(json: &str, key: &str) -> Option<f64> {
    let rest = &json[json.find(key)?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn print_ratios(since: SystemTime) {
    println!();
    println!(
        "{:<26} {:>13} {:>13} {:>13} {:>11} {:>11}",
        "case", "costack", "corosensei", "call", "/corosensei", "/call"
    );
    for (group, peer) in [
        ("round_trip", "corosensei"),
        ("round_trip", "corosensei_tracked"),
        ("lifecycle", "corosensei"),
        ("nesting_1000", "corosensei"),
        ("nesting_1000", "corosensei_fresh"),
        ("drop_suspended", "corosensei"),
        ("drop_suspended", "corosensei_unwind_only"),
    ] {
        let Some(ours) = estimate(group, "costack", since) else {
            continue;
        };
        let theirs = estimate(group, peer, since);
        let call = estimate("round_trip", "call", since);
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ns"));
        let ratio = |v: Option<f64>| match v.map(|v| ours / v) {
            Some(r) if r < 0.1 => format!("{r:.4}x"),
            Some(r) => format!("{r:.2}x"),
            None => "-".to_owned(),
        };
        let label = if peer == "corosensei" {
            group.to_owned()
        } else {
            format!("  vs {peer}")
        };
        println!(
            "{:<26} {:>13} {:>13} {:>13} {:>11} {:>11}",
            label,
            fmt(Some(ours)),
            fmt(theirs),
            fmt(call),
            ratio(theirs),
            ratio(call)
        );
    }
}

// ---- plain loops for instruction counting ----

const CASES: &[&str] = &[
    "empty",
    "round_trip/call",
    "round_trip/costack",
    "round_trip/corosensei",
    "round_trip/corosensei_tracked",
    "lifecycle/costack",
    "lifecycle/corosensei",
    "nesting_1000/costack",
    "nesting_1000/corosensei",
    "nesting_1000/corosensei_fresh",
    "drop_suspended/costack",
    "drop_suspended/costack_batch",
    "drop_suspended/costack_finish",
    "drop_suspended/corosensei",
    "drop_suspended/corosensei_finish",
    "drop_suspended/corosensei_unwind_only",
    "drop_suspended/corosensei_unwind_only_finish",
];

/// Runs `case` `n` times.
fn count(case: &str, n: u64) {
    // The drop cases include creating and entering the coroutine; the
    // `_finish` variants resume it to completion instead of dropping it
    // suspended, so the difference is the cost of the unwinding drop.
    match case {
        "empty" => {}
        "round_trip/call" => (0..n).for_each(|i| {
            black_box(call(i));
        }),
        "round_trip/costack" => {
            let co = costack_yielder();
            (0..n).for_each(|_| co.enter());
        }
        "round_trip/corosensei" => {
            let mut co = corosensei_yielder();
            (0..n).for_each(|_| {
                co.resume(());
            });
        }
        "round_trip/corosensei_tracked" => {
            let (ctl, mut co) = corosensei_tracked();
            (0..n).for_each(|_| tracked_resume(&ctl, &mut co));
        }
        "lifecycle/costack" => (0..n).for_each(|_| costack_lifecycle()),
        "lifecycle/corosensei" => {
            let mut slot = Some(DefaultStack::default());
            (0..n).for_each(|_| corosensei_lifecycle(&mut slot));
        }
        "nesting_1000/costack" => (0..n).for_each(|_| Coroutine::new(|| costack_nest(1)).enter()),
        "nesting_1000/corosensei" => (0..n).for_each(|_| corosensei_nest_pooled(0)),
        "nesting_1000/corosensei_fresh" => (0..n).for_each(|_| corosensei_nest_fresh(0)),
        "drop_suspended/costack" => (0..n).for_each(|_| drop(costack_suspended())),
        "drop_suspended/costack_batch" => (0..n / DROP_BATCH).for_each(|_| {
            let batch: Vec<_> = (0..DROP_BATCH).map(|_| costack_suspended()).collect();
            drop(batch);
        }),
        "drop_suspended/costack_finish" => (0..n).for_each(|_| costack_suspended().enter()),
        "drop_suspended/corosensei" => (0..n).for_each(|_| drop(corosensei_suspended())),
        "drop_suspended/corosensei_finish" => (0..n).for_each(|_| {
            corosensei_suspended().resume(());
        }),
        "drop_suspended/corosensei_unwind_only" => {
            let mut stack = Some(DefaultStack::default());
            (0..n).for_each(|_| {
                let mut co = corosensei_suspended_on(stack.take().expect("stack"));
                co.force_unwind();
                stack = Some(co.into_stack());
            });
        }
        "drop_suspended/corosensei_unwind_only_finish" => {
            let mut stack = Some(DefaultStack::default());
            (0..n).for_each(|_| {
                let mut co = corosensei_suspended_on(stack.take().expect("stack"));
                co.resume(());
                stack = Some(co.into_stack());
            });
        }
        "list" => CASES.iter().for_each(|c| println!("{c}")),
        other => {
            eprintln!("unknown case {other:?}; `--count list` names them");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--count") {
        let case = args.get(2).map_or("list", String::as_str);
        let n = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(0);
        count(case, n);
        return;
    }
    let since = SystemTime::now();
    let mut c = config().configure_from_args();
    round_trip(&mut c);
    lifecycle(&mut c);
    nesting(&mut c);
    drop_suspended(&mut c);
    c.final_summary();
    print_ratios(since);
}
