//! One connection, from its first byte to its last: the handshake (within
//! its time limit, upgraded to TLS on `NBD_OPT_STARTTLS`), then the
//! transmission phase, once it holds an `-e` slot, reading requests and
//! spawning a coroutine for each (see [`requests`](super::requests)).
//! Guards keep the connection registered with [`Shared`] for as long as
//! it lives, however it ends.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use costack::aio;

use super::incoming::{read_incoming, PayloadSource};
use super::requests::{data_cost, execute, Outbox, Reply, ReplySink};
use super::slots::EstablishedSlot;
use super::Shared;
#[cfg(feature = "tls")]
use crate::protocol::handshake::resume_after_tls;
use crate::protocol::handshake::{negotiate_options, Duplex, HandshakeError, Negotiated, Outcome};
use crate::protocol::reply::write_rejection;
use crate::protocol::request::{Incoming, Op, ReadError, TransmissionParams};

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

/// Keeps a connection in [`Shared`]'s negotiating queue while it lives.
struct Negotiating<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> Negotiating<'a> {
    fn new(shared: &'a Shared, fd: RawFd) -> Self {
        let id = shared.negotiating.begin(fd);
        Negotiating { shared, id }
    }
}

impl Drop for Negotiating<'_> {
    fn drop(&mut self) {
        self.shared.negotiating.end(self.id);
    }
}

/// Runs `step`, a part of the handshake, within `deadline` (`None`: no
/// limit). Past the deadline the step unwinds from whatever read or write
/// it waits in (`aio::timeout_at`), and the handshake ends `TimedOut`: a
/// client that trickles a byte at a time runs out of it as surely as one
/// that sends nothing.
fn within<T, E: From<io::Error>>(
    deadline: Option<Instant>,
    step: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let Some(deadline) = deadline else {
        return step();
    };
    aio::timeout_at(deadline, step).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not finish the handshake in time",
        )
        .into())
    })
}

/// Logs why a handshake ended without a client.
fn log_handshake_end(peer: &str, e: &HandshakeError) {
    if e.is_clean_disconnect() {
        tracing::debug!(%peer, "client left during the handshake");
    } else {
        tracing::warn!(%peer, error = %e, "handshake refused");
    }
}

/// Serves one client on `stream` until it disconnects (or the server
/// stops). Runs inside a coroutine on an event loop.
pub fn serve<S>(stream: S, peer: String, shared: Arc<Shared>, max_clients: usize)
where
    S: AsRawFd + ReplySink + PayloadSource,
    for<'a> &'a S: Read + Write,
{
    // Everything below borrows `stream`, which is closed only when this
    // returns, after the guards are gone: the socket leaves `live` and
    // `negotiating` before its number can be reused, even when a timeout
    // or a failed TLS handshake ends the connection.
    let _live = LiveGuard::new(&shared, stream.as_raw_fd());
    let negotiating = Negotiating::new(&shared, stream.as_raw_fd());
    let deadline = shared.handshake_limit.map(|limit| Instant::now() + limit);
    let config = &shared.config;
    let outcome = within(deadline, || {
        negotiate_options(&mut Duplex::new(&stream, &stream), config)
    });
    match outcome {
        Ok(Outcome::Transmission(negotiated)) => {
            drop(negotiating);
            transmit(&stream, peer, &shared, max_clients, negotiated);
        }
        Ok(Outcome::StartTls(resume)) => {
            #[cfg(feature = "tls")]
            serve_tls(
                &stream,
                peer,
                &shared,
                max_clients,
                deadline,
                resume,
                negotiating,
            );
            #[cfg(not(feature = "tls"))]
            {
                let _ = resume;
                tracing::error!(%peer, "STARTTLS accepted in a build without TLS");
            }
        }
        Err(e) => log_handshake_end(&peer, &e),
    }
}

/// Upgrades a connection whose client sent `NBD_OPT_STARTTLS` to TLS,
/// finishes its handshake over TLS, then serves it. (Apart from [`serve`]
/// so that its `&S: Read` bound does not stand for `&TlsStream<S>`'s.)
#[cfg(feature = "tls")]
fn serve_tls<S: AsRawFd>(
    stream: &S,
    peer: String,
    shared: &Shared,
    max_clients: usize,
    deadline: Option<Instant>,
    resume: crate::protocol::handshake::Resume,
    negotiating: Negotiating<'_>,
) {
    let Some(tls) = &shared.tls else {
        // The policy offers TLS only with credentials (see main).
        tracing::error!(%peer, "STARTTLS accepted without TLS credentials");
        return;
    };
    let socket = BorrowedSocket(stream);
    let stream = match within(deadline, || crate::tls::TlsStream::accept(socket, tls)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, version = stream.version(), "TLS established");
    let config = &shared.config;
    let resumed = within(deadline, || {
        resume_after_tls(&mut Duplex::new(&stream, &stream), config, resume)
    });
    match resumed {
        Ok(negotiated) => {
            drop(negotiating);
            transmit(&stream, peer, shared, max_clients, negotiated);
        }
        Err(e) => log_handshake_end(&peer, &e),
    }
}

/// A socket lent to a [`TlsStream`](crate::tls::TlsStream), which then
/// does not close it.
#[cfg(feature = "tls")]
struct BorrowedSocket<'a, S>(&'a S);

#[cfg(feature = "tls")]
impl<S: AsRawFd> AsRawFd for BorrowedSocket<'_, S> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The transmission phase of an established client.
fn transmit<S>(
    stream: &S,
    peer: String,
    shared: &Shared,
    max_clients: usize,
    negotiated: Negotiated,
) where
    S: ReplySink + PayloadSource,
    for<'a> &'a S: Read,
{
    let _slot = EstablishedSlot::take(shared, max_clients, &peer);
    tracing::info!(%peer, export = %negotiated.export.name,
        structured = negotiated.structured_replies, extended = negotiated.extended_headers,
        "client connected");
    let params = TransmissionParams::from_negotiated(&negotiated);
    let outbox = Outbox::new(stream, peer.clone());
    let mapped = stream.takes_mapped();
    // Large write payloads go straight into the image's page cache where
    // both the stream and the device can (see `read_incoming`).
    let direct = mapped.then_some(&*shared.device as &dyn crate::block::BlockDevice);
    let mut reader = BufReader::with_capacity(128 << 10, stream);
    // Each request runs in a child of this scope, borrowing the
    // connection's state; the scope (so the connection) ends only once
    // every one has finished.
    aio::scope(|requests| {
        let end = loop {
            let read = read_incoming(&mut reader, &params, &outbox.pool, &outbox.budget, direct);
            let incoming = match read {
                Ok(incoming) => incoming,
                Err(ReadError::Disconnected) => break End::Graceful,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "dropping connection");
                    break End::Broken;
                }
            };
            // Every reply holds a permit until it is sent.
            outbox.in_flight.acquire(1);
            match incoming {
                Incoming::Request(req) if req.op == Op::Disconnect => {
                    outbox.in_flight.release(1);
                    break End::Graceful;
                }
                Incoming::Request(mut req) => {
                    // A write's share was taken before its payload was read.
                    let cost = data_cost(&req.op);
                    if matches!(req.op, Op::Read { .. }) {
                        outbox.budget.acquire(cost);
                    }
                    let (outbox, params, device) = (&outbox, &params, &*shared.device);
                    requests.spawn(move || {
                        let reply = execute(device, params, &req, &outbox.pool, mapped);
                        outbox.pool.give(std::mem::take(&mut req.payload));
                        if !outbox.send(reply, cost) && outbox.closing.get() {
                            // The client is gone: what is still running
                            // would answer no one.
                            requests.cancel();
                        }
                    });
                }
                Incoming::Rejected { header, error } => {
                    tracing::info!(%peer, command = ?header.command, offset = header.offset,
                        length = header.length, error = error.name(), "request refused");
                    let mut out = Vec::new();
                    let _ = write_rejection(&mut out, &header, error, params.reply_format());
                    let outbox = &outbox;
                    requests.spawn(move || {
                        if !outbox.send(Reply::bytes(out), 0) && outbox.closing.get() {
                            requests.cancel();
                        }
                    });
                }
            }
        };
        // A disconnect (or end of stream) lets every request in flight
        // finish and its reply go out; a broken connection cancels them,
        // now or once a reply fails. (Not before the loop ended: it may
        // wait for permits that only finished requests give back.)
        outbox.closing.set(true);
        if end == End::Broken || outbox.failed.get() {
            requests.cancel();
        }
    });
    tracing::info!(%peer, "client disconnected");
}

/// How a connection's request loop ended.
#[derive(PartialEq)]
enum End {
    /// `NBD_CMD_DISC`, or the end of the stream: requests in flight are
    /// answered.
    Graceful,
    /// A protocol or socket error: requests in flight are cancelled.
    Broken,
}
