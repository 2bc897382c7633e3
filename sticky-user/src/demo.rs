//! The built-in demo worker: an HTTP server that answers every request with `worker: <slot>`,
//! so plain `curl` shows which worker a client lands on.
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
    sys::socket::{MsgFlags, recv, send},
};
use sticky_worker::receive;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};
use tokio_util::task::TaskTracker;

use crate::userspace::handoff;

/// Largest request head the demo reads before answering anyway.
const MAX_REQUEST: usize = 16 * 1024;

/// Serves `listeners` until SIGTERM, then drains; each response names `slot` and this pid.
pub async fn serve(listeners: Vec<TcpListener>, slot: u32) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let response = response(slot);
    let connections = TaskTracker::new();
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        listener.set_nonblocking(true)?;
        let listener = handoff::register(listener)?;
        accept_loops.spawn(accept_loop(listener, response, connections.clone()));
    }
    tokio::select! {
        // An accept loop only ends when accepting fails.
        Some(ended) = accept_loops.join_next() => {
            return Err(ended.unwrap_or_else(io::Error::other));
        }
        _ = terminate.recv() => {}
    }
    // Stop accepting (dropping the listeners), then finish what was already accepted.
    accept_loops.shutdown().await;
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Accepts on `listener` and answers each connection, until accepting fails.
async fn accept_loop(
    listener: AsyncFd<TcpListener>,
    response: &'static [u8],
    connections: TaskTracker,
) -> io::Error {
    loop {
        match listener.async_io(Interest::READABLE, TcpListener::accept).await {
            Ok((stream, _)) => answer(stream, response, &connections),
            Err(err) => return err,
        }
    }
}

/// Serves the connections the loader passes over `handoff` (`--dispatch userspace`) until
/// SIGTERM, then finishes the ones received. What is still queued waits for the next worker.
pub async fn serve_handoff(handoff: OwnedFd, slot: u32) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let response = response(slot);
    let handoff = handoff::register(handoff)?;
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            received = handoff.async_io(Interest::READABLE, |end| receive(end.as_raw_fd())) => {
                answer(received?, response, &connections);
            }
            _ = terminate.recv() => break,
        }
    }
    // Stop receiving: what the loader passes from now on waits for the next worker.
    drop(handoff);
    connections.close();
    connections.wait().await;
    Ok(())
}

fn response(slot: u32) -> &'static [u8] {
    let body = format!("worker: {slot}\n");
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         x-sticky-worker: {slot}\r\nx-sticky-pid: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        std::process::id(),
    )
    .into_bytes()
    .leak()
}

/// Answers one connection: at once if its whole request head is already there and the response
/// fits the socket's buffer, otherwise on a task of `connections`. Errors only concern this
/// connection, which is then closed.
fn answer(stream: TcpStream, response: &'static [u8], connections: &TaskTracker) {
    let mut request = Vec::new();
    let complete = match read_available(&stream, &mut request) {
        Ok(complete) => complete,
        Err(_) => return,
    };
    let sent = if complete {
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
    connections.spawn(answer_later(stream, request, &response[sent..]));
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

fn head_complete(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.len() >= MAX_REQUEST
}

/// Waits for the rest of the request head (`request` holds its start), then writes `response`.
async fn answer_later(stream: TcpStream, mut request: Vec<u8>, response: &'static [u8]) {
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
    let _ = stream.write_all(response).await;
}
