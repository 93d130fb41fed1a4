//! Reading a connection's requests ([`read_incoming`]): the parser the
//! fuzzers and tests drive, with each write's payload read into a pooled
//! buffer or, where the device offers it, received straight into the
//! image's page cache ([`BlockDevice::write_mapped`]).

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Range;

use costack::net::RecvSlice;
use costack::sync::CoSemaphore;

use super::requests::{data_cost, Pool};
use crate::block::BlockDevice;
use crate::protocol::request::{read_request_with, Incoming, Op, ReadError, TransmissionParams};

/// Writes of at least this many bytes are received into the image's
/// mapping when the device offers one: for smaller ones the saved copy is
/// worth less than the extra receive.
const MAPPED_WRITE_MIN: usize = 64 << 10;

/// A stream whose bytes can be received into a [`RecvSlice`]: a plain
/// socket, not TLS (whose records must be decrypted first).
pub trait PayloadSource {
    /// Receives into `buf` (see `costack::net::TcpStream::recv_slice`);
    /// `None` if this stream cannot.
    fn recv_slice(&self, buf: &mut RecvSlice<'_>) -> Option<io::Result<usize>>;
}

impl PayloadSource for costack::net::TcpStream {
    fn recv_slice(&self, buf: &mut RecvSlice<'_>) -> Option<io::Result<usize>> {
        Some(costack::net::TcpStream::recv_slice(self, buf))
    }
}

impl PayloadSource for costack::net::UnixStream {
    fn recv_slice(&self, buf: &mut RecvSlice<'_>) -> Option<io::Result<usize>> {
        Some(costack::net::UnixStream::recv_slice(self, buf))
    }
}

impl<T: PayloadSource + ?Sized> PayloadSource for &T {
    fn recv_slice(&self, buf: &mut RecvSlice<'_>) -> Option<io::Result<usize>> {
        (**self).recv_slice(buf)
    }
}

/// Reads one request with the parser the fuzzers and tests drive
/// ([`read_request_with`]), a write's payload going into a pooled buffer
/// once its share of the connection's byte budget is free (the share goes
/// back when the reply is sent).
///
/// With `device` (a stream that can: see [`PayloadSource`]), a large
/// write's payload is received into the device's mapping instead, all but
/// what the reader had buffered; the request's
/// [`stored`](crate::protocol::request::Request::stored) says which bytes.
pub(super) fn read_incoming<R: Read + PayloadSource>(
    r: &mut BufReader<R>,
    p: &TransmissionParams,
    pool: &Pool,
    budget: &CoSemaphore,
    device: Option<&dyn BlockDevice>,
) -> Result<Incoming, ReadError> {
    let target = Cell::new(None);
    let stored = Cell::new(0..0);
    let take = |op: &Op, len: usize| {
        budget.acquire(data_cost(op));
        if let (Op::Write { offset, .. }, Some(device)) = (op, device) {
            if len >= MAPPED_WRITE_MIN {
                target.set(device.write_mapped(*offset, len));
            }
        }
        pool.take(len)
    };
    let fill = |r: &mut BufReader<R>, buf: &mut [u8]| match target.take() {
        Some(into) => read_payload_mapped(r, buf, into).map(|s| stored.set(s)),
        None => read_payload(r, buf),
    };
    let mut incoming = read_request_with(r, p, take, fill)?;
    if let Incoming::Request(req) = &mut incoming {
        req.stored = stored.take();
    }
    Ok(incoming)
}

/// Fills `buf` from `r`: what `r` has buffered, then the rest straight
/// from the stream. `BufReader` would pass a payload shorter than its
/// buffer through the buffer, copying it once more.
fn read_payload<R: Read>(r: &mut BufReader<R>, buf: &mut [u8]) -> io::Result<()> {
    let n = take_buffered(r, buf);
    r.get_mut().read_exact(&mut buf[n..])
}

/// Moves what `r` has buffered (up to `buf`'s length) to the front of
/// `buf`; returns how many bytes.
fn take_buffered<R: Read>(r: &mut BufReader<R>, buf: &mut [u8]) -> usize {
    let n = r.buffer().len().min(buf.len());
    buf[..n].copy_from_slice(&r.buffer()[..n]);
    r.consume(n);
    n
}

/// Reads a payload as [`read_payload`] does, but receives what `r` has
/// not buffered into `into` (the device's mapping of the payload's
/// range), not into `buf`; returns the range of `buf` so stored. A
/// receive the mapping refuses (`EFAULT`: the file was truncated under
/// it) takes nothing from the socket, so the rest is read into `buf` as
/// usual.
fn read_payload_mapped<R: Read + PayloadSource>(
    r: &mut BufReader<R>,
    buf: &mut [u8],
    mut into: RecvSlice<'_>,
) -> io::Result<Range<usize>> {
    let n = take_buffered(r, buf);
    into.advance(n);
    let mut at = n;
    while at < buf.len() {
        match r.get_ref().recv_slice(&mut into) {
            Some(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(Ok(k)) => {
                into.advance(k);
                at += k;
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) if e.raw_os_error() == Some(libc::EFAULT) => break,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    r.get_mut().read_exact(&mut buf[at..])?;
    Ok(n..at)
}

#[cfg(test)]
#[path = "incoming_tests.rs"]
mod tests;
