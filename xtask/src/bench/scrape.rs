//! `cargo xtask bench --only scrape`: how long one `GET /metrics` of a loader with 128 slots
//! takes, end to end on loopback: the status (the program's per-CPU counters, each slot's
//! accept queue, the workers' usage as last read), the encoding, the HTTP exchange; and, as a
//! baseline, the same exchange for a path that is not found (no status, no encoding), so the
//! difference is the scrape's own work. Printed, not written.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::shell;

/// The mode name `--only` takes.
pub const NAME: &str = "scrape";
const SLOTS: u32 = 128;
const LISTEN: &str = "127.0.0.1:3980";
const METRICS: &str = "127.0.0.1:3981";
const WARM_UP: usize = 50;
const SCRAPES: usize = 1000;

/// Starts sticky with [`SLOTS`] demo workers, scrapes it [`SCRAPES`] times and prints the
/// median and the 99th percentile.
pub fn run(sticky: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut child = Command::new(sticky)
        .args(["run", "--listen", LISTEN, "--workers", &SLOTS.to_string()])
        .args(["--metrics", METRICS, "--allow-root-workers", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--control")
        .arg(dir.join("control.sock"))
        .env("STICKY_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", sticky.display()))?;
    let result = measure();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let (scrapes, baseline, bytes) = result?;
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let median = |times: &[Duration]| micros(times[times.len() / 2]);
    shell::say(&format!(
        "GET /metrics of {SLOTS} slots ({bytes} bytes), {SCRAPES} times: median {:.0} µs, p99 \
         {:.0} µs; GET of a missing path (no status, no encoding): median {:.0} µs; the \
         scrape's own work: {:.0} µs",
        median(&scrapes),
        micros(scrapes[scrapes.len() * 99 / 100]),
        median(&baseline),
        median(&scrapes) - median(&baseline),
    ));
    Ok(())
}

/// Waits until every worker is up, then times the scrapes and the baseline, interleaved;
/// their sorted times and the body's size.
fn measure() -> anyhow::Result<(Vec<Duration>, Vec<Duration>, usize)> {
    let ready = format!("sticky_workers_up {SLOTS}\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(PATH).is_ok_and(|body| body.contains(&ready)) {
        if Instant::now() > deadline {
            bail!("{SLOTS} workers were not up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut bytes = 0;
    for _ in 0..WARM_UP {
        bytes = get(PATH)?.len();
        get(MISSING)?;
    }
    let (mut scrapes, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..SCRAPES {
        for (path, times) in [(PATH, &mut scrapes), (MISSING, &mut baseline)] {
            let started = Instant::now();
            get(path)?;
            times.push(started.elapsed());
        }
    }
    scrapes.sort();
    baseline.sort();
    Ok((scrapes, baseline, bytes))
}

const PATH: &str = "/metrics";
const MISSING: &str = "/missing";

/// One `GET path` on a new connection; the body (of a 200, or of the expected 404).
fn get(path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(METRICS)?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let expected = if path == PATH { "HTTP/1.1 200" } else { "HTTP/1.1 404" };
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with(expected) => Ok(body.to_owned()),
        _ => bail!("unexpected answer to {path}: {response:.200}"),
    }
}
