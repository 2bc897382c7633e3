//! Peeking (MSG_PEEK) at a trusted proxy's connection until its header is complete, within the
//! configured time: nothing is consumed, so the worker reads the header itself.

use std::{io, net::IpAddr, os::fd::AsRawFd as _};

use nix::sys::socket::{MsgFlags, recv};
use tokio::{io::Interest, net::TcpStream};

use super::header::{self, Invalid, Reading};
use crate::config::{AddressSource, ClientAddress};

/// Why a trusted proxy's connection was closed without reaching a worker: the label of
/// `sticky_client_address_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The header does not parse.
    Malformed,
    /// The header is longer than sticky reads.
    Oversized,
    /// The header did not arrive in time.
    Timeout,
    /// The proxy closed (or reset) the connection before the header was complete.
    Closed,
    /// Too many connections were waiting for their header already.
    Overloaded,
}

impl Failure {
    /// Every failure, in the order of their counters.
    pub const ALL: [Failure; 5] =
        [Self::Malformed, Self::Oversized, Self::Timeout, Self::Closed, Self::Overloaded];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Overloaded => "overloaded",
        }
    }
}

/// The client's address in `stream`'s header if it has arrived already (the common case: a
/// proxy sends it with the connection's first bytes), without waiting; `None` while it is
/// incomplete, or longer than this first look reads.
pub fn read_client_now(stream: &TcpStream, rule: &ClientAddress) -> Option<Result<Claim, Failure>> {
    let mut buffer = [0u8; 2048];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let length = recv(stream.as_raw_fd(), &mut buffer, flags).ok().filter(|&n| n > 0)?;
    match header::read(rule.source, &buffer[..length], |peer| rule.trusts(peer)) {
        Reading::Incomplete => None,
        reading => Some(outcome(reading, header_length(rule, &buffer[..length]))),
    }
}

/// What a trusted proxy's header says of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The client's address (`None`: a well-formed header that names no client, the proxy's
    /// own connection).
    pub client: Option<IpAddr>,
    /// The length of the PROXY protocol header the stream starts with (0 for an HTTP header,
    /// which is part of the request).
    pub header: usize,
}

/// What `stream`'s header says, read as `rule` says within its timeout.
pub async fn read_client(stream: &TcpStream, rule: &ClientAddress) -> Result<Claim, Failure> {
    let reading = tokio::time::timeout(rule.timeout, peek_header(stream, rule)).await;
    let (reading, header) = reading.map_err(|_elapsed| Failure::Timeout)?;
    outcome(reading, header)
}

/// The length of the PROXY header `bytes` start with, under the proxy protocol.
fn header_length(rule: &ClientAddress, bytes: &[u8]) -> usize {
    match rule.source {
        AddressSource::ProxyProtocol => header::proxy_header_length(bytes).unwrap_or(0),
        AddressSource::XForwardedFor | AddressSource::Forwarded => 0,
    }
}

/// What a complete reading means for the connection.
fn outcome(reading: Reading, header: usize) -> Result<Claim, Failure> {
    match reading {
        Reading::Client(address) => Ok(Claim { client: Some(address), header }),
        Reading::Proxy => Ok(Claim { client: None, header }),
        Reading::Invalid(Invalid::Malformed) => Err(Failure::Malformed),
        Reading::Invalid(Invalid::Oversized) => Err(Failure::Oversized),
        Reading::Incomplete => Err(Failure::Closed),
    }
}

/// Peeks until the header is complete or broken, with the PROXY header's length;
/// [`Reading::Incomplete`] if the stream ends or fails first.
async fn peek_header(stream: &TcpStream, rule: &ClientAddress) -> (Reading, usize) {
    let mut buffer = vec![0; header::limit(rule.source)];
    let mut seen = 0;
    loop {
        let Ok(length) = peek_more(stream, &mut buffer, seen).await else {
            return (Reading::Incomplete, 0);
        };
        if length == 0 {
            return (Reading::Incomplete, 0);
        }
        seen = length;
        match header::read(rule.source, &buffer[..length], |peer| rule.trusts(peer)) {
            Reading::Incomplete if length == buffer.len() => {
                return (Reading::Invalid(Invalid::Oversized), 0);
            }
            Reading::Incomplete => continue,
            done => return (done, header_length(rule, &buffer[..length])),
        }
    }
}

/// Peeks at what has arrived once it is more than the `seen` bytes; 0 once the peer closed.
///
/// A peek leaves the data there, so the socket stays readable: before waiting for more, the
/// readiness is cleared and the socket peeked once more, and only data arriving after that
/// wakes the wait. The peer's FIN is a readiness that cannot be cleared: once it has come,
/// nothing more will, and the bytes seen are all there is.
async fn peek_more(stream: &TcpStream, buffer: &mut [u8], seen: usize) -> io::Result<usize> {
    let peek = |buffer: &mut [u8]| {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        recv(stream.as_raw_fd(), buffer, flags).map_err(io::Error::from)
    };
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        match stream.try_io(Interest::READABLE, || peek(buffer)) {
            Ok(length) if length != seen || length == 0 => return Ok(length),
            // Without this, the wait above would return at once forever: a loop that never
            // yields, which froze the loader's whole runtime, its timeouts included.
            Ok(_) if ready.is_read_closed() => return Ok(0),
            Ok(_) => {
                // Nothing new: clear the readiness, then look once more.
                let _ = stream.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
                match peek(buffer) {
                    Ok(length) if length != seen => return Ok(length),
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}
