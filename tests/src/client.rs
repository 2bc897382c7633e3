//! A minimal HTTP client that connects from a chosen source address: `loadgen`'s core (shared
//! with the bench), with 10-second timeouts and the answering worker's slot and pid.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

pub use loadgen::Failure;

/// How long a connect, and each write and read, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

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
    request(source, server).unwrap_or_else(|err| panic!("GET from {source} to {server}: {err}"))
}

/// One request on a new connection from `source` to `server`.
pub fn try_get(source: IpAddr, server: SocketAddr) -> io::Result<Response> {
    request(source, server).map_err(io::Error::from)
}

/// One request on a new connection from `source` to `server`, failures told by phase.
pub fn request(source: IpAddr, server: SocketAddr) -> Result<Response, Failure> {
    let text = loadgen::request(source, server, TIMEOUT)?;
    parse(text).map_err(Failure::AfterConnect)
}

/// A connection from `source` to `server`, with 10-second timeouts.
pub fn connect(source: IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    loadgen::connect(source, server, TIMEOUT)
}

/// Sends the request (the server answers once it has read it).
pub fn send_request(stream: &mut TcpStream) -> io::Result<()> {
    loadgen::send_request(stream)
}

/// Reads the whole response.
pub fn read_response(stream: &mut TcpStream) -> io::Result<Response> {
    parse(loadgen::read_response(stream)?)
}

/// The worker's slot and pid in a whole response.
fn parse(text: String) -> io::Result<Response> {
    let header = |name| {
        loadgen::header(&text, name)
            .ok_or_else(|| io::Error::other(format!("no {name} in {text:?}")))
    };
    Ok(Response { worker: header(loadgen::WORKER)?, pid: header(loadgen::PID)?, text })
}
