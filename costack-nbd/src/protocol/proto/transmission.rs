//! Transmission: requests, simple replies and structured reply chunks.

use super::*;

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A transmission-phase request header: the 28-byte compact form, or the
/// 32-byte extended one (`NBD_OPT_EXTENDED_HEADERS`), whose length is 64
/// bits wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command type.
    pub command: Command,
    /// Opaque handle (cookie) echoed in the reply.
    pub handle: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes: the payload's if the request carries one (a
    /// write; with extended headers, any command flagged
    /// `NBD_CMD_FLAG_PAYLOAD_LEN`), otherwise the command's effect length.
    /// Compact headers carry 32 bits of it.
    pub length: u64,
}

impl RequestHeader {
    /// Decodes a compact (28-byte) request header, checking its magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(buf, REQUEST_MAGIC, |r| r.u32().map(u64::from))
    }

    /// Decodes an extended (32-byte) request header, checking its magic.
    pub fn decode_extended(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(buf, EXTENDED_REQUEST_MAGIC, |r| r.u64())
    }

    fn decode_with(
        buf: &[u8],
        expected: u32,
        length: impl FnOnce(&mut Reader<'_>) -> Result<u64, DecodeError>,
    ) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != expected {
            return Err(DecodeError::BadMagic {
                expected: u64::from(expected),
                got: u64::from(magic),
            });
        }
        Ok(Self {
            flags: r.u16()?,
            command: Command::from(r.u16()?),
            handle: r.u64()?,
            offset: r.u64()?,
            length: length(&mut r)?,
        })
    }

    /// Encodes the compact header, as a client would.
    ///
    /// # Panics
    ///
    /// Panics if `length` needs more than 32 bits (only extended headers
    /// carry such lengths).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let length = u32::try_from(self.length).expect("compact request length exceeds 32 bits");
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[..24].copy_from_slice(&self.encode_start(REQUEST_MAGIC));
        b[24..28].copy_from_slice(&length.to_be_bytes());
        b
    }

    /// Encodes the extended header, as a client would.
    pub fn encode_extended(&self) -> [u8; EXTENDED_REQUEST_HEADER_LEN] {
        let mut b = [0u8; EXTENDED_REQUEST_HEADER_LEN];
        b[..24].copy_from_slice(&self.encode_start(EXTENDED_REQUEST_MAGIC));
        b[24..32].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// The 24 bytes both forms share: magic, flags, type, handle, offset.
    fn encode_start(&self, magic: u32) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&magic.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&u16::from(self.command).to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b
    }
}
// ---------------------------------------------------------------------------
// Simple replies
// ---------------------------------------------------------------------------

/// A 16-byte simple reply header (any read data follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReplyHeader {
    /// Error value, 0 for success.
    pub error: u32,
    /// Handle of the request being answered.
    pub handle: u64,
}

impl SimpleReplyHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
        let mut b = [0u8; SIMPLE_REPLY_HEADER_LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b
    }

    /// Decodes the header, checking its magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: u64::from(SIMPLE_REPLY_MAGIC),
                got: u64::from(magic),
            });
        }
        Ok(Self {
            error: r.u32()?,
            handle: r.u64()?,
        })
    }
}
// ---------------------------------------------------------------------------
// Structured reply chunks
// ---------------------------------------------------------------------------

/// A 20-byte structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Reply flags (`NBD_REPLY_FLAG_DONE`).
    pub flags: u16,
    /// Chunk type.
    pub chunk_type: ChunkType,
    /// Handle of the request being answered.
    pub handle: u64,
    /// Payload length.
    pub length: u32,
}

impl ChunkHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
        let mut b = [0u8; STRUCTURED_REPLY_HEADER_LEN];
        b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&u16::from(self.chunk_type).to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..20].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes the header, checking its magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: u64::from(STRUCTURED_REPLY_MAGIC),
                got: u64::from(magic),
            });
        }
        Ok(Self {
            flags: r.u16()?,
            chunk_type: ChunkType::from(r.u16()?),
            handle: r.u64()?,
            length: r.u32()?,
        })
    }

    /// Whether `NBD_REPLY_FLAG_DONE` is set.
    pub fn is_done(&self) -> bool {
        self.flags & NBD_REPLY_FLAG_DONE != 0
    }
}

/// A 32-byte extended reply chunk header (`NBD_OPT_EXTENDED_HEADERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedChunkHeader {
    /// Reply flags (`NBD_REPLY_FLAG_DONE`).
    pub flags: u16,
    /// Chunk type.
    pub chunk_type: ChunkType,
    /// Handle of the request being answered.
    pub handle: u64,
    /// Offset of the request being answered (whatever the payload says).
    pub offset: u64,
    /// Payload length.
    pub length: u64,
}

impl ExtendedChunkHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; EXTENDED_REPLY_HEADER_LEN] {
        let mut b = [0u8; EXTENDED_REPLY_HEADER_LEN];
        b[0..4].copy_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&u16::from(self.chunk_type).to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes the header, checking its magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != EXTENDED_REPLY_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: u64::from(EXTENDED_REPLY_MAGIC),
                got: u64::from(magic),
            });
        }
        Ok(Self {
            flags: r.u16()?,
            chunk_type: ChunkType::from(r.u16()?),
            handle: r.u64()?,
            offset: r.u64()?,
            length: r.u64()?,
        })
    }

    /// The structured header with the same fields, if the length fits in
    /// 32 bits: what [`Chunk::decode`] takes.
    pub fn to_structured(&self) -> Option<ChunkHeader> {
        Some(ChunkHeader {
            flags: self.flags,
            chunk_type: self.chunk_type,
            handle: self.handle,
            length: u32::try_from(self.length).ok()?,
        })
    }
}

/// The reply headers a session uses, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFormat {
    /// Simple replies only (nothing negotiated).
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY`: 20-byte chunk headers; simple replies
    /// for commands without reply data.
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS`: every reply is made of 32-byte chunk
    /// headers, which repeat the request's offset.
    Extended,
}

/// Whom a reply answers, and how it is framed: the request's handle and
/// offset, and the session's [`ReplyFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The request's handle (cookie).
    pub handle: u64,
    /// The request's offset (extended chunk headers carry it).
    pub offset: u64,
    /// The session's reply format.
    pub format: ReplyFormat,
}

impl ReplyTo {
    /// Length of this reply's chunk headers.
    pub fn chunk_header_len(&self) -> usize {
        match self.format {
            ReplyFormat::Extended => EXTENDED_REPLY_HEADER_LEN,
            _ => STRUCTURED_REPLY_HEADER_LEN,
        }
    }

    /// Appends a chunk header for a payload of `length` bytes. A session
    /// with simple replies has no chunks; it gets structured headers, as a
    /// caller's mistake must not produce a malformed stream.
    fn put_chunk_header(
        &self,
        out: &mut Vec<u8>,
        chunk_type: ChunkType,
        length: usize,
        done: bool,
    ) {
        let flags = if done { NBD_REPLY_FLAG_DONE } else { 0 };
        debug_assert!(
            self.format != ReplyFormat::Simple,
            "chunk in a simple-reply session"
        );
        if self.format == ReplyFormat::Extended {
            let hdr = ExtendedChunkHeader {
                flags,
                chunk_type,
                handle: self.handle,
                offset: self.offset,
                length: length as u64,
            };
            out.extend_from_slice(&hdr.encode());
        } else {
            let hdr = ChunkHeader {
                flags,
                chunk_type,
                handle: self.handle,
                length: wire_len(length),
            };
            out.extend_from_slice(&hdr.encode());
        }
    }
}

/// Appends the head of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk (chunk header
/// plus the 64-bit offset of the data). The caller sends `data_len` bytes
/// of data right after it, which avoids copying the data.
///
/// # Panics
///
/// Panics if `data_len` is zero or (with structured headers) exceeds
/// `u32::MAX - 8`: the chunk would be invalid.
pub fn encode_offset_data_header(
    out: &mut Vec<u8>,
    to: &ReplyTo,
    offset: u64,
    data_len: usize,
    done: bool,
) {
    assert!(data_len > 0, "OFFSET_DATA chunk must carry data");
    let length = data_len.checked_add(8).expect("OFFSET_DATA chunk too long");
    to.put_chunk_header(out, ChunkType::OffsetData, length, done);
    put_u64(out, offset);
}

/// Appends a complete `NBD_REPLY_TYPE_OFFSET_DATA` chunk to `out`.
pub fn encode_offset_data(out: &mut Vec<u8>, to: &ReplyTo, offset: u64, data: &[u8], done: bool) {
    encode_offset_data_header(out, to, offset, data.len(), done);
    out.extend_from_slice(data);
}

/// Appends a complete `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
///
/// # Panics
///
/// Panics if `hole_len` is zero (the chunk would be invalid).
pub fn encode_offset_hole(out: &mut Vec<u8>, to: &ReplyTo, offset: u64, hole_len: u32, done: bool) {
    assert!(
        hole_len > 0,
        "OFFSET_HOLE chunk must describe at least a byte"
    );
    to.put_chunk_header(out, ChunkType::OffsetHole, 12, done);
    put_u64(out, offset);
    put_u32(out, hole_len);
}

/// One block status descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatusDescriptor {
    /// Extent length (non-zero; 32 bits on the wire without extended
    /// headers).
    pub length: u64,
    /// Status flags (for `base:allocation`: `NBD_STATE_*`). Every context
    /// this crate knows has 32-bit status.
    pub flags: u32,
}

/// Appends a status chunk to `out`: `NBD_REPLY_TYPE_BLOCK_STATUS`, or with
/// extended headers `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
///
/// # Panics
///
/// Panics if `descriptors` is empty (the chunk would be invalid), or if
/// without extended headers a descriptor is longer than 32 bits can say
/// (a compact request's length bounds them).
pub fn encode_block_status(
    out: &mut Vec<u8>,
    to: &ReplyTo,
    context_id: u32,
    descriptors: &[BlockStatusDescriptor],
    done: bool,
) {
    assert!(
        !descriptors.is_empty(),
        "BLOCK_STATUS chunk needs a descriptor"
    );
    if to.format == ReplyFormat::Extended {
        let len = 8 + 16 * descriptors.len();
        out.reserve(EXTENDED_REPLY_HEADER_LEN + len);
        to.put_chunk_header(out, ChunkType::BlockStatusExt, len, done);
        put_u32(out, context_id);
        put_u32(out, wire_len(descriptors.len()));
        for d in descriptors {
            put_u64(out, d.length);
            put_u64(out, u64::from(d.flags));
        }
    } else {
        let len = 4 + 8 * descriptors.len();
        out.reserve(STRUCTURED_REPLY_HEADER_LEN + len);
        to.put_chunk_header(out, ChunkType::BlockStatus, len, done);
        put_u32(out, context_id);
        for d in descriptors {
            put_u32(out, wire_len_u64(d.length));
            put_u32(out, d.flags);
        }
    }
}

fn wire_len_u64(len: u64) -> u32 {
    u32::try_from(len).expect("compact block status extent exceeds 32 bits")
}

/// Truncates `message` to at most [`MAX_STRING_LEN`] bytes on a character
/// boundary.
pub(super) fn clamp_message(message: &str) -> &str {
    if message.len() <= MAX_STRING_LEN {
        return message;
    }
    let mut end = MAX_STRING_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Appends an `NBD_REPLY_TYPE_ERROR` chunk to `out`. The message is
/// truncated to the protocol's 4096-byte string limit.
pub fn encode_error_chunk(
    out: &mut Vec<u8>,
    to: &ReplyTo,
    error: ErrorCode,
    message: &str,
    done: bool,
) {
    let msg = clamp_message(message);
    to.put_chunk_header(out, ChunkType::Error, 6 + msg.len(), done);
    put_u32(out, error.to_wire());
    put_u16(out, msg.len() as u16);
    out.extend_from_slice(msg.as_bytes());
}

/// Appends an `NBD_REPLY_TYPE_ERROR_OFFSET` chunk to `out`.
pub fn encode_error_offset_chunk(
    out: &mut Vec<u8>,
    to: &ReplyTo,
    error: ErrorCode,
    message: &str,
    offset: u64,
    done: bool,
) {
    let msg = clamp_message(message);
    to.put_chunk_header(out, ChunkType::ErrorOffset, 14 + msg.len(), done);
    put_u32(out, error.to_wire());
    put_u16(out, msg.len() as u16);
    out.extend_from_slice(msg.as_bytes());
    put_u64(out, offset);
}

/// Appends an `NBD_REPLY_TYPE_NONE` chunk (always final).
pub fn encode_none_chunk(out: &mut Vec<u8>, to: &ReplyTo) {
    to.put_chunk_header(out, ChunkType::None, 0, true);
}

/// A decoded structured reply chunk payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData {
        /// Absolute offset of the data.
        offset: u64,
        /// The data.
        data: Vec<u8>,
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    OffsetHole {
        /// Absolute offset of the hole.
        offset: u64,
        /// Hole length.
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` or `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
    BlockStatus {
        /// Metadata context id.
        context_id: u32,
        /// The extents.
        descriptors: Vec<BlockStatusDescriptor>,
    },
    /// `NBD_REPLY_TYPE_ERROR`.
    Error {
        /// Error value (may be one this crate does not know).
        error: u32,
        /// Human-readable message.
        message: Vec<u8>,
    },
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ErrorOffset {
        /// Error value.
        error: u32,
        /// Human-readable message.
        message: Vec<u8>,
        /// Offset the error applies to.
        offset: u64,
    },
    /// A chunk type this decoder does not know.
    Unknown(u16, Vec<u8>),
}

impl Chunk {
    /// Decodes a chunk payload according to the header's type, enforcing the
    /// length rules of each type.
    pub fn decode(header: &ChunkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() != header.length as usize {
            return Err(DecodeError::Truncated {
                needed: header.length as usize,
                got: payload.len(),
            });
        }
        let mut r = Reader::new(payload);
        let chunk = match header.chunk_type {
            ChunkType::None => Self::None,
            ChunkType::OffsetData => {
                if payload.len() < 9 {
                    return Err(DecodeError::Invalid("OFFSET_DATA shorter than 9 bytes"));
                }
                Self::OffsetData {
                    offset: r.u64()?,
                    data: r.rest().to_vec(),
                }
            }
            ChunkType::OffsetHole => {
                let offset = r.u64()?;
                let length = r.u32()?;
                if length == 0 {
                    return Err(DecodeError::Invalid("zero-length hole"));
                }
                Self::OffsetHole { offset, length }
            }
            ChunkType::BlockStatus => {
                let context_id = r.u32()?;
                if r.remaining() == 0 || !r.remaining().is_multiple_of(8) {
                    return Err(DecodeError::Invalid("bad BLOCK_STATUS length"));
                }
                let mut descriptors = Vec::with_capacity(r.remaining() / 8);
                while r.remaining() > 0 {
                    descriptors.push(BlockStatusDescriptor {
                        length: u64::from(r.u32()?),
                        flags: r.u32()?,
                    });
                }
                Self::BlockStatus {
                    context_id,
                    descriptors,
                }
            }
            ChunkType::BlockStatusExt => {
                let context_id = r.u32()?;
                let count = r.u32()? as usize;
                if count == 0 || r.remaining() != count.saturating_mul(16) {
                    return Err(DecodeError::Invalid("bad BLOCK_STATUS_EXT length"));
                }
                let mut descriptors = Vec::with_capacity(count);
                while r.remaining() > 0 {
                    let length = r.u64()?;
                    let flags = u32::try_from(r.u64()?)
                        .map_err(|_| DecodeError::Invalid("64-bit block status"))?;
                    descriptors.push(BlockStatusDescriptor { length, flags });
                }
                Self::BlockStatus {
                    context_id,
                    descriptors,
                }
            }
            ChunkType::Error | ChunkType::ErrorOffset => {
                let error = r.u32()?;
                let mlen = r.u16()? as usize;
                let message = r.bytes(mlen)?.to_vec();
                if header.chunk_type == ChunkType::Error {
                    Self::Error { error, message }
                } else {
                    Self::ErrorOffset {
                        error,
                        message,
                        offset: r.u64()?,
                    }
                }
            }
            ChunkType::Unknown(t) => Self::Unknown(t, r.rest().to_vec()),
        };
        r.finish()?;
        Ok(chunk)
    }
}
