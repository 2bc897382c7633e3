//! A minimal HTTP client that connects from a chosen source address.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use socket2::{Domain, Socket, Type};

/// What a worker answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The worker's slot (`x-sticky-worker`).
    pub worker: u32,
    /// The worker's pid (`x-sticky-pid`).
    pub pid: u32,
    /// The whole response head and body.
    pub text: String,
}

/// How a request failed.
#[derive(Debug)]
pub enum Failure {
    /// Before the connection was established (refused, timed out, …).
    Connect(io::Error),
    /// After it was established: reset, closed without an answer, timed out, bad answer.
    AfterConnect(io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(err) => write!(f, "connect: {err}"),
            Self::AfterConnect(err) => write!(f, "after connect: {err}"),
        }
    }
}

/// One request on a new connection from `source` to `server`; panics on failure.
pub fn get(source: IpAddr, server: SocketAddr) -> Response {
    request(source, server).unwrap_or_else(|err| panic!("GET from {source} to {server}: {err}"))
}

/// One request on a new connection from `source` to `server`.
pub fn try_get(source: IpAddr, server: SocketAddr) -> io::Result<Response> {
    request(source, server).map_err(|(Failure::Connect(err) | Failure::AfterConnect(err))| err)
}

/// One request on a new connection from `source` to `server`, failures told by phase.
pub fn request(source: IpAddr, server: SocketAddr) -> Result<Response, Failure> {
    let mut stream = connect(source, server).map_err(Failure::Connect)?;
    exchange(&mut stream).map_err(Failure::AfterConnect)
}

/// A connection from `source` to `server`, with 10-second timeouts.
pub fn connect(source: IpAddr, server: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
    if source.is_ipv6() {
        // The fd00::/16 client addresses are routed to lo but not configured on it.
        socket.set_freebind_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(10))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(socket.into())
}

/// Sends one request on `stream` and reads the whole response.
pub fn exchange(stream: &mut std::net::TcpStream) -> io::Result<Response> {
    send_request(stream)?;
    read_response(stream)
}

/// Sends the request (the server answers once it has read it).
pub fn send_request(stream: &mut std::net::TcpStream) -> io::Result<()> {
    stream.write_all(b"GET / HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n")
}

/// Reads the whole response.
pub fn read_response(stream: &mut std::net::TcpStream) -> io::Result<Response> {
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let header = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in {text:?}")))
    };
    Ok(Response { worker: header("x-sticky-worker:")?, pid: header("x-sticky-pid:")?, text })
}
