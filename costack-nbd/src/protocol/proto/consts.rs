//! Magic numbers, sizes and limits, and the flag bits of the handshake,
//! transmission and block status.

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
/// Magic of an extended request (`NBD_EXTENDED_REQUEST_MAGIC`).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of an extended reply chunk (`NBD_EXTENDED_REPLY_MAGIC`).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
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
/// Size of an extended request header (`NBD_OPT_EXTENDED_HEADERS`).
pub const EXTENDED_REQUEST_HEADER_LEN: usize = 32;
/// Size of an extended reply chunk header.
pub const EXTENDED_REPLY_HEADER_LEN: usize = 32;
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
/// `NBD_CMD_BLOCK_STATUS` takes a payload naming the contexts to answer
/// for (extended headers only).
pub const NBD_FLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;
// ---------------------------------------------------------------------------
// Block status flags (base:allocation)
// ---------------------------------------------------------------------------

/// `NBD_STATE_HOLE`: the extent is not allocated.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO`: the extent reads as zeroes.
pub const NBD_STATE_ZERO: u32 = 1 << 1;
/// `NBD_STATE_DIRTY` (`qemu:dirty-bitmap:NAME`): the extent was written
/// since the bitmap was cleared.
pub const NBD_STATE_DIRTY: u32 = 1 << 0;
