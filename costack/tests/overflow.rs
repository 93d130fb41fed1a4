//! Overflowing a coroutine's stack aborts with a message naming the
//! coroutine, on every backend. The overflow runs in a child process (this
//! same test binary, re-run with an environment variable set), because it
//! kills the process.
//!
//! Under an emulator without binfmt_misc (qemu-user) the test binary cannot
//! be executed directly; the child is then started through the cargo runner
//! found in the environment (`CARGO_TARGET_<TRIPLE>_RUNNER`).

use std::process::{Command, Output};

const CHILD_ENV: &str = "COSTACK_OVERFLOW_CHILD";

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + pad[depth as usize % 64]
}

/// Runs in the child: overflows a named coroutine's stack.
fn child() {
    let co = costack::Coroutine::builder()
        .name("deep-recursion")
        .stack_size(64 << 10)
        .create(|| {
            std::hint::black_box(recurse(0));
        })
        .unwrap();
    co.enter();
    unreachable!("the overflow aborts the process");
}

/// The cargo runner for this target, if any: an emulator command line.
fn runner() -> Option<Vec<String>> {
    let arch = std::env::consts::ARCH.to_uppercase();
    let os = std::env::consts::OS.to_uppercase();
    std::env::vars().find_map(|(k, v)| {
        let ours = k.starts_with("CARGO_TARGET_") && k.ends_with("_RUNNER");
        (ours && k.contains(&arch) && k.contains(&os))
            .then(|| v.split_whitespace().map(str::to_owned).collect())
    })
}

fn run_child(test: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    let args = [test, "--exact", "--nocapture", "--test-threads=1"];
    let direct = Command::new(&exe).args(args).env(CHILD_ENV, "1").output();
    // A foreign binary under an emulator with no binfmt registration cannot
    // be executed: ENOEXEC, or exit status 127 where the emulated spawn
    // loses the exec error. Go through the runner, as cargo did for us.
    let foreign = match &direct {
        Err(e) => e.raw_os_error() == Some(8),
        Ok(out) => out.status.code() == Some(127) && out.stdout.is_empty(),
    };
    if !foreign {
        return direct.unwrap_or_else(|e| panic!("cannot re-run {}: {e}", exe.display()));
    }
    let runner = runner().expect("foreign test binary and no CARGO_TARGET_*_RUNNER set");
    Command::new(&runner[0])
        .args(&runner[1..])
        .arg(&exe)
        .args(args)
        .env(CHILD_ENV, "1")
        .output()
        .unwrap()
}

#[test]
fn overflow_aborts_with_the_coroutine_name() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let out = run_child("overflow_aborts_with_the_coroutine_name");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child survived ({:?}): {stderr}",
        out.status
    );
    assert!(
        stderr.contains("stack overflow in coroutine 'deep-recursion'"),
        "{:?} stdout: {} stderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("stack size 65536"), "stderr: {stderr}");
}

#[test]
fn overflow_of_a_thread_stack_is_not_reported_as_a_coroutine() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // Install costack's handler, then overflow the thread's own stack.
        costack::Coroutine::new(|| {}).enter();
        let t = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| std::hint::black_box(recurse(0)))
            .unwrap();
        let _ = t.join();
        unreachable!("the overflow aborts the process");
    }
    let out = run_child("overflow_of_a_thread_stack_is_not_reported_as_a_coroutine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child survived ({:?}): {stderr}",
        out.status
    );
    assert!(!stderr.contains("in coroutine"), "stderr: {stderr}");
}
