//! A small synchronous NBD client that may keep many requests in flight,
//! written from the protocol document, not from the server's code.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::*;

const SIMPLE_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

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
