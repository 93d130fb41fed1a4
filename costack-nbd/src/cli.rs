//! Command line, following qemu-nbd's conventions.
//!
//! ```text
//! costack-nbd [OPTIONS] [FILE]
//! ```
//!
//! Without `FILE` an in-memory disk of `--size` bytes is exported.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Host cache policy for file-backed exports (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Bypass the host page cache (`O_DIRECT`).
    None,
    /// Use the host page cache; flushes reach the disk on `NBD_CMD_FLUSH`.
    Writeback,
}

/// Image format (`-f`), as qemu-nbd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The file's bytes are the disk's.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

/// TLS mode (`--tls`), as nbdkit's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// No TLS: `NBD_OPT_STARTTLS` is refused.
    Off,
    /// TLS offered; clients may also negotiate in the clear.
    On,
    /// TLS required before any export is served.
    Require,
}

/// Command-line options of `costack-nbd`.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "costack-nbd",
    version,
    about = "Export a disk image or an in-memory disk over NBD"
)]
pub struct Cli {
    /// Disk image to export; without it a sparse in-memory disk is used.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Format of FILE; without it, a file starting with the qcow2 magic is
    /// qcow2 and anything else raw (as qemu-nbd probes).
    #[arg(
        short = 'f',
        long = "format",
        value_enum,
        value_name = "FORMAT",
        requires = "file"
    )]
    pub format: Option<Format>,

    /// Interface address to listen on.
    #[arg(
        short = 'b',
        long = "bind",
        value_name = "ADDR",
        default_value = "127.0.0.1"
    )]
    pub bind: String,

    /// TCP port to listen on.
    #[arg(
        short = 'p',
        long = "port",
        value_name = "PORT",
        default_value_t = 10809
    )]
    pub port: u16,

    /// Listen on a Unix socket at PATH instead of TCP.
    #[arg(
        short = 'k',
        long = "socket",
        value_name = "PATH",
        conflicts_with_all = ["bind", "port"]
    )]
    pub socket: Option<PathBuf>,

    /// Export name (the default export is "").
    #[arg(
        short = 'x',
        long = "export-name",
        value_name = "NAME",
        default_value = ""
    )]
    pub export_name: String,

    /// Export description shown by `NBD_OPT_LIST` / `NBD_INFO_DESCRIPTION`.
    #[arg(
        short = 'D',
        long = "description",
        value_name = "TEXT",
        default_value = ""
    )]
    pub description: String,

    /// Export read-only.
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,

    /// Size of the in-memory disk: a multiple of 512, with an optional K,
    /// M, G, T, P or E suffix (powers of 1024). Not with FILE, whose size
    /// is the file's.
    #[arg(
        short = 's',
        long = "size",
        value_name = "SIZE",
        default_value = "1G",
        value_parser = parse_disk_size,
        conflicts_with = "file"
    )]
    pub size: u64,

    /// Number of clients served at once (0 means unlimited).
    #[arg(short = 'e', long = "shared", value_name = "N", default_value_t = 16)]
    pub shared: u32,

    /// Seconds a client may take to finish the handshake before it is
    /// dropped (0: no limit), as qemu-nbd's `--handshake-limit`.
    #[arg(long = "handshake-limit", value_name = "SECS", default_value_t = 10)]
    pub handshake_limit: u64,

    /// Connections that may negotiate at once, apart from the `-e`
    /// clients; a newcomer beyond it drops the one negotiating longest.
    #[arg(long = "max-handshakes", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: u32,

    /// Number of event-loop threads.
    #[arg(long = "threads", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,

    /// Busy-poll for requests up to NS nanoseconds before sleeping (an
    /// adaptive window, as QEMU's iothread `poll-max-ns`); 0 turns polling
    /// off. The environment variable is the one costack's event loops
    /// read.
    #[arg(
        long = "poll-max-ns",
        value_name = "NS",
        env = "COSTACK_POLL_MAX_NS",
        default_value_t = DEFAULT_POLL_MAX_NS
    )]
    pub poll_max_ns: u64,

    /// Factor the polling window grows by when a longer one would have
    /// caught the request (QEMU's `poll-grow`; below 2 counts as 2).
    #[arg(long = "poll-grow", value_name = "N", default_value_t = 2)]
    pub poll_grow: u32,

    /// Divisor the polling window shrinks by after a wait longer than the
    /// maximum (QEMU's `poll-shrink`; 0 or 1: back to zero).
    #[arg(long = "poll-shrink", value_name = "N", default_value_t = 0)]
    pub poll_shrink: u32,

    /// TLS: `off`, `on` (offered) or `require`. Needs `--tls-certificates`
    /// or `--tls-psk`, and a build with the `tls` feature.
    #[arg(long = "tls", value_enum, value_name = "MODE", default_value_t = TlsMode::Off)]
    pub tls: TlsMode,

    /// Directory of the X.509 credentials: `server-cert.pem`,
    /// `server-key.pem`, and `ca-cert.pem` for `--tls-verify-peer`.
    #[arg(
        long = "tls-certificates",
        value_name = "DIR",
        conflicts_with = "tls_psk"
    )]
    pub tls_certificates: Option<PathBuf>,

    /// Require a client certificate signed by the CA in `ca-cert.pem`.
    #[arg(long = "tls-verify-peer", requires = "tls_certificates")]
    pub tls_verify_peer: bool,

    /// Pre-shared keys file, `identity:hexkey` lines as `psktool` writes.
    #[arg(long = "tls-psk", value_name = "FILE")]
    pub tls_psk: Option<PathBuf>,

    /// Host cache mode for file exports.
    #[arg(long = "cache", value_enum, value_name = "MODE", default_value_t = CacheMode::Writeback)]
    pub cache: CacheMode,

    /// Log more (repeat for more detail).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The polling maximum when neither `--poll-max-ns` nor
/// `COSTACK_POLL_MAX_NS` sets one: covers a request/reply round trip over
/// loopback with one request in flight.
pub const DEFAULT_POLL_MAX_NS: u64 = 128_000;

impl Cli {
    /// Checks that the TLS options fit together: `--tls on|require` needs
    /// credentials, and credentials need TLS on.
    ///
    /// # Errors
    /// The message to show, naming the options.
    pub fn check_tls(&self) -> Result<(), String> {
        let has_credentials = self.tls_certificates.is_some() || self.tls_psk.is_some();
        match self.tls {
            TlsMode::Off if has_credentials => Err(
                "TLS credentials were given but --tls is off: add --tls on or --tls require".into(),
            ),
            TlsMode::On | TlsMode::Require if !has_credentials => Err(format!(
                "--tls {} needs --tls-certificates DIR or --tls-psk FILE",
                if self.tls == TlsMode::On {
                    "on"
                } else {
                    "require"
                }
            )),
            _ => Ok(()),
        }
    }

    /// How long event loops busy-poll at most before sleeping.
    pub fn poll_max(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.poll_max_ns)
    }
}

/// Parses a size such as `4096`, `512K`, `1.5G` or `2TiB`.
///
/// Suffixes `B`, `K`, `M`, `G`, `T`, `P`, `E` (case-insensitive, optionally
/// followed by `B` or `iB`) are powers of 1024. A fraction is allowed if the
/// result is a whole number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(num_end);
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        "E" | "EB" | "EIB" => 60,
        other => return Err(format!("invalid size suffix {other:?} in {s:?}")),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(format!("invalid size {s:?}"));
    }
    if frac.len() > 18 {
        return Err(format!("too many decimal places in {s:?}"));
    }
    let too_big = || format!("size {s:?} is too large");
    let int: u128 = int.parse().map_err(|_| too_big())?;
    let mult = 1u128 << shift;
    let mut total = int.checked_mul(mult).ok_or_else(too_big)?;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let scale = 10u128.pow(frac.len() as u32);
        let scaled = digits * mult;
        if !scaled.is_multiple_of(scale) {
            return Err(format!("size {s:?} is not a whole number of bytes"));
        }
        total += scaled / scale;
    }
    u64::try_from(total).map_err(|_| too_big())
}

/// Sector size that `--size` must be a multiple of: what block-device
/// clients (the kernel's nbd driver, qemu) address in.
pub const SECTOR_SIZE: u64 = 512;

/// Parses `--size` as [`parse_size`] does, refusing sizes that are not a
/// whole number of [`SECTOR_SIZE`] sectors: sector-addressed clients could
/// not reach the tail.
pub fn parse_disk_size(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    if !size.is_multiple_of(SECTOR_SIZE) {
        let down = size / SECTOR_SIZE * SECTOR_SIZE;
        let suggestion = match down.checked_add(SECTOR_SIZE) {
            Some(up) => format!("{down} or {up}"),
            None => down.to_string(),
        };
        return Err(format!(
            "{size} bytes is not a multiple of {SECTOR_SIZE} (the sector size); \
             try {suggestion}"
        ));
    }
    Ok(size)
}

/// Installs a `tracing` subscriber writing to stderr; `verbosity` counts
/// `-v` flags: 0 warnings, 1 info, 2 debug, 3 or more trace.
pub fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // Ignore the error if a subscriber is already installed (e.g. in tests).
    // Colour only for a person at a terminal, not in a log file or pipe.
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
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
        let e = Cli::try_parse_from(["costack-nbd", "-s", "1M", "disk.img"]).unwrap_err();
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
        assert_eq!(c.bind, "127.0.0.1");
        assert_eq!(c.port, 10809);
        assert_eq!(c.socket, None);
        assert_eq!(c.export_name, "");
        assert_eq!(c.description, "");
        assert!(!c.read_only);
        assert_eq!(c.size, 1 << 30);
        assert_eq!(c.shared, 16);
        assert_eq!(c.threads, 1);
        if std::env::var_os("COSTACK_POLL_MAX_NS").is_none() {
            assert_eq!(c.poll_max_ns, DEFAULT_POLL_MAX_NS);
        }
        assert_eq!((c.poll_grow, c.poll_shrink), (2, 0));
        assert_eq!(c.cache, CacheMode::Writeback);
        assert_eq!(c.verbose, 0);
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
            "-s",
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
            &["costack-nbd", "-s", "12Q"][..],
            &["costack-nbd", "--threads", "0"],
            &["costack-nbd", "--cache", "bogus"],
            &["costack-nbd", "--poll-max-ns", "-1"],
            &["costack-nbd", "-p", "70000"],
            &["costack-nbd", "-k", "/tmp/s", "-p", "1"],
            &["costack-nbd", "a", "b"],
            &["costack-nbd", "-s", "1000"],
            &["costack-nbd", "-s", "1M", "image.raw"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
