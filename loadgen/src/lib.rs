//! The client core of sticky's bench (`cargo xtask bench`) and of its integration tests: a new
//! TCP connection from a chosen source address, one HTTP request on it, the whole response,
//! and which worker answered (the `x-sticky-worker` and `x-sticky-pid` headers every example
//! worker sends).
//!
//! It is kept to few system calls, because the bench runs it as fast as it can: the source
//! port is chosen at connect time (`IP_BIND_ADDRESS_NO_PORT`), not searched for at bind time,
//! and the send timeout bounds a blocking connect, as the receive timeout bounds the reads.
#![deny(missing_docs)]

#[cfg(feature = "quic")]
pub mod quic;

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use socket2::{Domain, Socket, Type};
use thiserror::Error;

/// The request: the root path, the connection closed after the response.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n";

/// The header naming the worker's slot.
pub const WORKER: &str = "x-sticky-worker:";

/// The header naming the worker's pid.
pub const PID: &str = "x-sticky-pid:";

/// How a request failed.
#[derive(Debug, Error)]
pub enum Failure {
    /// Before the connection was established (refused, timed out, …).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// After it was established: reset, closed without an answer, timed out, bad answer.
    #[error("after connect: {0}")]
    AfterConnect(io::Error),
}

impl From<Failure> for io::Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Connect(err) | Failure::AfterConnect(err) => err,
        }
    }
}

/// A connection from `source` (port chosen by the kernel) to `server`; `timeout` bounds the
/// connect and each later write and read. An IPv6 `source` need not be configured on an
/// interface (`IPV6_FREEBIND`): the tests route `fd00::/16` to `lo` without configuring it.
pub fn connect(source: IpAddr, server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
    if source.is_ipv6() {
        socket.set_freebind_v6(true)?;
    }
    setsockopt(&socket, IpBindAddressNoPort, &true)?;
    socket.set_write_timeout(Some(timeout))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&server.into())?;
    Ok(socket.into())
}

/// Sends [`REQUEST`] (the server answers once it has read it).
pub fn send_request(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(REQUEST)
}

/// Sends `prefix` (a PROXY protocol header, say) and [`REQUEST`] in one write.
pub fn send_request_after(stream: &mut TcpStream, prefix: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(prefix.len() + REQUEST.len());
    message.extend_from_slice(prefix);
    message.extend_from_slice(REQUEST);
    stream.write_all(&message)
}

/// Reads the whole response, up to the server's close.
pub fn read_response(stream: &mut TcpStream) -> io::Result<String> {
    let mut response = Vec::with_capacity(512);
    stream.read_to_end(&mut response)?;
    String::from_utf8(response).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// One request on a new connection from `source` to `server` (see [`connect`] for
/// `timeout`): the whole response, failures told by phase.
pub fn request(source: IpAddr, server: SocketAddr, timeout: Duration) -> Result<String, Failure> {
    request_after(source, server, timeout, &[])
}

/// [`request`], the request preceded by `prefix` (a PROXY protocol header, say).
pub fn request_after(
    source: IpAddr,
    server: SocketAddr,
    timeout: Duration,
    prefix: &[u8],
) -> Result<String, Failure> {
    let mut stream = connect(source, server, timeout).map_err(Failure::Connect)?;
    let sent = if prefix.is_empty() {
        send_request(&mut stream)
    } else {
        send_request_after(&mut stream, prefix)
    };
    sent.and_then(|()| read_response(&mut stream)).map_err(Failure::AfterConnect)
}

/// The number in header `name` (with its colon, e.g. [`WORKER`]) of `response`.
pub fn header(response: &str, name: &str) -> Option<u32> {
    response.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{Ipv4Addr, TcpListener},
        thread,
    };

    use super::*;

    const RESPONSE: &str =
        "HTTP/1.1 200 OK\r\nx-sticky-worker: 2\r\nx-sticky-pid: 4242\r\n\r\nok\n";

    /// A server on loopback that answers one request with [`RESPONSE`] and returns what it
    /// read and the client's address.
    fn serve_once() -> (SocketAddr, thread::JoinHandle<(Vec<u8>, SocketAddr)>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, peer) = listener.accept().unwrap();
            let mut request = vec![0; REQUEST.len()];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(RESPONSE.as_bytes()).unwrap();
            (request, peer)
        });
        (address, server)
    }

    #[test]
    fn a_request_comes_from_its_source_and_names_its_worker() {
        let (server, served) = serve_once();
        let source = IpAddr::V4(Ipv4Addr::new(127, 16, 0, 7));
        let response = request(source, server, Duration::from_secs(5)).unwrap();
        let (request, peer) = served.join().unwrap();
        assert_eq!(request, REQUEST);
        assert_eq!(peer.ip(), source);
        assert_eq!(response, RESPONSE);
        assert_eq!((header(&response, WORKER), header(&response, PID)), (Some(2), Some(4242)));
        assert_eq!(header(&response, "x-missing:"), None);
    }

    #[test]
    fn a_refused_connection_fails_before_connect() {
        // A port nothing listens on: bound, then closed.
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        let failure =
            request(Ipv4Addr::LOCALHOST.into(), free, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&failure, Failure::Connect(err) if err.kind() == io::ErrorKind::ConnectionRefused)
        );
        assert!(failure.to_string().starts_with("connect: "), "{failure}");
    }
}
