//! The NBD protocol, independent of storage and of the I/O runtime.
//!
//! * [`proto`] — wire constants, strong types, pure encode/decode functions;
//! * [`handshake`] — fixed-newstyle option haggling over any `Read + Write`;
//! * [`request`] — reading/validating transmission requests, writing replies.
//!
//! It calls storage only through [`crate::block::BlockDevice`].

pub mod handshake;
pub mod proto;
pub mod request;
