//! A sticky worker in Rust, using only std and the `sticky-worker` crate.
//!
//! `sticky run --workers 4 --user nobody -- target/debug/sticky-example-rust` starts four of these; each
//! serves the sockets it inherits at fd 3 onwards and answers `worker: <slot>`. When sticky passes
//! connections on itself (`--trusted-proxy`, `--dispatch userspace`), it serves those too.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    process::ExitCode,
    thread,
};

fn main() -> ExitCode {
    // The one call a Rust worker needs: checks LISTEN_PID and takes fds 3.. as listeners, and
    // the handoff socket sticky passes connections over, if there is one.
    let inherited = match sticky_worker::inherited() {
        Ok(inherited) => inherited,
        Err(err) => {
            eprintln!("sticky-example-rust: {err}");
            return ExitCode::FAILURE;
        }
    };
    let slot = sticky_worker::slot().map_or_else(|_| "?".to_owned(), |(slot, _)| slot.to_string());
    let mut threads: Vec<_> = inherited
        .listeners
        .into_iter()
        .map(|listener| {
            let slot = slot.clone();
            thread::spawn(move || serve(&listener, &slot))
        })
        .collect();
    if let Some(handoff) = inherited.handoff {
        let slot = slot.clone();
        threads.push(thread::spawn(move || serve_handoff(&handoff, &slot)));
    }
    // Listening: tell sticky (READY=1 to NOTIFY_SOCKET, as under systemd).
    if let Err(err) = sticky_worker::ready() {
        eprintln!("sticky-example-rust: cannot notify readiness: {err}");
    }
    for thread in threads {
        let _ = thread.join();
    }
    ExitCode::SUCCESS
}

fn serve(listener: &TcpListener, slot: &str) {
    for stream in listener.incoming().flatten() {
        let slot = slot.to_owned();
        thread::spawn(move || answer(stream, &slot));
    }
}

/// Serves the connections sticky passes over `handoff`, until it closes.
fn serve_handoff(handoff: &OwnedFd, slot: &str) {
    while let Ok(stream) = sticky_worker::receive(handoff.as_raw_fd()) {
        let slot = slot.to_owned();
        thread::spawn(move || answer(stream, &slot));
    }
}

fn answer(stream: TcpStream, slot: &str) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    // Read the request head up to the blank line.
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let body = format!("worker: {slot}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-sticky-worker: {slot}\r\nx-sticky-pid: {}\r\n\
         x-sticky-runtime: rust-example\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        std::process::id()
    );
    let _ = (&stream).write_all(response.as_bytes());
}
