//! A million coroutines with 64 KiB stacks suspended at once.
//!
//! Each is entered once and yields; the example then reports the memory
//! they cost (VmRSS + VmPTE growth per coroutine, from /proc/self/status)
//! and the kernel mappings the process holds (lines of /proc/self/maps,
//! against vm.max_map_count), resumes all of them to completion and drops
//! them.
//!
//! ```text
//! cargo run --release --example million [count]
//! ```

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use costack::{yield_now, Coroutine};

const STACK: usize = 64 << 10;

thread_local! {
    /// An address in the first coroutine's frame, to look for its guard.
    static FIRST_FRAME: Cell<usize> = const { Cell::new(0) };
}

/// How far below `addr` the nearest guard page ends, if the kernel reports
/// one in /proc/self/pagemap (bit 58: guard region, Linux 6.15+).
#[cfg(target_os = "linux")]
fn guard_below(addr: usize) -> Option<usize> {
    use std::os::unix::fs::FileExt;
    let page = 4096;
    let pagemap = std::fs::File::open("/proc/self/pagemap").ok()?;
    (1..=(2 * STACK / page)).find_map(|k| {
        let p = (addr & !(page - 1)) - k * page;
        let mut entry = [0u8; 8];
        pagemap
            .read_exact_at(&mut entry, (p / page * 8) as u64)
            .ok()?;
        (u64::from_le_bytes(entry) & (1 << 58) != 0).then_some(addr - (p + page))
    })
}

#[cfg(not(target_os = "linux"))]
fn guard_below(_addr: usize) -> Option<usize> {
    None
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .count()
}

fn max_map_count() -> String {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("count"));
    let mut handles = Vec::with_capacity(n);
    let finished = Rc::new(Cell::new(0usize));
    let (rss0, pte0, maps0) = (status_kib("VmRSS"), status_kib("VmPTE"), mappings());

    let start = Instant::now();
    for i in 0..n {
        let done = finished.clone();
        let co = Coroutine::builder()
            .stack_size(STACK)
            .create(move || {
                let local = 0u8;
                if i == 0 {
                    FIRST_FRAME.set(&local as *const u8 as usize);
                }
                yield_now();
                done.set(done.get() + 1);
            })
            .unwrap_or_else(|e| panic!("coroutine {i}: {e}"));
        co.enter();
        handles.push(co);
    }
    let created = start.elapsed();

    let (rss1, pte1, maps1) = (status_kib("VmRSS"), status_kib("VmPTE"), mappings());
    let per = |kib: u64| kib as f64 * 1024.0 / n as f64;
    let (rss, pte) = (rss1.saturating_sub(rss0), pte1.saturating_sub(pte0));
    println!(
        "{n} coroutines, {} KiB stacks, suspended at once",
        STACK >> 10
    );
    println!(
        "  created and entered in {:.2?} ({:.0} ns each)",
        created,
        created.as_nanos() as f64 / n as f64
    );
    println!("  VmRSS  +{rss} KiB = {:.0} bytes per coroutine", per(rss));
    println!("  VmPTE  +{pte} KiB = {:.0} bytes per coroutine", per(pte));
    println!(
        "  total  {:.2} KiB per coroutine (target <= 4.5 KiB)",
        per(rss + pte) / 1024.0
    );
    match guard_below(FIRST_FRAME.get()) {
        Some(d) => println!(
            "  guard page: ends {:.1} KiB below the first coroutine's frame ({} KiB stack)",
            d as f64 / 1024.0,
            STACK >> 10
        ),
        None => println!("  guard page: not visible in /proc/self/pagemap"),
    }
    println!(
        "  kernel mappings: {maps1} (were {maps0}; vm.max_map_count = {})",
        max_map_count()
    );

    let start = Instant::now();
    for co in &handles {
        co.enter();
    }
    assert!(handles.iter().all(Coroutine::is_finished));
    assert_eq!(finished.get(), n);
    let resumed = start.elapsed();
    let start = Instant::now();
    drop(handles);
    costack::pool::trim();
    println!(
        "  resumed to completion in {resumed:.2?}, dropped in {:.2?}",
        start.elapsed()
    );
    println!(
        "  after: VmRSS {} KiB, VmPTE {} KiB (were {rss0} and {pte0} before), mappings {}",
        status_kib("VmRSS"),
        status_kib("VmPTE"),
        mappings()
    );
}
