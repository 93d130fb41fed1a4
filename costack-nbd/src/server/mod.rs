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
//!
//! Connection handling lives in this folder, one concern per file:
//!
//! * `mod.rs` — [`Shared`], what every connection and loop thread shares
//!   (the export, the device, the counts, the stop), and the limits;
//! * [`accept`] — the event loops (the main thread's and the worker
//!   [`IoThread`](costack::aio::IoThread)s), the accept loop spreading
//!   connections over them, and the stop: [`accept::Server`];
//! * `connection` — one connection: [`serve`] (the handshake, within its
//!   time limit, upgraded to TLS on `NBD_OPT_STARTTLS`), then the
//!   transmission phase, with the guards that register it in [`Shared`];
//! * `incoming` — reading a connection's requests, large write payloads
//!   received straight into the image's page cache where they can be
//!   ([`PayloadSource`]);
//! * `requests` — running a connection's requests on the device, and
//!   sending their replies in batches;
//! * `slots` — the `-e/--shared` limit ([`Slots`]), checked by the accept
//!   loop and by connections that finished negotiating;
//! * [`admission`] — how many connections may negotiate at once, and
//!   which to drop for a newcomer;
//! * [`lifecycle`] — when the server stops, told to every loop.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::block::BlockDevice;
use crate::protocol::handshake::HandshakeConfig;

pub mod accept;
pub mod admission;
mod connection;
mod incoming;
pub mod lifecycle;
mod requests;
mod slots;

pub use connection::serve;
pub use incoming::PayloadSource;
pub use requests::{write_memory_slices, ReplySink};
pub use slots::Slots;

/// Requests one client may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes of request data (write payloads, read results) one client may have
/// in memory at once: without it, 64 reads of 32 MiB from a client that
/// does not read its replies would hold 2 GiB. A larger request takes the
/// whole budget.
pub const MAX_BYTES_IN_FLIGHT: usize = 32 << 20;

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
    pub slots: Slots,
    /// How long a client may take to negotiate (`None`: as long as it
    /// likes); past it the connection is dropped.
    pub handshake_limit: Option<Duration>,
    /// How many connections may negotiate at once; a newcomer beyond it
    /// waits until one finishes or stalls (see [`admission`]).
    pub max_negotiating: usize,
    /// TLS credentials, when `NBD_OPT_STARTTLS` is offered
    /// ([`HandshakeConfig::tls`] not `Off`).
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// When the server stops, and what waits for it (see
    /// [`Lifecycle`](lifecycle::Lifecycle)).
    pub lifecycle: lifecycle::Lifecycle,
    /// Connections still negotiating, oldest first.
    negotiating: admission::Negotiations,
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
            slots: Slots::default(),
            handshake_limit: limit,
            max_negotiating: max_negotiating.max(1),
            #[cfg(feature = "tls")]
            tls: None,
            lifecycle: lifecycle::Lifecycle::default(),
            negotiating: admission::Negotiations::default(),
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
    /// (see [`admission`]). Returns how many were
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
