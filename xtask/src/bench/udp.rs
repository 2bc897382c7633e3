//! The UDP modes: the load generator (a new socket, so a new source port, per datagram, from
//! many loopback addresses, each answer awaited), the check that a UDP server answers, and
//! nginx's `stream` proxy in front of UDP backends.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    load::{LoadResult, client, drive},
    servers::start_nginx,
};

/// How long a datagram's answer may take before the request counts as failed.
pub(super) const TIMEOUT: Duration = Duration::from_secs(1);
/// Debian's nginx stream module (package `libnginx-mod-stream`).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Runs the load against `server` for `duration`: `CONCURRENCY` threads, each sending one
/// datagram at a time from a new socket bound to the next of `CLIENTS` addresses, and waiting
/// for its answer (at most [`TIMEOUT`]). The answering worker is keyed by its slot: the demo
/// answers `worker: <slot> <payload>`.
pub fn run(server: SocketAddr, duration: Duration) -> LoadResult {
    drive(duration, move |index| {
        let mut buffer = [0u8; 256];
        ask(SocketAddr::new(client(index), 0), server, &mut buffer)
    })
}

/// One datagram from a new socket on `source` to `server`; the answering slot.
fn ask(source: SocketAddr, server: SocketAddr, buffer: &mut [u8]) -> Option<u32> {
    let socket = UdpSocket::bind(source).ok()?;
    socket.set_read_timeout(Some(TIMEOUT)).ok()?;
    socket.send_to(b"ping", server).ok()?;
    let (length, _) = socket.recv_from(buffer).ok()?;
    let answer = std::str::from_utf8(&buffer[..length]).ok()?.strip_prefix("worker: ")?;
    answer.split(' ').next()?.parse().ok()
}

/// Waits (at most 20 s) until `address` answers a datagram.
pub fn wait_until_serving(address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buffer = [0u8; 256];
    while ask("127.0.0.1:0".parse()?, address, &mut buffer).is_none() {
        if Instant::now() > deadline {
            bail!("{address} does not answer datagrams");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// nginx's `stream` module with `hash $remote_addr consistent` in front of UDP `backends`,
/// one answer awaited per datagram.
pub fn nginx(dir: &Path, listen: &str, backends: &[String]) -> anyhow::Result<Child> {
    let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
    let config = format!(
        "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nworker_processes auto;\npid {pid};\n\
         error_log stderr error;\nevents {{ worker_connections 4096; }}\n\
         stream {{\n  upstream backends {{\n    hash $remote_addr consistent;\n{servers}  }}\n\
           server {{\n    listen {listen} udp;\n    proxy_pass backends;\n    \
         proxy_responses 1;\n    proxy_timeout 2s;\n  }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
    );
    start_nginx(dir, "nginx-udp.conf", &config)
}

/// Requests per slot are not comparable across nginx's one-worker backends (each is slot 0):
/// the balance figures of a mode whose backends are separate servers are left out.
pub fn forget_workers(result: &mut LoadResult) {
    result.workers_by_client = HashMap::new();
}
