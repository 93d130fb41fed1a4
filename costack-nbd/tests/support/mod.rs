//! Test support shared by the integration tests: starting the real
//! `costack-nbd` binary, a small synchronous NBD client, and a model of
//! the disk's contents.
//!
//! The client writes the wire format by hand (it does not use the crate's
//! `proto` module) so that an encoder bug in the server cannot be mirrored
//! by the same bug in the test.

#![allow(dead_code)]

pub mod crash;
pub mod crash_qcow2;
pub mod crash_workload;
pub mod pagecache;
pub mod tls_creds;
pub mod tools;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
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
const SIMPLE_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

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

/// Handshake choices.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Negotiate structured replies.
    pub structured: bool,
    /// Select `base:allocation` (needs `structured`).
    pub meta: bool,
}

impl Opts {
    pub const SIMPLE: Opts = Opts {
        structured: false,
        meta: false,
    };
    pub const FULL: Opts = Opts {
        structured: true,
        meta: true,
    };
}

/// What the handshake told us about the export.
#[derive(Debug, Clone)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub max_block: u32,
    pub structured: bool,
    pub meta_id: Option<u32>,
}

impl Export {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// A finished reply.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub handle: u64,
    /// NBD error value, 0 on success.
    pub error: u32,
    /// Data of a successful read.
    pub data: Vec<u8>,
    /// Block status descriptors `(length, flags)`.
    pub extents: Vec<(u32, u32)>,
    /// Context id of the block status chunk.
    pub context: Option<u32>,
}

#[derive(Debug)]
struct Pending {
    command: u16,
    flags: u16,
    /// `OFFSET_DATA` / `OFFSET_HOLE` chunks received.
    data_chunks: usize,
    hole_chunks: usize,
    offset: u64,
    length: u32,
    reply: Reply,
    covered: Vec<(u64, u64)>,
}

/// A synchronous NBD client over TCP that may keep many requests in flight.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub export: Export,
    pending: HashMap<u64, Pending>,
    next_handle: u64,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Client {
    /// Connects and runs the fixed-newstyle handshake, ending with
    /// `NBD_OPT_GO` on the default export (asking for block sizes).
    pub fn connect(addr: SocketAddr, opts: Opts) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            reader: BufReader::with_capacity(256 << 10, stream.try_clone()?),
            writer: stream,
            export: Export {
                size: 0,
                flags: 0,
                min_block: 1,
                max_block: u32::MAX,
                structured: false,
                meta_id: None,
            },
            pending: HashMap::new(),
            next_handle: 1,
        };
        let mut greeting = [0u8; 18];
        c.reader.read_exact(&mut greeting)?;
        if &greeting[..16] != b"NBDMAGICIHAVEOPT" {
            return Err(bad(format!("bad greeting {greeting:?}")));
        }
        if be16(&greeting[16..]) & 1 == 0 {
            return Err(bad("server is not fixed newstyle".into()));
        }
        // FIXED_NEWSTYLE | NO_ZEROES
        c.writer.write_all(&3u32.to_be_bytes())?;

        if opts.structured {
            c.option(8, &[])?;
            let (ty, _) = c.option_reply(8)?;
            if ty != 1 {
                return Err(bad(format!("structured replies refused: {ty:#x}")));
            }
            c.export.structured = true;
        }
        if opts.meta {
            let q = b"base:allocation";
            let mut data = Vec::new();
            data.extend(0u32.to_be_bytes()); // export "" (name length 0)
            data.extend(1u32.to_be_bytes());
            data.extend((q.len() as u32).to_be_bytes());
            data.extend(q);
            c.option(10, &data)?;
            loop {
                let (ty, payload) = c.option_reply(10)?;
                match ty {
                    1 => break,
                    4 => {
                        if &payload[4..] != q {
                            return Err(bad(format!("unexpected context {payload:?}")));
                        }
                        c.export.meta_id = Some(be32(&payload));
                    }
                    _ => return Err(bad(format!("SET_META_CONTEXT reply {ty:#x}"))),
                }
            }
        }
        // NBD_OPT_GO: name "", one info request: NBD_INFO_BLOCK_SIZE.
        let mut go = Vec::new();
        go.extend(0u32.to_be_bytes());
        go.extend(1u16.to_be_bytes());
        go.extend(3u16.to_be_bytes());
        c.option(7, &go)?;
        let mut got_export = false;
        loop {
            let (ty, p) = c.option_reply(7)?;
            match ty {
                1 => break,
                3 => match be16(&p) {
                    0 => {
                        c.export.size = be64(&p[2..]);
                        c.export.flags = be16(&p[10..]);
                        got_export = true;
                    }
                    3 => {
                        c.export.min_block = be32(&p[2..]);
                        c.export.max_block = be32(&p[10..]);
                    }
                    _ => {}
                },
                _ => return Err(bad(format!("NBD_OPT_GO reply {ty:#x}"))),
            }
        }
        if !got_export {
            return Err(bad("no NBD_INFO_EXPORT before the ack".into()));
        }
        Ok(c)
    }

    fn option(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend(IHAVEOPT.to_be_bytes());
        b.extend(option.to_be_bytes());
        b.extend((data.len() as u32).to_be_bytes());
        b.extend(data);
        self.writer.write_all(&b)
    }

    fn option_reply(&mut self, option: u32) -> io::Result<(u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        self.reader.read_exact(&mut h)?;
        if be64(&h) != OPT_REPLY_MAGIC || be32(&h[8..]) != option {
            return Err(bad(format!("bad option reply header {h:?}")));
        }
        let mut p = vec![0u8; be32(&h[16..]) as usize];
        self.reader.read_exact(&mut p)?;
        Ok((be32(&h[12..]), p))
    }

    /// Sends one request (with `payload` for writes) without waiting;
    /// returns its handle.
    pub fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend(REQUEST_MAGIC.to_be_bytes());
        b.extend(flags.to_be_bytes());
        b.extend(command.to_be_bytes());
        b.extend(handle.to_be_bytes());
        b.extend(offset.to_be_bytes());
        b.extend(length.to_be_bytes());
        b.extend(payload);
        self.writer.write_all(&b)?;
        if command != CMD_DISC {
            let reply = Reply {
                handle,
                ..Reply::default()
            };
            let p = Pending {
                command,
                flags,
                data_chunks: 0,
                hole_chunks: 0,
                offset,
                length,
                reply,
                covered: Vec::new(),
            };
            self.pending.insert(handle, p);
        }
        Ok(handle)
    }

    /// Raw bytes on the socket (for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Reads until some request's reply is complete and returns it. Checks
    /// the reply's framing rigorously; a violation is an `InvalidData`
    /// error.
    pub fn recv(&mut self) -> io::Result<Reply> {
        loop {
            let mut magic = [0u8; 4];
            self.reader.read_exact(&mut magic)?;
            match be32(&magic) {
                SIMPLE_MAGIC => {
                    let mut h = [0u8; 12];
                    self.reader.read_exact(&mut h)?;
                    let (error, handle) = (be32(&h), be64(&h[4..]));
                    let mut p = self
                        .pending
                        .remove(&handle)
                        .ok_or_else(|| bad(format!("simple reply to unknown handle {handle}")))?;
                    if p.command == CMD_READ && self.export.structured && error == 0 {
                        return Err(bad("simple reply to a structured read".into()));
                    }
                    if !p.covered.is_empty() {
                        return Err(bad("simple reply after chunks".into()));
                    }
                    p.reply.error = error;
                    if p.command == CMD_READ && error == 0 {
                        p.reply.data = vec![0u8; p.length as usize];
                        self.reader.read_exact(&mut p.reply.data)?;
                    }
                    return Ok(p.reply);
                }
                STRUCTURED_MAGIC => {
                    if !self.export.structured {
                        return Err(bad("structured reply without negotiation".into()));
                    }
                    let mut h = [0u8; 16];
                    self.reader.read_exact(&mut h)?;
                    let (flags, ty, handle, len) =
                        (be16(&h), be16(&h[2..]), be64(&h[4..]), be32(&h[12..]));
                    let mut payload = vec![0u8; len as usize];
                    self.reader.read_exact(&mut payload)?;
                    let p = self
                        .pending
                        .get_mut(&handle)
                        .ok_or_else(|| bad(format!("chunk for unknown handle {handle}")))?;
                    chunk(p, ty, &payload)?;
                    if flags & 1 != 0 {
                        let mut p = self.pending.remove(&handle).unwrap();
                        if p.command == CMD_READ && p.reply.error == 0 {
                            p.covered.sort();
                            let mut at = p.offset;
                            for &(s, e) in &p.covered {
                                if s != at {
                                    return Err(bad(format!("read reply gap/overlap at {at}")));
                                }
                                at = e;
                            }
                            if at != p.offset + u64::from(p.length) {
                                return Err(bad("read reply does not cover the range".into()));
                            }
                            // NBD_CMD_FLAG_DF: one OFFSET_DATA chunk, no holes.
                            if p.flags & FLAG_DF != 0
                                && p.length > 0
                                && (p.data_chunks, p.hole_chunks) != (1, 0)
                            {
                                return Err(bad(format!(
                                    "DF read answered with {} data and {} hole chunks",
                                    p.data_chunks, p.hole_chunks
                                )));
                            }
                        }
                        if p.command == CMD_BLOCK_STATUS
                            && p.reply.error == 0
                            && p.reply.context.is_none()
                        {
                            return Err(bad("block status without descriptors".into()));
                        }
                        return Ok(p.reply);
                    }
                }
                m => return Err(bad(format!("bad reply magic {m:#x}"))),
            }
        }
    }

    /// Sends one request and waits for its reply (no others in flight).
    pub fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<Reply> {
        assert_eq!(self.in_flight(), 0);
        let h = self.send(command, flags, offset, length, payload)?;
        let r = self.recv()?;
        assert_eq!(r.handle, h);
        Ok(r)
    }

    pub fn read(&mut self, offset: u64, length: u32) -> io::Result<Vec<u8>> {
        let r = self.request(CMD_READ, 0, offset, length, &[])?;
        if r.error != 0 {
            return Err(io::Error::other(format!("read failed: {}", r.error)));
        }
        Ok(r.data)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> io::Result<()> {
        let r = self.request(CMD_WRITE, flags, offset, data.len() as u32, data)?;
        if r.error != 0 {
            return Err(io::Error::other(format!("write failed: {}", r.error)));
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let r = self.request(CMD_FLUSH, 0, 0, 0, &[])?;
        if r.error != 0 {
            return Err(io::Error::other(format!("flush failed: {}", r.error)));
        }
        Ok(())
    }

    /// `NBD_CMD_DISC`, then waits for the server to close the socket.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.send(CMD_DISC, 0, 0, 0, &[])?;
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after NBD_CMD_DISC", rest.len())));
        }
        Ok(())
    }

    /// Whether the server closed the connection: reads until end of stream
    /// (discarding anything else), within [`PATIENCE`].
    pub fn closed_by_server(&mut self) -> bool {
        let mut sink = Vec::new();
        match self.reader.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }
}

/// Folds one structured chunk into its pending request.
fn chunk(p: &mut Pending, ty: u16, payload: &[u8]) -> io::Result<()> {
    let end = p.offset.saturating_add(u64::from(p.length));
    let place = |p: &mut Pending, at: u64, len: u64| -> io::Result<()> {
        if p.command != CMD_READ || at < p.offset || at + len > end || len == 0 {
            return Err(bad(format!(
                "chunk [{at}, +{len}) outside read [{}, {end})",
                p.offset
            )));
        }
        if p.reply.data.is_empty() {
            p.reply.data = vec![0u8; p.length as usize];
        }
        p.covered.push((at, at + len));
        Ok(())
    };
    match ty {
        0 => {
            // NONE: only for a zero-length read here.
            if !payload.is_empty() {
                return Err(bad("NONE chunk with payload".into()));
            }
        }
        1 => {
            if payload.len() < 9 {
                return Err(bad("short OFFSET_DATA".into()));
            }
            let at = be64(payload);
            let data = &payload[8..];
            place(p, at, data.len() as u64)?;
            p.data_chunks += 1;
            let s = (at - p.offset) as usize;
            p.reply.data[s..s + data.len()].copy_from_slice(data);
        }
        2 => {
            if payload.len() != 12 {
                return Err(bad("bad OFFSET_HOLE".into()));
            }
            place(p, be64(payload), u64::from(be32(&payload[8..])))?;
            p.hole_chunks += 1;
        }
        5 => {
            if p.command != CMD_BLOCK_STATUS
                || payload.len() < 12
                || !(payload.len() - 4).is_multiple_of(8)
            {
                return Err(bad("bad BLOCK_STATUS chunk".into()));
            }
            p.reply.context = Some(be32(payload));
            for d in payload[4..].chunks(8) {
                p.reply.extents.push((be32(d), be32(&d[4..])));
            }
        }
        0x8001 | 0x8002 => {
            if payload.len() < 6 {
                return Err(bad("short error chunk".into()));
            }
            let mlen = usize::from(be16(&payload[4..]));
            let want = 6 + mlen + if ty == 0x8002 { 8 } else { 0 };
            if payload.len() != want {
                return Err(bad("error chunk length mismatch".into()));
            }
            let e = be32(payload);
            if e == 0 {
                return Err(bad("error chunk with error 0".into()));
            }
            p.reply.error = e;
        }
        t => return Err(bad(format!("unexpected chunk type {t:#x}"))),
    }
    Ok(())
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
