//! The handshake: greeting, option requests and option replies.

use super::*;

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// Encodes the newstyle server greeting: `NBDMAGIC`, `IHAVEOPT`, flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

/// Decodes a newstyle server greeting, returning the handshake flags.
pub fn decode_greeting(buf: &[u8]) -> Result<u16, DecodeError> {
    let mut r = Reader::new(buf);
    let magic = r.u64()?;
    if magic != NBD_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: NBD_MAGIC,
            got: magic,
        });
    }
    let opt = r.u64()?;
    if opt != IHAVEOPT {
        return Err(DecodeError::BadMagic {
            expected: IHAVEOPT,
            got: opt,
        });
    }
    r.u16()
}

/// Encodes the server's answer to `NBD_OPT_EXPORT_NAME`: size, transmission
/// flags and, unless `no_zeroes`, 124 bytes of zero padding.
pub fn encode_export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_ZEROES);
    put_u64(&mut out, size);
    put_u16(&mut out, transmission_flags);
    if !no_zeroes {
        out.resize(out.len() + EXPORT_NAME_ZEROES, 0);
    }
    out
}
// ---------------------------------------------------------------------------
// Option requests
// ---------------------------------------------------------------------------

/// The fixed 16-byte header of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option requested.
    pub option: OptionCode,
    /// Length of the option data that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Decodes an option header, checking the `IHAVEOPT` magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u64()?;
        if magic != IHAVEOPT {
            return Err(DecodeError::BadMagic {
                expected: IHAVEOPT,
                got: magic,
            });
        }
        Ok(Self {
            option: OptionCode::from(r.u32()?),
            length: r.u32()?,
        })
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&u32::from(self.option).to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Encodes a whole option request (header and data), as a client would.
pub fn encode_option(option: OptionCode, data: &[u8]) -> Vec<u8> {
    let hdr = OptionHeader {
        option,
        length: wire_len(data.len()),
    };
    let mut out = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    out.extend_from_slice(&hdr.encode());
    out.extend_from_slice(data);
    out
}

pub(super) fn check_string(s: &[u8]) -> Result<(), DecodeError> {
    if s.len() > MAX_STRING_LEN {
        Err(DecodeError::Invalid("string longer than 4096 bytes"))
    } else {
        Ok(())
    }
}

/// Data of an `NBD_OPT_INFO` or `NBD_OPT_GO` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Requested export name (raw bytes; normally UTF-8).
    pub name: Vec<u8>,
    /// Information types the client asked for.
    pub requests: Vec<InfoType>,
}

impl InfoRequest {
    /// Parses the option data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let name_len = r.u32()? as usize;
        if name_len > r.remaining().saturating_sub(2) {
            return Err(DecodeError::Invalid("export name overruns option data"));
        }
        let name = r.bytes(name_len)?;
        check_string(name)?;
        let n = r.u16()? as usize;
        if r.remaining() != n * 2 {
            return Err(DecodeError::Invalid(
                "information request count does not match option length",
            ));
        }
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            requests.push(InfoType::from(r.u16()?));
        }
        r.finish()?;
        Ok(Self {
            name: name.to_vec(),
            requests,
        })
    }

    /// Encodes the option data, as a client would.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.name.len() + 2 * self.requests.len());
        put_u32(&mut out, wire_len(self.name.len()));
        out.extend_from_slice(&self.name);
        put_u16(
            &mut out,
            u16::try_from(self.requests.len()).expect("too many info requests"),
        );
        for &i in &self.requests {
            put_u16(&mut out, i.into());
        }
        out
    }
}

/// Data of an `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export the query applies to.
    pub export: Vec<u8>,
    /// Query strings (raw bytes; normally UTF-8 `namespace:leaf`).
    pub queries: Vec<Vec<u8>>,
}

impl MetaContextRequest {
    /// Parses the option data. Every length must stay within the option
    /// data and no bytes may follow the last query.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let name_len = r.u32()? as usize;
        let export = r.bytes(name_len)?;
        check_string(export)?;
        let count = r.u32()? as usize;
        // Each query needs at least its 4-byte length: bound the allocation.
        if count > r.remaining() / 4 {
            return Err(DecodeError::Invalid("query count overruns option data"));
        }
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.u32()? as usize;
            let q = r.bytes(len)?;
            check_string(q)?;
            queries.push(q.to_vec());
        }
        r.finish()?;
        Ok(Self {
            export: export.to_vec(),
            queries,
        })
    }

    /// Encodes the option data, as a client would.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(&mut out, wire_len(self.export.len()));
        out.extend_from_slice(&self.export);
        put_u32(&mut out, wire_len(self.queries.len()));
        for q in &self.queries {
            put_u32(&mut out, wire_len(q.len()));
            out.extend_from_slice(q);
        }
        out
    }
}
// ---------------------------------------------------------------------------
// Option replies
// ---------------------------------------------------------------------------

/// The fixed 20-byte header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this replies to.
    pub option: u32,
    /// The reply type.
    pub reply: ReplyType,
    /// Length of the reply data that follows.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Decodes an option reply header, checking its magic.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: OPTION_REPLY_MAGIC,
                got: magic,
            });
        }
        Ok(Self {
            option: r.u32()?,
            reply: ReplyType::from(r.u32()?),
            length: r.u32()?,
        })
    }
}

/// Appends an option reply (header and data) to `out`.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: ReplyType, data: &[u8]) {
    out.reserve(OPTION_REPLY_HEADER_LEN + data.len());
    put_u64(out, OPTION_REPLY_MAGIC);
    put_u32(out, option);
    put_u32(out, reply.into());
    put_u32(out, wire_len(data.len()));
    out.extend_from_slice(data);
}

/// Payload of an `NBD_REP_SERVER` reply: name length, name, description.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    put_u32(&mut out, wire_len(name.len()));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    out
}

/// Payload of an `NBD_REP_META_CONTEXT` reply: context id and name.
pub fn encode_rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    put_u32(&mut out, id);
    out.extend_from_slice(name.as_bytes());
    out
}

/// Payload of an `NBD_REP_INFO` reply carrying `NBD_INFO_EXPORT`.
pub fn encode_info_export(size: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    put_u16(&mut out, NBD_INFO_EXPORT);
    put_u64(&mut out, size);
    put_u16(&mut out, transmission_flags);
    out
}

/// Payload of an `NBD_REP_INFO` reply carrying `NBD_INFO_NAME`.
pub fn encode_info_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len());
    put_u16(&mut out, NBD_INFO_NAME);
    out.extend_from_slice(name.as_bytes());
    out
}

/// Payload of an `NBD_REP_INFO` reply carrying `NBD_INFO_DESCRIPTION`.
pub fn encode_info_description(description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + description.len());
    put_u16(&mut out, NBD_INFO_DESCRIPTION);
    out.extend_from_slice(description.as_bytes());
    out
}

/// Payload of an `NBD_REP_INFO` reply carrying `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    put_u16(&mut out, NBD_INFO_BLOCK_SIZE);
    put_u32(&mut out, minimum);
    put_u32(&mut out, preferred);
    put_u32(&mut out, maximum);
    out
}

/// A decoded `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(Vec<u8>),
    /// `NBD_INFO_DESCRIPTION`.
    Description(Vec<u8>),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        minimum: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum block size.
        maximum: u32,
    },
    /// An information type this decoder does not know.
    Unknown(u16, Vec<u8>),
}

impl Info {
    /// Decodes an `NBD_REP_INFO` payload, enforcing each type's length.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let ty = r.u16()?;
        let info = match InfoType::from(ty) {
            InfoType::Export => Self::Export {
                size: r.u64()?,
                flags: r.u16()?,
            },
            InfoType::Name => Self::Name(r.rest().to_vec()),
            InfoType::Description => Self::Description(r.rest().to_vec()),
            InfoType::BlockSize => Self::BlockSize {
                minimum: r.u32()?,
                preferred: r.u32()?,
                maximum: r.u32()?,
            },
            InfoType::Unknown(v) => Self::Unknown(v, r.rest().to_vec()),
        };
        r.finish()?;
        Ok(info)
    }
}
