//! Behind a load balancer: the real client's address, read from the first bytes of a trusted
//! proxy's connection without consuming them ([`read_client`]), so that a client reaches the
//! same worker directly or through a proxy, and the worker still receives every byte.
//!
//! - [`header`]: the PROXY protocol (v1, v2), `X-Forwarded-For` and `Forwarded`, as pure
//!   functions of the bytes so far, bounded in length;
//! - `peek`: peeking at a connection until the header is complete, bounded in time.

pub mod header;
mod peek;

pub use peek::{Claim, Failure, read_client, read_client_now};
