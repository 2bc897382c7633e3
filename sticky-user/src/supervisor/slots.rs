//! The supervisor's state: slots, sockets, maps and workers, and the changes of slots (add,
//! remove, eject) that keep them in step.

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    Options, SupervisorError,
    workers::{FIRST_BACKOFF, Worker, start_worker, terminate},
};
use crate::{
    dispatch::{DispatchError, Dispatcher},
    listeners::ListenerGroup,
    spawn::Spawner,
    table,
};

pub(super) struct State {
    pub(super) spawner: Spawner,
    pub(super) groups: Vec<ListenerGroup>,
    pub(super) dispatchers: Vec<Dispatcher>,
    /// Userspace dispatch: the workers' ends of the handoff socket pairs, per slot.
    pub(super) handoff_ends: Vec<OwnedFd>,
    pub(super) seed: u64,
    pub(super) options: Options,
    pub(super) slots: Vec<Slot>,
    /// Every worker process not yet reaped, current or retiring.
    pub(super) live: Vec<Worker>,
    pub(super) next_slot_id: u64,
    pub(super) stopping: bool,
}

pub(super) struct Slot {
    /// Tells a slot apart from a later one at the same index (after scaling down and up).
    pub(super) id: u64,
    pub(super) worker: Option<Worker>,
    pub(super) restarts: u32,
    pub(super) exits: VecDeque<Instant>,
    pub(super) in_table: bool,
    pub(super) backoff: Duration,
}

impl State {
    pub(super) fn new_slot(&mut self) -> Slot {
        self.next_slot_id += 1;
        Slot {
            id: self.next_slot_id,
            worker: None,
            restarts: 0,
            exits: VecDeque::new(),
            in_table: true,
            backoff: FIRST_BACKOFF,
        }
    }

    pub(super) fn slot_of(&self, pid: u32) -> Option<usize> {
        self.slots.iter().position(|slot| slot.worker.as_ref().is_some_and(|w| w.pid == pid))
    }

    /// `kernel`, `none` or `userspace`.
    pub(super) fn dispatch_mode(&self) -> &'static str {
        match (self.dispatchers.is_empty(), self.handoff_ends.is_empty()) {
            (false, _) => "kernel",
            (true, false) => "userspace",
            (true, true) => "none",
        }
    }

    /// The fds slot `index`'s worker inherits at fd 3 onwards.
    pub(super) fn inherited_fds(&self, index: usize) -> Vec<RawFd> {
        match self.handoff_ends.get(index) {
            Some(end) => vec![end.as_raw_fd()],
            None => self.groups.iter().map(|group| group.sockets[index].as_raw_fd()).collect(),
        }
    }

    /// Rebuilds the table from the slots in it and writes it to the maps.
    pub(super) fn update_table(&mut self) -> Result<(), DispatchError> {
        if self.dispatchers.is_empty() {
            return Ok(());
        }
        let live: Vec<u32> =
            (0..).zip(&self.slots).filter(|(_, s)| s.in_table).map(|(i, _)| i).collect();
        if live.is_empty() {
            warn!("every slot is out of the table: keeping the last table");
            return Ok(());
        }
        let table = table::build(self.seed, &live);
        self.dispatchers.iter_mut().try_for_each(|dispatcher| dispatcher.update_table(&table))
    }

    pub(super) fn add_slots(
        &mut self,
        shared: &Arc<Mutex<State>>,
        workers: u32,
    ) -> Result<(), SupervisorError> {
        for index in self.slots.len() as u32..workers {
            for (position, group) in self.groups.iter_mut().enumerate() {
                let socket = group.open_socket()?;
                if let Some(dispatcher) = self.dispatchers.get_mut(position) {
                    dispatcher.set_socket(index, &socket)?;
                }
                group.sockets.push(socket);
            }
            let slot = self.new_slot();
            self.slots.push(slot);
        }
        for dispatcher in &mut self.dispatchers {
            dispatcher.set_slot_count(workers)?;
        }
        for index in 0..self.slots.len() {
            if self.slots[index].worker.is_none() {
                start_worker(shared, self, index);
            }
        }
        self.update_table()?;
        info!(workers, "scaled up");
        Ok(())
    }

    pub(super) fn remove_slots(&mut self, workers: u32) -> Result<Vec<Worker>, SupervisorError> {
        for slot in &mut self.slots[workers as usize..] {
            slot.in_table = false;
        }
        // First no new client maps to the leaving slots ...
        self.update_table()?;
        let mut retiring = Vec::new();
        while self.slots.len() as u32 > workers {
            let index = self.slots.len() as u32 - 1;
            for dispatcher in &mut self.dispatchers {
                dispatcher.clear_socket(index)?;
            }
            // ... then the loader lets go of their sockets: each closes when its worker has
            // finished, and the kernel migrates what is still queued on it.
            for group in &mut self.groups {
                group.sockets.pop();
            }
            retiring.extend(self.slots.pop().and_then(|slot| slot.worker));
        }
        for dispatcher in &mut self.dispatchers {
            dispatcher.set_slot_count(workers)?;
        }
        for worker in &retiring {
            terminate(worker, self.options.grace_period);
        }
        info!(workers, "scaled down");
        Ok(retiring)
    }

    /// Takes a crash-looping slot out of the table, and gives it a fresh socket so the
    /// connections queued on the old one migrate to live slots.
    pub(super) fn eject(&mut self, index: usize) -> Result<(), SupervisorError> {
        self.slots[index].in_table = false;
        self.update_table()?;
        for (group, dispatcher) in self.groups.iter_mut().zip(&mut self.dispatchers) {
            let socket = group.open_socket()?;
            dispatcher.set_socket(index as u32, &socket)?;
            // Dropping the old socket closes it: nothing else holds it while the worker is down.
            group.sockets[index] = socket;
        }
        Ok(())
    }
}

pub(super) fn lock(shared: &Arc<Mutex<State>>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
