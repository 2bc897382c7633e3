//! Connections the loader accepts itself and passes to their client's worker: every connection
//! under `--dispatch userspace`, and, under kernel dispatch with `--trusted-proxy`, those of
//! trusted proxies, which the program sends to the loader's own socket so that it can read the
//! real client's address from the stream (`client_address`).
//!
//! The protocol, for workers: with `STICKY_HANDOFF=1`, the inherited fd named `sticky-handoff`
//! in `LISTEN_FDNAMES` (fd 3 alone under userspace dispatch; after the listening sockets under
//! kernel dispatch) is a `SOCK_SEQPACKET` Unix socket. Each message carries one accepted TCP
//! connection as an SCM_RIGHTS fd, and one byte: the index of the listen address it came in
//! on. Nothing of the connection has been read: a PROXY header or the whole HTTP request is
//! still there for the worker. The worker side (`handoff_socket`, `receive`) is in the
//! `sticky-worker` crate. The loader keeps both ends of each slot's socket pair, so
//! connections passed while a worker restarts wait for the next one.
//!
//! - [`pairs`]: the socket pairs and sending a connection over one;
//! - [`router`]: client → slot → the loader's end of that slot's pair, changed as slots change;
//! - [`accept_loop`]: accepting, reading a trusted proxy's header, passing on;
//! - [`node_ipc`]: node workers (`--handoff node`), through Node's own IPC channel.

use std::{io, net::TcpListener, os::fd::OwnedFd, sync::Arc};

use tokio_util::task::TaskTracker;

use crate::config::ClientAddress;

pub(crate) mod accept_loop;
pub mod node_ipc;
pub(crate) mod pairs;
pub(crate) mod router;

pub use accept_loop::{AcceptLoop, Stats};
pub(crate) use pairs::register;
pub use pairs::{STICKY_HANDOFF, pairs};
pub use router::{Router, Target};

/// The name of the handoff socket in a worker's `LISTEN_FDNAMES`.
pub const HANDOFF_NAME: &str = "sticky-handoff";

/// What the supervisor keeps of the hand-over: the sockets the loader accepts on, each slot's
/// worker end (which its workers inherit), the router it changes as slots change, the accept
/// loop while it runs, and its counts.
pub struct Handoff {
    /// The sockets the loader accepts on, each with its listen address's index: its own in each
    /// TCP reuseport group (trusted proxies), or each group's one socket (userspace dispatch).
    pub listeners: Vec<(u8, TcpListener)>,
    /// The worker's end of each slot's pair (index = slot); none with node workers.
    pub worker_ends: Vec<OwnedFd>,
    /// The routes the accept loop reads.
    pub router: Router,
    /// Whose header to believe, and where it is (trusted proxies).
    pub client_address: Option<Arc<ClientAddress>>,
    /// What the accept loop has done.
    pub stats: Arc<Stats>,
    /// Whether connections go over each node worker's IPC channel instead of the pairs.
    pub node: bool,
    /// The accept loop, while it runs.
    accepting: Option<Accepting>,
}

/// A running accept loop: its task and the connections it is still passing on.
pub struct Accepting {
    task: tokio::task::JoinHandle<()>,
    in_flight: TaskTracker,
}

impl Handoff {
    /// A hand-over not yet accepting: call [`Handoff::start`] in the runtime.
    pub fn new(
        listeners: Vec<(u8, TcpListener)>,
        worker_ends: Vec<OwnedFd>,
        router: Router,
        client_address: Option<ClientAddress>,
        node: bool,
    ) -> Self {
        let client_address = client_address.map(Arc::new);
        let stats = Arc::default();
        Self { listeners, worker_ends, router, client_address, stats, node, accepting: None }
    }

    /// Whether it reads trusted proxies' headers.
    pub fn reads_headers(&self) -> bool {
        self.client_address.is_some()
    }

    /// Starts accepting (again), on copies of the listeners.
    pub fn start(&mut self) -> io::Result<()> {
        let listeners = self
            .listeners
            .iter()
            .map(|(index, listener)| {
                let copy = listener.try_clone()?;
                copy.set_nonblocking(true)?;
                Ok((*index, tokio::net::TcpListener::from_std(copy)?))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let in_flight = TaskTracker::new();
        let accept_loop = AcceptLoop {
            listeners,
            router: self.router.clone(),
            client_address: self.client_address.clone(),
            stats: self.stats.clone(),
            in_flight: in_flight.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = accept_loop.run().await;
        });
        self.accepting = Some(Accepting { task, in_flight });
        Ok(())
    }

    /// Stops accepting: what arrives from now on waits in the listeners' queues. Returns the
    /// loop, whose [`Accepting::finish`] waits for the connections it is still passing on.
    pub fn stop(&mut self) -> Option<Accepting> {
        let accepting = self.accepting.take()?;
        accepting.task.abort();
        Some(accepting)
    }

    /// A slot added after the others: a new pair, its loader end given to the router (with
    /// node workers: a new queue).
    pub fn push_slot(&mut self) -> io::Result<()> {
        if self.node {
            self.router.push_slot(Target::node());
            return Ok(());
        }
        let (loader, worker) = pairs::pair()?;
        self.router.push_slot(Target::Socket(loader.into()));
        self.worker_ends.push(worker);
        Ok(())
    }

    /// A new node worker's IPC channel (none unless the workers are node): the loader's end
    /// and the worker's.
    pub fn worker_channel(&self) -> io::Result<Option<(Arc<node_ipc::Channel>, OwnedFd)>> {
        self.node.then(node_ipc::Channel::pair).transpose()
    }

    /// From now on slot `slot`'s connections go to `channel`, its ready node worker's.
    pub fn serve(&self, slot: usize, channel: &Arc<node_ipc::Channel>) {
        if let Some(Target::Node(queue)) = self.router.target(slot) {
            queue.serve(channel.clone());
        }
    }

    /// The last slot removed, out of the router first.
    pub fn pop_slot(&mut self) {
        self.router.pop_slot();
        self.worker_ends.pop();
    }
}

impl Accepting {
    /// Waits until the connections the stopped loop was passing on are passed (or, past
    /// `limit`, gives up on them).
    pub async fn finish(self, limit: std::time::Duration) {
        self.in_flight.close();
        let _ = tokio::time::timeout(limit, self.in_flight.wait()).await;
    }
}
