//! Which worker a connection the loader accepted goes to: the program's configuration and
//! table, and each slot's end of its handoff pair (or, for node workers, its queue). The
//! supervisor changes it as slots join, leave or change the table; the accept loop reads it.

use std::{
    net::IpAddr,
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
};

use sticky_common::{DispatchConfig, Table};

use super::{node_ipc::NodeSlot, pairs::slot_for};
use crate::sync::lock;

/// The loader's routes to the workers, shared by the accept loop and the supervisor.
#[derive(Clone)]
pub struct Router(Arc<Mutex<Routes>>);

struct Routes {
    config: DispatchConfig,
    table: Box<Table>,
    /// Where each slot's connections go (index = slot).
    ends: Vec<Target>,
}

/// Where a slot's connections go.
#[derive(Clone)]
pub enum Target {
    /// The loader's end of the slot's handoff pair.
    Socket(Arc<OwnedFd>),
    /// The slot's queue to its node worker's IPC channel.
    Node(Arc<NodeSlot>),
}

impl Target {
    /// A new node slot's queue.
    pub fn node() -> Self {
        Self::Node(Arc::default())
    }
}

impl Router {
    /// Routes by `config` and `table` to the slots whose targets are `ends`.
    pub fn new(config: DispatchConfig, table: Box<Table>, ends: Vec<Target>) -> Self {
        Self(Arc::new(Mutex::new(Routes { config, table, ends })))
    }

    /// The slot of `client`, as the program computes it, and where its connections go.
    pub fn route(&self, client: IpAddr) -> (usize, Target) {
        let routes = lock(&self.0);
        let slot = slot_for(&routes.config, &routes.table, client) as usize;
        // The table names slots that have a pair; the first slot, should it ever not.
        let slot = if slot < routes.ends.len() { slot } else { 0 };
        (slot, routes.ends[slot].clone())
    }

    /// Where slot `slot`'s connections go, if it exists.
    pub fn target(&self, slot: usize) -> Option<Target> {
        lock(&self.0).ends.get(slot).cloned()
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        lock(&self.0).ends.len()
    }

    /// The loader's end of each slot's pair, as fd numbers (for an upgrade's record; none for
    /// node workers' queues).
    pub fn loader_ends(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd as _;
        let routes = lock(&self.0);
        routes
            .ends
            .iter()
            .filter_map(|target| match target {
                Target::Socket(end) => Some(end.as_raw_fd()),
                Target::Node(_) => None,
            })
            .collect()
    }

    /// The table now in the program's map.
    pub fn set_table(&self, table: &Table) {
        lock(&self.0).table.copy_from_slice(table);
    }

    /// A slot added after the others, with where its connections go.
    pub fn push_slot(&self, end: Target) {
        let mut routes = lock(&self.0);
        routes.ends.push(end);
        routes.config.slots = routes.ends.len() as u32;
    }

    /// The last slot removed (it is out of the table already).
    pub fn pop_slot(&self) {
        let mut routes = lock(&self.0);
        routes.ends.pop();
        routes.config.slots = routes.ends.len() as u32;
    }
}
