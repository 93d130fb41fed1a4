//! Transmission: requests, simple replies and structured reply chunks.

use super::*;

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A 28-byte transmission-phase request header.
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
    /// Length in bytes (payload length for writes).
    pub length: u32,
}

impl RequestHeader {
    /// Decodes a request header, checking its magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: u64::from(REQUEST_MAGIC),
                got: u64::from(magic),
            });
        }
        Ok(Self {
            flags: r.u16()?,
            command: Command::from(r.u16()?),
            handle: r.u64()?,
            offset: r.u64()?,
            length: r.u32()?,
        })
    }

    /// Encodes the header, as a client would.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&u16::from(self.command).to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
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

pub(super) fn done_flag(done: bool) -> u16 {
    if done {
        NBD_REPLY_FLAG_DONE
    } else {
        0
    }
}

/// Encodes the first 28 bytes of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk (chunk
/// header plus the 64-bit offset). The caller sends `data_len` bytes of data
/// right after it, which avoids copying the data.
///
/// # Panics
///
/// Panics if `data_len` is zero or exceeds `u32::MAX - 8` (the chunk would
/// be invalid).
pub fn encode_offset_data_header(
    handle: u64,
    offset: u64,
    data_len: usize,
    done: bool,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN + 8] {
    assert!(data_len > 0, "OFFSET_DATA chunk must carry data");
    let length = data_len
        .checked_add(8)
        .and_then(|l| u32::try_from(l).ok())
        .expect("OFFSET_DATA chunk too long");
    let hdr = ChunkHeader {
        flags: done_flag(done),
        chunk_type: ChunkType::OffsetData,
        handle,
        length,
    };
    let mut b = [0u8; STRUCTURED_REPLY_HEADER_LEN + 8];
    b[..STRUCTURED_REPLY_HEADER_LEN].copy_from_slice(&hdr.encode());
    b[STRUCTURED_REPLY_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    b
}

/// Appends a complete `NBD_REPLY_TYPE_OFFSET_DATA` chunk to `out`.
pub fn encode_offset_data(out: &mut Vec<u8>, handle: u64, offset: u64, data: &[u8], done: bool) {
    out.extend_from_slice(&encode_offset_data_header(handle, offset, data.len(), done));
    out.extend_from_slice(data);
}

/// Encodes a complete `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
///
/// # Panics
///
/// Panics if `hole_len` is zero (the chunk would be invalid).
pub fn encode_offset_hole(
    handle: u64,
    offset: u64,
    hole_len: u32,
    done: bool,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN + 12] {
    assert!(
        hole_len > 0,
        "OFFSET_HOLE chunk must describe at least a byte"
    );
    let hdr = ChunkHeader {
        flags: done_flag(done),
        chunk_type: ChunkType::OffsetHole,
        handle,
        length: 12,
    };
    let mut b = [0u8; STRUCTURED_REPLY_HEADER_LEN + 12];
    b[..STRUCTURED_REPLY_HEADER_LEN].copy_from_slice(&hdr.encode());
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b[28..32].copy_from_slice(&hole_len.to_be_bytes());
    b
}

/// One block status descriptor on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatusDescriptor {
    /// Extent length (non-zero).
    pub length: u32,
    /// Status flags (for `base:allocation`: `NBD_STATE_*`).
    pub flags: u32,
}

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk to `out`.
///
/// # Panics
///
/// Panics if `descriptors` is empty (the chunk would be invalid).
pub fn encode_block_status(
    out: &mut Vec<u8>,
    handle: u64,
    context_id: u32,
    descriptors: &[BlockStatusDescriptor],
    done: bool,
) {
    assert!(
        !descriptors.is_empty(),
        "BLOCK_STATUS chunk needs a descriptor"
    );
    let hdr = ChunkHeader {
        flags: done_flag(done),
        chunk_type: ChunkType::BlockStatus,
        handle,
        length: wire_len(4 + 8 * descriptors.len()),
    };
    out.reserve(STRUCTURED_REPLY_HEADER_LEN + 4 + 8 * descriptors.len());
    out.extend_from_slice(&hdr.encode());
    put_u32(out, context_id);
    for d in descriptors {
        put_u32(out, d.length);
        put_u32(out, d.flags);
    }
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
    handle: u64,
    error: ErrorCode,
    message: &str,
    done: bool,
) {
    let msg = clamp_message(message);
    let hdr = ChunkHeader {
        flags: done_flag(done),
        chunk_type: ChunkType::Error,
        handle,
        length: wire_len(6 + msg.len()),
    };
    out.extend_from_slice(&hdr.encode());
    put_u32(out, error.to_wire());
    put_u16(out, msg.len() as u16);
    out.extend_from_slice(msg.as_bytes());
}

/// Appends an `NBD_REPLY_TYPE_ERROR_OFFSET` chunk to `out`.
pub fn encode_error_offset_chunk(
    out: &mut Vec<u8>,
    handle: u64,
    error: ErrorCode,
    message: &str,
    offset: u64,
    done: bool,
) {
    let msg = clamp_message(message);
    let hdr = ChunkHeader {
        flags: done_flag(done),
        chunk_type: ChunkType::ErrorOffset,
        handle,
        length: wire_len(14 + msg.len()),
    };
    out.extend_from_slice(&hdr.encode());
    put_u32(out, error.to_wire());
    put_u16(out, msg.len() as u16);
    out.extend_from_slice(msg.as_bytes());
    put_u64(out, offset);
}

/// Encodes an `NBD_REPLY_TYPE_NONE` chunk (always final).
pub fn encode_none_chunk(handle: u64) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
    ChunkHeader {
        flags: NBD_REPLY_FLAG_DONE,
        chunk_type: ChunkType::None,
        handle,
        length: 0,
    }
    .encode()
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
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
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
                        length: r.u32()?,
                        flags: r.u32()?,
                    });
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
