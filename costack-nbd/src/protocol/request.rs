//! Transmission phase: reading and validating requests, writing replies.
//!
//! [`read_request`] reads one request (header and, for writes, payload) and
//! checks it against the negotiated [`TransmissionParams`]. A request that
//! breaks a rule the client can be told about comes back as
//! [`Incoming::Rejected`] with the NBD error to send; only problems that
//! desynchronise the stream are [`ReadError`]s, after which the connection
//! must be dropped. Replies are [`reply`](super::reply)'s.

use std::fmt;
use std::io::{self, Read};

use crate::protocol::handshake::{BlockSizes, Negotiated, QemuContext, DEFAULT_MAX_BLOCK};
use crate::protocol::proto::{
    Command, ErrorCode, ReplyFormat, ReplyTo, RequestHeader, EXTENDED_REQUEST_HEADER_LEN,
    NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE,
    NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_FLAG_REQ_ONE, NBD_FLAG_BLOCK_STATUS_PAYLOAD,
    NBD_FLAG_SEND_DF, NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA,
    NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, REQUEST_HEADER_LEN,
};

/// Default limit on a write payload (32 MiB); longer writes end the session.
pub const DEFAULT_MAX_PAYLOAD: u32 = DEFAULT_MAX_BLOCK;

/// Everything request validation needs to know about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransmissionParams {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub transmission_flags: u16,
    /// Whether writes must be refused with `EPERM`.
    pub read_only: bool,
    /// Whether structured replies were negotiated (also true with
    /// extended headers, which imply them).
    pub structured_replies: bool,
    /// Whether extended headers were negotiated: 32-byte requests and
    /// replies, 64-bit lengths.
    pub extended_headers: bool,
    /// Context id of `base:allocation`, if selected.
    pub base_allocation: Option<u32>,
    /// The qemu contexts selected, with their ids.
    pub qemu_contexts: Vec<(u32, QemuContext)>,
    /// Advertised block size constraints.
    pub block_sizes: BlockSizes,
    /// Longest write payload read off the wire; a longer write is a fatal
    /// [`ReadError::PayloadTooLarge`].
    pub max_payload: u32,
}

impl TransmissionParams {
    /// Parameters for the session a handshake produced.
    pub fn from_negotiated(n: &Negotiated) -> Self {
        Self {
            size: n.export.size,
            transmission_flags: n.transmission_flags,
            read_only: n.export.read_only,
            structured_replies: n.structured_replies || n.extended_headers,
            extended_headers: n.extended_headers,
            base_allocation: n.base_allocation,
            qemu_contexts: n.qemu_contexts.clone(),
            block_sizes: n.export.block_sizes,
            max_payload: match n.export.block_sizes.maximum {
                // "No limit": still refuse to buffer absurd payloads.
                u32::MAX => DEFAULT_MAX_PAYLOAD,
                m => m.max(DEFAULT_MAX_PAYLOAD),
            },
        }
    }

    fn has(&self, flag: u16) -> bool {
        self.transmission_flags & flag != 0
    }

    /// The session's reply format.
    pub fn reply_format(&self) -> ReplyFormat {
        if self.extended_headers {
            ReplyFormat::Extended
        } else if self.structured_replies {
            ReplyFormat::Structured
        } else {
            ReplyFormat::Simple
        }
    }

    /// How to frame the reply to `header`.
    pub fn reply_to(&self, header: &RequestHeader) -> ReplyTo {
        ReplyTo {
            handle: header.handle,
            offset: header.offset,
            format: self.reply_format(),
        }
    }

    /// Whether `id` names a context the client selected.
    fn selected(&self, id: u32) -> bool {
        self.base_allocation == Some(id) || self.qemu_contexts.iter().any(|(c, _)| *c == id)
    }
}

/// A validated operation. Lengths of the commands that move data are 32
/// bits (the maximum block size bounds them); the others' may be 64 with
/// extended headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `length` bytes at `offset`; `df` asks for a single content chunk.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
        /// `NBD_CMD_FLAG_DF` was set.
        df: bool,
    },
    /// Write the request payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload length.
        length: u32,
    },
    /// `NBD_CMD_DISC`: finish in-flight requests, then close. No reply.
    Disconnect,
    /// Make completed writes durable.
    Flush,
    /// Discard a range.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u64,
    },
    /// Prefetch hint.
    Cache {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u64,
        /// `NBD_CMD_FLAG_NO_HOLE`: keep the range allocated.
        no_hole: bool,
        /// `NBD_CMD_FLAG_FAST_ZERO`: fail with `ENOTSUP` unless fast.
        fast_zero: bool,
    },
    /// Report allocation status.
    BlockStatus {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u64,
        /// `NBD_CMD_FLAG_REQ_ONE`: a single extent only.
        req_one: bool,
        /// The contexts to answer for, if the request's payload named some
        /// (`NBD_FLAG_BLOCK_STATUS_PAYLOAD`); otherwise every selected one.
        only: Option<Vec<u32>>,
    },
}

/// A validated request, ready to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The raw header.
    pub header: RequestHeader,
    /// What to do.
    pub op: Op,
    /// `NBD_CMD_FLAG_FUA`: persist before replying.
    pub fua: bool,
    /// Write data (empty for other commands).
    pub payload: Vec<u8>,
    /// The bytes of `payload` that the reader already stored in the device
    /// (received straight into the image's mapping: see
    /// [`BlockDevice::write_mapped`](crate::block::BlockDevice::write_mapped)):
    /// they are not to be written again, and `payload` holds nothing there.
    /// Empty (`0..0`) but for such writes.
    pub stored: std::ops::Range<usize>,
}

/// Result of [`read_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A valid request.
    Request(Request),
    /// A request to answer with an error (any write payload was consumed).
    Rejected {
        /// The raw header.
        header: RequestHeader,
        /// Error to send back.
        error: ErrorCode,
    },
}

/// A failure that leaves the stream unusable: drop the connection.
#[derive(Debug)]
pub enum ReadError {
    /// An I/O error other than end-of-stream.
    Io(io::Error),
    /// The client closed the connection (at or inside a request).
    Disconnected,
    /// The request magic was wrong.
    BadMagic(u32),
    /// A payload exceeded [`TransmissionParams::max_payload`].
    PayloadTooLarge {
        /// The request's handle.
        handle: u64,
        /// The declared payload length.
        length: u64,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error reading request: {e}"),
            Self::Disconnected => f.write_str("client disconnected"),
            Self::BadMagic(m) => write!(f, "bad request magic {m:#010x}"),
            Self::PayloadTooLarge { handle, length } => {
                write!(
                    f,
                    "request payload of {length} bytes (handle {handle:#x}) too large"
                )
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Disconnected
        } else {
            Self::Io(e)
        }
    }
}

/// Reads one request header: 28 bytes, or 32 with `extended` headers.
pub fn read_request_header<R: Read>(r: &mut R, extended: bool) -> Result<RequestHeader, ReadError> {
    let mut b = [0u8; EXTENDED_REQUEST_HEADER_LEN];
    let (b, decode): (_, fn(&[u8]) -> _) = if extended {
        (&mut b[..], RequestHeader::decode_extended)
    } else {
        (&mut b[..REQUEST_HEADER_LEN], RequestHeader::decode)
    };
    r.read_exact(b)?;
    decode(b).map_err(|_| ReadError::BadMagic(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// How many payload bytes follow `h`: a write's data, or with extended
/// headers whatever `NBD_CMD_FLAG_PAYLOAD_LEN` announces. A write carries
/// its length in data with the flag or without: the specification asks
/// for the flag, but QEMU's client (10.0) leaves it off and QEMU's server
/// does not need it.
fn payload_length(h: &RequestHeader, p: &TransmissionParams) -> u64 {
    let flagged = p.extended_headers && h.flags & NBD_CMD_FLAG_PAYLOAD_LEN != 0;
    if flagged || h.command == Command::Write {
        h.length
    } else {
        0
    }
}

/// Decodes a block status payload (effect length, then the context ids to
/// answer for): `None` if it is malformed or names a context twice or one
/// the client did not select.
fn decode_status_payload(data: &[u8], p: &TransmissionParams) -> Option<(u64, Vec<u32>)> {
    let (length, ids) = data.split_first_chunk::<8>()?;
    if ids.is_empty() || ids.len() % 4 != 0 {
        return None;
    }
    let mut only = Vec::with_capacity(ids.len() / 4);
    for id in ids.chunks_exact(4) {
        let id = u32::from_be_bytes(id.try_into().ok()?);
        if !p.selected(id) || only.contains(&id) {
            return None;
        }
        only.push(id);
    }
    Some((u64::from_be_bytes(*length), only))
}

/// Checks a request header against the session, returning the operation or
/// the error to reply with.
///
/// Rules, in order of precedence:
/// 1. unknown command → `EINVAL` (`NBD_CMD_DISC` is always accepted);
/// 2. a flag not defined for the command, or whose transmission flag was not
///    advertised (`FUA`, `DF`, `FAST_ZERO`, `PAYLOAD_LEN` on block status),
///    or `PAYLOAD_LEN` without extended headers → `EINVAL`;
/// 3. write, trim or write-zeroes on a read-only export → `EPERM`;
/// 4. a command that was not advertised (flush, trim, write-zeroes) or block
///    status without a selected metadata context → `EINVAL`;
/// 5. read, write, cache or (non-fast) write-zeroes longer than the maximum
///    block size → `EINVAL`;
/// 6. offset or length not a multiple of the minimum block size → `EINVAL`;
/// 7. a range past the end of the export → `ENOSPC` for write and
///    write-zeroes, `EINVAL` otherwise; zero-length block status → `EINVAL`;
/// 8. an unfragmented (`DF`) read too large for one chunk → `EOVERFLOW`.
///
/// Offset and length of `NBD_CMD_FLUSH` are reserved and ignored.
pub fn validate(h: &RequestHeader, p: &TransmissionParams) -> Result<Op, ErrorCode> {
    use Command as C;
    let allowed = match h.command {
        C::Disc => return Ok(Op::Disconnect),
        C::Unknown(_) => return Err(ErrorCode::Inval),
        C::Read => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
        C::Write if p.extended_headers => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_PAYLOAD_LEN,
        C::Write | C::Flush | C::Trim | C::Cache => NBD_CMD_FLAG_FUA,
        C::WriteZeroes => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        C::BlockStatus if p.extended_headers && p.has(NBD_FLAG_BLOCK_STATUS_PAYLOAD) => {
            NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_PAYLOAD_LEN
        }
        C::BlockStatus => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
    };
    let flag = |f: u16| h.flags & f != 0;
    if h.flags & !allowed != 0
        || (flag(NBD_CMD_FLAG_FUA) && !p.has(NBD_FLAG_SEND_FUA))
        || (flag(NBD_CMD_FLAG_DF) && !p.has(NBD_FLAG_SEND_DF))
        || (flag(NBD_CMD_FLAG_FAST_ZERO) && !p.has(NBD_FLAG_SEND_FAST_ZERO))
    {
        return Err(ErrorCode::Inval);
    }
    let is_write = matches!(h.command, C::Write | C::Trim | C::WriteZeroes);
    if is_write && p.read_only {
        return Err(ErrorCode::Perm);
    }
    let available = match h.command {
        C::Flush => p.has(NBD_FLAG_SEND_FLUSH),
        C::Trim => p.has(NBD_FLAG_SEND_TRIM),
        C::WriteZeroes => p.has(NBD_FLAG_SEND_WRITE_ZEROES),
        C::BlockStatus => {
            p.structured_replies && (p.base_allocation.is_some() || !p.qemu_contexts.is_empty())
        }
        _ => true,
    };
    if !available {
        return Err(ErrorCode::Inval);
    }
    if h.command == C::Flush {
        return Ok(Op::Flush);
    }

    let (offset, length) = (h.offset, h.length);
    // Only commands that move data are bound by the maximum block size
    // (and so fit in 32 bits); trims and zeroes carry no payload, so any
    // length is fine.
    let limited = matches!(h.command, C::Read | C::Write | C::Cache);
    let bs = p.block_sizes;
    let data_len = u32::try_from(length).ok().filter(|&l| l <= bs.maximum);
    if limited && data_len.is_none() {
        return Err(ErrorCode::Inval);
    }
    let data_len = data_len.unwrap_or_default();
    let min = u64::from(bs.minimum.max(1));
    if !offset.is_multiple_of(min) || !length.is_multiple_of(min) {
        return Err(ErrorCode::Inval);
    }
    let in_bounds = offset.checked_add(length).is_some_and(|end| end <= p.size);
    if !in_bounds {
        return Err(if matches!(h.command, C::Write | C::WriteZeroes) {
            ErrorCode::NoSpc
        } else {
            ErrorCode::Inval
        });
    }

    Ok(match h.command {
        C::Read => {
            let df = flag(NBD_CMD_FLAG_DF);
            if df && u64::from(data_len) + 8 > u64::from(u32::MAX) {
                return Err(ErrorCode::Overflow);
            }
            Op::Read {
                offset,
                length: data_len,
                df,
            }
        }
        C::Write => Op::Write {
            offset,
            length: data_len,
        },
        C::Trim => Op::Trim { offset, length },
        C::Cache => Op::Cache {
            offset,
            length: data_len,
        },
        C::WriteZeroes => Op::WriteZeroes {
            offset,
            length,
            no_hole: flag(NBD_CMD_FLAG_NO_HOLE),
            fast_zero: flag(NBD_CMD_FLAG_FAST_ZERO),
        },
        C::BlockStatus => {
            if length == 0 {
                return Err(ErrorCode::Inval);
            }
            Op::BlockStatus {
                offset,
                length,
                req_one: flag(NBD_CMD_FLAG_REQ_ONE),
                only: None,
            }
        }
        C::Disc | C::Flush | C::Unknown(_) => unreachable!("handled above"),
    })
}

/// Reads and validates one request.
///
/// A request's payload is always consumed when its length is within
/// [`TransmissionParams::max_payload`] — a valid write's into
/// [`Request::payload`], a block status filter into the operation, and
/// that of a rejected request discarded — so the stream stays in sync. A
/// longer payload cannot be skipped safely and yields
/// [`ReadError::PayloadTooLarge`].
pub fn read_request<R: Read>(r: &mut R, p: &TransmissionParams) -> Result<Incoming, ReadError> {
    read_request_with(r, p, |_, len| vec![0u8; len], |r, buf| r.read_exact(buf))
}

/// [`read_request`] with the caller's payload handling: `buffer(op, len)`
/// gives the buffer a valid write's payload is read into (a pooled one,
/// say, after waiting for memory), and `fill(r, buf)` reads it (past a
/// `BufReader`'s buffer, say). The server reads requests with this, so it
/// parses exactly as the fuzzers and tests that drive `read_request` do.
pub fn read_request_with<R, B, F>(
    r: &mut R,
    p: &TransmissionParams,
    buffer: B,
    fill: F,
) -> Result<Incoming, ReadError>
where
    R: Read,
    B: FnOnce(&Op, usize) -> Vec<u8>,
    F: FnOnce(&mut R, &mut [u8]) -> io::Result<()>,
{
    let header = read_request_header(r, p.extended_headers)?;
    let mut payload_left = payload_length(&header, p);
    if payload_left > u64::from(p.max_payload) {
        return Err(ReadError::PayloadTooLarge {
            handle: header.handle,
            length: payload_left,
        });
    }
    // A block status payload replaces the header's length with its own
    // effect length and names the contexts to answer for.
    let mut effective = header;
    let mut only = None;
    let mut filter_ok = true;
    if header.command == Command::BlockStatus
        && payload_left > 0
        && p.has(NBD_FLAG_BLOCK_STATUS_PAYLOAD)
    {
        filter_ok = false;
        // Anything longer names some context twice: skipped below.
        let longest = 8 + 4 * (1 + p.qemu_contexts.len() as u64);
        if payload_left <= longest {
            let mut data = vec![0u8; payload_left as usize];
            r.read_exact(&mut data)?;
            payload_left = 0;
            if let Some((length, ids)) = decode_status_payload(&data, p) {
                effective.length = length;
                only = Some(ids);
                filter_ok = true;
            }
        }
    }
    let validated = if filter_ok {
        validate(&effective, p)
    } else {
        Err(ErrorCode::Inval)
    };
    match validated {
        Ok(mut op) => {
            let mut payload = Vec::new();
            if header.command == Command::Write {
                // `payload_left` ≤ max_payload, a `u32`.
                let len = payload_left as usize;
                payload = buffer(&op, len);
                debug_assert_eq!(payload.len(), len, "payload buffer of the wrong size");
                payload.resize(len, 0);
                fill(r, &mut payload)?;
            } else {
                if let Op::BlockStatus { only: o, .. } = &mut op {
                    *o = only;
                }
                // Only NBD_CMD_DISC, which takes any flag, gets here with
                // a payload left: it is skipped as a refused one would be.
                skip(r, payload_left)?;
            }
            Ok(Incoming::Request(Request {
                header,
                op,
                fua: header.flags & NBD_CMD_FLAG_FUA != 0,
                payload,
                stored: 0..0,
            }))
        }
        Err(error) => {
            skip(r, payload_left)?;
            Ok(Incoming::Rejected { header, error })
        }
    }
}

/// Reads and drops `len` bytes of a payload.
fn skip<R: Read>(r: &mut R, len: u64) -> Result<(), ReadError> {
    let got = io::copy(&mut r.take(len), &mut io::sink())?;
    if got == len {
        Ok(())
    } else {
        Err(ReadError::Disconnected)
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
pub(crate) mod tests;
