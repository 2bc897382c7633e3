//! The built-in demo worker: an HTTP server that answers every request with `worker: <slot>`,
//! so plain `curl` shows which worker a client lands on.

use std::{io, net::TcpListener as StdListener};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// Largest request head the demo reads before answering anyway.
const MAX_REQUEST: usize = 16 * 1024;

/// Serves `listeners` until an accept fails; each response names `slot` and this process's pid.
pub async fn serve(listeners: Vec<StdListener>, slot: u32) -> io::Result<()> {
    let body = format!("worker: {slot}\n");
    let response: &'static [u8] = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         x-sticky-worker: {slot}\r\nx-sticky-pid: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        std::process::id(),
    )
    .into_bytes()
    .leak();
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        accept_loops.spawn(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(answer(stream, response));
            }
        });
    }
    match accept_loops.join_next().await {
        Some(result) => result?,
        None => Ok(()),
    }
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
