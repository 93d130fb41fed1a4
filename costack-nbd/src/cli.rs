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

/// Host cache policy (`--cache`), qemu-nbd's five modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Bypass the host page cache (`O_DIRECT` where the driver supports
    /// it); flushes reach the disk on `NBD_CMD_FLUSH`.
    None,
    /// Use the host page cache; flushes reach the disk on `NBD_CMD_FLUSH`.
    Writeback,
    /// The page cache, and every write flushed before its reply.
    Writethrough,
    /// `O_DIRECT` where the driver supports it, and every write flushed.
    Directsync,
    /// The page cache, and `NBD_CMD_FLUSH` does nothing (data reaches the
    /// disk when the kernel writes it back, or when the server stops).
    Unsafe,
}

impl CacheMode {
    /// Whether the mode bypasses the page cache where it can.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }
}

/// What discards do (`--discard`), as qemu-nbd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscardMode {
    /// Discards succeed and do nothing; write-zeroes never punch holes.
    #[value(alias = "off")]
    Ignore,
    /// Discards free space (punch holes, free clusters).
    #[value(alias = "on")]
    Unmap,
}

/// Whether writes of zeroes become write-zeroes (`--detect-zeroes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectZeroes {
    /// Written as they come.
    Off,
    /// An all-zero write is a write-zeroes that keeps the space allocated.
    On,
    /// An all-zero write is a write-zeroes that may free the space (needs
    /// `--discard=unmap`).
    Unmap,
}

/// AIO mode (`--aio`), accepted for qemu-nbd's command line: costack
/// chooses per request how a file request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AioMode {
    /// A thread pool.
    Threads,
    /// Linux native AIO.
    Native,
    /// io_uring.
    #[value(name = "io_uring")]
    IoUring,
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
    about = "Export a disk image or an in-memory disk over NBD",
    // As getopt in qemu-nbd: an option given again overrides.
    args_override_self = true
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
        default_value = "0.0.0.0"
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

    /// Export FILE from byte OFFSET on (the export is that much smaller).
    #[arg(
        short = 'o',
        long = "offset",
        value_name = "OFFSET",
        default_value_t = 0,
        requires = "file"
    )]
    pub offset: u64,

    /// Serve the qcow2 image's internal snapshot SNAPSHOT, read-only: an
    /// id, a name, or `snapshot.id=ID,snapshot.name=NAME`.
    #[arg(
        short = 'l',
        long = "load-snapshot",
        value_name = "SNAPSHOT",
        requires = "file"
    )]
    pub load_snapshot: Option<String>,

    /// Client mode: list the exports of the NBD server at `-b`/`-p` (or
    /// `-k`) as qemu-nbd does, and exit.
    #[arg(short = 'L', long = "list")]
    pub list: bool,

    /// Offer the `qemu:allocation-depth` metadata context: where in the
    /// backing chain each extent is allocated.
    #[arg(short = 'A', long = "allocation-depth")]
    pub allocation_depth: bool,

    /// Offer the image's persistent dirty bitmap NAME as the
    /// `qemu:dirty-bitmap:NAME` metadata context (qcow2; may be repeated).
    #[arg(short = 'B', long = "bitmap", value_name = "NAME")]
    pub bitmaps: Vec<String>,

    /// Serve FILE as the backing of a temporary overlay: writes go to
    /// the overlay (in memory) and are dropped at exit; FILE is opened
    /// read-only and never changes.
    #[arg(short = 's', long = "snapshot", requires = "file")]
    pub snapshot: bool,

    /// Do not exit when the last client disconnects.
    #[arg(short = 't', long = "persistent")]
    pub persistent: bool,

    /// Run in the background: the command returns once the server accepts
    /// connections (exit 0), or fails with the server's error.
    #[arg(long = "fork")]
    pub fork: bool,

    /// Write the server's process ID to PATH (removed when it exits).
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// qemu-nbd's kernel client mode (attach FILE to /dev/nbdX): refused,
    /// this server has no kernel client.
    #[arg(short = 'c', long = "connect", value_name = "DEV")]
    pub connect: Option<String>,

    /// qemu-nbd's kernel client mode (detach /dev/nbdX): refused.
    #[arg(short = 'd', long = "disconnect")]
    pub disconnect: bool,

    /// Size of the in-memory disk: a multiple of 512, with an optional K,
    /// M, G, T, P or E suffix (powers of 1024). Not with FILE, whose size
    /// is the file's.
    #[arg(
        long = "size",
        value_name = "SIZE",
        default_value = "1G",
        value_parser = parse_disk_size,
        conflicts_with = "file"
    )]
    pub size: u64,

    /// Number of clients served at once (0 means unlimited); a client
    /// beyond it waits for a free slot.
    #[arg(short = 'e', long = "shared", value_name = "N", default_value_t = 1)]
    pub shared: u32,

    /// Seconds a client may take to finish the handshake before it is
    /// dropped (0: no limit), as qemu-nbd's `--handshake-limit`.
    #[arg(long = "handshake-limit", value_name = "SECS", default_value_t = 10)]
    pub handshake_limit: u64,

    /// Connections that may negotiate at once, apart from the `-e`
    /// clients; a newcomer beyond it waits until one finishes or stalls (a
    /// stalled one is dropped for it).
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

    /// FILE is QEMU block options (`driver=qcow2,file.filename=PATH`), for
    /// the raw and qcow2 drivers.
    #[arg(long = "image-opts", requires = "file")]
    pub image_opts: bool,

    /// qemu-nbd's object definitions: `tls-creds-x509` and `tls-creds-psk`
    /// (for `--tls-creds`), `secret` (see the `objects` module).
    #[arg(long = "object", value_name = "TYPE,id=ID,...")]
    pub objects: Vec<String>,

    /// Serve TLS only, with the credentials of `--object` ID (qemu-nbd's
    /// form of `--tls require`).
    #[arg(long = "tls-creds", value_name = "ID")]
    pub tls_creds: Option<String>,

    /// Serve only TLS clients that `--object authz-simple,id=ID,identity=DN`
    /// allows: an X.509 client certificate whose distinguished name is DN.
    #[arg(long = "tls-authz", value_name = "ID", requires = "tls_creds")]
    pub tls_authz: Option<String>,

    /// With `-L`: the host name the server's certificate must name (by
    /// default the host of `-b`; needed over a Unix socket).
    #[arg(long = "tls-hostname", value_name = "HOSTNAME")]
    pub tls_hostname: Option<String>,

    /// The distinguished name `--tls-authz` allows (set from its object).
    #[arg(skip)]
    pub tls_authz_identity: Option<String>,

    /// Host cache mode for file exports.
    #[arg(long = "cache", value_enum, value_name = "MODE", default_value_t = CacheMode::Writeback)]
    pub cache: CacheMode,

    /// Bypass the host page cache: `--cache=none`.
    #[arg(short = 'n', long = "nocache")]
    pub nocache: bool,

    /// AIO mode, accepted as qemu-nbd's: costack picks, per request, the
    /// loop thread (page-cache hits), io_uring (where the kernel has it)
    /// or its thread pool.
    #[arg(long = "aio", value_enum, value_name = "MODE")]
    pub aio: Option<AioMode>,

    /// What discard requests do: `ignore` or `unmap`.
    #[arg(long = "discard", value_enum, value_name = "MODE", default_value_t = DiscardMode::Ignore)]
    pub discard: DiscardMode,

    /// Turn writes of zeroes into write-zeroes: `off`, `on` or `unmap`.
    #[arg(long = "detect-zeroes", value_enum, value_name = "MODE", default_value_t = DetectZeroes::Off)]
    pub detect_zeroes: DetectZeroes,

    /// Log more: as qemu-nbd's, `-v` alone adds nothing on stderr;
    /// `-vv` logs at info, `-vvv` debug, `-vvvv` trace.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// qemu's trace options: any value logs everything (as `-vvvv`).
    #[arg(short = 'T', long = "trace", value_name = "OPTIONS")]
    pub trace: Option<String>,

    /// Print the URL clients connect to on stdout once listening
    /// (qemu-nbd prints nothing).
    #[arg(long = "print-url")]
    pub print_url: bool,
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

    /// The cache mode in effect: `-n` is `--cache=none`.
    pub fn cache_mode(&self) -> CacheMode {
        if self.nocache {
            CacheMode::None
        } else {
            self.cache
        }
    }

    /// How much to log: `-v` counted, `-T` as much as there is.
    pub fn verbosity(&self) -> u8 {
        if self.trace.is_some() {
            self.verbose.max(4)
        } else {
            self.verbose
        }
    }

    /// Checks the options qemu-nbd refuses or that this server cannot
    /// honour, with the message to show.
    ///
    /// # Errors
    /// The message, naming the options.
    pub fn check_modes(&self) -> Result<(), String> {
        if let Some(dev) = &self.connect {
            return Err(format!(
                "-c/--connect {dev}: attaching an export to a kernel NBD device is \
                 qemu-nbd's client mode, which costack-nbd does not have (it needs the \
                 kernel's nbd module); serve the image and connect with nbd-client instead"
            ));
        }
        if self.disconnect {
            return Err("-d/--disconnect: costack-nbd has no kernel NBD client mode".into());
        }
        if self.detect_zeroes == DetectZeroes::Unmap && self.discard != DiscardMode::Unmap {
            // qemu's words.
            return Err(
                "setting detect-zeroes to unmap is not allowed without setting discard \
                 operation to unmap"
                    .into(),
            );
        }
        Ok(())
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
/// `-v` flags: 0 or 1 warnings (qemu-nbd's `-v` prints nothing more, and
/// QEMU's own tests compare its output), 2 info, 3 debug, 4 or more trace.
pub fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 | 1 => tracing::Level::WARN,
        2 => tracing::Level::INFO,
        3 => tracing::Level::DEBUG,
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
#[path = "cli_tests.rs"]
mod tests;
