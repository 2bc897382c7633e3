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

/// One request on a new connection from `source` to `server`; panics on failure.
pub fn get(source: IpAddr, server: SocketAddr) -> Response {
    try_get(source, server).unwrap_or_else(|err| panic!("GET from {source} to {server}: {err}"))
}

/// One request on a new connection from `source` to `server`.
pub fn try_get(source: IpAddr, server: SocketAddr) -> io::Result<Response> {
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
    if source.is_ipv6() {
        // The fd00::/16 client addresses are routed to lo but not configured on it.
        socket.set_freebind_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(10))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let header = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in {text:?}")))
    };
    Ok(Response { worker: header("x-sticky-worker:")?, pid: header("x-sticky-pid:")?, text })
}
