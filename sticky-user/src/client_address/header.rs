//! Reading the client's address from the first bytes a trusted proxy sends: a PROXY protocol
//! header (v1 or v2), or the `X-Forwarded-For` / `Forwarded` header of the first HTTP request.
//! Pure functions of the bytes peeked so far, bounded in length.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};

use crate::config::AddressSource;

/// The PROXY protocol v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The start of a PROXY protocol v1 line.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// The longest v2 header sticky reads: the fixed 16 bytes and the largest address block.
pub const V2_MAX: usize = 16 + 216;
/// The longest HTTP request head sticky reads.
pub const HTTP_HEAD_MAX: usize = 8 * 1024;
/// The most header lines read from a request head.
const HTTP_HEADERS_MAX: usize = 100;

/// What the bytes so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// More bytes are needed.
    Incomplete,
    /// The client's address.
    Client(IpAddr),
    /// A well-formed header that names no client (PROXY v2 `LOCAL`, `PROXY UNKNOWN`, no
    /// forwarding header): the connection is the proxy's own.
    Proxy,
    /// The header is broken: the connection is closed.
    Invalid(Invalid),
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// It does not parse.
    Malformed,
    /// It is longer than sticky reads.
    Oversized,
}

/// The most bytes to peek for `source`.
pub fn limit(source: AddressSource) -> usize {
    match source {
        AddressSource::ProxyProtocol => V2_MAX,
        AddressSource::XForwardedFor | AddressSource::Forwarded => HTTP_HEAD_MAX,
    }
}

/// Reads `bytes`, the start of a connection, for the client's address in `source`. In a chain
/// of forwarding entries, the client is the last one that is not a `trusted` proxy.
pub fn read(source: AddressSource, bytes: &[u8], trusted: impl Fn(IpAddr) -> bool) -> Reading {
    match source {
        AddressSource::ProxyProtocol => proxy_protocol(bytes),
        AddressSource::XForwardedFor => http(bytes, |head| forwarded_for(head, &trusted)),
        AddressSource::Forwarded => http(bytes, |head| forwarded(head, &trusted)),
    }
}

/// The address a connection's first bytes claim for the client, believing any header: what
/// the demo worker shows.
pub fn claimed(bytes: &[u8]) -> Option<IpAddr> {
    let found = |reading| match reading {
        Reading::Client(address) => Some(address),
        _ => None,
    };
    if bytes.starts_with(V1_PREFIX) || bytes.starts_with(V2_SIGNATURE) {
        return found(proxy_protocol(bytes));
    }
    let nothing_trusted = |_| false;
    found(read(AddressSource::XForwardedFor, bytes, nothing_trusted))
        .or_else(|| found(read(AddressSource::Forwarded, bytes, nothing_trusted)))
}

/// The length of the PROXY header `bytes` start with: 0 if they start with none, `None` while
/// it is incomplete (or too long to be one).
pub fn proxy_header_length(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(V2_SIGNATURE) {
        let length = bytes.get(14..16)?;
        let end = 16 + usize::from(u16::from_be_bytes([length[0], length[1]]));
        (bytes.len() >= end).then_some(end)
    } else if bytes.starts_with(V1_PREFIX) {
        let line = &bytes[..bytes.len().min(V1_MAX)];
        line.windows(2).position(|w| w == b"\r\n").map(|end| end + 2)
    } else {
        Some(0)
    }
}

fn proxy_protocol(bytes: &[u8]) -> Reading {
    let starts = |prefix: &[u8]| bytes.starts_with(prefix) || prefix.starts_with(bytes);
    if starts(V2_SIGNATURE) {
        let Some(length) = bytes.get(14..16) else { return Reading::Incomplete };
        let end = 16 + usize::from(u16::from_be_bytes([length[0], length[1]]));
        if end > V2_MAX {
            return Reading::Invalid(Invalid::Oversized);
        }
        let Some(header) = bytes.get(..end) else { return Reading::Incomplete };
        match v2::Header::try_from(header) {
            Ok(header) => match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => client(a.source_address.into()),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => client(a.source_address.into()),
                // LOCAL (health checks), UNSPEC or Unix sockets: the proxy's own connection.
                _ => Reading::Proxy,
            },
            Err(_) => Reading::Invalid(Invalid::Malformed),
        }
    } else if starts(V1_PREFIX) {
        let line = &bytes[..bytes.len().min(V1_MAX)];
        let Some(end) = line.windows(2).position(|w| w == b"\r\n") else {
            let full = bytes.len() >= V1_MAX;
            return if full { Reading::Invalid(Invalid::Oversized) } else { Reading::Incomplete };
        };
        match v1::Header::try_from(&bytes[..end + 2]) {
            Ok(header) => match header.addresses {
                v1::Addresses::Tcp4(a) => client(a.source_address.into()),
                v1::Addresses::Tcp6(a) => client(a.source_address.into()),
                v1::Addresses::Unknown => Reading::Proxy,
            },
            Err(_) => Reading::Invalid(Invalid::Malformed),
        }
    } else {
        Reading::Invalid(Invalid::Malformed)
    }
}

fn client(address: IpAddr) -> Reading {
    Reading::Client(address.to_canonical())
}

/// Parses the HTTP request head in `bytes` and hands its headers to `find`.
fn http(bytes: &[u8], find: impl FnOnce(&[httparse::Header]) -> Reading) -> Reading {
    let mut headers = [httparse::EMPTY_HEADER; HTTP_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head = &bytes[..bytes.len().min(HTTP_HEAD_MAX)];
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => find(request.headers),
        Ok(httparse::Status::Partial) if head.len() >= HTTP_HEAD_MAX => {
            Reading::Invalid(Invalid::Oversized)
        }
        Ok(httparse::Status::Partial) => Reading::Incomplete,
        Err(httparse::Error::TooManyHeaders) => Reading::Invalid(Invalid::Oversized),
        Err(_) => Reading::Invalid(Invalid::Malformed),
    }
}

/// The values of every header `name`, in order, split at commas.
fn entries<'h>(headers: &'h [httparse::Header], name: &str) -> Option<Vec<&'h str>> {
    let mut entries = Vec::new();
    for header in headers.iter().filter(|header| header.name.eq_ignore_ascii_case(name)) {
        let value = std::str::from_utf8(header.value).ok()?;
        entries.extend(value.split(',').map(str::trim).filter(|entry| !entry.is_empty()));
    }
    Some(entries)
}

/// `X-Forwarded-For: client, proxy1, proxy2`: each proxy appends the address it saw.
fn forwarded_for(headers: &[httparse::Header], trusted: impl Fn(IpAddr) -> bool) -> Reading {
    match entries(headers, "x-forwarded-for") {
        Some(entries) => walk(entries.into_iter().map(hop), trusted),
        None => Reading::Invalid(Invalid::Malformed),
    }
}

/// `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"` (RFC 7239): the `for=`
/// of each element.
fn forwarded(headers: &[httparse::Header], trusted: impl Fn(IpAddr) -> bool) -> Reading {
    let Some(elements) = entries(headers, "forwarded") else {
        return Reading::Invalid(Invalid::Malformed);
    };
    let hops = elements.into_iter().filter_map(|element| {
        element.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.trim().eq_ignore_ascii_case("for").then(|| hop(value.trim().trim_matches('"')))
        })
    });
    walk(hops, trusted)
}

/// One hop of a forwarding chain: an address, `None` for one the proxy does not know
/// (`unknown`, or an obfuscated `_name`), or an error.
fn hop(text: &str) -> Result<Option<IpAddr>, ()> {
    if text.eq_ignore_ascii_case("unknown") || text.starts_with('_') {
        return Ok(None);
    }
    node(text).map(Some).ok_or(())
}

/// From the right, the first hop that is not a trusted proxy; the leftmost if all are. An
/// unknown hop there hides the client: the connection counts as the proxy's.
fn walk(
    hops: impl DoubleEndedIterator<Item = Result<Option<IpAddr>, ()>>,
    trusted: impl Fn(IpAddr) -> bool,
) -> Reading {
    let mut last = None;
    for hop in hops.rev() {
        match hop {
            Err(()) => return Reading::Invalid(Invalid::Malformed),
            Ok(None) => return Reading::Proxy,
            Ok(Some(address)) => {
                let address = address.to_canonical();
                if !trusted(address) {
                    return Reading::Client(address);
                }
                last = Some(address);
            }
        }
    }
    last.map_or(Reading::Proxy, Reading::Client)
}

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn node(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|address| address.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;
