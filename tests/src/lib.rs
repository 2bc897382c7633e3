//! Harness for sticky's privileged integration tests.
//!
//! Every test runs its body in [`in_netns`]: a fresh thread in a fresh network namespace, so
//! tests cannot collide on ports and everything they start is confined there. [`Sticky`] runs
//! the real `sticky` binary as it is deployed: root limited to the unit's capability bounding
//! set, workers as `nobody`. [`Container`] boots a real systemd for the service tests, [`Redis`]
//! a real Redis server for the socket.io chat's, [`Proxy`] a real HAProxy or nginx in front
//! of sticky. [`get`]
//! is a real HTTP client bound to a chosen source address. The tests need root (namespaces,
//! containers, and reading the kernel's program list).
#![deny(missing_docs)]

pub mod another_user;
mod binary_dir;
mod client;
mod container;
pub mod dropin;
mod load;
mod named_netns;
pub mod privileges;
mod programs;
mod proxies;
pub mod quic;
mod redis;
mod sticky;
mod test_netns;
mod tls;
mod udp;
mod under_load;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use binary_dir::BinaryDir;
pub use client::{Failure, Response, connect, get, read_response, request, send_request, try_get};
pub use container::{Container, systemd_root};
pub use load::{Load, MIN_SUCCEEDED, Outcome, Report};
pub use named_netns::{Netns, veth};
pub use programs::{loaded_programs, program_is_loaded, reuseport_programs};
pub use proxies::{Proxy, metrics, proxy_v1, request_after};
pub use redis::Redis;
pub use sticky::{
    Counters, Exit, StateDir, Sticky, UNIT_BOUNDING_SET, WORKER_USER, sticky_bin, target_bin,
};
pub use test_netns::{in_netns, processes_in_netns};
pub use tls::{Certificate, TLS_NAME, https_gets};
pub use udp::{Sent, UdpLoad, UdpReport, kernel_drops, parse_answer, udp_client, udp_slot};

/// Whether process `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// The IPv4 client address number `i` (distinct for `i < 2^20`), inside 127.0.0.0/8.
pub fn client_v4(i: u32) -> IpAddr {
    let [_, b, c, d] = (i + 1).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 16 + b, c, d))
}

/// The source addresses of a background load: 1000 clients.
pub fn load_clients() -> Vec<IpAddr> {
    (0..1000).map(client_v4).collect()
}

/// `visit(client)` for every client, spread over `threads` threads; the results by client.
/// Panics in `visit` propagate.
pub fn for_each_client<T: Send>(
    clients: &[IpAddr],
    threads: usize,
    visit: impl Fn(IpAddr) -> T + Sync,
) -> std::collections::HashMap<IpAddr, T> {
    let visit = &visit;
    std::thread::scope(|scope| {
        let threads: Vec<_> = clients
            .chunks(clients.len().div_ceil(threads).max(1))
            .map(|chunk| {
                scope.spawn(move || chunk.iter().map(|&c| (c, visit(c))).collect::<Vec<_>>())
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The IPv6 client address number `i`, each in its own /64 of `fd00::/16`.
pub fn client_v6(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, (i >> 16) as u16, i as u16, 0, 0, 0, 1))
}

/// Waits (at most 30 s) until `done` holds, panicking with `what` otherwise.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// max/mean of the connection counts.
pub fn imbalance(counts: &[usize]) -> f64 {
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    *counts.iter().max().expect("counts") as f64 / mean
}
