//! The load generator: a new TCP connection per request, from many loopback source addresses,
//! at a fixed concurrency, for a fixed time.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

/// Distinct client source addresses (127.16.0.1 onwards).
pub const CLIENTS: u32 = 1024;
/// Concurrent connections (one thread each).
pub const CONCURRENCY: usize = 8;

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Seconds the load ran.
    pub seconds: f64,
    /// Latency of every answered request, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// The worker (by pid) each client reached, per request.
    pub workers_by_client: HashMap<u32, Vec<u32>>,
}

/// Client address number `i`: 127.16.0.1 onwards.
pub fn client(i: u32) -> IpAddr {
    let [_, b, c, d] = (i + 1).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 16 + b, c, d))
}

/// The PROXY v1 header a trusted proxy would send for client `index` (10.0.0.0/8), in front
/// of its request: the proxied modes' load.
fn proxy_header(index: u32, server: SocketAddr) -> Vec<u8> {
    let [_, b, c, d] = (index + 1).to_be_bytes();
    format!("PROXY TCP4 10.{b}.{c}.{d} {} 40000 {}\r\n", server.ip(), server.port()).into_bytes()
}

/// Runs the load against `server` for `duration`; with `proxied`, each request comes with a
/// PROXY header naming its client.
pub fn run(server: SocketAddr, duration: Duration, proxied: bool) -> LoadResult {
    drive(duration, move |index| {
        let prefix = if proxied { proxy_header(index, server) } else { Vec::new() };
        request(client(index), server, &prefix)
    })
}

/// Runs `request` (for client `index`; the answering worker, or `None` when it failed) for
/// `duration`: `CONCURRENCY` threads, each asking for the next of `CLIENTS` clients in turn,
/// one request at a time.
pub fn drive(
    duration: Duration,
    request: impl Fn(u32) -> Option<u32> + Clone + Send + 'static,
) -> LoadResult {
    drive_with(duration, || (), move |(), index| request(index))
}

/// [`drive`] with a state per thread, made by `state` in that thread and handed to each of its
/// requests (a client that outlives one request, say).
pub fn drive_with<S>(
    duration: Duration,
    state: impl Fn() -> S + Clone + Send + 'static,
    request: impl Fn(&mut S, u32) -> Option<u32> + Clone + Send + 'static,
) -> LoadResult {
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|thread| {
            let (state, request) = (state.clone(), request.clone());
            thread::spawn(move || {
                let mut state = state();
                let mut result = LoadResult::default();
                let mut next = thread as u32;
                while Instant::now() < deadline {
                    let index = next % CLIENTS;
                    next += CONCURRENCY as u32;
                    let began = Instant::now();
                    match request(&mut state, index) {
                        Some(worker) => {
                            result.ok += 1;
                            result.latencies_us.push(began.elapsed().as_micros() as u32);
                            result.workers_by_client.entry(index).or_default().push(worker);
                        }
                        None => result.failed += 1,
                    }
                }
                result
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for thread in threads {
        let part = thread.join().expect("load thread");
        total.ok += part.ok;
        total.failed += part.failed;
        total.latencies_us.extend(part.latencies_us);
        for (client, workers) in part.workers_by_client {
            total.workers_by_client.entry(client).or_default().extend(workers);
        }
    }
    total.seconds = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    total
}

/// One request from each of `clients` distinct addresses (127.16.0.1 onwards, across
/// 127.0.0.0/8); the answering worker's pid for each, in order (`None` where it failed).
pub fn probe(server: SocketAddr, clients: u32) -> Vec<Option<u32>> {
    let threads: Vec<_> = (0..CONCURRENCY as u32)
        .map(|thread| {
            thread::spawn(move || {
                let mine = (thread..clients).step_by(CONCURRENCY);
                mine.map(|index| (index, request(client(index), server, &[]))).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut pids = vec![None; clients as usize];
    for thread in threads {
        for (index, pid) in thread.join().expect("probe thread") {
            pids[index as usize] = pid;
        }
    }
    pids
}

/// One request on a new connection, after `prefix`; the answering worker's pid. `loadgen`
/// keeps it to few system calls.
fn request(source: IpAddr, server: SocketAddr, prefix: &[u8]) -> Option<u32> {
    let response = loadgen::request_after(source, server, TIMEOUT, prefix).ok()?;
    loadgen::header(&response, loadgen::PID)
}

/// How long one connect, write or read may take.
const TIMEOUT: Duration = Duration::from_secs(5);

impl LoadResult {
    /// Requests answered per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// The latency at quantile `q`, in microseconds.
    pub fn latency(&self, q: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return f64::NAN;
        }
        f64::from(self.latencies_us[((n as f64 * q) as usize).min(n - 1)])
    }

    /// Share of clients whose requests all reached one worker.
    /// Not a number when no answer named its worker.
    pub fn sticky_share(&self) -> f64 {
        if self.workers_by_client.is_empty() {
            return f64::NAN;
        }
        let sticky = self
            .workers_by_client
            .values()
            .filter(|pids| pids.iter().all(|p| *p == pids[0]))
            .count();
        sticky as f64 / self.workers_by_client.len().max(1) as f64
    }

    /// max/mean of the requests per worker.
    pub fn imbalance(&self) -> f64 {
        let mut per_worker: HashMap<u32, u64> = HashMap::new();
        for pid in self.workers_by_client.values().flatten() {
            *per_worker.entry(*pid).or_default() += 1;
        }
        let max = per_worker.values().copied().max().unwrap_or(0) as f64;
        let mean = per_worker.values().sum::<u64>() as f64 / per_worker.len().max(1) as f64;
        max / mean
    }
}
