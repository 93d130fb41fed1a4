//! Stack overflow in a coroutine is reported and aborts; other faults keep
//! their usual behaviour. Each case runs in a child process (this test
//! binary, re-executed with an environment variable naming the case).

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

const CASE: &str = "COSTACK_OVERFLOW_CASE";

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1) + black_box(frame)[1]
}

fn run_case(test: &str, case: &str) -> Output {
    run_case_env(test, case, &[])
}

fn run_case_env(test: &str, case: &str, env: &[(&str, &str)]) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Runs `child` when this process is the child for `case`.
fn child(case: &str, child: impl FnOnce()) {
    if std::env::var(CASE).as_deref() == Ok(case) {
        child();
        std::process::exit(0);
    }
}

#[test]
fn coroutine_overflow_is_reported_with_its_name() {
    child("coroutine", || {
        let co = costack::Coroutine::builder()
            .name("deep-recursion")
            .stack_size(64 << 10)
            .create(|| {
                black_box(recurse(0));
            })
            .unwrap();
        co.enter();
    });
    let out = run_case("coroutine_overflow_is_reported_with_its_name", "coroutine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the process must not survive");
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(stderr.contains("stack overflow"), "{stderr}");
    assert!(stderr.contains("deep-recursion"), "{stderr}");
    assert!(
        stderr.contains("65536"),
        "the stack size is named: {stderr}"
    );
}

#[test]
fn nested_coroutine_overflow_names_the_inner_one() {
    child("nested", || {
        let outer = costack::Coroutine::builder()
            .name("outer")
            .create(|| {
                let inner = costack::Coroutine::builder()
                    .name("inner-one")
                    .stack_size(32 << 10)
                    .create(|| {
                        black_box(recurse(0));
                    })
                    .unwrap();
                inner.enter();
            })
            .unwrap();
        outer.enter();
    });
    let out = run_case("nested_coroutine_overflow_names_the_inner_one", "nested");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stack overflow in coroutine 'inner-one'"),
        "{stderr}"
    );
}

#[test]
fn thread_overflow_keeps_rusts_own_message() {
    child("thread", || {
        // Install costack's handler first, then overflow a plain thread.
        costack::Coroutine::new(|| {}).enter();
        std::thread::Builder::new()
            .name("plain-thread".into())
            .stack_size(256 << 10)
            .spawn(|| black_box(recurse(0)))
            .unwrap()
            .join()
            .unwrap();
    });
    let out = run_case("thread_overflow_keeps_rusts_own_message", "thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("has overflowed its stack"), "{stderr}");
    assert!(!stderr.contains("costack"), "{stderr}");
}

#[test]
fn other_faults_still_kill_with_sigsegv() {
    child("null", || {
        costack::Coroutine::new(|| {
            // SAFETY: deliberately not: this child process exists to fault.
            unsafe { std::ptr::write_volatile(black_box(8usize) as *mut u64, 1) };
        })
        .enter();
    });
    let out = run_case("other_faults_still_kill_with_sigsegv", "null");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{stderr}");
    assert!(!stderr.contains("stack overflow"), "{stderr}");
}

#[test]
fn mprotect_guards_fallback_also_reports_overflow() {
    child("mprotect", || {
        // Many stacks, each with an mprotect'ed guard page (two mappings).
        let many: Vec<_> = (0..1000)
            .map(|_| {
                costack::Coroutine::builder()
                    .stack_size(16 << 10)
                    .create(costack::yield_now)
                    .unwrap()
            })
            .collect();
        for co in &many {
            co.enter();
        }
        let maps = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count();
        assert!(
            maps > 1000,
            "each mprotect guard splits the mapping: {maps}"
        );
        let co = costack::Coroutine::builder()
            .name("fallback")
            .stack_size(64 << 10)
            .create(|| {
                black_box(recurse(0));
            })
            .unwrap();
        co.enter();
    });
    let out = run_case_env(
        "mprotect_guards_fallback_also_reports_overflow",
        "mprotect",
        &[("COSTACK_MPROTECT_GUARDS", "1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stack overflow in coroutine 'fallback'"),
        "{stderr}"
    );
}
