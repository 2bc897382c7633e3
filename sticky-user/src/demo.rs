//! The built-in demo worker: an HTTP server that answers every request with `worker: <slot>`,
//! so plain `curl` shows which worker a client lands on.
//!
//! On SIGTERM it stops accepting, finishes the connections it has accepted and exits: the
//! connections still queued stay on the listening socket for the next worker.

use std::{
    io,
    net::TcpListener as StdListener,
    os::fd::{AsRawFd as _, OwnedFd},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, unix::AsyncFd},
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinSet,
};

use crate::handoff;

/// Largest request head the demo reads before answering anyway.
const MAX_REQUEST: usize = 16 * 1024;

/// Serves `listeners` until SIGTERM, then drains; each response names `slot` and this pid.
pub async fn serve(listeners: Vec<StdListener>, slot: u32) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let response = response(slot);
    let (accepted, mut incoming) = mpsc::channel(1024);
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let accepted = accepted.clone();
        accept_loops.spawn(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                if accepted.send(stream).await.is_err() {
                    return io::Result::Ok(());
                }
            }
        });
    }
    drop(accepted);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(stream) = incoming.recv() => { connections.spawn(answer(stream, response)); }
            Some(result) = accept_loops.join_next() => result??,
            Some(_) = connections.join_next() => {}
            _ = terminate.recv() => break,
        }
    }
    // Stop accepting (dropping the listeners), then serve what was already accepted.
    accept_loops.shutdown().await;
    while let Some(stream) = incoming.recv().await {
        connections.spawn(answer(stream, response));
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves the connections the loader passes over `handoff` (`--dispatch userspace`) until
/// SIGTERM, then finishes the ones received. What is still queued waits for the next worker.
pub async fn serve_handoff(handoff: OwnedFd, slot: u32) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let response = response(slot);
    // SAFETY: the fd is owned, open and registered once, for as long as the AsyncFd lives.
    let handoff =
        unsafe { AsyncFd::register(handoff) }.map_err(|err| io::Error::other(err.to_string()))?;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            ready = handoff.readable() => {
                let mut ready = ready?;
                match ready.try_io(|fd| handoff::receive(fd.as_raw_fd())) {
                    Ok(stream) => {
                        let stream = stream?;
                        stream.set_nonblocking(true)?;
                        connections.spawn(answer(TcpStream::from_std(stream)?, response));
                    }
                    Err(_would_block) => {}
                }
            }
            Some(_) = connections.join_next() => {}
            _ = terminate.recv() => break,
        }
    }
    while connections.join_next().await.is_some() {}
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

/// Reads one request head and writes the response; errors only concern this connection.
async fn answer(mut stream: TcpStream, response: &'static [u8]) {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let _ = stream.write_all(response).await;
    let _ = stream.shutdown().await;
}
