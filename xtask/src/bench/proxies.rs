//! The loader's memory while trusted proxies' connections wait for their header: sticky with
//! `--trusted-proxy`, then [`WAITING`] connections from a trusted address that send nothing.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use nix::{
    sys::{
        resource::{Resource, getrlimit, setrlimit},
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use serde_json::{Value, json};

use super::servers::{ADDRESS, sticky_run, wait_until_serving};
use crate::shell;

/// Connections that wait for their header at once.
const WAITING: u32 = 1000;

/// Measures the loader's resident memory before and while [`WAITING`] trusted connections
/// wait; returns the figures as JSON and prints them.
pub fn waiting_memory(sticky: &Path, dir: &Path) -> anyhow::Result<Value> {
    std::fs::create_dir_all(dir)?;
    // Room for the waiting connections in this process too.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let options = [
        "--trusted-proxy",
        "127.24.0.0/16",
        "--client-address",
        "proxy-protocol",
        "--client-address-timeout",
        "60",
    ];
    let mut loader = sticky_run(sticky, dir, "main", ADDRESS, 4, "kernel", &[], &options)?;
    let measured = (|| {
        let address: SocketAddr = ADDRESS.parse()?;
        wait_until_serving(address)?;
        let pid = loader.id();
        let before = rss_kib(pid)?;
        let waiting: Vec<TcpStream> = (0..WAITING)
            .map(|i| {
                let [_, _, c, d] = (i + 1).to_be_bytes();
                let source = IpAddr::V4(Ipv4Addr::new(127, 24, c, d));
                loadgen::connect(source, address, Duration::from_secs(5))
            })
            .collect::<Result<_, _>>()
            .context("cannot open the waiting connections")?;
        // Let the loader accept them all and start reading.
        std::thread::sleep(Duration::from_secs(1));
        let during = rss_kib(pid)?;
        drop(waiting);
        Ok::<_, anyhow::Error>((before, during))
    })();
    let _ = kill(Pid::from_raw(loader.id() as i32), Signal::SIGTERM);
    let _ = loader.wait();
    let (before, during) = measured?;
    let per_connection = (during as f64 - before as f64) * 1024.0 / f64::from(WAITING);
    shell::say(&format!(
        "loader memory: {before} KiB, {during} KiB with {WAITING} proxied connections waiting \
         for their header ({per_connection:.0} bytes each)"
    ));
    Ok(json!({
        "waiting_connections": WAITING,
        "loader_rss_kib_before": before,
        "loader_rss_kib_waiting": during,
        "bytes_per_waiting_connection": per_connection.round(),
    }))
}

/// A process's resident set, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
