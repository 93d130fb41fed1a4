//! Running the external tools the integration tests drive (qemu-img,
//! qemu-io, nbdinfo, nbdcopy, certtool, ...).

use std::process::{Command, Output};

/// Whether every tool is installed; without one the test is skipped, or
/// fails under `COSTACK_REQUIRE_CLIENTS=1` (set by CI).
pub fn have(tools: &[&str]) -> bool {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("COSTACK_REQUIRE_CLIENTS").as_deref() != Ok("1"),
                "required tool `{tool}` is not installed"
            );
            eprintln!("skipping: `{tool}` is not installed");
            return false;
        }
    }
    true
}

/// Runs `cmd args`, whatever its exit status.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd args`, which must succeed; returns its stdout.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        said(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd args`, which must fail; returns what it said.
pub fn fails(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        !out.status.success(),
        "{cmd} {args:?} succeeded: {}",
        said(&out)
    );
    said(&out)
}
