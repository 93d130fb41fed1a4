//! The serving loop: one coroutine per connection, one per request.
//!
//! Code here reads like blocking I/O — `read_request`, `device.read_at`,
//! `stream.write_all` — while every call that would block yields to the
//! thread's costack event loop instead. A connection's coroutine reads
//! requests in order and spawns a coroutine for each; replies are
//! serialized by a `CoMutex` around the socket's write side (as qemu-nbd
//! does), and a `CoSemaphore` bounds the requests in flight per client.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use costack::aio;
use costack::sync::{CoMutex, CoSemaphore};

use crate::backend::BlockDevice;
use crate::handshake::{negotiate, Duplex, HandshakeConfig};
use crate::proto::ErrorCode;
use crate::request::{
    read_request, write_block_status_reply, write_error, write_ok, write_read_reply,
    write_rejection, Incoming, Op, ReadError, Request, TransmissionParams,
};

/// Requests one client may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// A block device shared by every connection and loop thread.
pub type SharedDevice = Arc<dyn BlockDevice + Send + Sync>;

/// What every connection needs, shared across loop threads.
pub struct Shared {
    /// Handshake configuration (the exports).
    pub config: HandshakeConfig,
    /// The device behind the (single) export.
    pub device: SharedDevice,
    /// Set once SIGINT/SIGTERM arrived: stop reading new requests.
    pub stopping: AtomicBool,
    /// Sockets of live connections, so shutdown can interrupt their reads.
    pub live: Mutex<Vec<RawFd>>,
    /// Connections being served now.
    pub clients: AtomicUsize,
}

impl Shared {
    /// Shared state for `device` exported as described by `config`.
    pub fn new(config: HandshakeConfig, device: SharedDevice) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            device,
            stopping: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            clients: AtomicUsize::new(0),
        })
    }

    /// Stops every connection from reading further requests: their reads
    /// see end-of-stream, in-flight requests finish and get their replies.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for &fd in self.live.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: `fd` is a socket registered by a live connection,
            // which removes it before closing it (under the same lock).
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }
}

/// Registers a connection's socket for [`Shared::stop`] while it lives.
struct LiveGuard<'a> {
    shared: &'a Shared,
    fd: RawFd,
}

impl<'a> LiveGuard<'a> {
    fn new(shared: &'a Shared, fd: RawFd) -> Self {
        shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fd);
        if shared.stopping.load(Ordering::SeqCst) {
            // SAFETY: our own live socket.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
        LiveGuard { shared, fd }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = live.iter().position(|&fd| fd == self.fd) {
            live.swap_remove(i);
        }
    }
}

/// Serves one client on `stream` until it disconnects (or the server
/// stops). Runs inside a coroutine on an event loop.
pub fn serve<S>(stream: S, peer: String, shared: Arc<Shared>)
where
    S: AsRawFd + 'static,
    for<'a> &'a S: Read + Write,
{
    let _live = LiveGuard::new(&shared, stream.as_raw_fd());
    let stream = Rc::new(stream);
    let negotiated = {
        let mut duplex = Duplex::new(&*stream, &*stream);
        match negotiate(&mut duplex, &shared.config) {
            Ok(n) => n,
            Err(e) if e.is_clean_disconnect() => {
                tracing::debug!(%peer, "client left during the handshake");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "handshake refused");
                return;
            }
        }
    };
    tracing::info!(%peer, export = %negotiated.export.name, structured = negotiated.structured_replies, "client connected");
    let params = Rc::new(TransmissionParams::from_negotiated(&negotiated));
    let writer = Rc::new(CoMutex::new(()));
    let in_flight = Rc::new(CoSemaphore::new(MAX_IN_FLIGHT));
    let mut reader = BufReader::with_capacity(128 << 10, &*stream);
    loop {
        let incoming = match read_request(&mut reader, &params) {
            Ok(incoming) => incoming,
            Err(ReadError::Disconnected) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "dropping connection");
                break;
            }
        };
        match incoming {
            Incoming::Request(req) if req.op == Op::Disconnect => break,
            Incoming::Request(req) => {
                in_flight.acquire(1);
                let (stream, writer, params) = (stream.clone(), writer.clone(), params.clone());
                let (device, in_flight) = (shared.device.clone(), in_flight.clone());
                let peer = peer.clone();
                aio::spawn(move || {
                    let reply = execute(&*device, &params, &req);
                    if let Err(e) = send(&stream, &writer, &reply) {
                        tracing::debug!(%peer, error = %e, "reply not sent");
                    }
                    in_flight.release(1);
                });
            }
            Incoming::Rejected { header, error } => {
                tracing::info!(%peer, command = ?header.command, offset = header.offset,
                    length = header.length, error = error.name(), "request refused");
                let mut out = Vec::new();
                let _ = write_rejection(&mut out, &header, error, params.structured_replies);
                if let Err(e) = send(&stream, &writer, &out) {
                    tracing::debug!(%peer, error = %e, "reply not sent");
                    break;
                }
            }
        }
    }
    // Let every request in flight finish and answer before closing.
    in_flight.acquire(MAX_IN_FLIGHT);
    in_flight.release(MAX_IN_FLIGHT);
    tracing::info!(%peer, "client disconnected");
}

fn send<S>(stream: &S, writer: &CoMutex<()>, bytes: &[u8]) -> io::Result<()>
where
    for<'a> &'a S: Write,
{
    let _turn = writer.lock();
    let mut w = stream;
    w.write_all(bytes)
}

/// Runs one request against the device; returns the encoded reply.
fn execute(device: &dyn BlockDevice, params: &TransmissionParams, req: &Request) -> Vec<u8> {
    let handle = req.header.handle;
    let structured = params.structured_replies;
    let mut out = Vec::new();
    let result = match req.op {
        Op::Read { offset, length, df } => {
            let mut buf = vec![0u8; length as usize];
            match device.read_at(&mut buf, offset) {
                Ok(()) => {
                    out.reserve(length as usize + 64);
                    write_read_reply(&mut out, handle, offset, &buf, structured, df)
                        .map(|_| None)
                        .unwrap_or_else(Some)
                }
                Err(e) => Some(e),
            }
        }
        Op::Write { offset, .. } => device
            .write_at(&req.payload, offset)
            .and_then(|()| if req.fua { device.flush() } else { Ok(()) })
            .err(),
        Op::Flush => device.flush().err(),
        Op::Trim { offset, length } => device
            .trim(offset, u64::from(length))
            .and_then(|()| if req.fua { device.flush() } else { Ok(()) })
            .err(),
        Op::Cache { offset, length } => device.cache(offset, u64::from(length)).err(),
        Op::WriteZeroes {
            offset,
            length,
            no_hole,
            fast_zero,
        } => {
            if fast_zero && !device.can_fast_zero() {
                Some(io::Error::from_raw_os_error(libc::ENOTSUP))
            } else {
                device
                    .write_zeroes(offset, u64::from(length), !no_hole)
                    .and_then(|()| if req.fua { device.flush() } else { Ok(()) })
                    .err()
            }
        }
        Op::BlockStatus {
            offset,
            length,
            req_one,
            context_id,
        } => match device.block_status(offset, u64::from(length)) {
            Ok(extents) => {
                write_block_status_reply(&mut out, handle, context_id, &extents, length, req_one)
                    .err()
            }
            Err(e) => Some(e),
        },
        Op::Disconnect => None,
    };
    match result {
        None if out.is_empty() => {
            let _ = write_ok(&mut out, handle);
        }
        None => {}
        Some(e) => {
            out.clear();
            let code = ErrorCode::from_io_error(&e);
            tracing::info!(command = ?req.header.command, offset = req.header.offset,
                error = %e, "request failed");
            let _ = write_error(&mut out, handle, code, &e.to_string(), structured);
        }
    }
    out
}
