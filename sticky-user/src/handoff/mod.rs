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

/// What the supervisor keeps of the hand-over: each slot's worker end (which its workers
/// inherit), the router it changes as slots change, and the accept loop's counts.
pub struct Handoff {
    /// The worker's end of each slot's pair (index = slot); none with node workers.
    pub worker_ends: Vec<std::os::fd::OwnedFd>,
    /// The routes the accept loop reads.
    pub router: Router,
    /// What the accept loop has done.
    pub stats: std::sync::Arc<Stats>,
    /// Whether it reads trusted proxies' headers.
    pub reads_headers: bool,
    /// Whether connections go over each node worker's IPC channel instead of the pairs.
    pub node: bool,
}

impl Handoff {
    /// A slot added after the others: a new pair, its loader end given to the router (with
    /// node workers: a new queue).
    pub fn push_slot(&mut self) -> std::io::Result<()> {
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
    pub fn worker_channel(
        &self,
    ) -> std::io::Result<Option<(std::sync::Arc<node_ipc::Channel>, std::os::fd::OwnedFd)>> {
        self.node.then(node_ipc::Channel::pair).transpose()
    }

    /// From now on slot `slot`'s connections go to `channel`, its ready node worker's.
    pub fn serve(&self, slot: usize, channel: &std::sync::Arc<node_ipc::Channel>) {
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
