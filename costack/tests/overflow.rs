//! Stack overflow in a coroutine is reported and aborts; other faults keep
//! their usual behaviour. Each case runs in a child process (this test
//! binary, re-executed with an environment variable naming the case),
//! because it kills the process.
//!
//! Under an emulator without binfmt_misc (qemu-user) the test binary cannot
//! be executed directly; the child is then started through the cargo runner
//! found in the environment (`CARGO_TARGET_<TRIPLE>_RUNNER`).

use std::hint::black_box;
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

fn run_case_env(test: &str, case: &str, env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", test, "--nocapture", "--test-threads=1"];
    let direct = Command::new(&exe)
        .args(args)
        .env(CASE, case)
        .envs(env.iter().copied())
        .output();
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
        .env(CASE, case)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The signal that ended the child, where the platform has signals and the
/// child ran natively (an emulator reports its own way).
#[cfg(unix)]
fn signal_of(out: &Output) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal()
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
    #[cfg(unix)]
    if runner().is_none() {
        assert_eq!(signal_of(&out), Some(libc::SIGABRT), "{stderr}");
    }
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
    assert!(!stderr.contains("in coroutine"), "{stderr}");
}

#[cfg(unix)]
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
    assert!(!out.status.success(), "{stderr}");
    if runner().is_none() {
        assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    }
    assert!(!stderr.contains("stack overflow"), "{stderr}");
}

#[cfg(target_os = "linux")]
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

#[test]
fn a_destructor_that_waits_while_its_coroutine_is_dropped_aborts_with_its_name() {
    use std::rc::Rc;
    child("drop-wait", || {
        struct LockOnDrop(Rc<costack::sync::CoMutex<()>>);
        impl Drop for LockOnDrop {
            fn drop(&mut self) {
                let _g = self.0.lock(); // contended: would have to wait
            }
        }
        let lock = Rc::new(costack::sync::CoMutex::new(()));
        let held = lock.clone();
        let holder = costack::Coroutine::new(move || {
            let _g = held.lock();
            costack::yield_now();
        });
        holder.enter();
        let victim = costack::Coroutine::builder()
            .name("locks-in-drop")
            .create(move || {
                let _d = LockOnDrop(lock);
                costack::yield_now();
            })
            .unwrap();
        victim.enter();
        drop(victim);
        eprintln!("survived the drop");
    });
    let out = run_case(
        "a_destructor_that_waits_while_its_coroutine_is_dropped_aborts_with_its_name",
        "drop-wait",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    #[cfg(unix)]
    if runner().is_none() {
        assert_eq!(signal_of(&out), Some(libc::SIGABRT), "{stderr}");
    }
    assert!(stderr.contains("yielded while being dropped"), "{stderr}");
    assert!(stderr.contains("'locks-in-drop'"), "{stderr}");
    assert!(!stderr.contains("survived"), "{stderr}");
    assert!(!stderr.contains("panic in a destructor"), "{stderr}");
}
