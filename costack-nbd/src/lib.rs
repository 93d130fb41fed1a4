//! `costack-nbd`: an NBD (Network Block Device) server.
//!
//! This library holds the protocol half of the server, independent of the
//! I/O runtime:
//!
//! * [`proto`] — wire constants, strong types, pure encode/decode functions;
//! * [`handshake`] — fixed-newstyle option haggling over any `Read + Write`;
//! * [`request`] — reading/validating transmission requests, writing replies;
//! * [`backend`] — the [`backend::BlockDevice`] storage trait and the sparse
//!   in-memory [`backend::MemDisk`];
//! * [`cli`] — the qemu-nbd style command line.
//!
//! A server loop accepts a connection, runs [`handshake::negotiate`], builds
//! [`request::TransmissionParams`] from the result, then repeatedly calls
//! [`request::read_request`], executes the operation on a
//! [`backend::BlockDevice`] and answers with the `request::write_*`
//! functions.

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod handshake;
pub mod proto;
pub mod request;
