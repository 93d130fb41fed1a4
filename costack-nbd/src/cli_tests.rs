//! Tests of the command line (`cli.rs`).

use super::*;
use clap::CommandFactory;

#[test]
fn command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn sizes() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512b"), Ok(512));
    assert_eq!(parse_size("1K"), Ok(1024));
    assert_eq!(parse_size("1k"), Ok(1024));
    assert_eq!(parse_size("64M"), Ok(64 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("2TB"), Ok(2 << 40));
    assert_eq!(parse_size(" 3 G "), Ok(3 << 30));
    assert_eq!(parse_size("1.5G"), Ok(3 << 29));
    assert_eq!(parse_size("0.5K"), Ok(512));
    assert_eq!(parse_size("15E"), Ok(15 << 60));
    assert!(parse_size("16E").is_err());
    assert!(parse_size("1.1K").is_err());
    assert!(parse_size("").is_err());
    assert!(parse_size("G").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("1X").is_err());
    assert!(parse_size("1.").is_err());
    assert!(parse_size(".5K").is_err());
    assert!(parse_size("1.2.3").is_err());
    assert!(parse_size("99999999999999999999999999999999999999999").is_err());
    assert!(parse_size("1.0000000000000000001").is_err());
}

#[test]
fn disk_sizes_are_whole_sectors() {
    assert_eq!(parse_disk_size("0"), Ok(0));
    assert_eq!(parse_disk_size("512"), Ok(512));
    assert_eq!(parse_disk_size("1.5K"), Ok(1536));
    let e = parse_disk_size("1000").unwrap_err();
    assert!(e.contains("1000") && e.contains("512"), "{e}");
    assert!(e.contains("try 512 or 1024"), "{e}");
    let e = parse_disk_size(&u64::MAX.to_string()).unwrap_err();
    assert!(e.contains("try 18446744073709551104"), "{e}");
}

#[test]
fn size_is_for_the_memory_disk_only() {
    let e = Cli::try_parse_from(["costack-nbd", "--size", "1M", "disk.img"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    // The default size does not conflict with a file.
    let c = Cli::try_parse_from(["costack-nbd", "disk.img"]).unwrap();
    assert_eq!(c.file, Some(PathBuf::from("disk.img")));
}

/// Every option, with its default, is in the READMEs' tables, so
/// that neither falls behind the command line.
#[test]
fn readmes_list_every_option() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut readmes = vec![dir.join("README.md")];
    // The repository's README too, in the workspace (a published
    // crate holds only its own).
    if dir.join("../Cargo.toml").exists() {
        readmes.push(dir.join("../README.md"));
    }
    for path in readmes {
        let text = std::fs::read_to_string(&path).unwrap();
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // | `-s`, `--size SIZE` | `1G` | meaning |
            let cells = text
                .lines()
                .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
                .find(|c| {
                    c.len() == 5
                        && c[1].split(", ").any(|o| {
                            o.strip_prefix(&format!("`--{long}"))
                                .is_some_and(|rest| rest.starts_with(['`', ' ']))
                        })
                })
                .unwrap_or_else(|| panic!("--{long} missing from {}", path.display()));
            if let Some(short) = arg.get_short() {
                assert!(
                    cells[1].contains(&format!("`-{short}`")),
                    "-{short}: {cells:?}"
                );
            }
            for default in arg.get_default_values() {
                let shown = match default.to_str().unwrap() {
                    "" => "`\"\"`".to_owned(),
                    d => format!("`{d}`"),
                };
                assert!(cells[2].contains(&shown), "default {shown}: {cells:?}");
            }
        }
    }
}

#[test]
fn defaults() {
    let c = Cli::try_parse_from(["costack-nbd"]).unwrap();
    assert_eq!(c.file, None);
    assert_eq!(c.bind, "0.0.0.0");
    assert_eq!(c.port, 10809);
    assert_eq!(c.socket, None);
    assert_eq!(c.export_name, "");
    assert_eq!(c.description, "");
    assert!(!c.read_only);
    assert_eq!(c.size, 1 << 30);
    assert_eq!(c.shared, 1);
    assert!(!c.persistent && !c.snapshot && !c.fork && !c.print_url);
    assert_eq!(c.pid_file, None);
    assert_eq!(c.discard, DiscardMode::Ignore);
    assert_eq!(c.detect_zeroes, DetectZeroes::Off);
    assert_eq!(c.aio, None);
    assert_eq!(c.threads, 1);
    if std::env::var_os("COSTACK_POLL_MAX_NS").is_none() {
        assert_eq!(c.poll_max_ns, DEFAULT_POLL_MAX_NS);
    }
    assert_eq!((c.poll_grow, c.poll_shrink), (2, 0));
    assert_eq!(c.cache, CacheMode::Writeback);
    assert_eq!(c.cache_mode(), CacheMode::Writeback);
    assert_eq!(c.verbose, 0);
    assert_eq!(c.verbosity(), 0);
    assert_eq!(c.check_modes(), Ok(()));
}

#[test]
fn qemu_nbd_options() {
    let c = Cli::try_parse_from([
        "costack-nbd",
        "-t",
        "-s",
        "--fork",
        "--pid-file",
        "/run/x.pid",
        "-n",
        "--aio=io_uring",
        "--discard=unmap",
        "--detect-zeroes=unmap",
        "-T",
        "nbd_*",
        "disk.qcow2",
    ])
    .unwrap();
    assert!(c.persistent && c.snapshot && c.fork);
    assert_eq!(c.pid_file, Some(PathBuf::from("/run/x.pid")));
    assert_eq!(c.cache_mode(), CacheMode::None, "-n is --cache=none");
    assert_eq!(c.aio, Some(AioMode::IoUring));
    assert_eq!(c.discard, DiscardMode::Unmap);
    assert_eq!(c.detect_zeroes, DetectZeroes::Unmap);
    assert_eq!(c.verbosity(), 4, "-T logs everything");
    // qemu's other spellings of the discard modes.
    for (given, mode) in [("on", DiscardMode::Unmap), ("off", DiscardMode::Ignore)] {
        let c = Cli::try_parse_from(["costack-nbd", "--discard", given]).unwrap();
        assert_eq!(c.discard, mode);
    }
    assert_eq!(c.check_modes(), Ok(()));
    for (mode, direct) in [
        ("none", true),
        ("writeback", false),
        ("writethrough", false),
        ("directsync", true),
        ("unsafe", false),
    ] {
        let c = Cli::try_parse_from(["costack-nbd", "--cache", mode]).unwrap();
        assert_eq!(c.cache_mode().direct(), direct, "{mode}");
    }
    for aio in ["threads", "native", "io_uring"] {
        assert!(
            Cli::try_parse_from(["costack-nbd", "--aio", aio]).is_ok(),
            "{aio}"
        );
    }
    // A later option overrides an earlier one, as getopt does.
    let c = Cli::try_parse_from(["costack-nbd", "-e", "0", "-e", "3"]).unwrap();
    assert_eq!(c.shared, 3);
}

#[test]
fn refused_modes_say_why() {
    let c = Cli::try_parse_from(["costack-nbd", "-c", "/dev/nbd0", "disk.img"]).unwrap();
    let e = c.check_modes().unwrap_err();
    assert!(e.contains("/dev/nbd0") && e.contains("nbd module"), "{e}");
    let c = Cli::try_parse_from(["costack-nbd", "-d"]).unwrap();
    assert!(c.check_modes().unwrap_err().contains("--disconnect"));
    let c = Cli::try_parse_from(["costack-nbd", "--detect-zeroes=unmap"]).unwrap();
    let e = c.check_modes().unwrap_err();
    assert!(e.contains("without setting discard"), "{e}");
    // Snapshot needs an image.
    assert!(Cli::try_parse_from(["costack-nbd", "-s"]).is_err());
}

#[test]
fn short_and_long_options() {
    let c = Cli::try_parse_from([
        "costack-nbd",
        "-b",
        "0.0.0.0",
        "-p",
        "10810",
        "-x",
        "disk",
        "-r",
        "--size",
        "64M",
        "-e",
        "4",
        "--threads",
        "2",
        "--poll-max-ns",
        "0",
        "--poll-grow",
        "4",
        "--poll-shrink",
        "2",
        "--cache",
        "none",
        "-vv",
    ])
    .unwrap();
    assert_eq!(c.file, None);
    assert_eq!(c.bind, "0.0.0.0");
    assert_eq!(c.port, 10810);
    assert_eq!(c.export_name, "disk");
    assert!(c.read_only);
    assert_eq!(c.size, 64 << 20);
    assert_eq!(c.shared, 4);
    assert_eq!(c.threads, 2);
    assert_eq!(c.poll_max_ns, 0);
    assert_eq!(c.poll_max(), std::time::Duration::ZERO);
    assert_eq!((c.poll_grow, c.poll_shrink), (4, 2));
    assert_eq!(c.cache, CacheMode::None);
    assert_eq!(c.verbose, 2);

    let c = Cli::try_parse_from(["costack-nbd", "--poll-max-ns=50000"]).unwrap();
    assert_eq!(c.poll_max(), std::time::Duration::from_micros(50));

    let c = Cli::try_parse_from(["costack-nbd", "-D", "boot disk", "image.raw"]).unwrap();
    assert_eq!(c.file, Some(PathBuf::from("image.raw")));
    assert_eq!(c.description, "boot disk");

    let c = Cli::try_parse_from([
        "costack-nbd",
        "--socket=/tmp/nbd.sock",
        "--export-name=x",
        "--read-only",
        "--size=2G",
        "--shared=0",
        "--verbose",
    ])
    .unwrap();
    assert_eq!(c.socket, Some(PathBuf::from("/tmp/nbd.sock")));
    assert_eq!(c.export_name, "x");
    assert_eq!(c.size, 2 << 30);
    assert_eq!(c.shared, 0);
    assert_eq!(c.verbose, 1);
}

#[test]
fn invalid_command_lines() {
    for args in [
        &["costack-nbd", "--size", "12Q"][..],
        &["costack-nbd", "--threads", "0"],
        &["costack-nbd", "--cache", "bogus"],
        &["costack-nbd", "--poll-max-ns", "-1"],
        &["costack-nbd", "-p", "70000"],
        &["costack-nbd", "-k", "/tmp/s", "-p", "1"],
        &["costack-nbd", "a", "b"],
        &["costack-nbd", "--size", "1000"],
        &["costack-nbd", "--size", "1M", "image.raw"],
        &["costack-nbd", "--cache", "directio"],
        &["costack-nbd", "--aio", "posix"],
        &["costack-nbd", "--discard", "maybe"],
        &["costack-nbd", "--detect-zeroes", "yes"],
    ] {
        assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
    }
}
