//! qemu-nbd's `-L/--list`: a client that asks an NBD server for its
//! exports and prints them as qemu-nbd prints them.
//!
//! One connection: the greeting; `NBD_OPT_STARTTLS` and a TLS handshake
//! if asked to (see [`list_on`]); extended headers asked for, or else
//! structured replies (qemu's order, and what "transaction size" reports);
//! `NBD_OPT_LIST`; per export `NBD_OPT_INFO` (description, block sizes)
//! and `NBD_OPT_LIST_META_CONTEXT`; then `NBD_OPT_ABORT`. Nothing here
//! needs an event loop: it is a short synchronous exchange.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::protocol::proto::{
    decode_greeting, encode_option, Info, InfoRequest, InfoType, MetaContextRequest, OptionCode,
    OptionReplyHeader, ReplyType, GREETING_LEN, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES,
    NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, OPTION_REPLY_HEADER_LEN,
};

/// Longest option reply accepted (a server could claim gigabytes).
const MAX_REPLY: u32 = 1 << 20;

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Target {
    /// TCP: host and port.
    Tcp(String, u16),
    /// A Unix socket.
    Unix(PathBuf),
}

/// One export as the server describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportListing {
    /// Its name.
    pub name: String,
    /// Its description (empty: none).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum, preferred and maximum block size, if the server said.
    pub block_sizes: Option<(u32, u32, u32)>,
    /// The metadata contexts it lists.
    pub contexts: Vec<String>,
}

/// A server's exports, and whether it speaks 64-bit transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The exports, in the server's order.
    pub exports: Vec<ExportListing>,
    /// Extended headers were agreed.
    pub extended_headers: bool,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A byte stream a listing runs over: a socket, or TLS over one.
pub trait Stream: Read + Write {}

impl<T: Read + Write> Stream for T {}

/// What turns the connection into TLS once the server acknowledged
/// `NBD_OPT_STARTTLS` (see [`list_on`]).
pub type StartTls<'a> = &'a dyn Fn(Box<dyn Stream>) -> io::Result<Box<dyn Stream>>;

/// The option haggling of one connection (unbuffered: a few small
/// messages, and nothing may be read ahead of a TLS handshake).
struct Session {
    stream: Box<dyn Stream>,
}

impl Session {
    /// Sends option `code` with `data`; returns its replies up to and
    /// including the final one (an ACK or an error).
    fn ask(&mut self, code: u32, data: &[u8]) -> io::Result<Vec<(ReplyType, Vec<u8>)>> {
        self.stream
            .write_all(&encode_option(OptionCode::from(code), data))?;
        self.stream.flush()?;
        let mut replies = Vec::new();
        loop {
            let mut head = [0u8; OPTION_REPLY_HEADER_LEN];
            self.stream.read_exact(&mut head)?;
            let h = OptionReplyHeader::decode(&head).map_err(|e| bad(e.to_string()))?;
            if h.option != code {
                return Err(bad(format!(
                    "reply to option {} while waiting for {code}",
                    h.option
                )));
            }
            if h.length > MAX_REPLY {
                return Err(bad(format!("option reply of {} bytes", h.length)));
            }
            let mut payload = vec![0u8; h.length as usize];
            self.stream.read_exact(&mut payload)?;
            let last = h.reply == ReplyType::Ack || u32::from(h.reply) & (1 << 31) != 0;
            replies.push((h.reply, payload));
            if last {
                return Ok(replies);
            }
        }
    }
}

/// The error a refused option `code` (`name`, as qemu calls it) stands
/// for, with the server's message: qemu's words where QEMU's tests compare
/// them.
fn refused(code: u32, name: &str, reply: ReplyType, message: &[u8]) -> io::Error {
    let said = String::from_utf8_lossy(message);
    match reply {
        ReplyType::ErrTlsReqd => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("TLS negotiation required before option {code} ({name})"),
        ),
        ReplyType::ErrPolicy => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("Denied by server for option {code} ({name})\nserver reported: {said}"),
        ),
        _ => io::Error::other(format!(
            "option {code} ({name}) refused ({reply:?}): {said}"
        )),
    }
}

/// Runs the listing exchange on `stream` (see the module docs), over TLS
/// if `starttls` is given: it is called with the connection once the
/// server acknowledged `NBD_OPT_STARTTLS`, and returns the TLS session.
///
/// # Errors
/// The connection failed, the server is not a fixed-newstyle NBD server,
/// or it refused TLS or to list its exports.
pub fn list_on(stream: Box<dyn Stream>, starttls: Option<StartTls<'_>>) -> io::Result<Listing> {
    let mut s = Session { stream };
    let mut greeting = [0u8; GREETING_LEN];
    s.stream.read_exact(&mut greeting)?;
    let flags = decode_greeting(&greeting).map_err(|e| bad(format!("not an NBD server: {e}")))?;
    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(bad("the server does not speak fixed newstyle"));
    }
    let mut client = NBD_FLAG_C_FIXED_NEWSTYLE;
    if flags & NBD_FLAG_NO_ZEROES != 0 {
        client |= NBD_FLAG_C_NO_ZEROES;
    }
    s.stream.write_all(&client.to_be_bytes())?;
    if let Some(upgrade) = starttls {
        let code = OptionCode::StartTls.into();
        match s.ask(code, &[])?.pop() {
            Some((ReplyType::Ack, _)) => {}
            Some((other, payload)) => return Err(refused(code, "starttls", other, &payload)),
            None => return Err(bad("no reply to NBD_OPT_STARTTLS")),
        }
        s.stream = upgrade(s.stream)?;
    }
    let acked = |r: &[(ReplyType, Vec<u8>)]| r.last().is_some_and(|(t, _)| *t == ReplyType::Ack);
    let extended_headers = acked(&s.ask(OptionCode::ExtendedHeaders.into(), &[])?);
    let structured = extended_headers || acked(&s.ask(OptionCode::StructuredReply.into(), &[])?);
    let mut exports = Vec::new();
    for (ty, payload) in s.ask(OptionCode::List.into(), &[])? {
        match ty {
            ReplyType::Server => {
                let len = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
                    .filter(|&n| n <= payload.len() - 4)
                    .ok_or_else(|| bad("malformed NBD_REP_SERVER"))?;
                exports.push(ExportListing {
                    name: String::from_utf8_lossy(&payload[4..4 + len]).into_owned(),
                    description: String::from_utf8_lossy(&payload[4 + len..]).into_owned(),
                    ..ExportListing::default()
                });
            }
            ReplyType::Ack => {}
            other => return Err(refused(OptionCode::List.into(), "list", other, &payload)),
        }
    }
    for e in &mut exports {
        describe(&mut s, e, structured)?;
    }
    // A polite goodbye; the server's answer does not matter.
    let _ = s.ask(OptionCode::Abort.into(), &[]);
    Ok(Listing {
        exports,
        extended_headers,
    })
}

/// Fills in what `NBD_OPT_INFO` and `NBD_OPT_LIST_META_CONTEXT` say of `e`.
fn describe(s: &mut Session, e: &mut ExportListing, structured: bool) -> io::Result<()> {
    let info = InfoRequest {
        name: e.name.as_bytes().to_vec(),
        requests: vec![InfoType::Description, InfoType::BlockSize],
    };
    for (ty, payload) in s.ask(OptionCode::Info.into(), &info.encode())? {
        match ty {
            ReplyType::Info => match Info::decode(&payload).map_err(|e| bad(e.to_string()))? {
                Info::Export { size, flags } => (e.size, e.flags) = (size, flags),
                Info::Description(d) => e.description = String::from_utf8_lossy(&d).into_owned(),
                Info::BlockSize {
                    minimum,
                    preferred,
                    maximum,
                } => e.block_sizes = Some((minimum, preferred, maximum)),
                Info::Name(_) | Info::Unknown(..) => {}
            },
            ReplyType::Ack => {}
            other => return Err(refused(OptionCode::Info.into(), "info", other, &payload)),
        }
    }
    if structured {
        let query = MetaContextRequest {
            export: e.name.as_bytes().to_vec(),
            queries: Vec::new(),
        };
        for (ty, payload) in s.ask(OptionCode::ListMetaContext.into(), &query.encode())? {
            if ty == ReplyType::MetaContext && payload.len() >= 4 {
                e.contexts
                    .push(String::from_utf8_lossy(&payload[4..]).into_owned());
            }
        }
    }
    Ok(())
}

/// Connects to `target` and lists its exports, over TLS if `starttls`
/// is given (see [`list_on`]).
///
/// # Errors
/// As [`list_on`], and when the connection cannot be made (the message
/// names the address, as qemu-nbd's does).
pub fn list(target: &Target, starttls: Option<StartTls<'_>>) -> io::Result<Listing> {
    let stream: Box<dyn Stream> = match target {
        Target::Tcp(host, port) => {
            let s = TcpStream::connect((host.as_str(), *port)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("Failed to connect to '{host}:{port}': {e}"),
                )
            })?;
            Box::new(s)
        }
        Target::Unix(path) => {
            let s = UnixStream::connect(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("Failed to connect to '{}': {e}", path.display()),
                )
            })?;
            Box::new(s)
        }
    };
    list_on(stream, starttls)
}

/// qemu-nbd's names of the transmission flags, by bit.
const FLAG_NAMES: [(u16, &str); 12] = [
    (1 << 1, "readonly"),
    (1 << 2, "flush"),
    (1 << 3, "fua"),
    (1 << 4, "rotational"),
    (1 << 5, "trim"),
    (1 << 6, "zeroes"),
    (1 << 7, "df"),
    (1 << 8, "multi"),
    (1 << 9, "resize"),
    (1 << 10, "cache"),
    (1 << 11, "fast-zero"),
    (1 << 12, "block-status-payload"),
];

/// `listing` as qemu-nbd `-L` prints it.
///
/// ```
/// use costack_nbd::list::{format, ExportListing, Listing};
///
/// let listing = Listing {
///     exports: vec![ExportListing {
///         name: "disk".into(),
///         size: 1 << 20,
///         flags: 0x0d,
///         contexts: vec!["base:allocation".into()],
///         ..ExportListing::default()
///     }],
///     extended_headers: false,
/// };
/// assert_eq!(
///     format(&listing),
///     "exports available: 1\n export: 'disk'\n  size:  1048576\n  flags: 0xd ( flush fua )\n  \
///      transaction size: 32-bit\n  available meta contexts: 1\n   base:allocation\n"
/// );
/// ```
pub fn format(listing: &Listing) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "exports available: {}", listing.exports.len());
    for e in &listing.exports {
        let _ = writeln!(out, " export: '{}'", e.name);
        if !e.description.is_empty() {
            let _ = writeln!(out, "  description: {}", e.description);
        }
        let _ = writeln!(out, "  size:  {}", e.size);
        let _ = write!(out, "  flags: {:#x} (", e.flags);
        for (bit, name) in FLAG_NAMES {
            if e.flags & bit != 0 {
                let _ = write!(out, " {name}");
            }
        }
        out.push_str(" )\n");
        if let Some((min, opt, max)) = e.block_sizes {
            let _ = writeln!(
                out,
                "  min block: {min}\n  opt block: {opt}\n  max block: {max}"
            );
        }
        let size = if listing.extended_headers { "64" } else { "32" };
        let _ = writeln!(out, "  transaction size: {size}-bit");
        let _ = writeln!(out, "  available meta contexts: {}", e.contexts.len());
        for c in &e.contexts {
            let _ = writeln!(out, "   {c}");
        }
    }
    out
}
