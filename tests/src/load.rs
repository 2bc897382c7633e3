//! A load generator: new connections from many source addresses, until stopped.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::client::{Failure, Response, request};

/// The longest a load runs, whatever happens to the test.
const MAX_DURATION: Duration = Duration::from_secs(120);
/// The most requests one load thread makes.
const MAX_REQUESTS_PER_THREAD: usize = 200_000;

/// Threads that each cycle through their share of the clients, one request per new connection.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Outcome>>>,
}

/// One request's result.
#[derive(Debug)]
pub struct Outcome {
    /// The client address it came from.
    pub client: IpAddr,
    /// The response, or how it failed.
    pub result: Result<Response, Failure>,
    /// When it started (before connect) and ended (response read, or failure).
    pub span: (Instant, Instant),
}

/// The fewest successful requests a load under an event must make: a load that barely ran
/// proves nothing.
pub const MIN_SUCCEEDED: usize = 1000;

impl Load {
    /// Starts `threads` threads sending requests to `server` from `clients`.
    pub fn start(server: SocketAddr, clients: &[IpAddr], threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let chunk = clients.len().div_ceil(threads);
        let threads = clients
            .chunks(chunk)
            .map(|chunk| {
                let (chunk, stop) = (chunk.to_vec(), stop.clone());
                thread::spawn(move || {
                    let deadline = Instant::now() + MAX_DURATION;
                    let mut outcomes = Vec::new();
                    for &client in chunk.iter().cycle().take(MAX_REQUESTS_PER_THREAD) {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let started = Instant::now();
                        let result = request(client, server);
                        outcomes.push(Outcome { client, result, span: (started, Instant::now()) });
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the load and returns every outcome.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let outcomes =
            self.threads.into_iter().flat_map(|t| t.join().expect("load thread")).collect();
        Report { outcomes }
    }
}

/// What a load saw.
pub struct Report {
    /// Every request's outcome.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Requests that got a response.
    pub fn succeeded(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_ok()).count()
    }

    /// Requests that failed, with the error, for messages.
    pub fn failures(&self) -> Vec<(IpAddr, &Failure)> {
        self.outcomes.iter().filter_map(|o| Some((o.client, o.result.as_ref().err()?))).collect()
    }

    /// The workers each client reached, in order.
    pub fn workers_by_client(&self) -> HashMap<IpAddr, Vec<u32>> {
        let mut workers: HashMap<IpAddr, Vec<u32>> = HashMap::new();
        for outcome in &self.outcomes {
            if let Ok(response) = &outcome.result {
                workers.entry(outcome.client).or_default().push(response.worker);
            }
        }
        workers
    }

    /// Requests that got a response and ran entirely within `event` (its start and end).
    pub fn succeeded_within(&self, event: (Instant, Instant)) -> usize {
        let within = |o: &&Outcome| event.0 <= o.span.0 && o.span.1 <= event.1;
        self.outcomes.iter().filter(|o| o.result.is_ok()).filter(within).count()
    }

    /// Panics unless no request failed, more than [`MIN_SUCCEEDED`] succeeded, and some ran
    /// entirely during `event` (so the load really went on through it).
    pub fn assert_no_failure_during(&self, what: &str, event: (Instant, Instant)) {
        let summary = self.summary();
        assert!(self.failures().is_empty(), "{what}: {summary}");
        assert!(self.succeeded() > MIN_SUCCEEDED, "{what}: too little load: {summary}");
        let during = self.succeeded_within(event);
        assert!(during > 0, "{what}: no request completed during it: {summary}");
        println!("{what}: {summary}; {during} completed during it");
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let failures = self.failures();
        let sample: Vec<String> =
            failures.iter().take(5).map(|(c, f)| format!("{c}: {f}")).collect();
        format!(
            "{} requests, {} succeeded, {} failed {sample:?}",
            self.outcomes.len(),
            self.succeeded(),
            failures.len()
        )
    }
}
