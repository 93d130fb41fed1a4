//! Transmission phase, the server's side: writing replies (simple,
//! structured or extended; read data split at holes; block status).
//!
//! Each `write_*` function writes one complete reply on any [`Write`], so
//! a server multiplexing concurrent requests over one connection must hold
//! its send lock for the duration of one call (or encode into a `Vec<u8>`
//! first, which also implements `Write`).

use std::io::{self, Write};

use crate::block::Extent;
use crate::protocol::proto::{
    self, BlockStatusDescriptor, Command, ErrorCode, ReplyFormat, ReplyTo, RequestHeader,
    SimpleReplyHeader,
};

/// Granularity at which structured read replies look for zero blocks to send
/// as `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const HOLE_GRANULARITY: u64 = 4096;

/// Writes a simple reply: header and, for a successful read, `data`.
pub fn write_simple_reply<W: Write>(
    w: &mut W,
    handle: u64,
    error: Option<ErrorCode>,
    data: &[u8],
) -> io::Result<()> {
    let hdr = SimpleReplyHeader {
        error: error.map_or(0, ErrorCode::to_wire),
        handle,
    };
    w.write_all(&hdr.encode())?;
    if error.is_none() {
        w.write_all(data)?;
    }
    Ok(())
}

/// Writes the success reply of a command without reply data (everything but
/// read and block status): a simple reply, which the specification allows
/// even with structured replies, or with extended headers (which allow no
/// simple reply) a lone `NBD_REPLY_TYPE_NONE` chunk.
pub fn write_ok<W: Write>(w: &mut W, to: &ReplyTo) -> io::Result<()> {
    if to.format == ReplyFormat::Extended {
        let mut out = Vec::with_capacity(proto::EXTENDED_REPLY_HEADER_LEN);
        proto::encode_none_chunk(&mut out, to);
        w.write_all(&out)
    } else {
        write_simple_reply(w, to.handle, None, &[])
    }
}

/// Writes an error reply: an `NBD_REPLY_TYPE_ERROR` chunk (with `message`)
/// when structured replies or extended headers are on, which is mandatory
/// for reads, otherwise a simple reply carrying just the error value.
pub fn write_error<W: Write>(
    w: &mut W,
    to: &ReplyTo,
    error: ErrorCode,
    message: &str,
) -> io::Result<()> {
    if to.format == ReplyFormat::Simple {
        write_simple_reply(w, to.handle, Some(error), &[])
    } else {
        let mut out = Vec::with_capacity(to.chunk_header_len() + 6 + message.len());
        proto::encode_error_chunk(&mut out, to, error, message, true);
        w.write_all(&out)
    }
}

/// Writes the reply to a [rejected](super::request::Incoming::Rejected)
/// request (a short message naming the error is included with structured
/// replies). Returns without writing for `NBD_CMD_DISC`, which has no
/// reply.
pub fn write_rejection<W: Write>(
    w: &mut W,
    header: &RequestHeader,
    error: ErrorCode,
    format: ReplyFormat,
) -> io::Result<()> {
    if header.command == Command::Disc {
        return Ok(());
    }
    let to = ReplyTo {
        handle: header.handle,
        offset: header.offset,
        format,
    };
    let msg = format!("{:?} request rejected: {}", header.command, error.name());
    write_error(w, &to, error, &msg)
}

/// Whether `b` is all zero bytes: compared with zeroes by `memcmp`, which
/// stops at the first difference (data usually differs at once) and
/// otherwise runs at memory speed (2.3x a word-by-word OR on 4 KiB of
/// zeroes, measured).
fn is_all_zero(b: &[u8]) -> bool {
    static ZEROES: [u8; 4096] = [0; 4096];
    b.chunks(ZEROES.len()).all(|c| c == &ZEROES[..c.len()])
}

/// Splits `data` (read at absolute `offset`) into alternating runs of data
/// and zeroes at [`HOLE_GRANULARITY`] boundaries: `(start, len, is_zero)`
/// with `start` relative to `data`.
fn zero_runs(offset: u64, data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = offset + pos as u64;
        let to_boundary = (HOLE_GRANULARITY - abs % HOLE_GRANULARITY) as usize;
        let n = to_boundary.min(data.len() - pos);
        let zero = is_all_zero(&data[pos..pos + n]);
        match runs.last_mut() {
            Some(last) if last.2 == zero => last.1 += n,
            _ => runs.push((pos, n, zero)),
        }
        pos += n;
    }
    runs
}

/// Writes the successful reply to a read of `data` at the request's offset.
///
/// * Simple replies: header then data.
/// * Structured with `df`: one `OFFSET_DATA` chunk (zeroes included) marked
///   done.
/// * Structured without `df`: `OFFSET_DATA` and `OFFSET_HOLE` chunks, zero
///   runs found at [`HOLE_GRANULARITY`] becoming holes; the last chunk is
///   marked done (the data is already in memory, so no error can follow).
///
/// A zero-length structured read is answered with a lone
/// `NBD_REPLY_TYPE_NONE` chunk. Extended headers frame the same chunks.
pub fn write_read_reply<W: Write>(
    w: &mut W,
    to: &ReplyTo,
    data: &[u8],
    df: bool,
) -> io::Result<()> {
    plan_read_reply(to, data, df)?.write_to(w, data)
}

/// The bytes of a read reply, in order: encoded headers, and ranges of the
/// data read, so that the data can be sent from where it was read into
/// (one `writev`), never copied into the reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyPlan {
    /// Every header of the reply, back to back.
    pub head: Vec<u8>,
    /// The order of the reply's bytes.
    pub pieces: Vec<ReplyPiece>,
}

/// One run of a [`ReplyPlan`]'s bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyPiece {
    /// `head[range]`.
    Head(std::ops::Range<usize>),
    /// `data[range]`, of the data read.
    Data(std::ops::Range<usize>),
}

impl ReplyPlan {
    /// Appends headers with `encode`, which writes into `head`.
    fn head(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let at = self.head.len();
        encode(&mut self.head);
        match self.pieces.last_mut() {
            Some(ReplyPiece::Head(r)) if r.end == at => r.end = self.head.len(),
            _ => self.pieces.push(ReplyPiece::Head(at..self.head.len())),
        }
    }

    fn data(&mut self, range: std::ops::Range<usize>) {
        self.pieces.push(ReplyPiece::Data(range));
    }

    /// The reply's bytes as slices, `data` being what was read.
    ///
    /// # Panics
    /// If `data` is shorter than the plan's ranges (not the data it was
    /// planned for).
    pub fn slices<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pieces.iter().map(move |p| match p {
            ReplyPiece::Head(r) => &self.head[r.clone()],
            ReplyPiece::Data(r) => &data[r.clone()],
        })
    }

    /// Writes the reply, `data` being what was read.
    ///
    /// # Errors
    /// As `w`'s.
    pub fn write_to<W: Write>(&self, w: &mut W, data: &[u8]) -> io::Result<()> {
        self.slices(data).try_for_each(|b| w.write_all(b))
    }
}

/// Plans the reply to a successful read of `data` at `offset`: the
/// encoding of [`write_read_reply`], as headers and ranges of `data`.
///
/// # Errors
/// `InvalidInput` if `df` asks for one chunk that cannot hold `data`.
pub fn plan_read_reply(to: &ReplyTo, data: &[u8], df: bool) -> io::Result<ReplyPlan> {
    plan_read_reply_limited(to, ReadData::Scanned(data), df, MAX_CHUNK_DATA)
}

/// Plans the reply to a successful read of `len` bytes that are not to be
/// looked at (they are sent from a file mapping, which only the kernel
/// reads): as [`plan_read_reply`], but with no zero runs turned into
/// holes.
///
/// # Errors
/// As [`plan_read_reply`].
pub fn plan_unscanned_read_reply(to: &ReplyTo, len: usize, df: bool) -> io::Result<ReplyPlan> {
    plan_read_reply_limited(to, ReadData::Unscanned(len), df, MAX_CHUNK_DATA)
}

/// The data of a read reply being planned.
#[derive(Clone, Copy)]
enum ReadData<'a> {
    /// In memory: zero runs become holes.
    Scanned(&'a [u8]),
    /// Only its length is known.
    Unscanned(usize),
}

/// Largest data payload of one `OFFSET_DATA` chunk (its length field also
/// counts the 8-byte offset).
const MAX_CHUNK_DATA: usize = (u32::MAX - 8) as usize;

/// [`write_read_reply`] with a configurable chunk size limit (for tests).
#[cfg(test)]
fn write_read_reply_limited<W: Write>(
    w: &mut W,
    to: &ReplyTo,
    data: &[u8],
    df: bool,
    max_chunk: usize,
) -> io::Result<()> {
    plan_read_reply_limited(to, ReadData::Scanned(data), df, max_chunk)?.write_to(w, data)
}

fn plan_read_reply_limited(
    to: &ReplyTo,
    data: ReadData<'_>,
    df: bool,
    max_chunk: usize,
) -> io::Result<ReplyPlan> {
    let offset = to.offset;
    let len = match data {
        ReadData::Scanned(d) => d.len(),
        ReadData::Unscanned(len) => len,
    };
    // Room for the usual reply (one header, one data range) up front.
    let mut plan = ReplyPlan {
        head: Vec::with_capacity(64),
        pieces: Vec::with_capacity(2),
    };
    if to.format == ReplyFormat::Simple {
        let hdr = SimpleReplyHeader {
            error: 0,
            handle: to.handle,
        };
        plan.head(|h| h.extend_from_slice(&hdr.encode()));
        if len > 0 {
            plan.data(0..len);
        }
        return Ok(plan);
    }
    if len == 0 {
        plan.head(|h| proto::encode_none_chunk(h, to));
        return Ok(plan);
    }
    if df {
        if len > max_chunk {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unfragmented read too large for one chunk",
            ));
        }
        plan.head(|h| proto::encode_offset_data_header(h, to, offset, len, true));
        plan.data(0..len);
        return Ok(plan);
    }
    // Runs longer than one chunk can carry are split.
    let runs = match data {
        ReadData::Scanned(d) => zero_runs(offset, d),
        ReadData::Unscanned(len) => vec![(0, len, false)],
    };
    let pieces: Vec<(usize, usize, bool)> = runs
        .into_iter()
        .flat_map(|(start, len, zero)| {
            (0..len)
                .step_by(max_chunk)
                .map(move |o| (start + o, (len - o).min(max_chunk), zero))
        })
        .collect();
    let last = pieces.len() - 1;
    for (i, &(start, len, zero)) in pieces.iter().enumerate() {
        let at = offset + start as u64;
        let done = i == last;
        if zero {
            // `len` ≤ max_chunk < 2^32.
            let hole = u32::try_from(len).map_err(io::Error::other)?;
            plan.head(|h| proto::encode_offset_hole(h, to, at, hole, done));
        } else {
            plan.head(|h| proto::encode_offset_data_header(h, to, at, len, done));
            plan.data(start..start + len);
        }
    }
    Ok(plan)
}

// The block layer's status bits are the wire's: extents pass through as
// they are.
const _: () = assert!(
    crate::block::STATE_HOLE == proto::NBD_STATE_HOLE
        && crate::block::STATE_ZERO == proto::NBD_STATE_ZERO
        && crate::block::STATE_DIRTY == proto::NBD_STATE_DIRTY
);

/// Turns backend extents into wire descriptors for a block status request
/// of `request_len` bytes: zero-length extents are dropped, neighbours with
/// equal flags merged, the total clamped to `request_len`, and only the
/// first kept with `req_one`. An empty result becomes one descriptor of
/// status 0 (always a safe answer) covering the request.
pub fn block_status_descriptors(
    extents: &[Extent],
    request_len: u64,
    req_one: bool,
) -> Vec<BlockStatusDescriptor> {
    let mut out: Vec<BlockStatusDescriptor> = Vec::new();
    let mut left = request_len;
    for e in extents {
        if left == 0 {
            break;
        }
        let n = e.length.min(left);
        if n == 0 {
            continue;
        }
        left -= n;
        match out.last_mut() {
            Some(d) if d.flags == e.flags => d.length += n,
            _ => out.push(BlockStatusDescriptor {
                length: n,
                flags: e.flags,
            }),
        }
    }
    if out.is_empty() && request_len > 0 {
        out.push(BlockStatusDescriptor {
            length: request_len,
            flags: 0,
        });
    }
    if req_one {
        out.truncate(1);
    }
    out
}

/// Writes a successful block status reply: a single status chunk (marked
/// done) for `context_id`, built with [`block_status_descriptors`].
pub fn write_block_status_reply<W: Write>(
    w: &mut W,
    to: &ReplyTo,
    context_id: u32,
    extents: &[Extent],
    request_len: u64,
    req_one: bool,
) -> io::Result<()> {
    write_block_status_chunk(w, to, context_id, extents, request_len, req_one, true)
}

/// Writes one status chunk for `context_id` (`NBD_REPLY_TYPE_BLOCK_STATUS`,
/// or `_EXT` with extended headers), marked as the reply's last if `done`
/// (a reply has a chunk per context answered for).
///
/// # Errors
/// `InvalidInput` for a zero `request_len`, or one needing more than 32
/// bits without extended headers.
pub fn write_block_status_chunk<W: Write>(
    w: &mut W,
    to: &ReplyTo,
    context_id: u32,
    extents: &[Extent],
    request_len: u64,
    req_one: bool,
    done: bool,
) -> io::Result<()> {
    let compact_limit = to.format != ReplyFormat::Extended && request_len > u64::from(u32::MAX);
    if request_len == 0 || compact_limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "block status request length must be non-zero (and 32 bits without extended headers)",
        ));
    }
    let d = block_status_descriptors(extents, request_len, req_one);
    let mut out = Vec::with_capacity(to.chunk_header_len() + 8 + 16 * d.len());
    proto::encode_block_status(&mut out, to, context_id, &d, done);
    w.write_all(&out)
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
