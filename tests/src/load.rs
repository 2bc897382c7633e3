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
}

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
                        outcomes.push(Outcome { client, result: request(client, server) });
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
