//! The built-in demo worker: an HTTP server that answers every request with `worker: <slot>`,
//! so plain `curl` shows which worker a client lands on; on UDP addresses it answers each
//! datagram with `worker: <slot> <payload>`.
//!
//! On SIGTERM it stops accepting, finishes the connections it has accepted and exits: the
//! connections still queued stay on the listening socket for the next worker.
//!
//! It is also the worker `cargo xtask bench` measures dispatch with, so it spends as little as
//! it can per connection: one whose request has already arrived when it is accepted (the common
//! case) is answered on the spot with non-blocking calls, without registering it with the event
//! loop; only the others get a task.

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::socket::{MsgFlags, recv, send},
};
use sticky_worker::{Inherited, receive};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};
use tokio_util::task::TaskTracker;

use crate::{client_address::header, handoff};

/// Largest request head the demo reads before answering anyway.
const MAX_REQUEST: usize = 16 * 1024;

/// Serves what it `inherited` (listeners, and connections the loader passes over the handoff
/// socket) until SIGTERM, then drains; each response names `slot` and this pid.
pub async fn serve(inherited: Inherited, slot: u32) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let response = response(slot);
    let connections = TaskTracker::new();
    let mut loops = JoinSet::new();
    for listener in inherited.listeners {
        listener.set_nonblocking(true)?;
        let listener = handoff::register(listener)?;
        loops.spawn(accept_loop(listener, slot, response, connections.clone()));
    }
    for socket in inherited.udp {
        socket.set_nonblocking(true)?;
        loops.spawn(echo_loop(tokio::net::UdpSocket::from_std(socket)?, slot));
    }
    if let Some(end) = inherited.handoff {
        let flags = OFlag::from_bits_truncate(fcntl(&end, FcntlArg::F_GETFL)?) | OFlag::O_NONBLOCK;
        fcntl(&end, FcntlArg::F_SETFL(flags))?;
        loops.spawn(receive_loop(handoff::register(end)?, slot, response, connections.clone()));
    }
    tokio::select! {
        // A loop only ends when accepting or receiving fails.
        Some(ended) = loops.join_next() => {
            return Err(ended.unwrap_or_else(io::Error::other));
        }
        _ = terminate.recv() => {}
    }
    // Stop accepting (dropping the listeners) and receiving (what the loader passes from now
    // on waits for the next worker), then finish what was already accepted.
    loops.shutdown().await;
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Accepts on `listener` and answers each connection, until accepting fails.
async fn accept_loop(
    listener: AsyncFd<TcpListener>,
    slot: u32,
    response: &'static [u8],
    connections: TaskTracker,
) -> io::Error {
    loop {
        match listener.async_io(Interest::READABLE, TcpListener::accept).await {
            Ok((stream, _)) => answer(stream, slot, response, &connections),
            Err(err) => return err,
        }
    }
}

/// Answers each datagram on `socket` with `worker: <slot> <payload>`, from the same socket,
/// until receiving fails. What waits when the worker stops stays queued for the next one.
async fn echo_loop(socket: tokio::net::UdpSocket, slot: u32) -> io::Error {
    let prefix = format!("worker: {slot} ");
    let mut buffer = vec![0u8; 65536];
    let mut answer = Vec::with_capacity(buffer.len() + prefix.len());
    loop {
        let (length, sender) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => return err,
        };
        answer.clear();
        answer.extend_from_slice(prefix.as_bytes());
        answer.extend_from_slice(&buffer[..length]);
        // A reply that cannot be sent (the client is gone, the buffer is full) is dropped,
        // as UDP drops.
        let _ = socket.send_to(&answer, sender).await;
    }
}

/// Answers each connection the loader passes over `handoff`, until receiving fails.
async fn receive_loop(
    handoff: AsyncFd<OwnedFd>,
    slot: u32,
    response: &'static [u8],
    connections: TaskTracker,
) -> io::Error {
    loop {
        match handoff.async_io(Interest::READABLE, |end| receive(end.as_raw_fd())).await {
            Ok(stream) => answer(stream, slot, response, &connections),
            Err(err) => return err,
        }
    }
}

/// The usual response, made once per worker.
fn response(slot: u32) -> &'static [u8] {
    http_response(slot, format!("worker: {slot}\n")).into_bytes().leak()
}

/// The response to a request that names its client.
fn client_response(slot: u32, client: std::net::IpAddr) -> Vec<u8> {
    http_response(slot, format!("worker: {slot} client: {client}\n")).into_bytes()
}

fn http_response(slot: u32, body: String) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         x-sticky-worker: {slot}\r\nx-sticky-pid: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        std::process::id(),
    )
}

/// Answers one connection: at once if its whole request head is already there and the response
/// fits the socket's buffer, otherwise on a task of `connections`. Errors only concern this
/// connection, which is then closed.
fn answer(stream: TcpStream, slot: u32, response: &'static [u8], connections: &TaskTracker) {
    let mut request = Vec::new();
    let complete = match read_available(&stream, &mut request) {
        Ok(complete) => complete,
        Err(_) => return,
    };
    let sent = if complete && claimed_client(&request).is_none() {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match send(stream.as_raw_fd(), response, flags) {
            Ok(sent) if sent == response.len() => return,
            Ok(sent) => sent,
            Err(Errno::EAGAIN) => 0,
            Err(_) => return,
        }
    } else {
        0
    };
    connections.spawn(answer_later(stream, request, slot, &response[sent..]));
}

/// Reads what has arrived without waiting; whether the request head is complete.
fn read_available(stream: &TcpStream, request: &mut Vec<u8>) -> io::Result<bool> {
    let mut buffer = [0u8; 4096];
    while !head_complete(request) {
        match recv(stream.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => request.extend_from_slice(&buffer[..n]),
            Err(Errno::EAGAIN) => return Ok(false),
            Err(err) => return Err(err.into()),
        }
    }
    Ok(true)
}

/// Whether `request` holds a whole request head (after a PROXY header, if one comes first).
fn head_complete(request: &[u8]) -> bool {
    let Some(proxy_header) = header::proxy_header_length(request) else {
        return request.len() >= MAX_REQUEST;
    };
    let head = &request[proxy_header..];
    head.windows(4).any(|w| w == b"\r\n\r\n") || request.len() >= MAX_REQUEST
}

/// The client a request names (a PROXY header, X-Forwarded-For, Forwarded), if any: what the
/// demo shows, so that an operator can check a proxy's setup with curl.
fn claimed_client(request: &[u8]) -> Option<std::net::IpAddr> {
    let names_one = header::proxy_header_length(request).is_some_and(|length| length > 0)
        || request.windows(8).any(|w| w.eq_ignore_ascii_case(b"orwarded"));
    names_one.then(|| header::claimed(request)).flatten()
}

/// Waits for the rest of the request head (`request` holds its start), then writes `rest`, the
/// part of the usual response not yet sent, or, for a request that names its client, the
/// response that shows it.
async fn answer_later(stream: TcpStream, mut request: Vec<u8>, slot: u32, rest: &'static [u8]) {
    let Ok(mut stream) =
        stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream))
    else {
        return;
    };
    let mut buffer = [0u8; 4096];
    while !head_complete(&request) {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let _ = match claimed_client(&request) {
        Some(client) => stream.write_all(&client_response(slot, client)).await,
        None => stream.write_all(rest).await,
    };
}
