//! Running the external tools the integration tests drive (qemu-img,
//! qemu-io, nbdinfo, nbdcopy, certtool, ...).

use std::path::Path;
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

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `qemu-img create -q -f qcow2 OPTS PATH SIZE`, which must succeed;
/// `opts` (`-o cluster_size=4k`, `-b FILE -F FMT -u`, ...) go before the
/// path.
pub fn create_qcow2(path: &Path, size: &str, opts: &[&str]) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(opts);
    args.extend([s(path), size]);
    ok("qemu-img", &args);
}

/// A qcow2 overlay of `backing` (of format `backing_format`), its size the
/// backing file's unless `size` is given.
pub fn create_overlay(path: &Path, backing: &Path, backing_format: &str, size: Option<&str>) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(["-b", s(backing), "-F", backing_format, s(path)]);
    args.extend(size);
    ok("qemu-img", &args);
}

/// `qemu-io FLAGS -c CMD... TARGET`'s arguments.
pub fn qemu_io_args<'a>(flags: &[&'a str], cmds: &[&'a str], target: &'a str) -> Vec<&'a str> {
    let mut args = flags.to_vec();
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(target);
    args
}

/// Runs `qemu-io FLAGS -c CMD... TARGET` (`flags` such as `-f qcow2` or
/// `-r -f raw`), which must succeed; returns its stdout.
pub fn qemu_io(flags: &[&str], cmds: &[&str], target: &str) -> String {
    ok("qemu-io", &qemu_io_args(flags, cmds, target))
}

/// `qemu-img convert -q -f raw -O qcow2 OPTS RAW PATH`, which must
/// succeed; `opts` such as `-c` (compressed) or `-o cluster_size=4k`.
pub fn convert_to_qcow2(raw: &Path, path: &Path, opts: &[&str]) {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
    args.extend(opts);
    args.extend([s(raw), s(path)]);
    ok("qemu-img", &args);
}
