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
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT`
//! (`base:allocation` and an export's [`QemuContext`]s), and `STARTTLS` as [`TlsPolicy`] says: the
//! handshake code knows no TLS library, it only tells its caller (through
//! [`negotiate_options`]) to upgrade the stream, and [`resume_after_tls`]
//! goes on over the encrypted one. Any other option gets
//! `NBD_REP_ERR_UNSUP` and negotiation continues.

use std::fmt;
use std::io::{self, Read, Write};

use tracing::debug;

pub use crate::protocol::export::{
    BlockSizes, ExportInfo, QemuContext, BASE_ALLOCATION_CONTEXT_ID, DEFAULT_MAX_BLOCK,
};
use crate::protocol::proto::{
    self, encode_option_reply, InfoRequest, InfoType, MetaContextRequest, OptionCode, OptionHeader,
    ReplyType, BASE_ALLOCATION, NBD_FLAG_BLOCK_STATUS_PAYLOAD, NBD_FLAG_C_FIXED_NEWSTYLE,
    NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, OPTION_HEADER_LEN,
};

/// Default cap on the data length of one option request.
///
/// Large enough for any request the specification allows with a maximal
/// (4096-byte) export name plus a few maximal query strings; anything longer
/// is treated as abuse and ends the session.
pub const DEFAULT_MAX_OPTION_LEN: u32 = 16 * 1024;

/// Default cap on the number of options in one handshake.
pub const DEFAULT_MAX_OPTIONS: u32 = 1024;

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
    /// Whether structured replies were negotiated (true with extended
    /// headers too, which imply them).
    pub structured_replies: bool,
    /// Whether extended headers (`NBD_OPT_EXTENDED_HEADERS`) were
    /// negotiated.
    pub extended_headers: bool,
    /// Context id of `base:allocation` if the client selected it for this
    /// export (enables `NBD_CMD_BLOCK_STATUS`).
    pub base_allocation: Option<u32>,
    /// The export's qemu contexts the client selected, with their ids
    /// (each also enables `NBD_CMD_BLOCK_STATUS`).
    pub qemu_contexts: Vec<(u32, QemuContext)>,
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
    /// `NBD_OPT_EXPORT_NAME` after extended headers were negotiated, which
    /// the specification forbids and its reply cannot refuse.
    ExportNameWithExtendedHeaders,
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
            Self::ExportNameWithExtendedHeaders => {
                f.write_str("NBD_OPT_EXPORT_NAME after extended headers were negotiated")
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
    /// `NBD_OPT_EXTENDED_HEADERS` was acknowledged (it implies structured
    /// replies, which `structured` then also says).
    extended: bool,
    /// Result of the last `NBD_OPT_SET_META_CONTEXT`: the export it named
    /// and the ids of the contexts selected.
    meta: Option<(usize, Vec<u32>)>,
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
            OptionCode::ExportName if st.extended => {
                return Err(HandshakeError::ExportNameWithExtendedHeaders)
            }
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
                    // qemu-nbd's words, which QEMU's tests compare.
                    reply_err(&mut out, opt, ReplyType::ErrPolicy, "TLS not configured");
                } else if tls_active {
                    reply_err(&mut out, opt, ReplyType::ErrInvalid, "TLS already enabled");
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
                    &format!("Option {opt:#x} not permitted before TLS"),
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
                } else if st.extended {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrExtHeaderReqd,
                        "extended headers already negotiated",
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
            OptionCode::ExtendedHeaders => {
                if !data.is_empty() {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "NBD_OPT_EXTENDED_HEADERS takes no data",
                    );
                } else if st.extended {
                    reply_err(
                        &mut out,
                        opt,
                        ReplyType::ErrInvalid,
                        "extended headers already negotiated",
                    );
                } else {
                    st.extended = true;
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
        let selected: &[u32] = match &self.meta {
            Some((meta_idx, ids)) if *meta_idx == idx => ids,
            _ => &[],
        };
        let base_allocation = selected
            .contains(&BASE_ALLOCATION_CONTEXT_ID)
            .then_some(BASE_ALLOCATION_CONTEXT_ID);
        let qemu_contexts = selected
            .iter()
            .filter(|&&id| id > BASE_ALLOCATION_CONTEXT_ID)
            .map(|&id| {
                let i = (id - BASE_ALLOCATION_CONTEXT_ID - 1) as usize;
                (id, export.qemu_contexts[i].clone())
            })
            .collect();
        Negotiated {
            transmission_flags: self.transmission_flags(config, idx),
            export,
            export_index: idx,
            structured_replies: self.structured,
            extended_headers: self.extended,
            base_allocation,
            qemu_contexts,
            client_flags,
            via,
            block_sizes_requested,
        }
    }

    /// The flags for export `idx`: the export's, `DF` with structured
    /// replies, and with extended headers the block status payload form.
    /// qemu-nbd offers that form whether or not contexts were selected
    /// (and QEMU's tests compare the flags): offering it only after
    /// `NBD_OPT_SET_META_CONTEXT` would also make `NBD_OPT_INFO` and a
    /// following `NBD_OPT_GO` disagree, which the specification forbids.
    fn transmission_flags(&self, config: &HandshakeConfig, idx: usize) -> u16 {
        let payload = if self.extended {
            NBD_FLAG_BLOCK_STATUS_PAYLOAD
        } else {
            0
        };
        config.exports[idx].transmission_flags(self.structured) | payload
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
        let b = e.advertised_block_sizes();
        let bs = proto::encode_info_block_size(b.minimum, b.preferred, b.maximum);
        reply(out, opt, ReplyType::Info, &bs);
        let flags = self.transmission_flags(config, idx);
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
        let export = &config.exports[idx];
        let offered = std::iter::once((BASE_ALLOCATION_CONTEXT_ID, BASE_ALLOCATION.to_owned()))
            .chain(
                export
                    .qemu_contexts
                    .iter()
                    .zip(BASE_ALLOCATION_CONTEXT_ID + 1..)
                    .map(|(c, id)| (id, c.name())),
            );
        let matches = |name: &str| {
            let name = name.as_bytes();
            if set {
                // Zero queries select nothing; a namespace ("base:") is
                // no wildcard for SET.
                req.queries.iter().any(|q| q == name)
            } else {
                // Zero queries list everything; a query ending in ':'
                // ("base:", "qemu:", "qemu:dirty-bitmap:") lists what
                // starts with it.
                req.queries.is_empty()
                    || req
                        .queries
                        .iter()
                        .any(|q| q == name || (q.ends_with(b":") && name.starts_with(q)))
            }
        };
        let mut selected = Vec::new();
        for (id, name) in offered {
            if matches(&name) {
                let payload = proto::encode_rep_meta_context(if set { id } else { 0 }, &name);
                reply(out, opt, ReplyType::MetaContext, &payload);
                selected.push(id);
            }
        }
        reply(out, opt, ReplyType::Ack, &[]);
        if set {
            self.meta = Some((idx, selected));
        }
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
