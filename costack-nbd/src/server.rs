//! The serving loop: one coroutine per connection, one per request.
//!
//! Code here reads like blocking I/O — `read_request`, `device.read_at`,
//! `stream.write_all` — while every call that would block yields to the
//! thread's costack event loop instead. A connection's coroutine reads
//! requests in order and spawns a coroutine for each, which replies
//! under a `CoMutex` on the socket's write side, taking along the replies
//! of the other requests finished in the same loop pass: one `writev` for
//! them all (an `Outbox`). Read data is not copied
//! into the reply: the reply refers to the read buffer, which is recycled
//! once sent. A `CoSemaphore` bounds the requests in flight per client,
//! counting each until its reply is on the socket.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use costack::aio;
use costack::sync::{CoMutex, CoSemaphore};

use crate::block::BlockDevice;
#[cfg(feature = "tls")]
use crate::protocol::handshake::resume_after_tls;
use crate::protocol::handshake::{
    negotiate_options, Duplex, HandshakeConfig, HandshakeError, Negotiated, Outcome, QemuContext,
};
use crate::protocol::proto::{ErrorCode, ReplyTo};
use crate::protocol::request::{
    plan_read_reply, read_request_with, write_block_status_chunk, write_error, write_ok,
    write_rejection, Incoming, Op, ReadError, ReplyPiece, ReplyPlan, Request, TransmissionParams,
};

/// Requests one client may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes of request data (write payloads, read results) one client may have
/// in memory at once: without it, 64 reads of 32 MiB from a client that
/// does not read its replies would hold 2 GiB. A larger request takes the
/// whole budget.
pub const MAX_BYTES_IN_FLIGHT: usize = 32 << 20;

/// A request's share of [`MAX_BYTES_IN_FLIGHT`].
fn data_cost(op: &Op) -> usize {
    let len = match *op {
        Op::Read { length, .. } | Op::Write { length, .. } => length as usize,
        _ => 0,
    };
    len.min(MAX_BYTES_IN_FLIGHT)
}

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
    /// Connections open now, negotiating or established (a stop waits
    /// for them).
    pub clients: AtomicUsize,
    /// Connections past their handshake: what `-e/--shared` bounds.
    pub established: AtomicUsize,
    /// How long a client may take to negotiate (`None`: as long as it
    /// likes); past it the connection is dropped.
    pub handshake_limit: Option<Duration>,
    /// How many connections may negotiate at once; a newcomer beyond it
    /// waits until one finishes or stalls (see [`crate::admission`]).
    pub max_negotiating: usize,
    /// TLS credentials, when `NBD_OPT_STARTTLS` is offered
    /// ([`HandshakeConfig::tls`] not `Off`).
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// When the server stops, and what waits for it (see
    /// [`Lifecycle`](crate::lifecycle::Lifecycle)).
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Connections still negotiating, oldest first.
    negotiating: crate::admission::Negotiations,
}

/// Default of [`Shared::handshake_limit`]: qemu-nbd's (CVE-2024-7409).
pub const DEFAULT_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Default of [`Shared::max_negotiating`].
pub const DEFAULT_MAX_NEGOTIATING: usize = 64;

impl Shared {
    /// Shared state for `device` exported as described by `config`.
    pub fn new(config: HandshakeConfig, device: SharedDevice) -> Arc<Shared> {
        Self::with_handshake_limits(
            config,
            device,
            Some(DEFAULT_HANDSHAKE_LIMIT),
            DEFAULT_MAX_NEGOTIATING,
        )
    }

    /// As [`new`](Shared::new), with the handshake limits set: `limit`
    /// (`None`: none) and at most `max_negotiating` (at least 1)
    /// connections negotiating at once.
    pub fn with_handshake_limits(
        config: HandshakeConfig,
        device: SharedDevice,
        limit: Option<Duration>,
        max_negotiating: usize,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            device,
            stopping: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            clients: AtomicUsize::new(0),
            established: AtomicUsize::new(0),
            handshake_limit: limit,
            max_negotiating: max_negotiating.max(1),
            #[cfg(feature = "tls")]
            tls: None,
            lifecycle: crate::lifecycle::Lifecycle::default(),
            negotiating: crate::admission::Negotiations::default(),
        })
    }

    /// Offers TLS with `tls` (the policy is [`HandshakeConfig::tls`]).
    /// Call before the `Arc` is shared.
    ///
    /// # Panics
    /// If the `Arc` is shared already.
    #[cfg(feature = "tls")]
    pub fn set_tls(self: &mut Arc<Self>, tls: crate::tls::TlsConfig) {
        Arc::get_mut(self).expect("set_tls before sharing").tls = Some(tls);
    }

    /// Makes room for one more negotiating connection, as far as it can
    /// now: while [`max_negotiating`](Shared::max_negotiating) are, stalled
    /// ones are shut down, oldest first (they end their handshakes with an
    /// error and leave); connections making progress are never dropped
    /// (see [`admission`](crate::admission)). Returns how many were
    /// dropped and whether there is room.
    pub fn make_room_to_negotiate(&self) -> (usize, bool) {
        self.negotiating.make_room(self.max_negotiating)
    }

    /// Waits (in a coroutine) until one more connection may negotiate,
    /// dropping connections as they stall; returns how many it dropped.
    pub fn wait_for_room_to_negotiate(&self) -> usize {
        self.negotiating.wait_for_room(self.max_negotiating)
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

    /// After [`stop`](Shared::stop), for clients that do not take their
    /// replies: shuts their sockets down both ways, so that replies blocked
    /// on them fail and the connections end.
    pub fn abort(&self) {
        for &fd in self.live.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: as in `stop`.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
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

/// An established connection's `-e` slot, given back when it ends.
struct EstablishedSlot<'a>(&'a Shared);

impl<'a> EstablishedSlot<'a> {
    /// Takes a slot (`max_clients` 0: no limit). `-e` counts established
    /// clients only, so clients that negotiated at the same time may find
    /// them all taken: such a one waits for a slot, as it would have
    /// waited to be accepted, rather than being dropped after its
    /// handshake.
    fn take(shared: &'a Shared, max_clients: usize, peer: &str) -> Self {
        let mut waited = false;
        loop {
            let taken = shared.established.fetch_add(1, Ordering::SeqCst);
            if max_clients == 0 || taken < max_clients {
                if waited && taken + 1 < max_clients {
                    // Slots freed together woke one waiter: pass it on.
                    shared.lifecycle.wake_slot_waiter();
                }
                return EstablishedSlot(shared);
            }
            shared.established.fetch_sub(1, Ordering::SeqCst);
            if !waited {
                tracing::info!(%peer, max_clients, "waiting for a free slot (-e)");
            }
            waited = true;
            // A slot freed since the count above left a token: not missed.
            shared.lifecycle.wait_for_freed_slot();
        }
    }
}

impl Drop for EstablishedSlot<'_> {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::SeqCst);
        self.0.lifecycle.session_ended();
    }
}

/// Serves one client on `stream` until it disconnects (or the server
/// stops). Runs inside a coroutine on an event loop.
pub fn serve<S>(stream: S, peer: String, shared: Arc<Shared>, max_clients: usize)
where
    S: AsRawFd,
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
    for<'a> &'a S: Read + Write,
{
    let _slot = EstablishedSlot::take(shared, max_clients, &peer);
    tracing::info!(%peer, export = %negotiated.export.name,
        structured = negotiated.structured_replies, extended = negotiated.extended_headers,
        "client connected");
    let params = TransmissionParams::from_negotiated(&negotiated);
    let outbox = Outbox::new(stream, peer.clone());
    let mut reader = BufReader::with_capacity(128 << 10, stream);
    // Each request runs in a child of this scope, borrowing the
    // connection's state; the scope (so the connection) ends only once
    // every one has finished.
    aio::scope(|requests| {
        let end = loop {
            let incoming = match read_incoming(&mut reader, &params, &outbox.pool, &outbox.budget) {
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
                        let reply = execute(device, params, &req, &outbox.pool);
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

/// Reads one request with the parser the fuzzers and tests drive
/// ([`read_request_with`]), a write's payload going into a pooled buffer
/// once its share of the connection's byte budget is free (the share goes
/// back when the reply is sent).
fn read_incoming<R: Read>(
    r: &mut BufReader<R>,
    p: &TransmissionParams,
    pool: &Pool,
    budget: &CoSemaphore,
) -> Result<Incoming, ReadError> {
    let take = |op: &Op, len: usize| {
        budget.acquire(data_cost(op));
        pool.take(len)
    };
    read_request_with(r, p, take, read_payload)
}

/// Fills `buf` from `r`: what `r` has buffered, then the rest straight
/// from the stream. `BufReader` would pass a payload shorter than its
/// buffer through the buffer, copying it once more.
fn read_payload<R: Read>(r: &mut BufReader<R>, buf: &mut [u8]) -> io::Result<()> {
    let n = r.buffer().len().min(buf.len());
    buf[..n].copy_from_slice(&r.buffer()[..n]);
    r.consume(n);
    r.get_mut().read_exact(&mut buf[n..])
}

/// Spare data buffers of a connection (for reads and write payloads), so
/// that requests neither allocate nor zero memory each time.
#[derive(Default)]
struct Pool(RefCell<Vec<Vec<u8>>>);

/// Buffers kept per connection (about the requests in flight).
const POOL_BUFFERS: usize = MAX_IN_FLIGHT;
/// Larger buffers are freed, not kept.
const POOL_MAX_BYTES: usize = 4 << 20;

impl Pool {
    /// A buffer of `len` initialised bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.0.borrow_mut().pop().unwrap_or_default();
        if buf.capacity() < len {
            // Growing would copy the old contents for nothing.
            buf.clear();
        }
        // Only bytes not initialised before are zeroed.
        buf.resize(len, 0);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        let mut pool = self.0.borrow_mut();
        if buf.capacity() > 0 && buf.capacity() <= POOL_MAX_BYTES && pool.len() < POOL_BUFFERS {
            pool.push(buf);
        }
    }
}

/// An encoded reply: the plan of its bytes ([`ReplyPlan`]) and the read
/// data it refers to (empty but for reads).
struct Reply {
    plan: ReplyPlan,
    data: Vec<u8>,
}

impl Reply {
    fn bytes(head: Vec<u8>) -> Reply {
        let plan = ReplyPlan {
            pieces: vec![ReplyPiece::Head(0..head.len())],
            head,
        };
        Reply {
            plan,
            data: Vec::new(),
        }
    }

    fn slices(&self) -> impl Iterator<Item = IoSlice<'_>> {
        self.plan.slices(&self.data).map(IoSlice::new)
    }
}

/// Most buffers one `writev` takes (`IOV_MAX`).
const MAX_IOV: usize = 1024;

/// A connection's replies on their way to the socket.
///
/// Replies are serialized by a `CoMutex` on the socket's write side, as in
/// QEMU's server, with one twist (flat combining): the request holding it
/// sends every reply queued, not just its own, until none is left. A
/// request queues its reply, lets the requests runnable in the same loop
/// pass queue theirs ([`aio::yield_now`]), then sends the lot in one
/// `writev` — unless the lock is held, in which case the holder sends its
/// reply too and it is done. Nobody waits for the lock, so no reply waits
/// behind requests whose replies are already gone.
struct Outbox<'s, S> {
    /// Replies, each with its share of the byte budget.
    queue: RefCell<Vec<(Reply, usize)>>,
    /// The socket's write side.
    sender: CoMutex<Sender<'s, S>>,
    /// A permit per request until its reply is sent.
    in_flight: CoSemaphore,
    /// Bytes of request data held (see [`MAX_BYTES_IN_FLIGHT`]).
    budget: CoSemaphore,
    pool: Pool,
    /// A write failed: later replies are dropped (the reader sees the
    /// connection end).
    failed: Cell<bool>,
    /// The connection reads no more requests: a failed reply cancels the
    /// requests still running.
    closing: Cell<bool>,
}

struct Sender<'s, S> {
    stream: &'s S,
    peer: String,
}

impl<'s, S> Outbox<'s, S>
where
    for<'a> &'a S: Write,
{
    fn new(stream: &'s S, peer: String) -> Self {
        Outbox {
            queue: RefCell::new(Vec::new()),
            sender: CoMutex::new(Sender { stream, peer }),
            in_flight: CoSemaphore::new(MAX_IN_FLIGHT),
            budget: CoSemaphore::new(MAX_BYTES_IN_FLIGHT),
            pool: Pool::default(),
            failed: Cell::new(false),
            closing: Cell::new(false),
        }
    }

    /// Sends `reply` (with its share `cost` of the byte budget), together
    /// with the other replies ready in this loop pass, and releases their
    /// permits and shares; or leaves it to the request already sending.
    /// Returns `false` once a reply could not be written (the client is
    /// gone).
    fn send(&self, reply: Reply, cost: usize) -> bool {
        self.queue.borrow_mut().push((reply, cost));
        aio::yield_now();
        let Some(sender) = self.sender.try_lock() else {
            // The holder sends until the queue is empty: ours too.
            return !self.failed.get();
        };
        loop {
            let batch = std::mem::take(&mut *self.queue.borrow_mut());
            if batch.is_empty() {
                // No yield between this check and the unlock: a reply
                // queued from now on finds the lock free.
                return !self.failed.get();
            }
            if !self.failed.get() {
                let replies: Vec<&Reply> = batch.iter().map(|(r, _)| r).collect();
                if let Err(e) = send_all(sender.stream, &replies) {
                    tracing::debug!(peer = %sender.peer, error = %e, "replies not sent");
                    self.failed.set(true);
                }
            }
            let n = batch.len();
            let mut cost = 0;
            for (reply, c) in batch {
                self.pool.give(reply.data);
                cost += c;
            }
            self.budget.release(cost);
            self.in_flight.release(n);
        }
    }
}

/// Writes every reply of `batch`, in as few `writev` calls as it takes.
fn send_all<S>(stream: &S, batch: &[&Reply]) -> io::Result<()>
where
    for<'a> &'a S: Write,
{
    let mut slices: Vec<IoSlice<'_>> = batch.iter().flat_map(|r| r.slices()).collect();
    let mut rest = &mut slices[..];
    let mut w = stream;
    while !rest.is_empty() {
        let n = match w.write_vectored(&rest[..rest.len().min(MAX_IOV)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Runs one request against the device; returns the encoded reply.
fn execute(
    device: &dyn BlockDevice,
    params: &TransmissionParams,
    req: &Request,
    pool: &Pool,
) -> Reply {
    let to = params.reply_to(&req.header);
    let mut out = Vec::new();
    let result = match req.op {
        Op::Read { offset, length, df } => {
            let mut buf = pool.take(length as usize);
            let planned = device
                .read_at(&mut buf, offset)
                .and_then(|()| plan_read_reply(&to, &buf, df));
            match planned {
                Ok(plan) => return Reply { plan, data: buf },
                Err(e) => {
                    pool.give(buf);
                    Some(e)
                }
            }
        }
        Op::Write { offset, .. } => device
            .write_at(&req.payload, offset)
            .and_then(|()| if req.fua { device.flush() } else { Ok(()) })
            .err(),
        Op::Flush => device.flush().err(),
        Op::Trim { offset, length } => device
            .trim(offset, length)
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
                    .write_zeroes(offset, length, !no_hole)
                    .and_then(|()| if req.fua { device.flush() } else { Ok(()) })
                    .err()
            }
        }
        Op::BlockStatus {
            offset,
            length,
            req_one,
            ref only,
        } => block_status(
            &mut out,
            device,
            params,
            &to,
            (offset, length),
            req_one,
            only,
        )
        .err(),
        Op::Disconnect => None,
    };
    match result {
        None if out.is_empty() => {
            let _ = write_ok(&mut out, &to);
        }
        None => {}
        Some(e) => {
            out.clear();
            let code = ErrorCode::from_io_error(&e);
            tracing::info!(command = ?req.header.command, offset = req.header.offset,
                error = %e, "request failed");
            let _ = write_error(&mut out, &to, code, &e.to_string());
        }
    }
    Reply::bytes(out)
}

/// Writes the reply to a block status request: a chunk per context the
/// client selected (or `only` those its payload named), `base:allocation`
/// first, the last marked done.
fn block_status(
    out: &mut Vec<u8>,
    device: &dyn BlockDevice,
    params: &TransmissionParams,
    to: &ReplyTo,
    (offset, len): (u64, u64),
    req_one: bool,
    only: &Option<Vec<u32>>,
) -> io::Result<()> {
    let wanted = |id: &u32| only.as_ref().is_none_or(|ids| ids.contains(id));
    let mut chunks = Vec::with_capacity(1 + params.qemu_contexts.len());
    if let Some(id) = params.base_allocation.filter(wanted) {
        chunks.push((id, device.block_status(offset, len)?));
    }
    for (id, context) in params.qemu_contexts.iter().filter(|(id, _)| wanted(id)) {
        let extents = match context {
            QemuContext::AllocationDepth => device.allocation_depth(offset, len)?,
            QemuContext::DirtyBitmap(name) => device.dirty_bitmap(name, offset, len)?,
        };
        chunks.push((*id, extents));
    }
    let last = chunks.len().saturating_sub(1);
    for (i, (id, extents)) in chunks.iter().enumerate() {
        write_block_status_chunk(out, to, *id, extents, len, req_one, i == last)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
