//! `costack-nbd`: an NBD (Network Block Device) server.
//!
//! Four layers, each knowing only the ones below it:
//!
//! * [`protocol`] — the NBD protocol, independent of storage and of the
//!   I/O runtime: wire types ([`protocol::proto`]), the handshake
//!   ([`protocol::handshake`]) and transmission requests and replies
//!   ([`protocol::request`]);
//! * [`block`] — block drivers behind the [`block::BlockDevice`] trait,
//!   one module per format: [`block::mem`] (a sparse memory disk),
//!   [`block::raw`] (a raw image file, through `costack::fs`) and
//!   [`block::qcow2`] (qcow2 images);
//! * [`server`] — one coroutine per connection and per request (and
//!   `tls`, feature `tls`: `NBD_OPT_STARTTLS` with OpenSSL, on coroutine
//!   I/O);
//! * [`cli`] — the qemu-nbd style command line.
//!
//! A connection's coroutine runs the handshake, builds
//! [`protocol::request::TransmissionParams`] from the result, then reads
//! requests and spawns a coroutine per request, which executes it on a
//! [`block::BlockDevice`] and answers with the `protocol::reply::write_*`
//! functions. All of it reads like blocking code.

#![warn(missing_docs)]

pub mod activation;
pub mod block;
pub mod cli;
pub mod daemon;
pub mod list;
pub mod objects;
pub mod protocol;
pub mod server;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls_client;
