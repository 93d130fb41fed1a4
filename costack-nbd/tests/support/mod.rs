//! Test support shared by the integration tests: starting the real
//! `costack-nbd` binary, a small synchronous NBD client, and a model of
//! the disk's contents.
//!
//! The client writes the wire format by hand (it does not use the crate's
//! `proto` module) so that an encoder bug in the server cannot be mirrored
//! by the same bug in the test.

#![allow(dead_code)]

mod client;
pub mod crash;
pub mod crash_qcow2;
pub mod crash_workload;
pub mod pagecache;
pub mod tls_creds;
pub mod tools;

// (Each test crate uses some of these: see `dead_code` above.)
#[allow(unused_imports)]
pub use client::{Client, Export, Opts, Reply};

use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const FLAG_FUA: u16 = 1 << 0;
pub const FLAG_NO_HOLE: u16 = 1 << 1;
pub const FLAG_DF: u16 = 1 << 2;
pub const FLAG_REQ_ONE: u16 = 1 << 3;
pub const FLAG_FAST_ZERO: u16 = 1 << 4;

pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ENOTSUP: u32 = 95;

pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;

pub const REQUEST_MAGIC: u32 = 0x2560_9513;

/// Generous bound for anything the server should do promptly, even on a
/// loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Where [`launch`] has the server listen.
pub enum Listen<'a> {
    /// A free TCP port of 127.0.0.1.
    Tcp,
    /// A Unix socket at this path (`-k`).
    Unix(&'a Path),
}

/// Starts `costack-nbd` the way the tests run it (serving until killed,
/// `-t`; no client limit, `-e 0`; discards honoured; its URL printed),
/// listening per `listen`, with `args` after those, `env` set and its
/// stderr to `stderr`. Returns the child and the URL it printed, once it
/// did (an empty string if it exited first).
pub fn launch(
    listen: Listen<'_>,
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_costack-nbd"));
    match listen {
        Listen::Tcp => command.args(["-p", "0", "-b", "127.0.0.1"]),
        Listen::Unix(path) => command.arg("-k").arg(path),
    };
    let mut child = command
        .args(["-t", "-e", "0", "--discard=unmap", "--print-url"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start costack-nbd");
    let url = read_url(&mut child);
    (child, url)
}

/// The first line a server started with `--print-url` and a piped stdout
/// prints (its URL, once it listens), trimmed; empty if it exited first.
pub fn read_url(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the URL line");
    line.trim().to_owned()
}

/// The `costack-nbd` binary, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The URL it printed.
    pub url: String,
}

impl Server {
    /// Starts `costack-nbd -p 0 ARGS` and reads the URL it prints.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with environment variables set (`COSTACK_AIO`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(args, env, Stdio::null())
    }

    /// Starts `costack-nbd -p 0 ARGS` with `env` and its stderr to `stderr`
    /// (piped: `child.stderr` is the caller's), once it prints its URL.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Server {
        let (child, url) = launch(Listen::Tcp, args, env, stderr);
        let rest = url
            .strip_prefix("nbd://")
            .or_else(|| url.strip_prefix("nbds://"))
            .unwrap_or_else(|| panic!("unexpected first line {url:?}"));
        let addr = rest.split('/').next().unwrap().parse().expect("host:port");
        Server { child, addr, url }
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }

    /// Waits for the server to exit, failing after [`PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects (see [`Server::connect_eventually`]).
    pub fn connect(&self, opts: Opts) -> Client {
        self.connect_eventually(opts)
    }

    /// Connects, retrying while the server refuses the client (its client
    /// limit may still count connections it has not yet seen close).
    pub fn connect_eventually(&self, opts: Opts) -> Client {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match Client::connect(self.addr, opts) {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("server keeps refusing clients: {e}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator (xorshift64*), so failures replay from
/// the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend(self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Reads from `s` for at most `timeout`, through interruptions: the
/// result of the first read that is not `Interrupted`. A blocking read
/// with a timeout fails with `EINTR` when any signal comes in, and one
/// does now and then: a test's child server exits while another test
/// spawns one, which blocks signals for a moment, so the `SIGCHLD` is
/// kept and then delivered to a thread instead of being dropped.
pub fn read_within(s: &mut TcpStream, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Closes nothing, but makes the socket's close send a reset (RST) instead
/// of a goodbye (FIN): a client gone without a word.
pub fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
}

/// A unique scratch file path under cargo's per-target temp directory.
pub fn scratch(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}-{n}.img", std::process::id()))
}

/// A model of an export's contents: the expected bytes, and which of them
/// are known (trimmed bytes are unspecified until written again).
#[derive(Clone)]
pub struct Model {
    pub data: Vec<u8>,
    pub known: Vec<bool>,
}

impl Model {
    /// A model of a disk holding `data`.
    pub fn new(data: Vec<u8>) -> Model {
        let known = vec![true; data.len()];
        Model { data, known }
    }

    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        let o = offset as usize;
        self.data[o..o + bytes.len()].copy_from_slice(bytes);
        self.known[o..o + bytes.len()].fill(true);
    }

    pub fn zero(&mut self, offset: u64, len: u32) {
        let (o, n) = (offset as usize, len as usize);
        self.data[o..o + n].fill(0);
        self.known[o..o + n].fill(true);
    }

    /// Trimmed: the range's contents are unspecified now.
    pub fn forget(&mut self, offset: u64, len: u32) {
        let (o, n) = (offset as usize, len as usize);
        self.known[o..o + n].fill(false);
    }

    /// The first known byte that `got`, read at `offset`, has wrong:
    /// `(position, read, expected)`.
    pub fn first_difference(&self, offset: u64, got: &[u8]) -> Option<(usize, u8, u8)> {
        let o = offset as usize;
        got.iter()
            .enumerate()
            .map(|(i, &b)| (o + i, b))
            .find(|&(at, b)| self.known[at] && self.data[at] != b)
            .map(|(at, b)| (at, b, self.data[at]))
    }

    /// Panics with the first difference between `got` and the model.
    pub fn check(&self, offset: u64, got: &[u8], what: &str) {
        if let Some((at, b, want)) = self.first_difference(offset, got) {
            panic!("{what}: byte at {at} is {b:#04x}, model says {want:#04x}");
        }
    }

    /// Whether every known byte of the range is zero.
    pub fn zero_where_known(&self, offset: u64, len: u64) -> bool {
        let (o, n) = (offset as usize, len as usize);
        (o..o + n).all(|i| !self.known[i] || self.data[i] == 0)
    }
}
