//! NBD wire format: constants, strong types and pure encode/decode functions.
//!
//! Everything in this module works on byte slices and `Vec<u8>`; nothing here
//! performs I/O. All integers on the wire are big-endian ("network byte
//! order"). The layout of every message follows the NBD protocol document
//! (`doc/proto.md` in the reference implementation's repository).
//!
//! Decoders never panic: a short or inconsistent input yields a
//! [`DecodeError`].

use std::fmt;
use std::io;

// ---------------------------------------------------------------------------
// Magic numbers
// ---------------------------------------------------------------------------

/// `NBDMAGIC`, the first 8 bytes the server sends (also `INIT_PASSWD`).
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle greeting magic, also prefixed to every option
/// request sent by the client.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic prefixed to every option reply sent by the server.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission-phase request (`NBD_REQUEST_MAGIC`).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply (`NBD_SIMPLE_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (`NBD_STRUCTURED_REPLY_MAGIC`).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ---------------------------------------------------------------------------
// Sizes and limits
// ---------------------------------------------------------------------------

/// Size of the server greeting: magic, `IHAVEOPT`, 16-bit handshake flags.
pub const GREETING_LEN: usize = 18;
/// Size of an option request header: magic, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of an option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Size of a (compact, non-extended) request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Number of reserved zero bytes ending an `NBD_OPT_EXPORT_NAME` reply
/// unless `NBD_FLAG_C_NO_ZEROES` was negotiated.
pub const EXPORT_NAME_ZEROES: usize = 124;
/// Maximum length of any protocol string (export names, queries, messages).
pub const MAX_STRING_LEN: usize = 4096;
/// The length (in bytes) up to which a client may expect an unfragmented
/// (`NBD_CMD_FLAG_DF`) read to be honoured.
pub const MIN_DF_SUPPORTED_LEN: u32 = 65_536;
/// Name of the only metadata context defined by the specification.
pub const BASE_ALLOCATION: &str = "base:allocation";

// ---------------------------------------------------------------------------
// Handshake flags (server, 16 bits) and client flags (32 bits)
// ---------------------------------------------------------------------------

/// Server handshake flag: fixed newstyle negotiation is supported.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the server can omit the 124 zero bytes.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Transmission flags (16 bits)
// ---------------------------------------------------------------------------

/// Always set.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_FUA` is supported.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// The export behaves like rotational media.
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
/// `NBD_CMD_TRIM` is supported.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is supported.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_CMD_FLAG_DF` is supported on reads (structured replies only).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// Several connections may be used against the export coherently.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_CMD_RESIZE` (experimental; never advertised by this server).
pub const NBD_FLAG_SEND_RESIZE: u16 = 1 << 9;
/// `NBD_CMD_CACHE` is understood.
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_CMD_FLAG_FAST_ZERO` is supported on write-zeroes.
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------------------
// Option codes
// ---------------------------------------------------------------------------

/// `NBD_OPT_EXPORT_NAME`.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const NBD_OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const NBD_OPT_LIST: u32 = 3;
/// `NBD_OPT_PEEK_EXPORT` (withdrawn).
pub const NBD_OPT_PEEK_EXPORT: u32 = 4;
/// `NBD_OPT_STARTTLS`.
pub const NBD_OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const NBD_OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const NBD_OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;

/// An option code sent by the client during option haggling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionCode {
    /// `NBD_OPT_EXPORT_NAME`: pick an export and enter transmission.
    ExportName,
    /// `NBD_OPT_ABORT`: soft disconnect.
    Abort,
    /// `NBD_OPT_LIST`: list exports.
    List,
    /// `NBD_OPT_STARTTLS`: upgrade to TLS.
    StartTls,
    /// `NBD_OPT_INFO`: describe an export.
    Info,
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    Go,
    /// `NBD_OPT_STRUCTURED_REPLY`: enable structured replies.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`: list metadata contexts.
    ListMetaContext,
    /// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts.
    SetMetaContext,
    /// Any other value.
    Unknown(u32),
}

impl From<u32> for OptionCode {
    fn from(v: u32) -> Self {
        match v {
            NBD_OPT_EXPORT_NAME => Self::ExportName,
            NBD_OPT_ABORT => Self::Abort,
            NBD_OPT_LIST => Self::List,
            NBD_OPT_STARTTLS => Self::StartTls,
            NBD_OPT_INFO => Self::Info,
            NBD_OPT_GO => Self::Go,
            NBD_OPT_STRUCTURED_REPLY => Self::StructuredReply,
            NBD_OPT_LIST_META_CONTEXT => Self::ListMetaContext,
            NBD_OPT_SET_META_CONTEXT => Self::SetMetaContext,
            other => Self::Unknown(other),
        }
    }
}

impl From<OptionCode> for u32 {
    fn from(o: OptionCode) -> u32 {
        match o {
            OptionCode::ExportName => NBD_OPT_EXPORT_NAME,
            OptionCode::Abort => NBD_OPT_ABORT,
            OptionCode::List => NBD_OPT_LIST,
            OptionCode::StartTls => NBD_OPT_STARTTLS,
            OptionCode::Info => NBD_OPT_INFO,
            OptionCode::Go => NBD_OPT_GO,
            OptionCode::StructuredReply => NBD_OPT_STRUCTURED_REPLY,
            OptionCode::ListMetaContext => NBD_OPT_LIST_META_CONTEXT,
            OptionCode::SetMetaContext => NBD_OPT_SET_META_CONTEXT,
            OptionCode::Unknown(v) => v,
        }
    }
}

// ---------------------------------------------------------------------------
// Option reply types
// ---------------------------------------------------------------------------

/// `NBD_REP_ACK`.
pub const NBD_REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const NBD_REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const NBD_REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Bit set in every error reply type.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// `NBD_REP_ERR_POLICY`.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// `NBD_REP_ERR_INVALID`.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// `NBD_REP_ERR_PLATFORM`.
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
/// `NBD_REP_ERR_TLS_REQD`.
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
/// `NBD_REP_ERR_UNKNOWN`.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
/// `NBD_REP_ERR_SHUTDOWN`.
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
/// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
/// `NBD_REP_ERR_TOO_BIG`.
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

/// The type of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyType {
    /// `NBD_REP_ACK`: success / end of a list.
    Ack,
    /// `NBD_REP_SERVER`: one export in an `NBD_OPT_LIST` answer.
    Server,
    /// `NBD_REP_INFO`: one information item for `NBD_OPT_INFO`/`GO`.
    Info,
    /// `NBD_REP_META_CONTEXT`: one metadata context.
    MetaContext,
    /// `NBD_REP_ERR_UNSUP`: option not supported.
    ErrUnsup,
    /// `NBD_REP_ERR_POLICY`: forbidden by server policy.
    ErrPolicy,
    /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
    ErrInvalid,
    /// `NBD_REP_ERR_PLATFORM`: unsupported on this platform.
    ErrPlatform,
    /// `NBD_REP_ERR_TLS_REQD`: TLS required first.
    ErrTlsReqd,
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    ErrUnknown,
    /// `NBD_REP_ERR_SHUTDOWN`: server shutting down.
    ErrShutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: client must request block sizes.
    ErrBlockSizeReqd,
    /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
    ErrTooBig,
    /// Any other value.
    Unknown(u32),
}

impl ReplyType {
    /// Whether this is an error reply (bit 31 set).
    pub fn is_error(self) -> bool {
        u32::from(self) & NBD_REP_FLAG_ERROR != 0
    }
}

impl From<u32> for ReplyType {
    fn from(v: u32) -> Self {
        match v {
            NBD_REP_ACK => Self::Ack,
            NBD_REP_SERVER => Self::Server,
            NBD_REP_INFO => Self::Info,
            NBD_REP_META_CONTEXT => Self::MetaContext,
            NBD_REP_ERR_UNSUP => Self::ErrUnsup,
            NBD_REP_ERR_POLICY => Self::ErrPolicy,
            NBD_REP_ERR_INVALID => Self::ErrInvalid,
            NBD_REP_ERR_PLATFORM => Self::ErrPlatform,
            NBD_REP_ERR_TLS_REQD => Self::ErrTlsReqd,
            NBD_REP_ERR_UNKNOWN => Self::ErrUnknown,
            NBD_REP_ERR_SHUTDOWN => Self::ErrShutdown,
            NBD_REP_ERR_BLOCK_SIZE_REQD => Self::ErrBlockSizeReqd,
            NBD_REP_ERR_TOO_BIG => Self::ErrTooBig,
            other => Self::Unknown(other),
        }
    }
}

impl From<ReplyType> for u32 {
    fn from(r: ReplyType) -> u32 {
        match r {
            ReplyType::Ack => NBD_REP_ACK,
            ReplyType::Server => NBD_REP_SERVER,
            ReplyType::Info => NBD_REP_INFO,
            ReplyType::MetaContext => NBD_REP_META_CONTEXT,
            ReplyType::ErrUnsup => NBD_REP_ERR_UNSUP,
            ReplyType::ErrPolicy => NBD_REP_ERR_POLICY,
            ReplyType::ErrInvalid => NBD_REP_ERR_INVALID,
            ReplyType::ErrPlatform => NBD_REP_ERR_PLATFORM,
            ReplyType::ErrTlsReqd => NBD_REP_ERR_TLS_REQD,
            ReplyType::ErrUnknown => NBD_REP_ERR_UNKNOWN,
            ReplyType::ErrShutdown => NBD_REP_ERR_SHUTDOWN,
            ReplyType::ErrBlockSizeReqd => NBD_REP_ERR_BLOCK_SIZE_REQD,
            ReplyType::ErrTooBig => NBD_REP_ERR_TOO_BIG,
            ReplyType::Unknown(v) => v,
        }
    }
}

// ---------------------------------------------------------------------------
// Information types (NBD_OPT_INFO / NBD_OPT_GO)
// ---------------------------------------------------------------------------

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const NBD_INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: canonical export name.
pub const NBD_INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`: human-readable description.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum/preferred/maximum block sizes.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// An information type requested with `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InfoType {
    /// `NBD_INFO_EXPORT`.
    Export,
    /// `NBD_INFO_NAME`.
    Name,
    /// `NBD_INFO_DESCRIPTION`.
    Description,
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize,
    /// Any other value (must be ignored by the server).
    Unknown(u16),
}

impl From<u16> for InfoType {
    fn from(v: u16) -> Self {
        match v {
            NBD_INFO_EXPORT => Self::Export,
            NBD_INFO_NAME => Self::Name,
            NBD_INFO_DESCRIPTION => Self::Description,
            NBD_INFO_BLOCK_SIZE => Self::BlockSize,
            other => Self::Unknown(other),
        }
    }
}

impl From<InfoType> for u16 {
    fn from(i: InfoType) -> u16 {
        match i {
            InfoType::Export => NBD_INFO_EXPORT,
            InfoType::Name => NBD_INFO_NAME,
            InfoType::Description => NBD_INFO_DESCRIPTION,
            InfoType::BlockSize => NBD_INFO_BLOCK_SIZE,
            InfoType::Unknown(v) => v,
        }
    }
}

// ---------------------------------------------------------------------------
// Commands and command flags
// ---------------------------------------------------------------------------

/// `NBD_CMD_READ`.
pub const NBD_CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const NBD_CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const NBD_CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const NBD_CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const NBD_CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const NBD_CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

/// A transmission-phase command type.
///
/// The command field is 16 bits wide on the wire, hence `Unknown(u16)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` (followed by a payload).
    Write,
    /// `NBD_CMD_DISC`: soft disconnect, no reply.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Self {
        match v {
            NBD_CMD_READ => Self::Read,
            NBD_CMD_WRITE => Self::Write,
            NBD_CMD_DISC => Self::Disc,
            NBD_CMD_FLUSH => Self::Flush,
            NBD_CMD_TRIM => Self::Trim,
            NBD_CMD_CACHE => Self::Cache,
            NBD_CMD_WRITE_ZEROES => Self::WriteZeroes,
            NBD_CMD_BLOCK_STATUS => Self::BlockStatus,
            other => Self::Unknown(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(c: Command) -> u16 {
        match c {
            Command::Read => NBD_CMD_READ,
            Command::Write => NBD_CMD_WRITE,
            Command::Disc => NBD_CMD_DISC,
            Command::Flush => NBD_CMD_FLUSH,
            Command::Trim => NBD_CMD_TRIM,
            Command::Cache => NBD_CMD_CACHE,
            Command::WriteZeroes => NBD_CMD_WRITE_ZEROES,
            Command::BlockStatus => NBD_CMD_BLOCK_STATUS,
            Command::Unknown(v) => v,
        }
    }
}

/// `NBD_CMD_FLAG_FUA`: force unit access.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE`: write-zeroes must allocate.
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `NBD_CMD_FLAG_DF`: do not fragment a structured read reply.
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
/// `NBD_CMD_FLAG_REQ_ONE`: at most one block status extent.
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// `NBD_CMD_FLAG_FAST_ZERO`: fail write-zeroes unless it is fast.
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// ---------------------------------------------------------------------------
// Structured replies
// ---------------------------------------------------------------------------

/// `NBD_REPLY_FLAG_DONE`: final chunk of a structured reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;

/// `NBD_REPLY_TYPE_NONE`.
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit set in every error chunk type.
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR`.
pub const NBD_REPLY_TYPE_ERROR: u16 = NBD_REPLY_TYPE_ERROR_BIT | 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = NBD_REPLY_TYPE_ERROR_BIT | 2;

/// The type of a structured reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkType {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData,
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    OffsetHole,
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    BlockStatus,
    /// `NBD_REPLY_TYPE_ERROR`.
    Error,
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ErrorOffset,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for ChunkType {
    fn from(v: u16) -> Self {
        match v {
            NBD_REPLY_TYPE_NONE => Self::None,
            NBD_REPLY_TYPE_OFFSET_DATA => Self::OffsetData,
            NBD_REPLY_TYPE_OFFSET_HOLE => Self::OffsetHole,
            NBD_REPLY_TYPE_BLOCK_STATUS => Self::BlockStatus,
            NBD_REPLY_TYPE_ERROR => Self::Error,
            NBD_REPLY_TYPE_ERROR_OFFSET => Self::ErrorOffset,
            other => Self::Unknown(other),
        }
    }
}

impl From<ChunkType> for u16 {
    fn from(c: ChunkType) -> u16 {
        match c {
            ChunkType::None => NBD_REPLY_TYPE_NONE,
            ChunkType::OffsetData => NBD_REPLY_TYPE_OFFSET_DATA,
            ChunkType::OffsetHole => NBD_REPLY_TYPE_OFFSET_HOLE,
            ChunkType::BlockStatus => NBD_REPLY_TYPE_BLOCK_STATUS,
            ChunkType::Error => NBD_REPLY_TYPE_ERROR,
            ChunkType::ErrorOffset => NBD_REPLY_TYPE_ERROR_OFFSET,
            ChunkType::Unknown(v) => v,
        }
    }
}

// ---------------------------------------------------------------------------
// Block status flags (base:allocation)
// ---------------------------------------------------------------------------

/// `NBD_STATE_HOLE`: the extent is not allocated.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO`: the extent reads as zeroes.
pub const NBD_STATE_ZERO: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Error codes
// ---------------------------------------------------------------------------

/// `NBD_EPERM`.
pub const NBD_EPERM: u32 = 1;
/// `NBD_EIO`.
pub const NBD_EIO: u32 = 5;
/// `NBD_ENOMEM`.
pub const NBD_ENOMEM: u32 = 12;
/// `NBD_EINVAL`.
pub const NBD_EINVAL: u32 = 22;
/// `NBD_ENOSPC`.
pub const NBD_ENOSPC: u32 = 28;
/// `NBD_EOVERFLOW`.
pub const NBD_EOVERFLOW: u32 = 75;
/// `NBD_ENOTSUP`.
pub const NBD_ENOTSUP: u32 = 95;
/// `NBD_ESHUTDOWN`.
pub const NBD_ESHUTDOWN: u32 = 108;

/// An error value sent in a simple reply or an error chunk.
///
/// Only the values the specification allows are representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// `NBD_EPERM`: operation not permitted (e.g. write to a read-only export).
    Perm = NBD_EPERM,
    /// `NBD_EIO`: input/output error.
    Io = NBD_EIO,
    /// `NBD_ENOMEM`: cannot allocate memory.
    NoMem = NBD_ENOMEM,
    /// `NBD_EINVAL`: invalid argument.
    Inval = NBD_EINVAL,
    /// `NBD_ENOSPC`: no space left (e.g. write past the end).
    NoSpc = NBD_ENOSPC,
    /// `NBD_EOVERFLOW`: value too large (unfragmented read too big).
    Overflow = NBD_EOVERFLOW,
    /// `NBD_ENOTSUP`: fast zero not possible.
    NotSup = NBD_ENOTSUP,
    /// `NBD_ESHUTDOWN`: server shutting down.
    Shutdown = NBD_ESHUTDOWN,
}

impl ErrorCode {
    /// The value as sent on the wire.
    pub fn to_wire(self) -> u32 {
        self as u32
    }

    /// Parses a wire value; unknown values map to `None` (a client should
    /// treat them as `EINVAL`).
    pub fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            NBD_EPERM => Self::Perm,
            NBD_EIO => Self::Io,
            NBD_ENOMEM => Self::NoMem,
            NBD_EINVAL => Self::Inval,
            NBD_ENOSPC => Self::NoSpc,
            NBD_EOVERFLOW => Self::Overflow,
            NBD_ENOTSUP => Self::NotSup,
            NBD_ESHUTDOWN => Self::Shutdown,
            _ => return None,
        })
    }

    /// Maps a storage error onto the closest NBD error value.
    ///
    /// Quota and file-size errors map to `ENOSPC`, read-only file systems to
    /// `EPERM`, as the specification recommends; anything unrecognised is
    /// `EIO`.
    pub fn from_io_error(e: &io::Error) -> Self {
        use io::ErrorKind as K;
        // EDQUOT has no stable `ErrorKind` at this crate's minimum Rust.
        #[cfg(target_os = "linux")]
        if e.raw_os_error() == Some(122) {
            return Self::NoSpc;
        }
        match e.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => Self::Perm,
            K::InvalidInput => Self::Inval,
            K::OutOfMemory => Self::NoMem,
            K::StorageFull | K::FileTooLarge => Self::NoSpc,
            K::Unsupported => Self::NotSup,
            _ => Self::Io,
        }
    }

    /// Short symbolic name, e.g. `"EINVAL"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Perm => "EPERM",
            Self::Io => "EIO",
            Self::NoMem => "ENOMEM",
            Self::Inval => "EINVAL",
            Self::NoSpc => "ENOSPC",
            Self::Overflow => "EOVERFLOW",
            Self::NotSup => "ENOTSUP",
            Self::Shutdown => "ESHUTDOWN",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_wire())
    }
}

// ---------------------------------------------------------------------------
// Decode errors and byte helpers
// ---------------------------------------------------------------------------

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended early.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A magic number did not match.
    BadMagic {
        /// The expected magic.
        expected: u64,
        /// The magic found.
        got: u64,
    },
    /// The message is structurally invalid.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, got } => {
                write!(f, "truncated message: needed {needed} bytes, got {got}")
            }
            Self::BadMagic { expected, got } => {
                write!(f, "bad magic {got:#x} (expected {expected:#x})")
            }
            Self::Invalid(why) => write!(f, "invalid message: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                needed: self.pos.saturating_add(n),
                got: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Fails unless every byte has been consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::Invalid("trailing bytes"))
        }
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Converts a length to the 32-bit wire representation.
///
/// # Panics
///
/// Panics if `len` does not fit; callers only pass lengths bounded by
/// protocol limits far below 4 GiB, so this indicates a server bug.
fn wire_len(len: usize) -> u32 {
    u32::try_from(len).expect("NBD message length exceeds 32 bits")
}

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

fn check_string(s: &[u8]) -> Result<(), DecodeError> {
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

fn done_flag(done: bool) -> u16 {
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
fn clamp_message(message: &str) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes_match_spec() {
        let g = encode_greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
        assert_eq!(decode_greeting(&g), Ok(3));
        assert!(matches!(
            decode_greeting(&g[..10]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = g;
        bad[0] = b'X';
        assert!(matches!(
            decode_greeting(&bad),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    #[test]
    fn code_round_trips() {
        for v in 0..20u32 {
            assert_eq!(u32::from(OptionCode::from(v)), v);
            assert_eq!(u16::from(Command::from(v as u16)), v as u16);
            assert_eq!(u16::from(InfoType::from(v as u16)), v as u16);
            assert_eq!(u16::from(ChunkType::from(v as u16)), v as u16);
            assert_eq!(u32::from(ReplyType::from(v)), v);
            assert_eq!(u32::from(ReplyType::from(v | (1 << 31))), v | (1 << 31));
        }
        assert_eq!(OptionCode::from(99), OptionCode::Unknown(99));
        assert_eq!(Command::from(8), Command::Unknown(8));
        assert!(ReplyType::ErrUnsup.is_error());
        assert!(!ReplyType::Ack.is_error());
        assert_eq!(NBD_REP_ERR_UNSUP, 0x8000_0001);
        assert_eq!(NBD_REP_ERR_TOO_BIG, 0x8000_0009);
        assert_eq!(NBD_REPLY_TYPE_ERROR, 0x8001);
        assert_eq!(NBD_REPLY_TYPE_ERROR_OFFSET, 0x8002);
    }

    #[test]
    fn error_codes() {
        for e in [
            ErrorCode::Perm,
            ErrorCode::Io,
            ErrorCode::NoMem,
            ErrorCode::Inval,
            ErrorCode::NoSpc,
            ErrorCode::Overflow,
            ErrorCode::NotSup,
            ErrorCode::Shutdown,
        ] {
            assert_eq!(ErrorCode::from_wire(e.to_wire()), Some(e));
        }
        assert_eq!(ErrorCode::from_wire(0), None);
        assert_eq!(ErrorCode::Inval.to_wire(), 22);
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(ErrorCode::from_io_error(&e), ErrorCode::Perm);
        let e = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(ErrorCode::from_io_error(&e), ErrorCode::NoSpc);
        #[cfg(target_os = "linux")]
        assert_eq!(
            ErrorCode::from_io_error(&io::Error::from_raw_os_error(122)),
            ErrorCode::NoSpc
        );
        let e = io::Error::other("boom");
        assert_eq!(ErrorCode::from_io_error(&e), ErrorCode::Io);
        assert_eq!(ErrorCode::Overflow.to_string(), "EOVERFLOW (75)");
    }

    #[test]
    fn option_header_round_trip() {
        let h = OptionHeader {
            option: OptionCode::Go,
            length: 42,
        };
        let b = h.encode();
        assert_eq!(&b[..8], b"IHAVEOPT");
        assert_eq!(&b[8..12], &[0, 0, 0, 7]);
        assert_eq!(&b[12..16], &[0, 0, 0, 42]);
        assert_eq!(OptionHeader::decode(&b), Ok(h));
        assert!(OptionHeader::decode(&b[..15]).is_err());
    }

    #[test]
    fn info_request_parsing() {
        let req = InfoRequest {
            name: b"disk".to_vec(),
            requests: vec![InfoType::BlockSize, InfoType::Unknown(77)],
        };
        let data = req.encode();
        assert_eq!(
            data,
            [0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 2, 0, 3, 0, 77]
        );
        assert_eq!(InfoRequest::decode(&data), Ok(req));
        // Name overruns (needs 6 bytes of trailer room).
        assert!(InfoRequest::decode(&[0, 0, 0, 9, 1, 2, 3]).is_err());
        // Count disagrees with the remaining length.
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0, 2, 0, 1]).is_err());
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            InfoRequest::decode(&[0, 0, 0, 0, 0, 0]),
            Ok(InfoRequest {
                name: vec![],
                requests: vec![]
            })
        );
        // Over-long name.
        let long = InfoRequest {
            name: vec![b'a'; MAX_STRING_LEN + 1],
            requests: vec![],
        };
        assert!(InfoRequest::decode(&long.encode()).is_err());
    }

    #[test]
    fn meta_context_request_parsing() {
        let req = MetaContextRequest {
            export: b"e".to_vec(),
            queries: vec![b"base:allocation".to_vec(), b"x-y:".to_vec()],
        };
        let data = req.encode();
        assert_eq!(MetaContextRequest::decode(&data), Ok(req));
        // Query length overruns.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, b'a']).is_err());
        // Absurd query count must not allocate.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Trailing garbage.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn option_reply_encoding() {
        let mut out = Vec::new();
        encode_option_reply(&mut out, NBD_OPT_LIST, ReplyType::Ack, &[]);
        assert_eq!(
            out,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert_eq!(h.reply, ReplyType::Ack);
        assert_eq!(h.option, NBD_OPT_LIST);
        assert_eq!(h.length, 0);
        assert_eq!(encode_rep_server("ab", "d"), [0, 0, 0, 2, b'a', b'b', b'd']);
        assert_eq!(
            encode_rep_meta_context(7, "x:y"),
            [0, 0, 0, 7, b'x', b':', b'y']
        );
    }

    #[test]
    fn info_payloads() {
        let e = encode_info_export(0x1_0000_0000, 0x1234);
        assert_eq!(e, [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(
            Info::decode(&e),
            Ok(Info::Export {
                size: 0x1_0000_0000,
                flags: 0x1234
            })
        );
        let b = encode_info_block_size(1, 4096, 1 << 25);
        assert_eq!(b.len(), 14);
        assert_eq!(
            Info::decode(&b),
            Ok(Info::BlockSize {
                minimum: 1,
                preferred: 4096,
                maximum: 1 << 25
            })
        );
        assert_eq!(
            Info::decode(&encode_info_name("n")),
            Ok(Info::Name(b"n".to_vec()))
        );
        assert_eq!(
            Info::decode(&encode_info_description("d")),
            Ok(Info::Description(b"d".to_vec()))
        );
        assert!(Info::decode(&e[..11]).is_err());
    }

    #[test]
    fn export_name_reply() {
        let r = encode_export_name_reply(512, 1, false);
        assert_eq!(r.len(), 8 + 2 + 124);
        assert!(r[10..].iter().all(|&b| b == 0));
        let r = encode_export_name_reply(512, 1, true);
        assert_eq!(r, [0, 0, 0, 0, 0, 0, 2, 0, 0, 1]);
    }

    #[test]
    fn request_header_round_trip() {
        let h = RequestHeader {
            flags: NBD_CMD_FLAG_FUA,
            command: Command::Write,
            handle: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512,
        };
        let b = h.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&b[4..8], &[0, 1, 0, 1]);
        assert_eq!(RequestHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[3] = 0;
        assert!(matches!(
            RequestHeader::decode(&bad),
            Err(DecodeError::BadMagic { .. })
        ));
        assert!(matches!(
            RequestHeader::decode(&b[..27]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn simple_reply_round_trip() {
        let h = SimpleReplyHeader {
            error: NBD_EIO,
            handle: 9,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9]
        );
        assert_eq!(SimpleReplyHeader::decode(&b), Ok(h));
    }

    fn split(b: &[u8]) -> (ChunkHeader, Chunk) {
        let h = ChunkHeader::decode(&b[..20]).unwrap();
        let c = Chunk::decode(&h, &b[20..]).unwrap();
        (h, c)
    }

    #[test]
    fn structured_chunks_round_trip() {
        let mut out = Vec::new();
        encode_offset_data(&mut out, 5, 1024, b"hello", true);
        assert_eq!(&out[..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&out[4..8], &[0, 1, 0, 1]);
        assert_eq!(&out[16..20], &[0, 0, 0, 13]);
        let (h, c) = split(&out);
        assert!(h.is_done());
        assert_eq!(h.handle, 5);
        assert_eq!(
            c,
            Chunk::OffsetData {
                offset: 1024,
                data: b"hello".to_vec()
            }
        );

        let hole = encode_offset_hole(6, 0, 4096, false);
        let (h, c) = split(&hole);
        assert!(!h.is_done());
        assert_eq!(
            c,
            Chunk::OffsetHole {
                offset: 0,
                length: 4096
            }
        );

        let mut out = Vec::new();
        let d = [
            BlockStatusDescriptor {
                length: 65536,
                flags: NBD_STATE_HOLE | NBD_STATE_ZERO,
            },
            BlockStatusDescriptor {
                length: 512,
                flags: 0,
            },
        ];
        encode_block_status(&mut out, 7, 1, &d, true);
        assert_eq!(out.len(), 20 + 4 + 16);
        let (_, c) = split(&out);
        assert_eq!(
            c,
            Chunk::BlockStatus {
                context_id: 1,
                descriptors: d.to_vec()
            }
        );

        let mut out = Vec::new();
        encode_error_chunk(&mut out, 8, ErrorCode::Inval, "bad", true);
        assert_eq!(&out[6..8], &[0x80, 0x01]);
        let (_, c) = split(&out);
        assert_eq!(
            c,
            Chunk::Error {
                error: 22,
                message: b"bad".to_vec()
            }
        );

        let mut out = Vec::new();
        encode_error_offset_chunk(&mut out, 8, ErrorCode::Io, "", 77, false);
        let (_, c) = split(&out);
        assert_eq!(
            c,
            Chunk::ErrorOffset {
                error: 5,
                message: vec![],
                offset: 77
            }
        );

        let none = encode_none_chunk(9);
        let (h, c) = split(&none);
        assert!(h.is_done());
        assert_eq!(c, Chunk::None);
    }

    #[test]
    fn long_error_message_is_clamped() {
        let mut out = Vec::new();
        let msg = "é".repeat(3000); // 6000 bytes
        encode_error_chunk(&mut out, 1, ErrorCode::Io, &msg, true);
        let (_, c) = split(&out);
        match c {
            Chunk::Error { message, .. } => {
                assert!(message.len() <= MAX_STRING_LEN);
                assert!(std::str::from_utf8(&message).is_ok());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_chunks_rejected() {
        let hdr = ChunkHeader {
            flags: 0,
            chunk_type: ChunkType::OffsetData,
            handle: 0,
            length: 8,
        };
        assert!(Chunk::decode(&hdr, &[0; 8]).is_err());
        let hdr = ChunkHeader {
            chunk_type: ChunkType::BlockStatus,
            length: 8,
            ..hdr
        };
        assert!(Chunk::decode(&hdr, &[0; 8]).is_err());
        let hdr = ChunkHeader {
            chunk_type: ChunkType::Error,
            length: 6,
            ..hdr
        };
        // Message length 1 but no room for it.
        assert!(Chunk::decode(&hdr, &[0, 0, 0, 5, 0, 1]).is_err());
        // Payload length mismatch.
        assert!(Chunk::decode(&hdr, &[0; 5]).is_err());
    }
}
