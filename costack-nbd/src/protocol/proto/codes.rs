//! The wire enums: option codes, option reply types, information types,
//! commands and their flags, structured reply chunk types, error codes.

use super::*;

// ---------------------------------------------------------------------------
// Option codes
// ---------------------------------------------------------------------------

/// `NBD_OPT_PEEK_EXPORT` (withdrawn).
pub const NBD_OPT_PEEK_EXPORT: u32 = 4;

wire_enum! {
    /// An option code sent by the client during option haggling.
    pub enum OptionCode: u32 {
        /// `NBD_OPT_EXPORT_NAME`: pick an export and enter transmission.
        ExportName = NBD_OPT_EXPORT_NAME = 1,
        /// `NBD_OPT_ABORT`: soft disconnect.
        Abort = NBD_OPT_ABORT = 2,
        /// `NBD_OPT_LIST`: list exports.
        List = NBD_OPT_LIST = 3,
        /// `NBD_OPT_STARTTLS`: upgrade to TLS.
        StartTls = NBD_OPT_STARTTLS = 5,
        /// `NBD_OPT_INFO`: describe an export.
        Info = NBD_OPT_INFO = 6,
        /// `NBD_OPT_GO`: describe an export and enter transmission.
        Go = NBD_OPT_GO = 7,
        /// `NBD_OPT_STRUCTURED_REPLY`: enable structured replies.
        StructuredReply = NBD_OPT_STRUCTURED_REPLY = 8,
        /// `NBD_OPT_LIST_META_CONTEXT`: list metadata contexts.
        ListMetaContext = NBD_OPT_LIST_META_CONTEXT = 9,
        /// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts.
        SetMetaContext = NBD_OPT_SET_META_CONTEXT = 10,
        /// `NBD_OPT_EXTENDED_HEADERS`: 32-byte request and reply headers
        /// with 64-bit lengths (implies structured replies).
        ExtendedHeaders = NBD_OPT_EXTENDED_HEADERS = 11,
    }
    /// Any other value.
    Unknown
}
// ---------------------------------------------------------------------------
// Option reply types
// ---------------------------------------------------------------------------

/// Bit set in every error reply type.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;

wire_enum! {
    /// The type of an option reply.
    pub enum ReplyType: u32 {
        /// `NBD_REP_ACK`: success / end of a list.
        Ack = NBD_REP_ACK = 1,
        /// `NBD_REP_SERVER`: one export in an `NBD_OPT_LIST` answer.
        Server = NBD_REP_SERVER = 2,
        /// `NBD_REP_INFO`: one information item for `NBD_OPT_INFO`/`GO`.
        Info = NBD_REP_INFO = 3,
        /// `NBD_REP_META_CONTEXT`: one metadata context.
        MetaContext = NBD_REP_META_CONTEXT = 4,
        /// `NBD_REP_ERR_UNSUP`: option not supported.
        ErrUnsup = NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1,
        /// `NBD_REP_ERR_POLICY`: forbidden by server policy.
        ErrPolicy = NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2,
        /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
        ErrInvalid = NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3,
        /// `NBD_REP_ERR_PLATFORM`: unsupported on this platform.
        ErrPlatform = NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4,
        /// `NBD_REP_ERR_TLS_REQD`: TLS required first.
        ErrTlsReqd = NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5,
        /// `NBD_REP_ERR_UNKNOWN`: no such export.
        ErrUnknown = NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6,
        /// `NBD_REP_ERR_SHUTDOWN`: server shutting down.
        ErrShutdown = NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7,
        /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: client must request block sizes.
        ErrBlockSizeReqd = NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8,
        /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
        ErrTooBig = NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9,
        /// `NBD_REP_ERR_EXT_HEADER_REQD`: extended headers are required, or
        /// (for `NBD_OPT_STRUCTURED_REPLY`) already negotiated.
        ErrExtHeaderReqd = NBD_REP_ERR_EXT_HEADER_REQD = NBD_REP_FLAG_ERROR | 10,
    }
    /// Any other value.
    Unknown
}

impl ReplyType {
    /// Whether this is an error reply (bit 31 set).
    pub fn is_error(self) -> bool {
        u32::from(self) & NBD_REP_FLAG_ERROR != 0
    }
}
// ---------------------------------------------------------------------------
// Information types (NBD_OPT_INFO / NBD_OPT_GO)
// ---------------------------------------------------------------------------

wire_enum! {
    /// An information type requested with `NBD_OPT_INFO` / `NBD_OPT_GO`.
    pub enum InfoType: u16 {
        /// `NBD_INFO_EXPORT`.
        Export = NBD_INFO_EXPORT = 0,
        /// `NBD_INFO_NAME`.
        Name = NBD_INFO_NAME = 1,
        /// `NBD_INFO_DESCRIPTION`.
        Description = NBD_INFO_DESCRIPTION = 2,
        /// `NBD_INFO_BLOCK_SIZE`.
        BlockSize = NBD_INFO_BLOCK_SIZE = 3,
    }
    /// Any other value (must be ignored by the server).
    Unknown
}
// ---------------------------------------------------------------------------
// Commands and command flags
// ---------------------------------------------------------------------------

wire_enum! {
    /// A transmission-phase command type.
    ///
    /// The command field is 16 bits wide on the wire, hence `Unknown(u16)`.
    pub enum Command: u16 {
        /// `NBD_CMD_READ`.
        Read = NBD_CMD_READ = 0,
        /// `NBD_CMD_WRITE` (followed by a payload).
        Write = NBD_CMD_WRITE = 1,
        /// `NBD_CMD_DISC`: soft disconnect, no reply.
        Disc = NBD_CMD_DISC = 2,
        /// `NBD_CMD_FLUSH`.
        Flush = NBD_CMD_FLUSH = 3,
        /// `NBD_CMD_TRIM`.
        Trim = NBD_CMD_TRIM = 4,
        /// `NBD_CMD_CACHE`.
        Cache = NBD_CMD_CACHE = 5,
        /// `NBD_CMD_WRITE_ZEROES`.
        WriteZeroes = NBD_CMD_WRITE_ZEROES = 6,
        /// `NBD_CMD_BLOCK_STATUS`.
        BlockStatus = NBD_CMD_BLOCK_STATUS = 7,
    }
    /// Any other value.
    Unknown
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
/// `NBD_CMD_FLAG_PAYLOAD_LEN` (extended headers only): the header's length
/// is that of a payload following it, not the command's effect length.
pub const NBD_CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;
// ---------------------------------------------------------------------------
// Structured replies
// ---------------------------------------------------------------------------

/// `NBD_REPLY_FLAG_DONE`: final chunk of a structured reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;

/// Bit set in every error chunk type.
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

wire_enum! {
    /// The type of a structured reply chunk.
    pub enum ChunkType: u16 {
        /// `NBD_REPLY_TYPE_NONE`.
        None = NBD_REPLY_TYPE_NONE = 0,
        /// `NBD_REPLY_TYPE_OFFSET_DATA`.
        OffsetData = NBD_REPLY_TYPE_OFFSET_DATA = 1,
        /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
        OffsetHole = NBD_REPLY_TYPE_OFFSET_HOLE = 2,
        /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
        BlockStatus = NBD_REPLY_TYPE_BLOCK_STATUS = 5,
        /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` (extended headers only): 64-bit
        /// extent lengths and status.
        BlockStatusExt = NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6,
        /// `NBD_REPLY_TYPE_ERROR`.
        Error = NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_ERROR_BIT | 1,
        /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
        ErrorOffset = NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_ERROR_BIT | 2,
    }
    /// Any other value.
    Unknown
}
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
