//! Fixed-newstyle handshake (option haggling), generic over any byte stream.
//!
//! [`negotiate`] runs the server side of the handshake on anything that is
//! `Read + Write` — a TCP or Unix stream, a coroutine-aware socket, or an
//! in-memory [`Duplex`] in tests — and returns what was agreed once the
//! client enters the transmission phase.
//!
//! Supported: the `NBD_FLAG_FIXED_NEWSTYLE` and `NBD_FLAG_NO_ZEROES`
//! handshake flags; options `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`
//! (with `NBD_INFO_EXPORT`, `NAME`, `DESCRIPTION`, `BLOCK_SIZE`),
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` (the
//! `base:allocation` context), and `STARTTLS` as [`TlsPolicy`] says: the
//! handshake code knows no TLS library, it only tells its caller (through
//! [`negotiate_options`]) to upgrade the stream, and [`resume_after_tls`]
//! goes on over the encrypted one. Any other option gets
//! `NBD_REP_ERR_UNSUP` and negotiation continues.

use std::fmt;
use std::io::{self, Read, Write};

use tracing::debug;

use crate::block::BlockDevice;
use crate::protocol::proto::{
    self, encode_option_reply, InfoRequest, InfoType, MetaContextRequest, OptionCode, OptionHeader,
    ReplyType, BASE_ALLOCATION, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_C_FIXED_NEWSTYLE,
    NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES,
    NBD_FLAG_READ_ONLY, NBD_FLAG_ROTATIONAL, NBD_FLAG_SEND_CACHE, NBD_FLAG_SEND_DF,
    NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM,
    NBD_FLAG_SEND_WRITE_ZEROES, OPTION_HEADER_LEN,
};

/// Default cap on the data length of one option request.
///
/// Large enough for any request the specification allows with a maximal
/// (4096-byte) export name plus a few maximal query strings; anything longer
/// is treated as abuse and ends the session.
pub const DEFAULT_MAX_OPTION_LEN: u32 = 16 * 1024;

/// Default cap on the number of options in one handshake.
pub const DEFAULT_MAX_OPTIONS: u32 = 1024;

/// Context id this server assigns to `base:allocation` in
/// `NBD_OPT_SET_META_CONTEXT` replies.
pub const BASE_ALLOCATION_CONTEXT_ID: u32 = 1;

/// Largest request payload this server accepts by default (32 MiB), also
/// the default advertised maximum block size.
pub const DEFAULT_MAX_BLOCK: u32 = 32 * 1024 * 1024;

/// Block size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size: alignment required of offsets and lengths. A power
    /// of two no larger than 64 KiB.
    pub minimum: u32,
    /// Preferred block size: a power of two, at least `max(minimum, 512)`.
    pub preferred: u32,
    /// Maximum request length: a multiple of `minimum`, or `u32::MAX` for no
    /// limit.
    pub maximum: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        Self {
            minimum: 1,
            preferred: 4096,
            maximum: DEFAULT_MAX_BLOCK,
        }
    }
}

impl BlockSizes {
    /// Whether the values satisfy the specification's constraints.
    pub fn is_valid(&self) -> bool {
        self.minimum.is_power_of_two()
            && self.minimum <= 65_536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.minimum.max(512)
            && (self.maximum == u32::MAX
                || (self.maximum.is_multiple_of(self.minimum) && self.maximum >= self.minimum))
    }
}

/// Description of one export offered during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name (`""` is the default export).
    pub name: String,
    /// Human-readable description; empty means none.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Refuse writes and advertise `NBD_FLAG_READ_ONLY`.
    pub read_only: bool,
    /// Advertised block size constraints.
    pub block_sizes: BlockSizes,
    /// Advertise `NBD_FLAG_SEND_FLUSH`.
    pub flush: bool,
    /// Advertise `NBD_FLAG_SEND_FUA`.
    pub fua: bool,
    /// Advertise `NBD_FLAG_SEND_TRIM` (writable exports only).
    pub trim: bool,
    /// Advertise `NBD_FLAG_SEND_WRITE_ZEROES` (writable exports only).
    pub write_zeroes: bool,
    /// Advertise `NBD_FLAG_SEND_FAST_ZERO` (only with write-zeroes).
    pub fast_zero: bool,
    /// Advertise `NBD_FLAG_SEND_CACHE`.
    pub cache: bool,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`: only when flushes are visible
    /// across all connections (e.g. one shared in-memory disk).
    pub multi_conn: bool,
    /// Advertise `NBD_FLAG_ROTATIONAL`.
    pub rotational: bool,
}

impl ExportInfo {
    /// A writable export with every optional feature enabled except
    /// multi-conn and rotational, and default block sizes.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            size,
            read_only: false,
            block_sizes: BlockSizes::default(),
            flush: true,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: false,
            cache: true,
            multi_conn: false,
            rotational: false,
        }
    }

    /// An export describing `dev`: size, read-only state and fast-zero
    /// support are taken from the device.
    pub fn for_device<D: BlockDevice + ?Sized>(name: impl Into<String>, dev: &D) -> Self {
        Self {
            read_only: dev.is_read_only(),
            fast_zero: dev.can_fast_zero(),
            ..Self::new(name, dev.size())
        }
    }

    /// Transmission flags for this export.
    ///
    /// As in qemu-nbd, a read-only export advertises `READ_ONLY` and omits
    /// `SEND_TRIM`, `SEND_WRITE_ZEROES` and `SEND_FAST_ZERO` (flush, FUA and
    /// cache stay, being harmless). `SEND_DF` is only set once structured
    /// replies have been negotiated, as the specification requires.
    pub fn transmission_flags(&self, structured_replies: bool) -> u16 {
        let mut f = NBD_FLAG_HAS_FLAGS;
        let mut set = |cond: bool, flag: u16| {
            if cond {
                f |= flag;
            }
        };
        set(self.flush, NBD_FLAG_SEND_FLUSH);
        set(self.fua, NBD_FLAG_SEND_FUA);
        set(self.cache, NBD_FLAG_SEND_CACHE);
        set(self.rotational, NBD_FLAG_ROTATIONAL);
        set(self.multi_conn, NBD_FLAG_CAN_MULTI_CONN);
        set(structured_replies, NBD_FLAG_SEND_DF);
        if self.read_only {
            set(true, NBD_FLAG_READ_ONLY);
        } else {
            set(self.trim, NBD_FLAG_SEND_TRIM);
            set(self.write_zeroes, NBD_FLAG_SEND_WRITE_ZEROES);
            set(self.write_zeroes && self.fast_zero, NBD_FLAG_SEND_FAST_ZERO);
        }
        f
    }
}

/// The exports and limits used by [`negotiate`].
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Exports offered; names are matched exactly (byte for byte).
    pub exports: Vec<ExportInfo>,
    /// Longest option data accepted; longer options end the session
    /// (after an `NBD_REP_ERR_TOO_BIG` reply where one is possible).
    pub max_option_len: u32,
    /// Most options accepted before the session is dropped as abusive.
    pub max_options: u32,
    /// What `NBD_OPT_STARTTLS` does, and whether TLS is required first.
    pub tls: TlsPolicy,
}

/// How the handshake treats TLS (`--tls`), as the NBD specification's TLS
/// section names the modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// NOTLS mode: `NBD_OPT_STARTTLS` gets `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// TLS is offered but not required: clients may negotiate in the clear
    /// or upgrade first.
    On,
    /// FORCEDTLS mode: before TLS, every option but `STARTTLS` and `ABORT`
    /// gets `NBD_REP_ERR_TLS_REQD`, and `EXPORT_NAME` ends the session.
    Require,
}

/// Where [`negotiate_options`] stopped.
#[derive(Debug)]
pub enum Outcome {
    /// The client entered the transmission phase.
    Transmission(Negotiated),
    /// `NBD_OPT_STARTTLS` was acknowledged: the caller runs the TLS
    /// handshake on the stream, then [`resume_after_tls`] over TLS.
    StartTls(Resume),
}

/// What a handshake interrupted by `NBD_OPT_STARTTLS` carries over into
/// TLS: the client's flags and what is left of its option budget. The
/// options negotiated in the clear are forgotten, as the specification
/// requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    client_flags: u32,
    options_left: u32,
}

impl HandshakeConfig {
    /// A configuration offering `exports` with default limits.
    pub fn new(exports: Vec<ExportInfo>) -> Self {
        Self {
            exports,
            max_option_len: DEFAULT_MAX_OPTION_LEN,
            max_options: DEFAULT_MAX_OPTIONS,
            tls: TlsPolicy::Off,
        }
    }

    /// Finds an export by its raw name.
    pub fn find_export(&self, name: &[u8]) -> Option<usize> {
        self.exports.iter().position(|e| e.name.as_bytes() == name)
    }
}

/// What the client and server agreed on; the input of the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the chosen export in [`HandshakeConfig::exports`].
    pub export_index: usize,
    /// Copy of the chosen export.
    pub export: ExportInfo,
    /// Transmission flags sent to the client.
    pub transmission_flags: u16,
    /// Whether structured replies were negotiated.
    pub structured_replies: bool,
    /// Context id of `base:allocation` if the client selected it for this
    /// export (enables `NBD_CMD_BLOCK_STATUS`).
    pub base_allocation: Option<u32>,
    /// The client flags it sent.
    pub client_flags: u32,
    /// The option that ended negotiation (`ExportName` or `Go`).
    pub via: OptionCode,
    /// Whether the client asked for `NBD_INFO_BLOCK_SIZE` in `NBD_OPT_GO`,
    /// thereby promising to honour the block size constraints.
    pub block_sizes_requested: bool,
}

/// Why the handshake ended without entering the transmission phase.
#[derive(Debug)]
pub enum HandshakeError {
    /// An I/O error other than end-of-stream.
    Io(io::Error),
    /// The client closed the connection (possibly in the middle of a
    /// message).
    Disconnected,
    /// An option did not start with `IHAVEOPT`.
    BadOptionMagic(u64),
    /// The client set flags this server does not know.
    UnknownClientFlags(u32),
    /// A client without fixed newstyle sent an option other than
    /// `NBD_OPT_EXPORT_NAME`.
    NotFixedNewstyle(u32),
    /// An option's data length exceeded [`HandshakeConfig::max_option_len`].
    OptionTooLong {
        /// The option code.
        option: u32,
        /// Its declared data length.
        length: u32,
    },
    /// More than [`HandshakeConfig::max_options`] options were sent.
    TooManyOptions,
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist (the
    /// protocol cannot report this, so the session ends).
    UnknownExport(String),
    /// The client sent `NBD_OPT_ABORT` (a normal soft disconnect).
    Aborted,
    /// The client sent `NBD_OPT_EXPORT_NAME` in the clear while TLS is
    /// required (the protocol cannot refuse it, so the session ends).
    TlsRequired,
    /// `NBD_OPT_STARTTLS` was acknowledged to a caller that cannot upgrade
    /// the stream ([`negotiate`] rather than [`negotiate_options`]).
    TlsNotHandled,
}

impl HandshakeError {
    /// Whether this is a normal client-initiated end rather than a fault.
    pub fn is_clean_disconnect(&self) -> bool {
        matches!(self, Self::Disconnected | Self::Aborted)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error during handshake: {e}"),
            Self::Disconnected => f.write_str("client disconnected during handshake"),
            Self::BadOptionMagic(m) => write!(f, "bad option magic {m:#018x}"),
            Self::UnknownClientFlags(fl) => write!(f, "unknown client flags {fl:#x}"),
            Self::NotFixedNewstyle(o) => {
                write!(f, "option {o} sent without fixed newstyle negotiation")
            }
            Self::OptionTooLong { option, length } => {
                write!(f, "option {option} data length {length} exceeds limit")
            }
            Self::TooManyOptions => f.write_str("too many options during handshake"),
            Self::UnknownExport(n) => write!(f, "client requested unknown export {n:?}"),
            Self::Aborted => f.write_str("client aborted the handshake"),
            Self::TlsRequired => {
                f.write_str("client asked for an export without TLS, which is required")
            }
            Self::TlsNotHandled => {
                f.write_str("client asked for TLS, which this caller cannot start")
            }
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Disconnected
        } else {
            Self::Io(e)
        }
    }
}

/// Joins a reader and a writer into one `Read + Write` stream, for
/// transports that come as two halves (and for in-memory tests).
#[derive(Debug, Default)]
pub struct Duplex<R, W> {
    /// Where reads come from.
    pub reader: R,
    /// Where writes go.
    pub writer: W,
}

impl<R, W> Duplex<R, W> {
    /// Joins `reader` and `writer`.
    pub fn new(reader: R, writer: W) -> Self {
        Self { reader, writer }
    }
}

impl<R: Read, W> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Mutable negotiation state carried across options.
#[derive(Debug, Default)]
struct State {
    structured: bool,
    /// Result of the last `NBD_OPT_SET_META_CONTEXT`: the export it named
    /// and whether `base:allocation` was selected.
    meta: Option<(usize, bool)>,
}

fn reply(out: &mut Vec<u8>, option: u32, ty: ReplyType, data: &[u8]) {
    encode_option_reply(out, option, ty, data);
}

fn reply_err(out: &mut Vec<u8>, option: u32, ty: ReplyType, msg: &str) {
    debug!(option, ?ty, msg, "option refused");
    encode_option_reply(out, option, ty, msg.as_bytes());
}

/// Runs the server side of the fixed-newstyle handshake on `stream`.
///
/// Sends the greeting, reads the client flags, then answers options until
/// the client enters transmission (`NBD_OPT_EXPORT_NAME` or a successful
/// `NBD_OPT_GO`) or the session ends. Every reply is flushed before the
/// next option is read, so `stream` may be buffered.
///
/// Never panics on malformed input: a bad option payload gets an error
/// reply, and anything that desynchronises the stream (bad magic, absurd
/// lengths, truncation) is returned as a [`HandshakeError`], after which the
/// caller should drop the connection.
///
/// For a stream that can be upgraded to TLS use [`negotiate_options`]:
/// here a `STARTTLS` that [`HandshakeConfig::tls`] allows ends the session
/// with [`HandshakeError::TlsNotHandled`].
pub fn negotiate<S: Read + Write + ?Sized>(
    stream: &mut S,
    config: &HandshakeConfig,
) -> Result<Negotiated, HandshakeError> {
    match negotiate_options(stream, config)? {
        Outcome::Transmission(n) => Ok(n),
        Outcome::StartTls(_) => Err(HandshakeError::TlsNotHandled),
    }
}

/// As [`negotiate`], but stops at an acknowledged `NBD_OPT_STARTTLS`
/// ([`Outcome::StartTls`]) so that the caller can run the TLS handshake on
/// the stream and then [`resume_after_tls`].
pub fn negotiate_options<S: Read + Write + ?Sized>(
    stream: &mut S,
    config: &HandshakeConfig,
) -> Result<Outcome, HandshakeError> {
    stream.write_all(&proto::encode_greeting(
        NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES,
    ))?;
    stream.flush()?;

    let mut cf = [0u8; 4];
    stream.read_exact(&mut cf)?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(HandshakeError::UnknownClientFlags(client_flags));
    }
    debug!(client_flags, "client flags received");
    let resume = Resume {
        client_flags,
        options_left: config.max_options,
    };
    haggle(stream, config, resume, false)
}

/// Goes on with a handshake that [`negotiate_options`] interrupted for
/// `NBD_OPT_STARTTLS`, over `stream`, the TLS session now established on
/// the same connection. No greeting is sent again; options negotiated in
/// the clear are forgotten, and a second `STARTTLS` gets
/// `NBD_REP_ERR_INVALID`.
pub fn resume_after_tls<S: Read + Write + ?Sized>(
    stream: &mut S,
    config: &HandshakeConfig,
    resume: Resume,
) -> Result<Negotiated, HandshakeError> {
    match haggle(stream, config, resume, true)? {
        Outcome::Transmission(n) => Ok(n),
        // `haggle` never restarts TLS inside TLS.
        Outcome::StartTls(_) => Err(HandshakeError::TlsNotHandled),
    }
}

/// The option loop, in the clear or (`tls_active`) over TLS.
fn haggle<S: Read + Write + ?Sized>(
    stream: &mut S,
    config: &HandshakeConfig,
    resume: Resume,
    tls_active: bool,
) -> Result<Outcome, HandshakeError> {
    let client_flags = resume.client_flags;
    let fixed = client_flags & NBD_FLAG_C_FIXED_NEWSTYLE != 0;
    let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;
    // Before TLS is up, FORCEDTLS mode answers all but STARTTLS and ABORT
    // with ERR_TLS_REQD.
    let tls_required = config.tls == TlsPolicy::Require && !tls_active;

    let mut st = State::default();
    let mut out = Vec::new();
    for used in 0..resume.options_left {
        let mut hb = [0u8; OPTION_HEADER_LEN];
        stream.read_exact(&mut hb)?;
        let hdr = OptionHeader::decode(&hb).map_err(|e| match e {
            proto::DecodeError::BadMagic { got, .. } => HandshakeError::BadOptionMagic(got),
            // 16 bytes were read, so only the magic can be wrong.
            _ => HandshakeError::BadOptionMagic(0),
        })?;
        let opt = u32::from(hdr.option);
        debug!(option = ?hdr.option, length = hdr.length, "option received");

        if !fixed && hdr.option != OptionCode::ExportName {
            return Err(HandshakeError::NotFixedNewstyle(opt));
        }
        if hdr.length > config.max_option_len {
            if fixed && hdr.option != OptionCode::ExportName {
                out.clear();
                reply_err(&mut out, opt, ReplyType::ErrTooBig, "option data too long");
                // Best effort: the client may still be sending its payload.
                let _ = stream.write_all(&out).and_then(|()| stream.flush());
            }
            return Err(HandshakeError::OptionTooLong {
                option: opt,
                length: hdr.length,
            });
        }
        let mut data = vec![0u8; hdr.length as usize];
        stream.read_exact(&mut data)?;

        out.clear();
        match hdr.option {
            OptionCode::ExportName if tls_required => return Err(HandshakeError::TlsRequired),
            OptionCode::ExportName => {
                let Some(idx) = config.find_export(&data) else {
                    return Err(HandshakeError::UnknownExport(
                        String::from_utf8_lossy(&data).into_owned(),
                    ));
                };
                let neg = st.finish(config, idx, client_flags, OptionCode::ExportName, false);
                stream.write_all(&proto::encode_export_name_reply(
                    neg.export.size,
                    neg.transmission_flags,
                    no_zeroes,
                ))?;
                stream.flush()?;
                return Ok(Outcome::Transmission(neg));
            }
            OptionCode::Abort => {
                reply(&mut out, opt, ReplyType::Ack, &[]);
                // The client may already have hung up; that is fine.
                let _ = stream.write_all(&out).and_then(|()| stream.flush());
                return Err(HandshakeError::Aborted);
            }
            OptionCode::StartTls => {
                if config.tls == TlsPolicy::Off {
                    reply_err(&mut out, opt, ReplyType::ErrPolicy, "TLS is not configured");
                } else if tls_active {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "TLS is already active",
                    );
                } else if !data.is_empty() {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "NBD_OPT_STARTTLS takes no data",
                    );
                } else {
                    reply(&mut out, opt, ReplyType::Ack, &[]);
                    stream.write_all(&out)?;
                    stream.flush()?;
                    return Ok(Outcome::StartTls(Resume {
                        client_flags,
                        options_left: resume.options_left - used - 1,
                    }));
                }
            }
            _ if tls_required => {
                reply_err(
                    &mut out,
                    opt,
                    ReplyType::ErrTlsReqd,
                    "TLS is required first",
                );
            }
            OptionCode::List => {
                if data.is_empty() {
                    for e in &config.exports {
                        let payload = proto::encode_rep_server(&e.name, &e.description);
                        reply(&mut out, opt, ReplyType::Server, &payload);
                    }
                    reply(&mut out, opt, ReplyType::Ack, &[]);
                } else {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "NBD_OPT_LIST takes no data",
                    );
                }
            }
            OptionCode::Info | OptionCode::Go => {
                if let Some(neg) = st.info_or_go(&mut out, config, hdr.option, &data, client_flags)
                {
                    stream.write_all(&out)?;
                    stream.flush()?;
                    return Ok(Outcome::Transmission(neg));
                }
            }
            OptionCode::StructuredReply => {
                if !data.is_empty() {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                } else if st.structured {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "structured replies already negotiated",
                    );
                } else {
                    st.structured = true;
                    reply(&mut out, opt, ReplyType::Ack, &[]);
                }
            }
            OptionCode::ListMetaContext | OptionCode::SetMetaContext => {
                st.meta_context(&mut out, config, hdr.option, &data);
            }
            OptionCode::Unknown(_) => {
                reply_err(&mut out, opt, ReplyType::ErrUnsup, "option not supported");
            }
        }
        stream.write_all(&out)?;
        stream.flush()?;
    }
    Err(HandshakeError::TooManyOptions)
}

impl State {
    fn finish(
        &self,
        config: &HandshakeConfig,
        idx: usize,
        client_flags: u32,
        via: OptionCode,
        block_sizes_requested: bool,
    ) -> Negotiated {
        let export = config.exports[idx].clone();
        let base_allocation = match self.meta {
            Some((meta_idx, true)) if meta_idx == idx => Some(BASE_ALLOCATION_CONTEXT_ID),
            _ => None,
        };
        Negotiated {
            transmission_flags: export.transmission_flags(self.structured),
            export,
            export_index: idx,
            structured_replies: self.structured,
            base_allocation,
            client_flags,
            via,
            block_sizes_requested,
        }
    }

    /// Handles `NBD_OPT_INFO` / `NBD_OPT_GO`; returns `Some` when `GO`
    /// succeeded (its replies are in `out`).
    fn info_or_go(
        &mut self,
        out: &mut Vec<u8>,
        config: &HandshakeConfig,
        option: OptionCode,
        data: &[u8],
        client_flags: u32,
    ) -> Option<Negotiated> {
        let opt = u32::from(option);
        let req = match InfoRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                reply_err(out, opt, ReplyType::ErrInvalid, &e.to_string());
                return None;
            }
        };
        let Some(idx) = config.find_export(&req.name) else {
            let msg = format!(
                "export {:?} not present",
                String::from_utf8_lossy(&req.name)
            );
            reply_err(out, opt, ReplyType::ErrUnknown, &msg);
            return None;
        };
        let e = &config.exports[idx];
        let wants = |t: InfoType| req.requests.contains(&t);
        if wants(InfoType::Name) {
            reply(out, opt, ReplyType::Info, &proto::encode_info_name(&e.name));
        }
        if wants(InfoType::Description) && !e.description.is_empty() {
            let d = proto::encode_info_description(&e.description);
            reply(out, opt, ReplyType::Info, &d);
        }
        // Block sizes are always sent (clients ignore what they did not ask
        // for); the constraints are enforced per request regardless.
        let b = e.block_sizes;
        let bs = proto::encode_info_block_size(b.minimum, b.preferred, b.maximum);
        reply(out, opt, ReplyType::Info, &bs);
        let flags = e.transmission_flags(self.structured);
        reply(
            out,
            opt,
            ReplyType::Info,
            &proto::encode_info_export(e.size, flags),
        );
        reply(out, opt, ReplyType::Ack, &[]);
        if option == OptionCode::Go {
            let neg = self.finish(
                config,
                idx,
                client_flags,
                OptionCode::Go,
                wants(InfoType::BlockSize),
            );
            debug!(export = %neg.export.name, flags, "entering transmission via NBD_OPT_GO");
            Some(neg)
        } else {
            None
        }
    }

    /// Handles `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(
        &mut self,
        out: &mut Vec<u8>,
        config: &HandshakeConfig,
        option: OptionCode,
        data: &[u8],
    ) {
        let opt = u32::from(option);
        let set = option == OptionCode::SetMetaContext;
        if set {
            // SET replaces the previous selection even when it fails.
            self.meta = None;
        }
        if !self.structured {
            reply_err(
                out,
                opt,
                ReplyType::ErrInvalid,
                "structured replies must be negotiated first",
            );
            return;
        }
        let req = match MetaContextRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                reply_err(out, opt, ReplyType::ErrInvalid, &e.to_string());
                return;
            }
        };
        let Some(idx) = config.find_export(&req.export) else {
            let msg = format!(
                "export {:?} not present",
                String::from_utf8_lossy(&req.export)
            );
            reply_err(out, opt, ReplyType::ErrUnknown, &msg);
            return;
        };
        let exact = BASE_ALLOCATION.as_bytes();
        let matched = if set {
            // Zero queries select nothing; "base:" is ignored for SET.
            req.queries.iter().any(|q| q == exact)
        } else {
            // Zero queries list everything; "base:" is a wildcard for LIST.
            req.queries.is_empty() || req.queries.iter().any(|q| q == exact || q == b"base:")
        };
        if matched {
            let id = if set { BASE_ALLOCATION_CONTEXT_ID } else { 0 };
            let payload = proto::encode_rep_meta_context(id, BASE_ALLOCATION);
            reply(out, opt, ReplyType::MetaContext, &payload);
        }
        reply(out, opt, ReplyType::Ack, &[]);
        if set {
            self.meta = Some((idx, matched));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::protocol::proto::*;
    use std::io::Cursor;

    type Mem = Duplex<Cursor<Vec<u8>>, Vec<u8>>;

    fn config() -> HandshakeConfig {
        let mut a = ExportInfo::new("", 1 << 20);
        a.description = "default disk".into();
        let mut b = ExportInfo::new("ro", 4096);
        b.read_only = true;
        HandshakeConfig::new(vec![a, b])
    }

    /// Client bytes: flags, then each option.
    fn script(client_flags: u32, options: &[(OptionCode, Vec<u8>)]) -> Vec<u8> {
        let mut v = client_flags.to_be_bytes().to_vec();
        for (o, d) in options {
            v.extend(encode_option(*o, d));
        }
        v
    }

    fn run(input: Vec<u8>, cfg: &HandshakeConfig) -> (Result<Negotiated, HandshakeError>, Vec<u8>) {
        let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
        let r = negotiate(&mut s, cfg);
        (r, s.writer)
    }

    /// Parses the server output after the greeting into option replies.
    fn replies(out: &[u8]) -> Vec<(u32, ReplyType, Vec<u8>)> {
        let mut v = Vec::new();
        let mut rest = &out[GREETING_LEN..];
        while !rest.is_empty() {
            let h = OptionReplyHeader::decode(rest).unwrap();
            let end = OPTION_REPLY_HEADER_LEN + h.length as usize;
            v.push((
                h.option,
                h.reply,
                rest[OPTION_REPLY_HEADER_LEN..end].to_vec(),
            ));
            rest = &rest[end..];
        }
        v
    }

    const BOTH: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

    fn go(name: &str, infos: &[InfoType]) -> Vec<u8> {
        InfoRequest {
            name: name.as_bytes().to_vec(),
            requests: infos.to_vec(),
        }
        .encode()
    }

    #[test]
    fn greeting_is_exact() {
        let (r, out) = run(vec![], &config());
        assert!(matches!(r, Err(HandshakeError::Disconnected)));
        let mut expect = b"NBDMAGICIHAVEOPT".to_vec();
        expect.extend([0x00, 0x03]);
        assert_eq!(out, expect);
    }

    #[test]
    fn export_name_with_and_without_zeroes() {
        let cfg = config();
        let (r, out) = run(script(BOTH, &[(OptionCode::ExportName, vec![])]), &cfg);
        let n = r.unwrap();
        assert_eq!(n.export_index, 0);
        assert_eq!(n.via, OptionCode::ExportName);
        assert!(!n.structured_replies);
        let flags = NBD_FLAG_HAS_FLAGS
            | NBD_FLAG_SEND_FLUSH
            | NBD_FLAG_SEND_FUA
            | NBD_FLAG_SEND_TRIM
            | NBD_FLAG_SEND_WRITE_ZEROES
            | NBD_FLAG_SEND_CACHE;
        assert_eq!(n.transmission_flags, flags);
        let mut expect = (1u64 << 20).to_be_bytes().to_vec();
        expect.extend(flags.to_be_bytes());
        assert_eq!(&out[GREETING_LEN..], &expect[..]);

        let (r, out) = run(
            script(
                NBD_FLAG_C_FIXED_NEWSTYLE,
                &[(OptionCode::ExportName, b"ro".to_vec())],
            ),
            &cfg,
        );
        let n = r.unwrap();
        assert_eq!(n.export_index, 1);
        assert_eq!(out.len(), GREETING_LEN + 10 + 124);
        assert!(out[GREETING_LEN + 10..].iter().all(|&b| b == 0));
        let f = u16::from_be_bytes([out[GREETING_LEN + 8], out[GREETING_LEN + 9]]);
        assert_ne!(f & NBD_FLAG_READ_ONLY, 0);
        assert_eq!(f & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES), 0);
    }

    #[test]
    fn export_name_unknown_closes() {
        let (r, out) = run(
            script(BOTH, &[(OptionCode::ExportName, b"nope".to_vec())]),
            &config(),
        );
        assert!(matches!(r, Err(HandshakeError::UnknownExport(n)) if n == "nope"));
        assert_eq!(out.len(), GREETING_LEN);
    }

    #[test]
    fn full_go_negotiation_byte_for_byte() {
        let cfg = config();
        let meta = MetaContextRequest {
            export: vec![],
            queries: vec![b"base:allocation".to_vec()],
        }
        .encode();
        let input = script(
            BOTH,
            &[
                (OptionCode::Unknown(99), b"junk".to_vec()),
                (OptionCode::StructuredReply, vec![]),
                (OptionCode::SetMetaContext, meta),
                (
                    OptionCode::Go,
                    go(
                        "",
                        &[InfoType::Name, InfoType::Description, InfoType::BlockSize],
                    ),
                ),
            ],
        );
        let (r, out) = run(input, &cfg);
        let n = r.unwrap();
        assert!(n.structured_replies);
        assert_eq!(n.base_allocation, Some(BASE_ALLOCATION_CONTEXT_ID));
        assert!(n.block_sizes_requested);
        assert_ne!(n.transmission_flags & NBD_FLAG_SEND_DF, 0);

        // Build the exact expected byte stream.
        let mut e = encode_greeting(3).to_vec();
        encode_option_reply(&mut e, 99, ReplyType::ErrUnsup, b"option not supported");
        encode_option_reply(&mut e, NBD_OPT_STRUCTURED_REPLY, ReplyType::Ack, &[]);
        let mut ctx = 1u32.to_be_bytes().to_vec();
        ctx.extend(b"base:allocation");
        encode_option_reply(
            &mut e,
            NBD_OPT_SET_META_CONTEXT,
            ReplyType::MetaContext,
            &ctx,
        );
        encode_option_reply(&mut e, NBD_OPT_SET_META_CONTEXT, ReplyType::Ack, &[]);
        encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Info, &[0, 1]);
        let mut d = vec![0, 2];
        d.extend(b"default disk");
        encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Info, &d);
        encode_option_reply(
            &mut e,
            NBD_OPT_GO,
            ReplyType::Info,
            &[0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0],
        );
        let flags: u16 = 0x01 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80 | 0x400;
        let mut info = vec![0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
        info.extend(flags.to_be_bytes());
        encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Info, &info);
        encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Ack, &[]);
        assert_eq!(out, e);
    }

    #[test]
    fn info_then_go_and_unknown_export() {
        let cfg = config();
        let input = script(
            BOTH,
            &[
                (OptionCode::Info, go("missing", &[])),
                (OptionCode::Info, go("ro", &[])),
                (OptionCode::Go, go("ro", &[])),
            ],
        );
        let (r, out) = run(input, &cfg);
        let n = r.unwrap();
        assert_eq!(n.export_index, 1);
        assert!(!n.block_sizes_requested);
        assert_eq!(n.base_allocation, None);
        let rs = replies(&out);
        assert_eq!(rs[0].0, NBD_OPT_INFO);
        assert_eq!(rs[0].1, ReplyType::ErrUnknown);
        // INFO: block size, export, ack; GO: the same.
        let kinds: Vec<_> = rs[1..].iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            kinds,
            vec![
                (NBD_OPT_INFO, ReplyType::Info),
                (NBD_OPT_INFO, ReplyType::Info),
                (NBD_OPT_INFO, ReplyType::Ack),
                (NBD_OPT_GO, ReplyType::Info),
                (NBD_OPT_GO, ReplyType::Info),
                (NBD_OPT_GO, ReplyType::Ack),
            ]
        );
        assert_eq!(rs[2].2, rs[5].2, "INFO and GO must agree");
        match Info::decode(&rs[5].2).unwrap() {
            Info::Export { size, flags } => {
                assert_eq!(size, 4096);
                assert_ne!(flags & NBD_FLAG_READ_ONLY, 0);
                assert_eq!(flags & NBD_FLAG_SEND_DF, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Option, reply type and data of one option reply.
    type OptionReply = (u32, ReplyType, Vec<u8>);

    /// Runs `negotiate_options` on `input`; returns the outcome and the
    /// replies after the greeting.
    fn run_options(
        input: Vec<u8>,
        cfg: &HandshakeConfig,
    ) -> (Result<Outcome, HandshakeError>, Vec<OptionReply>) {
        let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
        let r = negotiate_options(&mut s, cfg);
        (r, replies(&s.writer))
    }

    #[test]
    fn tls_required_refuses_all_but_starttls_and_abort() {
        let mut cfg = config();
        cfg.tls = TlsPolicy::Require;
        let input = script(
            BOTH,
            &[
                (OptionCode::List, vec![]),
                (OptionCode::StructuredReply, vec![]),
                (OptionCode::Go, go("", &[])),
                (OptionCode::Info, go("", &[])),
                (OptionCode::SetMetaContext, vec![]),
                (OptionCode::Unknown(99), vec![]),
                (OptionCode::StartTls, vec![1]),
                (OptionCode::StartTls, vec![]),
            ],
        );
        let (r, rs) = run_options(input, &cfg);
        let Ok(Outcome::StartTls(resume)) = r else {
            panic!("expected STARTTLS, got {r:?}");
        };
        let kinds: Vec<ReplyType> = rs.iter().map(|r| r.1).collect();
        assert_eq!(kinds[..6], [ReplyType::ErrTlsReqd; 6]);
        assert_eq!(kinds[6..], [ReplyType::ErrInvalid, ReplyType::Ack]);
        assert_eq!(resume.options_left, cfg.max_options - 8);

        // EXPORT_NAME in the clear cannot be refused: the session ends.
        let input = script(BOTH, &[(OptionCode::ExportName, vec![])]);
        let (r, rs) = run_options(input, &cfg);
        assert!(matches!(r, Err(HandshakeError::TlsRequired)), "{r:?}");
        assert!(rs.is_empty());
        // ABORT is answered.
        let input = script(BOTH, &[(OptionCode::Abort, vec![])]);
        let (r, rs) = run_options(input, &cfg);
        assert!(matches!(r, Err(HandshakeError::Aborted)));
        assert_eq!(rs[0].1, ReplyType::Ack);
    }

    #[test]
    fn after_starttls_options_start_afresh() {
        for policy in [TlsPolicy::On, TlsPolicy::Require] {
            let mut cfg = config();
            cfg.tls = policy;
            // Structured replies negotiated in the clear, then STARTTLS.
            let input = script(
                BOTH,
                &[
                    (OptionCode::StructuredReply, vec![]),
                    (OptionCode::StartTls, vec![]),
                ],
            );
            let (r, rs) = run_options(input, &cfg);
            let expect_structured = if policy == TlsPolicy::On {
                ReplyType::Ack
            } else {
                ReplyType::ErrTlsReqd
            };
            assert_eq!(rs[0].1, expect_structured);
            assert_eq!(rs[1].1, ReplyType::Ack);
            let Ok(Outcome::StartTls(resume)) = r else {
                panic!("expected STARTTLS, got {r:?}");
            };
            // Over "TLS": no greeting, a second STARTTLS is invalid, the
            // structured replies of before are forgotten.
            let mut input = Vec::new();
            input.extend(encode_option(OptionCode::StartTls, &[]));
            input.extend(encode_option(OptionCode::ExportName, b""));
            let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
            let n = resume_after_tls(&mut s, &cfg, resume).unwrap();
            assert!(!n.structured_replies);
            let h = OptionReplyHeader::decode(&s.writer).unwrap();
            assert_eq!(h.reply, ReplyType::ErrInvalid);
        }
    }

    #[test]
    fn tls_on_still_serves_clear_clients_and_off_refuses_starttls() {
        let mut cfg = config();
        cfg.tls = TlsPolicy::On;
        let input = script(BOTH, &[(OptionCode::ExportName, vec![])]);
        let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
        let r = negotiate_options(&mut s, &cfg);
        assert!(matches!(r, Ok(Outcome::Transmission(_))), "{r:?}");
        // negotiate() cannot upgrade: an accepted STARTTLS ends the session.
        let input = script(BOTH, &[(OptionCode::StartTls, vec![])]);
        let (r, _) = run(input, &cfg);
        assert!(matches!(r, Err(HandshakeError::TlsNotHandled)), "{r:?}");
        cfg.tls = TlsPolicy::Off;
        let input = script(
            BOTH,
            &[(OptionCode::StartTls, vec![]), (OptionCode::Abort, vec![])],
        );
        let (_, rs) = run_options(input, &cfg);
        assert_eq!(rs[0].1, ReplyType::ErrPolicy);
    }

    #[test]
    fn list_and_abort() {
        let cfg = config();
        let input = script(
            BOTH,
            &[
                (OptionCode::List, vec![]),
                (OptionCode::List, vec![1]),
                (OptionCode::StartTls, vec![]),
                (OptionCode::Abort, vec![]),
            ],
        );
        let (r, out) = run(input, &cfg);
        assert!(matches!(r, Err(HandshakeError::Aborted)));
        let rs = replies(&out);
        assert_eq!(rs[0].1, ReplyType::Server);
        assert_eq!(rs[0].2, encode_rep_server("", "default disk"));
        assert_eq!(rs[1].1, ReplyType::Server);
        assert_eq!(rs[1].2, [0, 0, 0, 2, b'r', b'o']);
        assert_eq!(rs[2].1, ReplyType::Ack);
        assert_eq!(rs[3].1, ReplyType::ErrInvalid);
        assert_eq!(rs[4].1, ReplyType::ErrPolicy);
        assert_eq!((rs[5].0, rs[5].1), (NBD_OPT_ABORT, ReplyType::Ack));
        assert_eq!(rs.len(), 6);
    }

    #[test]
    fn structured_reply_rules() {
        let input = script(
            BOTH,
            &[
                (OptionCode::StructuredReply, vec![0]),
                (OptionCode::StructuredReply, vec![]),
                (OptionCode::StructuredReply, vec![]),
            ],
        );
        let (r, out) = run(input, &config());
        assert!(matches!(r, Err(HandshakeError::Disconnected)));
        let rs: Vec<_> = replies(&out).into_iter().map(|r| r.1).collect();
        assert_eq!(
            rs,
            vec![ReplyType::ErrInvalid, ReplyType::Ack, ReplyType::ErrInvalid]
        );
    }

    #[test]
    fn meta_context_listing_and_selection() {
        let cfg = config();
        let q = |export: &str, qs: &[&str]| {
            MetaContextRequest {
                export: export.as_bytes().to_vec(),
                queries: qs.iter().map(|q| q.as_bytes().to_vec()).collect(),
            }
            .encode()
        };
        let input = script(
            BOTH,
            &[
                // Before structured replies: refused.
                (OptionCode::SetMetaContext, q("", &["base:allocation"])),
                (OptionCode::StructuredReply, vec![]),
                (OptionCode::ListMetaContext, q("", &[])),
                (OptionCode::ListMetaContext, q("", &["base:"])),
                (
                    OptionCode::ListMetaContext,
                    q("", &["x-foo:bar", "nocolon"]),
                ),
                (OptionCode::ListMetaContext, q("nope", &[])),
                (OptionCode::ListMetaContext, vec![0, 0]),
                (OptionCode::SetMetaContext, q("", &["base:"])),
                // Selected for "ro", but GO picks "" below.
                (
                    OptionCode::SetMetaContext,
                    q("ro", &["base:allocation", "base:allocation"]),
                ),
                (OptionCode::Go, go("", &[])),
            ],
        );
        let (r, out) = run(input, &cfg);
        let n = r.unwrap();
        assert_eq!(
            n.base_allocation, None,
            "context was set for another export"
        );
        let rs: Vec<_> = replies(&out).into_iter().map(|r| (r.1, r.2)).collect();
        let ctx0 = encode_rep_meta_context(0, BASE_ALLOCATION);
        let ctx1 = encode_rep_meta_context(1, BASE_ALLOCATION);
        let expect = vec![
            (ReplyType::ErrInvalid, None),
            (ReplyType::Ack, None),
            (ReplyType::MetaContext, Some(ctx0.clone())),
            (ReplyType::Ack, None),
            (ReplyType::MetaContext, Some(ctx0)),
            (ReplyType::Ack, None),
            (ReplyType::Ack, None),
            (ReplyType::ErrUnknown, None),
            (ReplyType::ErrInvalid, None),
            (ReplyType::Ack, None),
            (ReplyType::MetaContext, Some(ctx1)),
            (ReplyType::Ack, None),
        ];
        assert_eq!(rs.len(), expect.len() + 3, "plus GO's info/info/ack");
        for (i, (ty, payload)) in expect.into_iter().enumerate() {
            assert_eq!(rs[i].0, ty, "reply {i}");
            if let Some(p) = payload {
                assert_eq!(rs[i].1, p, "reply {i}");
            }
        }
    }

    #[test]
    fn malformed_info_request_gets_invalid_and_continues() {
        let input = script(
            BOTH,
            &[
                (OptionCode::Go, vec![0, 0, 0, 50, 0]),
                (OptionCode::Go, go("", &[])),
            ],
        );
        let (r, out) = run(input, &config());
        assert!(r.is_ok());
        assert_eq!(replies(&out)[0].1, ReplyType::ErrInvalid);
    }

    #[test]
    fn truncated_inputs_are_disconnects() {
        let cfg = config();
        let full = script(BOTH, &[(OptionCode::Go, go("", &[InfoType::Name]))]);
        for cut in 0..full.len() {
            let (r, _) = run(full[..cut].to_vec(), &cfg);
            assert!(
                matches!(r, Err(HandshakeError::Disconnected)),
                "cut at {cut}: {r:?}"
            );
        }
        assert!(run(full, &cfg).0.is_ok());
    }

    #[test]
    fn bad_magic_and_flags() {
        let cfg = config();
        let mut input = BOTH.to_be_bytes().to_vec();
        input.extend(b"IHAVEOPX");
        input.extend([0; 8]);
        let (r, _) = run(input, &cfg);
        assert!(matches!(r, Err(HandshakeError::BadOptionMagic(_))));

        let (r, _) = run(4u32.to_be_bytes().to_vec(), &cfg);
        assert!(matches!(r, Err(HandshakeError::UnknownClientFlags(4))));
    }

    #[test]
    fn non_fixed_client_may_only_export_name() {
        let cfg = config();
        let (r, _) = run(script(0, &[(OptionCode::List, vec![])]), &cfg);
        assert!(matches!(r, Err(HandshakeError::NotFixedNewstyle(3))));
        let (r, out) = run(script(0, &[(OptionCode::ExportName, vec![])]), &cfg);
        assert!(r.is_ok());
        assert_eq!(out.len(), GREETING_LEN + 134);
    }

    #[test]
    fn huge_option_length_is_refused_without_reading_it() {
        let cfg = config();
        let mut input = BOTH.to_be_bytes().to_vec();
        input.extend(
            OptionHeader {
                option: OptionCode::Go,
                length: u32::MAX,
            }
            .encode(),
        );
        let (r, out) = run(input, &cfg);
        assert!(matches!(
            r,
            Err(HandshakeError::OptionTooLong {
                option: NBD_OPT_GO,
                length: u32::MAX
            })
        ));
        assert_eq!(replies(&out)[0].1, ReplyType::ErrTooBig);

        // A maximal legal export name still fits the default limit.
        let name = "n".repeat(MAX_STRING_LEN);
        let mut cfg = config();
        cfg.exports.push(ExportInfo::new(name.clone(), 512));
        let (r, _) = run(script(BOTH, &[(OptionCode::Go, go(&name, &[]))]), &cfg);
        assert_eq!(r.unwrap().export_index, 2);
    }

    #[test]
    fn too_many_options() {
        let mut cfg = config();
        cfg.max_options = 3;
        let opts = vec![(OptionCode::Unknown(50), vec![]); 4];
        let (r, out) = run(script(BOTH, &opts), &cfg);
        assert!(matches!(r, Err(HandshakeError::TooManyOptions)));
        assert_eq!(replies(&out).len(), 3);
    }

    #[test]
    fn export_for_device_and_flags() {
        let d = MemDisk::new(1 << 20).with_read_only(true);
        let e = ExportInfo::for_device("x", &d);
        assert!(e.read_only);
        assert_eq!(e.size, 1 << 20);
        let f = e.transmission_flags(false);
        assert_eq!(f & NBD_FLAG_SEND_FAST_ZERO, 0);
        assert_ne!(f & NBD_FLAG_READ_ONLY, 0);
        let w = ExportInfo::for_device("w", &MemDisk::new(512));
        let f = w.transmission_flags(true);
        assert_ne!(f & NBD_FLAG_SEND_FAST_ZERO, 0);
        assert_ne!(f & NBD_FLAG_SEND_DF, 0);
        assert!(BlockSizes::default().is_valid());
        assert!(!BlockSizes {
            minimum: 3,
            ..BlockSizes::default()
        }
        .is_valid());
    }
}
