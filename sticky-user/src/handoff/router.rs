//! Which worker a connection the loader accepted goes to: the program's configuration and
//! table, and each slot's end of its handoff pair. The supervisor changes it as slots join,
//! leave or change the table; the accept loop reads it.

use std::{
    net::IpAddr,
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
};

use sticky_common::{DispatchConfig, Table};

use super::pairs::slot_for;
use crate::sync::lock;

/// The loader's routes to the workers, shared by the accept loop and the supervisor.
#[derive(Clone)]
pub struct Router(Arc<Mutex<Routes>>);

struct Routes {
    config: DispatchConfig,
    table: Box<Table>,
    /// The loader's end of each slot's handoff pair (index = slot).
    ends: Vec<Arc<OwnedFd>>,
}

impl Router {
    /// Routes by `config` and `table` to the slots whose pairs' loader ends are `ends`.
    pub fn new(config: DispatchConfig, table: Box<Table>, ends: Vec<OwnedFd>) -> Self {
        let ends = ends.into_iter().map(Arc::new).collect();
        Self(Arc::new(Mutex::new(Routes { config, table, ends })))
    }

    /// The slot of `client`, as the program computes it, and the loader's end of its pair.
    pub fn route(&self, client: IpAddr) -> (usize, Arc<OwnedFd>) {
        let routes = lock(&self.0);
        let slot = slot_for(&routes.config, &routes.table, client) as usize;
        // The table names slots that have a pair; the first slot, should it ever not.
        let slot = if slot < routes.ends.len() { slot } else { 0 };
        (slot, routes.ends[slot].clone())
    }

    /// The loader's end of each slot's pair, as fd numbers (for an upgrade's record).
    pub fn loader_ends(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd as _;
        lock(&self.0).ends.iter().map(|end| end.as_raw_fd()).collect()
    }

    /// The table now in the program's map.
    pub fn set_table(&self, table: &Table) {
        lock(&self.0).table.copy_from_slice(table);
    }

    /// A slot added after the others, with the loader's end of its pair.
    pub fn push_slot(&self, end: OwnedFd) {
        let mut routes = lock(&self.0);
        routes.ends.push(Arc::new(end));
        routes.config.slots = routes.ends.len() as u32;
    }

    /// The last slot removed (it is out of the table already).
    pub fn pop_slot(&self) {
        let mut routes = lock(&self.0);
        routes.ends.pop();
        routes.config.slots = routes.ends.len() as u32;
    }
}
