//! A connection's requests: running them on the device ([`execute`]) and
//! sending their replies, batched ([`Outbox`]), with the buffers they use
//! ([`Pool`]). (Reading them is [`incoming`](super::incoming)'s.)

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, Write};

use costack::aio;
use costack::net::SendSlice;
use costack::sync::{CoMutex, CoSemaphore};

use super::{MAX_BYTES_IN_FLIGHT, MAX_IN_FLIGHT};
use crate::block::BlockDevice;
use crate::protocol::handshake::QemuContext;
use crate::protocol::proto::{ErrorCode, ReplyTo};
use crate::protocol::reply::{
    plan_read_reply, plan_unscanned_read_reply, write_block_status_chunk, write_error, write_ok,
    ReplyPiece, ReplyPlan,
};
use crate::protocol::request::{Op, Request, TransmissionParams};

/// A request's share of [`MAX_BYTES_IN_FLIGHT`].
pub(super) fn data_cost(op: &Op) -> usize {
    let len = match *op {
        Op::Read { length, .. } | Op::Write { length, .. } => length as usize,
        _ => 0,
    };
    len.min(MAX_BYTES_IN_FLIGHT)
}

/// Spare data buffers of a connection (for reads and write payloads), so
/// that requests neither allocate nor zero memory each time.
#[derive(Default)]
pub(super) struct Pool(RefCell<Vec<Vec<u8>>>);

/// Buffers kept per connection (about the requests in flight).
const POOL_BUFFERS: usize = MAX_IN_FLIGHT;
/// Larger buffers are freed, not kept.
const POOL_MAX_BYTES: usize = 4 << 20;

impl Pool {
    /// A buffer of `len` initialised bytes (contents unspecified).
    pub(super) fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.0.borrow_mut().pop().unwrap_or_default();
        if buf.capacity() < len {
            // Growing would copy the old contents for nothing.
            buf.clear();
        }
        // Only bytes not initialised before are zeroed.
        buf.resize(len, 0);
        buf
    }

    pub(super) fn give(&self, buf: Vec<u8>) {
        let mut pool = self.0.borrow_mut();
        if buf.capacity() > 0 && buf.capacity() <= POOL_MAX_BYTES && pool.len() < POOL_BUFFERS {
            pool.push(buf);
        }
    }
}

/// An encoded reply: the plan of its bytes ([`ReplyPlan`]) and the read
/// data it refers to (none but for reads): a pooled buffer, or a range of
/// the image file's mapping.
pub(super) struct Reply<'d> {
    plan: ReplyPlan,
    data: Vec<u8>,
    mapped: Option<SendSlice<'d>>,
}

impl<'d> Reply<'d> {
    pub(super) fn bytes(head: Vec<u8>) -> Reply<'d> {
        let plan = ReplyPlan {
            pieces: vec![ReplyPiece::Head(0..head.len())],
            head,
        };
        Reply {
            plan,
            data: Vec::new(),
            mapped: None,
        }
    }

    fn slices(&self) -> impl Iterator<Item = SendSlice<'_>> {
        self.plan.pieces.iter().map(|p| match p {
            ReplyPiece::Head(r) => SendSlice::new(&self.plan.head[r.clone()]),
            ReplyPiece::Data(r) => match self.mapped {
                Some(m) => m.slice(r.clone()),
                None => SendSlice::new(&self.data[r.clone()]),
            },
        })
    }
}

/// Most buffers one `sendmsg` takes (`IOV_MAX`).
const MAX_IOV: usize = 1024;

/// Where replies go: the connection's socket, or a TLS session over it.
pub trait ReplySink {
    /// Whether [`send_slices`](ReplySink::send_slices) takes mapped
    /// slices: a plain socket does, TLS (whose encryption would read the
    /// bytes) does not.
    fn takes_mapped(&self) -> bool;

    /// Sends from `bufs` (see `costack::net::TcpStream::send_slices`);
    /// returns how many bytes went.
    ///
    /// # Errors
    /// As a write's; `InvalidInput` for a mapped slice where
    /// [`takes_mapped`](ReplySink::takes_mapped) is false.
    fn send_slices(&self, bufs: &[SendSlice<'_>]) -> io::Result<usize>;
}

impl ReplySink for costack::net::TcpStream {
    fn takes_mapped(&self) -> bool {
        true
    }
    fn send_slices(&self, bufs: &[SendSlice<'_>]) -> io::Result<usize> {
        costack::net::TcpStream::send_slices(self, bufs)
    }
}

impl ReplySink for costack::net::UnixStream {
    fn takes_mapped(&self) -> bool {
        true
    }
    fn send_slices(&self, bufs: &[SendSlice<'_>]) -> io::Result<usize> {
        costack::net::UnixStream::send_slices(self, bufs)
    }
}

/// `write_vectored` of `bufs` on a stream that is only `Write` (TLS, a
/// test's sink), for a [`ReplySink`] that takes no mapped slices.
///
/// # Errors
/// As the write's; `InvalidInput` if a slice is mapped.
pub fn write_memory_slices<W: Write>(mut w: W, bufs: &[SendSlice<'_>]) -> io::Result<usize> {
    let slices = bufs
        .iter()
        .map(|b| b.as_bytes().map(IoSlice::new))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapped bytes sent to a stream that reads them",
            )
        })?;
    w.write_vectored(&slices)
}

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
pub(super) struct Outbox<'s, S> {
    /// Replies, each with its share of the byte budget.
    queue: RefCell<Vec<(Reply<'s>, usize)>>,
    /// The socket's write side.
    sender: CoMutex<Sender<'s, S>>,
    /// A permit per request until its reply is sent.
    pub(super) in_flight: CoSemaphore,
    /// Bytes of request data held (see [`MAX_BYTES_IN_FLIGHT`]).
    pub(super) budget: CoSemaphore,
    pub(super) pool: Pool,
    /// A write failed: later replies are dropped (the reader sees the
    /// connection end).
    pub(super) failed: Cell<bool>,
    /// The connection reads no more requests: a failed reply cancels the
    /// requests still running.
    pub(super) closing: Cell<bool>,
}

pub(super) struct Sender<'s, S> {
    stream: &'s S,
    peer: String,
}

impl<'s, S: ReplySink> Outbox<'s, S> {
    pub(super) fn new(stream: &'s S, peer: String) -> Self {
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
    pub(super) fn send(&self, reply: Reply<'s>, cost: usize) -> bool {
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

/// Writes every reply of `batch`, in as few `sendmsg` calls as it takes.
fn send_all<S: ReplySink>(stream: &S, batch: &[&Reply<'_>]) -> io::Result<()> {
    let mut slices: Vec<SendSlice<'_>> = batch.iter().flat_map(|r| r.slices()).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = match stream.send_slices(&rest[..rest.len().min(MAX_IOV)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        SendSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Writes the bytes of `req`'s payload at `offset` that the reader did
/// not store already ([`Request::stored`]).
fn write_unstored(device: &dyn BlockDevice, req: &Request, offset: u64) -> io::Result<()> {
    let stored = &req.stored;
    if stored.is_empty() {
        return device.write_at(&req.payload, offset);
    }
    let (head, tail) = (&req.payload[..stored.start], &req.payload[stored.end..]);
    if !head.is_empty() {
        device.write_at(head, offset)?;
    }
    if !tail.is_empty() {
        device.write_at(tail, offset + stored.end as u64)?;
    }
    Ok(())
}

/// Reads of at least this many bytes are sent from the image file's
/// mapping when the device offers one ([`BlockDevice::read_mapped`]):
/// for smaller ones, asking the page cache costs about what the copy
/// saves.
const MAPPED_READ_MIN: usize = 16 << 10;

/// Runs one request against the device; returns the encoded reply.
///
/// With `mapped` (a plain socket: see [`ReplySink::takes_mapped`]), a
/// large read whose bytes the device has mapped and cached is sent from
/// the mapping, not read: its zero blocks then go as data, not holes.
pub(super) fn execute<'d>(
    device: &'d dyn BlockDevice,
    params: &TransmissionParams,
    req: &Request,
    pool: &Pool,
    mapped: bool,
) -> Reply<'d> {
    let to = params.reply_to(&req.header);
    let mut out = Vec::new();
    let result = match req.op {
        Op::Read { offset, length, df } => {
            let len = length as usize;
            if mapped && len >= MAPPED_READ_MIN {
                if let Some(slice) = device.read_mapped(offset, len) {
                    if let Ok(plan) = plan_unscanned_read_reply(&to, len, df) {
                        return Reply {
                            plan,
                            data: Vec::new(),
                            mapped: Some(slice),
                        };
                    }
                }
            }
            let mut buf = pool.take(len);
            let planned = device
                .read_at(&mut buf, offset)
                .and_then(|()| plan_read_reply(&to, &buf, df));
            match planned {
                Ok(plan) => {
                    return Reply {
                        plan,
                        data: buf,
                        mapped: None,
                    }
                }
                Err(e) => {
                    pool.give(buf);
                    Some(e)
                }
            }
        }
        Op::Write { offset, .. } => write_unstored(device, req, offset)
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
#[path = "requests_tests.rs"]
mod tests;
