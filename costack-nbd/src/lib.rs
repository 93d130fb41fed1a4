//! `costack-nbd`: an NBD (Network Block Device) server.
//!
//! The protocol half is independent of the I/O runtime; the serving half
//! runs it on costack coroutines:
//!
//! * [`proto`] — wire constants, strong types, pure encode/decode functions;
//! * [`handshake`] — fixed-newstyle option haggling over any `Read + Write`;
//! * [`request`] — reading/validating transmission requests, writing replies;
//! * [`backend`] — the [`backend::BlockDevice`] storage trait and the sparse
//!   in-memory [`backend::MemDisk`];
//! * [`file`](mod@file) — a raw image file as a block device, through `costack::fs`;
//! * [`qcow2`] — qcow2 images (read-only), with compressed clusters and
//!   backing files;
//! * [`server`] — one coroutine per connection and per request;
//! * `tls` (feature `tls`) — `NBD_OPT_STARTTLS` with OpenSSL, on
//!   coroutine I/O;
//! * [`cli`] — the qemu-nbd style command line.
//!
//! A connection's coroutine runs [`handshake::negotiate`], builds
//! [`request::TransmissionParams`] from the result, then repeatedly calls
//! [`request::read_request`] and spawns a coroutine per request, which
//! executes it on a [`backend::BlockDevice`] and answers with the
//! `request::write_*` functions. All of it reads like blocking code.

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod file;
pub mod handshake;
pub mod proto;
pub mod qcow2;
pub mod request;
pub mod server;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
