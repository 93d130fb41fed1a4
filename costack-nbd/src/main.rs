//! `costack-nbd`: serves a raw image (or a memory disk) over NBD, one
//! coroutine per request on costack event loops.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use costack::aio::EventLoop;
use costack::net::{ListenOptions, TcpListener, UnixListener};
use costack_nbd::activation::{self, Activated};
use costack_nbd::block::modes::{Durability, Modes, WithModes, ZeroDetection};
use costack_nbd::block::overlay::Overlay;
use costack_nbd::block::raw::{FileDisk, DIRECT_ALIGN, SECTOR};
use costack_nbd::block::window::Window;
use costack_nbd::block::{BlockDevice, MemDisk};
use costack_nbd::cli::{init_logging, CacheMode, Cli, DetectZeroes, DiscardMode, Format, TlsMode};
use costack_nbd::daemon::{self, PidFile};
use costack_nbd::protocol::handshake::{ExportInfo, HandshakeConfig, QemuContext, TlsPolicy};
use costack_nbd::server::accept::{Listener, LoopOptions, Server};
use costack_nbd::server::{Shared, SharedDevice};
use costack_nbd::{list, objects};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.verbosity());
    // Before any other thread starts: it edits the environment.
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    if cli.list {
        return list_exports(&cli, given);
    }
    let activated = activation::take_listener().and_then(|l| match l {
        Some(l) => {
            match activation::conflicting_option(cli.socket.is_some(), given("bind"), given("port"))
            {
                Some(why) => Err(io::Error::new(io::ErrorKind::InvalidInput, why)),
                None => Ok(Some(l)),
            }
        }
        None => Ok(None),
    });
    match activated.and_then(|activated| run(cli, activated)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("costack-nbd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens a qcow2 image, writable unless `-r` or `-s`.
fn open_qcow2(cli: &Cli, path: &std::path::Path) -> io::Result<SharedDevice> {
    if cli.cache_mode().direct() {
        // qemu-nbd's "where the driver supports it": the qcow2 driver
        // reads and writes through the page cache (flushes still sync).
        tracing::info!(
            "{}: qcow2 images use the page cache; --cache {:?} keeps its flushing",
            path.display(),
            cli.cache_mode()
        );
    }
    let options = costack_nbd::block::qcow2::Options {
        writable: !image_read_only(cli),
        snapshot: cli.load_snapshot.clone(),
        ..Default::default()
    };
    let image = costack_nbd::block::qcow2::Qcow2::open_with(path, &options)
        .map_err(|e| context(e, format!("cannot open {} as qcow2", path.display())))?;
    if image.header().dirty {
        eprintln!(
            "costack-nbd: warning: {} was not closed cleanly (its refcounts may be stale; \
             reading is not affected)",
            path.display()
        );
    }
    Ok(Arc::new(image))
}

/// The TLS credentials of the command line, loaded (errors name the file).
#[cfg(feature = "tls")]
fn load_tls(cli: &Cli) -> io::Result<costack_nbd::tls::TlsConfig> {
    use costack_nbd::tls::{Credentials, TlsConfig};
    let credentials = match (&cli.tls_certificates, &cli.tls_psk) {
        (Some(dir), _) => Credentials::Certificates {
            dir: dir.clone(),
            verify_peer: cli.tls_verify_peer,
        },
        (None, Some(file)) => Credentials::Psk(file.clone()),
        // Cli::check_tls refused this already; say so rather than panic.
        (None, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--tls needs --tls-certificates DIR or --tls-psk FILE",
            ))
        }
    };
    let config = TlsConfig::load(&credentials).map_err(|e| context(e, "cannot set up TLS"))?;
    match &cli.tls_authz_identity {
        // Without a certificate asked of the client there is nothing to
        // authorize: refused rather than serving everyone.
        Some(_) if !cli.tls_verify_peer => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--tls-authz needs the client's certificate (verify-peer=on)",
        )),
        Some(identity) => Ok(config.authorize_only(identity.clone())),
        None => Ok(config),
    }
}

fn run(mut cli: Cli, activated: Option<Activated>) -> io::Result<()> {
    objects::apply(&mut cli)
        .and_then(|()| cli.check_tls())
        .and_then(|()| cli.check_modes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Before any thread exists: the parent waits for the child to listen.
    let ready = if cli.fork {
        // SAFETY: no thread was started yet (main parses the command line
        // and reads the environment only).
        Some(unsafe { daemon::fork_server() }.map_err(|e| context(e, "cannot fork"))?)
    } else {
        None
    };
    tune_malloc();
    // SIGINT/SIGTERM are taken by a dedicated thread (sigwait): block them
    // before any other thread starts so that all inherit the mask.
    let signals = block_stop_signals();

    // Whether the image's raw format was guessed rather than given.
    let mut guessed = false;
    let (device, direct): (SharedDevice, bool) = match &cli.file {
        Some(path) => {
            let qcow2 = match cli.format {
                Some(f) => f == Format::Qcow2,
                None => costack_nbd::block::qcow2::probe(path)
                    .map_err(|e| context(e, format!("cannot open {}", path.display())))?,
            };
            guessed = !qcow2 && cli.format.is_none();
            if qcow2 {
                (open_qcow2(&cli, path)?, false)
            } else {
                if cli.load_snapshot.is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "Failed to load snapshot: {} is a raw image, which has no internal \
                             snapshots",
                            path.display()
                        ),
                    ));
                }
                let direct = cli.cache_mode().direct();
                let disk = FileDisk::open(path, image_read_only(&cli), direct).map_err(|e| {
                    let e = if direct && e.raw_os_error() == Some(libc::EINVAL) {
                        let hint =
                            "--cache none needs O_DIRECT, which this filesystem may not support";
                        io::Error::new(e.kind(), format!("{e} ({hint})"))
                    } else {
                        e
                    };
                    context(e, format!("cannot open {}", path.display()))
                })?;
                warn_unreachable_tail(path, disk.size(), direct);
                if guessed {
                    // qemu-nbd's words (QEMU's tests compare them).
                    eprintln!(
                        "WARNING: Image format was not specified for '{}' and probing \
                         guessed raw.\n         Automatically detecting the format is \
                         dangerous for raw images, write operations on block 0 will be \
                         restricted.\n         Specify the 'raw' format explicitly to remove \
                         the restrictions.",
                        path.display()
                    );
                    (Arc::new(disk.guessed()), direct)
                } else {
                    (Arc::new(disk), direct)
                }
            }
        }
        None => (
            Arc::new(MemDisk::new(cli.size).with_read_only(cli.read_only)),
            false,
        ),
    };
    // -s: the image, opened read-only, under a copy-on-write overlay.
    let device: SharedDevice = if cli.snapshot && !cli.read_only {
        Arc::new(Overlay::new(device))
    } else {
        device
    };
    let device: SharedDevice = match cli.offset {
        0 => device,
        offset => Arc::new(Window::new(device, offset)?),
    };
    let device = with_modes(&cli, device);
    let mut export = ExportInfo::for_device(cli.export_name.clone(), &*device);
    export.description = cli.description.clone();
    export.qemu_contexts = qemu_contexts(&cli, &*device)?;
    // Every connection shares one device, and a flush is fdatasync (or
    // nothing, for memory): what one connection flushes, all see. As
    // qemu-nbd, said only when more than one client may connect.
    export.multi_conn = cli.shared > 1;
    // A guessed raw image is described in whole sectors (FileDisk::guessed)
    // and qemu-nbd advertises them as the minimum block: unless an offset
    // shifts the sectors.
    if guessed && cli.offset.is_multiple_of(SECTOR) {
        export.advised_minimum = SECTOR as u32;
    }
    if direct {
        export.block_sizes.minimum = DIRECT_ALIGN as u32;
        export.block_sizes.preferred = export.block_sizes.preferred.max(DIRECT_ALIGN as u32);
    }
    let handshake_limit =
        (cli.handshake_limit > 0).then(|| Duration::from_secs(cli.handshake_limit));
    let mut config = HandshakeConfig::new(vec![export]);
    config.tls = match cli.tls {
        TlsMode::Off => TlsPolicy::Off,
        TlsMode::On => TlsPolicy::On,
        TlsMode::Require => TlsPolicy::Require,
    };
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut shared = Shared::with_handshake_limits(
        config,
        device.clone(),
        handshake_limit,
        cli.max_handshakes as usize,
    );
    if cli.tls != TlsMode::Off {
        #[cfg(feature = "tls")]
        shared.set_tls(load_tls(&cli)?);
        #[cfg(not(feature = "tls"))]
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this costack-nbd was built without TLS: build it with `--features tls` \
             (links the system OpenSSL: apt-get install libssl-dev pkg-config) or \
             `--features tls-vendored` (compiles OpenSSL)",
        ));
    }

    // The main loop first: a bad COSTACK_AIO fails before anything listens.
    let ev = EventLoop::new().map_err(|e| context(e, "cannot start the event loop"))?;
    let (listener, url) = listen(&cli, activated)?;
    shared.lifecycle.set_persistent(cli.persistent);
    let pid_file = cli.pid_file.as_deref().map(PidFile::write).transpose()?;
    spawn_signal_thread(signals, shared.clone());

    // Extra event-loop threads; connections are spread over all loops.
    let loops = LoopOptions {
        threads: cli.threads,
        poll_max: cli.poll_max(),
        poll_factors: (cli.poll_grow, cli.poll_shrink),
    };
    let server = Server::start(ev, listener, shared, cli.shared as usize, &loops)?;

    // As qemu-nbd, nothing on stdout unless asked (--print-url); a
    // socket-activated server has no URL of its own choosing.
    if let (true, Some(url)) = (cli.print_url, &url) {
        let mut stdout = io::stdout();
        writeln!(stdout, "{url}")
            .and_then(|()| stdout.flush())
            .map_err(|e| context(e, "cannot print the URL on stdout"))?;
    }
    if let Some(ready) = ready {
        ready.done();
    }
    tracing::info!(
        url = url.as_deref().unwrap_or("(socket activation)"),
        threads = cli.threads,
        "serving"
    );

    server.run()?;
    device.close().map_err(|e| {
        let what = match &cli.file {
            Some(path) => format!("cannot flush {}", path.display()),
            None => "cannot flush the disk".to_owned(),
        };
        context(e, what)
    })?;
    if let Some(path) = &cli.socket {
        let _ = std::fs::remove_file(path);
    }
    drop(pid_file);
    tracing::info!("stopped");
    Ok(())
}

/// The listening socket: the one socket activation passed (no URL to
/// print then), else a Unix socket at `-k PATH`, else TCP on `-b`/`-p`;
/// with the URL clients need (`nbds` when TLS is required).
fn listen(cli: &Cli, activated: Option<Activated>) -> io::Result<(Listener, Option<String>)> {
    let scheme = if cli.tls == TlsMode::Require {
        "nbds"
    } else {
        "nbd"
    };
    if let Some(activated) = activated {
        let listener = match activated {
            Activated::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            Activated::Unix(l) => {
                let name = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
                    .unwrap_or_else(|| "socket-activation".into());
                Listener::Unix(UnixListener::from_std(l)?, name)
            }
        };
        return Ok((listener, None));
    }
    match &cli.socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(|e| {
                let what = format!("cannot listen on Unix socket {}", path.display());
                context(e, what)
            })?;
            let url = format!(
                "{scheme}+unix:///{}?socket={}",
                cli.export_name,
                path.display()
            );
            Ok((Listener::Unix(l, path.clone()), Some(url)))
        }
        None => {
            // A deep backlog (the kernel caps it at net.core.somaxconn, as
            // qemu-nbd's SOMAXCONN): clients waiting there for a -e slot or
            // for room to negotiate must not overflow it (an overflowing
            // client may believe itself connected while the server dropped
            // it, and wait for a greeting for ever).
            let options = ListenOptions::new().backlog(LISTEN_BACKLOG);
            let l =
                TcpListener::bind_with((cli.bind.as_str(), cli.port), &options).map_err(|e| {
                    let what = format!("cannot listen on {}", host_port(&cli.bind, cli.port));
                    context(e, what)
                })?;
            let addr = l.local_addr()?;
            let host = match addr.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            let url = format!("{scheme}://{host}:{}/{}", addr.port(), cli.export_name);
            Ok((Listener::Tcp(l), Some(url)))
        }
    }
}

/// Whether the image file is opened read-only: with `-r`, and with `-s`
/// (writes go to the overlay).
fn image_read_only(cli: &Cli) -> bool {
    cli.read_only || cli.snapshot || cli.load_snapshot.is_some()
}

/// `device` with the block layer's modes of the command line (discard,
/// detect-zeroes, the flushing part of --cache), unless they change nothing.
fn with_modes(cli: &Cli, device: SharedDevice) -> SharedDevice {
    let modes = Modes {
        unmap: cli.discard == DiscardMode::Unmap,
        detect_zeroes: match cli.detect_zeroes {
            DetectZeroes::Off => ZeroDetection::Off,
            DetectZeroes::On => ZeroDetection::Zero,
            DetectZeroes::Unmap => ZeroDetection::Unmap,
        },
        durability: match cli.cache_mode() {
            CacheMode::None | CacheMode::Writeback => Durability::OnFlush,
            CacheMode::Writethrough | CacheMode::Directsync => Durability::EveryWrite,
            CacheMode::Unsafe => Durability::Never,
        },
    };
    if let Some(aio) = cli.aio {
        tracing::info!(
            ?aio,
            "--aio accepted: costack runs each file request on the loop thread (page \
             cache hits), through io_uring where the kernel has it, or on its thread pool"
        );
    }
    if modes.are_plain() {
        device
    } else {
        Arc::new(WithModes::new(device, modes))
    }
}

/// Prefixes `e` with what failed, keeping its kind: the one line printed
/// says what, where and why.
fn context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `ADDR:PORT` as a URL writes it, brackets around an IPv6 address.
fn host_port(addr: &str, port: u16) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Says what happens to an image's last bytes under `--cache none` when
/// its size is not a whole number of `O_DIRECT` blocks: the export keeps
/// the exact size, so nothing is cut off, but the tail cannot be reached.
/// (Without `O_DIRECT` the export is rounded up to a sector, as qemu-nbd
/// does, and every byte is reachable.)
fn warn_unreachable_tail(path: &std::path::Path, size: u64, direct: bool) {
    let path = path.display();
    if direct && !size.is_multiple_of(DIRECT_ALIGN as u64) {
        // Requests must be DIRECT_ALIGN-aligned (the minimum block size
        // advertised), and one covering the tail would run past the end.
        let tail = size % DIRECT_ALIGN as u64;
        eprintln!(
            "costack-nbd: warning: {path} is {size} bytes, not a multiple of \
             {DIRECT_ALIGN} (--cache none's alignment): it is exported at that size, \
             but its last {tail} bytes cannot be read or written"
        );
    }
}

/// Keeps request buffers (up to 32 MiB, NBD's usual payload limit) on the
/// heap and the heap from shrinking after every large reply: glibc's
/// defaults would mmap/munmap or trim with brk per request.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator tunables; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The TCP listen backlog asked for (see `listen`).
const LISTEN_BACKLOG: u32 = 4096;

/// Seconds a stopping server waits for clients to take their last replies.
const STOP_GRACE_SECS: libc::time_t = 5;

/// Waits for SIGINT/SIGTERM, then stops the server: no new clients, no new
/// requests; in-flight requests finish, the device is flushed, exit 0.
/// The stop reaches the loops through the gates of [`Shared::lifecycle`].
fn spawn_signal_thread(set: libc::sigset_t, shared: Arc<Shared>) {
    std::thread::Builder::new()
        .name("nbd-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is a valid signal set blocked in every thread.
            unsafe { libc::sigwait(&set, &mut sig) };
            tracing::info!(signal = sig, "stopping");
            shared.lifecycle.request_stop(&shared);
            // Requests in flight finish and get their replies, unless a
            // client does not take them: after a grace period, or at a
            // second signal, shut every connection down both ways.
            let grace = libc::timespec {
                tv_sec: STOP_GRACE_SECS,
                tv_nsec: 0,
            };
            // SAFETY: valid set and timeout; no siginfo wanted.
            let again = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &grace) };
            if shared.clients.load(Ordering::SeqCst) > 0 {
                tracing::warn!(
                    second_signal = again > 0,
                    "closing connections whose clients do not take their replies"
                );
                shared.abort();
            }
        })
        .expect("spawn the signal thread");
}

/// The metadata contexts of `-A` and `-B`; a bitmap the image does not
/// have is refused, as qemu-nbd does.
fn qemu_contexts(cli: &Cli, device: &dyn BlockDevice) -> io::Result<Vec<QemuContext>> {
    let mut contexts = Vec::new();
    if cli.allocation_depth {
        contexts.push(QemuContext::AllocationDepth);
    }
    if !cli.bitmaps.is_empty() {
        let present = device.bitmap_names()?;
        for name in &cli.bitmaps {
            if !present.contains(name) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("Bitmap '{name}' is not found"),
                ));
            }
            contexts.push(QemuContext::DirtyBitmap(name.clone()));
        }
    }
    Ok(contexts)
}

/// `-L`: lists the exports of the server the command line names, as
/// qemu-nbd does, refusing what only a server would use (qemu-nbd's
/// messages).
fn list_exports(cli: &Cli, given: impl Fn(&str) -> bool) -> ExitCode {
    let per_device = [
        "export_name",
        "description",
        "read_only",
        "snapshot",
        "persistent",
        "shared",
        "format",
        "allocation_depth",
        "bitmaps",
        "cache",
        "nocache",
        "aio",
        "discard",
        "detect_zeroes",
        "connect",
        "disconnect",
        "size",
        "load_snapshot",
        "offset",
    ];
    let refusal = if cli.file.is_some() {
        Some("List mode is incompatible with a file name")
    } else if per_device.iter().any(|id| given(id)) {
        Some("List mode is incompatible with per-device settings")
    } else if cli.fork {
        Some("List mode is incompatible with forking")
    } else {
        None
    };
    if let Some(why) = refusal {
        eprintln!("costack-nbd: {why}");
        return ExitCode::FAILURE;
    }
    let target = match &cli.socket {
        Some(path) => list::Target::Unix(path.clone()),
        None => list::Target::Tcp(cli.bind.clone(), cli.port),
    };
    let creds = match objects::client_credentials(cli) {
        Ok(creds) => creds,
        Err(why) => {
            eprintln!("costack-nbd: {why}");
            return ExitCode::FAILURE;
        }
    };
    // The name the server's certificate must carry: -b's host unless
    // --tls-hostname says otherwise (a Unix socket has none).
    let hostname = cli.tls_hostname.clone().or(match &target {
        list::Target::Tcp(host, _) => Some(host.clone()),
        list::Target::Unix(_) => None,
    });
    let listed = match creds {
        None => list::list(&target, None),
        #[cfg(feature = "tls")]
        Some(creds) => {
            let upgrade = |s: Box<dyn list::Stream>| -> io::Result<Box<dyn list::Stream>> {
                let tls = costack_nbd::tls_client::connect(s, &creds, hostname.as_deref())?;
                Ok(Box::new(tls))
            };
            list::list(&target, Some(&upgrade))
        }
        #[cfg(not(feature = "tls"))]
        Some(_) => {
            let _ = hostname;
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "--tls-creds: this costack-nbd was built without TLS (feature tls)",
            ))
        }
    };
    match listed {
        Ok(listing) => {
            print!("{}", list::format(&listing));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("costack-nbd: {e}");
            ExitCode::FAILURE
        }
    }
}
