//! The NBD protocol, independent of storage and of the I/O runtime.
//!
//! * [`proto`] — wire constants, strong types, pure encode/decode functions;
//! * [`export`] — what an export offers (size, flags, block sizes, contexts);
//! * [`handshake`] — fixed-newstyle option haggling over any `Read + Write`;
//! * [`request`] — reading and validating transmission requests;
//! * [`reply`] — writing replies.
//!
//! It calls storage only through [`crate::block::BlockDevice`].

pub mod export;
pub mod handshake;
pub mod proto;
pub mod reply;
pub mod request;
