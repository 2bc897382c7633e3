//! The loader's accept loop: it accepts on its listeners (every listener under userspace
//! dispatch; its own socket in each reuseport group under kernel dispatch with trusted
//! proxies), reads a trusted proxy's header for the client's address, and passes each
//! connection to that client's worker.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{
    pairs::{pass, register, send_raw, set_blocking},
    router::{Router, Target},
};
use crate::{
    accept::AcceptBackoff,
    client_address::{Claim, Failure, read_client, read_client_now},
    config::ClientAddress,
    limits::{HANDOFF_PENDING, HEADER_PENDING},
};

/// What the loader accepts on and how it passes connections on.
pub struct AcceptLoop {
    /// The listeners, each with its listen address's index.
    pub listeners: Vec<(u8, TcpListener)>,
    /// Where each client goes.
    pub router: Router,
    /// Whose header to believe, and where it is.
    pub client_address: Option<Arc<ClientAddress>>,
    /// The counts the metrics show.
    pub stats: Arc<Stats>,
    /// The connections being passed on after their accept: their header read, or waiting for
    /// room in their worker's queue.
    pub in_flight: TaskTracker,
}

/// What the accept loop has done, for `/metrics` and `sticky status`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Trusted proxies' connections routed by the client address their header named.
    pub by_header: AtomicU64,
    /// Trusted proxies' connections routed by the proxy's own address (PROXY `LOCAL`, no
    /// forwarding header).
    pub by_proxy: AtomicU64,
    /// Trusted proxies' connections closed, per [`Failure::ALL`].
    pub errors: [AtomicU64; Failure::ALL.len()],
}

impl Stats {
    fn failed(&self, failure: Failure) {
        let index = Failure::ALL.iter().position(|&f| f == failure).unwrap_or(0);
        self.errors[index].fetch_add(1, Relaxed);
    }

    /// The closed connections by reason, as (label, count).
    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        Failure::ALL.iter().zip(&self.errors).map(|(f, n)| (f.label(), n.load(Relaxed))).collect()
    }
}

impl AcceptLoop {
    /// Accepts on every listener and passes each connection on, until accepting fails for
    /// good (it never does: failed accepts back off and go on).
    pub async fn run(self) -> io::Result<()> {
        let shared = Arc::new(Shared {
            router: self.router,
            client_address: self.client_address,
            stats: self.stats,
            in_flight: self.in_flight,
            pending: Arc::new(Semaphore::new(HANDOFF_PENDING)),
            reading: Arc::new(Semaphore::new(HEADER_PENDING)),
        });
        let mut loops = JoinSet::new();
        for (index, listener) in self.listeners {
            let shared = shared.clone();
            loops.spawn(async move {
                let mut backoff = AcceptBackoff::new();
                loop {
                    let accepted = backoff.accepted("the loader's accept", listener.accept().await);
                    if let Some((stream, peer)) = accepted.await {
                        shared.take(stream, peer, index);
                    }
                }
            });
        }
        while loops.join_next().await.is_some() {}
        Ok(())
    }
}

/// Reads (and drops) the first `length` bytes of `stream`, which have arrived (peeked).
fn skip(stream: &std::net::TcpStream, length: usize) -> io::Result<()> {
    if length == 0 {
        return Ok(());
    }
    let mut header = vec![0; length];
    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    match nix::sys::socket::recv(stream.as_raw_fd(), &mut header, flags) {
        Ok(read) if read == length => Ok(()),
        Ok(_) => Err(io::Error::other("the PROXY header was not all there")),
        Err(err) => Err(err.into()),
    }
}

/// What every accept loop shares.
struct Shared {
    router: Router,
    client_address: Option<Arc<ClientAddress>>,
    stats: Arc<Stats>,
    in_flight: TaskTracker,
    /// Room for connections waiting for a full hand-over queue, or for their node worker.
    pending: Arc<Semaphore>,
    /// Room for trusted proxies' connections waiting for their header.
    reading: Arc<Semaphore>,
}

impl Shared {
    /// Passes `stream` on by its peer's address, or, from a trusted proxy, by the address its
    /// header names (on a task of its own, so a slow proxy holds up no one).
    fn take(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, listener: u8) {
        let Some(rule) = self.client_address.as_ref().filter(|rule| rule.trusts(peer.ip())) else {
            return self.pass_on(stream, peer.ip(), listener, Claim { client: None, header: 0 });
        };
        if let Some(client) = read_client_now(&stream, rule) {
            return self.route(stream, peer, client, listener);
        }
        let Ok(permit) = self.reading.clone().try_acquire_owned() else {
            self.stats.failed(Failure::Overloaded);
            return;
        };
        let (shared, rule) = (self.clone(), rule.clone());
        self.in_flight.spawn(async move {
            let client = read_client(&stream, &rule).await;
            drop(permit);
            shared.route(stream, peer, client, listener);
        });
    }

    /// Passes a trusted proxy's connection on by what its header said: the client's address,
    /// none (the proxy's own connection), or a failure, which closes it.
    fn route(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        claim: Result<Claim, Failure>,
        listener: u8,
    ) {
        match claim {
            Ok(claim @ Claim { client: Some(client), .. }) => {
                self.stats.by_header.fetch_add(1, Relaxed);
                self.pass_on(stream, client, listener, claim);
            }
            Ok(claim) => {
                self.stats.by_proxy.fetch_add(1, Relaxed);
                self.pass_on(stream, peer.ip(), listener, claim);
            }
            Err(failure) => {
                debug!(%peer, reason = failure.label(), "closed a proxied connection");
                self.stats.failed(failure);
            }
        }
    }

    /// Passes `stream` to `client`'s worker: at once, or, while its queue is full, on a task
    /// of its own (at most `HANDOFF_PENDING` of them; past that it is closed). `claim` is what
    /// a trusted proxy's header said: a node worker gets the connection without its PROXY
    /// header, which node's servers cannot read, and the client's address in the message.
    fn pass_on(&self, stream: TcpStream, client: IpAddr, listener: u8, claim: Claim) {
        let (slot, end) = match self.router.route(client) {
            (slot, Target::Socket(end)) => (slot, end),
            (slot, Target::Node(queue)) => {
                let Ok(permit) = self.pending.clone().try_acquire_owned() else {
                    warn!(slot, "too many connections wait for their worker: closed one");
                    return;
                };
                let stream = stream.into_std().and_then(|stream| {
                    skip(&stream, claim.header)?;
                    Ok(stream)
                });
                match stream {
                    Ok(stream) => queue.queue(slot, stream.into(), listener, claim.client, permit),
                    Err(err) => warn!(slot, error = %err, "cannot pass a connection on"),
                }
                return;
            }
        };
        // Blocking, as an accept(2) would give it (the loader's accept loop made it
        // non-blocking, and the worker shares the open file): a worker that reads at once would
        // otherwise get EAGAIN before the request arrived (Python's socket(fileno=) did).
        if let Err(err) = set_blocking(&stream) {
            warn!(slot, error = %err, "cannot pass a connection to its worker");
            return;
        }
        match send_raw(end.as_raw_fd(), stream.as_raw_fd(), listener) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let Ok(permit) = self.pending.clone().try_acquire_owned() else {
                    warn!(slot, "too many connections wait for their worker: closed one");
                    return;
                };
                self.in_flight.spawn(async move {
                    let _permit = permit;
                    let passed = async {
                        let end = register(OwnedFd::try_clone(&end)?)?;
                        pass(&end, stream.as_raw_fd(), listener).await
                    };
                    if let Err(err) = passed.await {
                        warn!(slot, error = %err, "cannot pass a connection to its worker");
                    }
                });
            }
            Err(err) => warn!(slot, error = %err, "cannot pass a connection to its worker"),
        }
    }
}
