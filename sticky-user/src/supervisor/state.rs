//! The supervisor's state: slots, sockets, maps and workers, and the changes of slots (add,
//! remove, eject) that keep sockets, maps and the table in step. A change returns the worker
//! processes to start or stop; `processes.rs` does that.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::atomic::Ordering::Relaxed,
    time::Instant,
};

use socket2::Socket;
use sticky_common::{MAX_SLOTS, TABLE_SIZE, Table};
use tracing::{error, info, warn};

pub(super) use super::worker::Worker;
use super::{
    Setup,
    drain::Draining,
    error::SupervisorError,
    slot::{Action, Ejection, Event, Life, Phase, Rules},
};
use crate::{
    chain::Chain,
    config::{Transport, WorkerPolicy},
    dispatch::Dispatch,
    endpoints::{
        control::{ClientAddressStatus, LoaderInfo, QuicStatus, ReloadOutcome, SlotStatus, Status},
        readiness::NotifyDir,
    },
    fd_store,
    handoff::Handoff,
    kernel::{Counters, DispatchError, Dispatcher, table},
    listeners::{ListenerGroup, accept_backlog},
    spawn::Spawner,
};

pub(super) struct State {
    pub(super) spawner: Spawner,
    /// Where each worker's notify socket is bound.
    pub(super) notify: NotifyDir,
    pub(super) groups: Vec<ListenerGroup>,
    pub(super) dispatch: Dispatch,
    /// The connections the loader passes on itself, if it does.
    pub(super) handoff: Option<Handoff>,
    pub(super) seed: u64,
    /// The lookup table in use (none with plain SO_REUSEPORT).
    pub(super) table: Option<Box<Table>>,
    pub(super) policy: WorkerPolicy,
    pub(super) slots: Vec<Slot>,
    /// Every worker process not yet reaped, current or retiring.
    pub(super) live: Vec<Worker>,
    pub(super) next_slot_id: u64,
    pub(super) stopping: bool,
    /// How the last rolling restart ended.
    pub(super) last_reload: Option<ReloadOutcome>,
    /// How the last upgrade ended.
    pub(super) last_upgrade: Option<ReloadOutcome>,
    /// How many times this loader was upgraded in place.
    pub(super) upgrades: u32,
    /// With `--quic`: the slots' previous generations whose workers drain.
    pub(super) draining: Vec<Draining>,
}

pub(super) struct Slot {
    /// Tells a slot apart from a later one at the same index (after scaling down and up).
    pub(super) id: u64,
    pub(super) worker: Option<Worker>,
    /// Its phase and counts: the state machine of `slot.rs`.
    pub(super) life: Life,
    /// The accept progress the hang check last saw.
    pub(super) progress: Progress,
}

/// The accepts a slot has made, as last seen, and when they last moved.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    pub(super) accepted: u64,
    pub(super) at: Instant,
}

impl State {
    /// The state of a loader that has set up `setup`, with no slots yet.
    pub(super) fn new(setup: Setup, policy: WorkerPolicy) -> Self {
        let Setup { spawner, groups, dispatch, seed, table, notify, handoff } = setup;
        Self {
            spawner,
            notify,
            groups,
            dispatch,
            handoff,
            seed,
            table,
            policy,
            slots: Vec::new(),
            live: Vec::new(),
            next_slot_id: 0,
            stopping: false,
            last_reload: None,
            last_upgrade: None,
            upgrades: 0,
            draining: Vec::new(),
        }
    }

    pub(super) fn new_slot(&mut self) -> Slot {
        self.next_slot_id += 1;
        Slot {
            id: self.next_slot_id,
            worker: None,
            life: Life::default(),
            progress: Progress { accepted: 0, at: Instant::now() },
        }
    }

    pub(super) fn slot_of(&self, pid: u32) -> Option<usize> {
        self.slots.iter().position(|slot| slot.worker.as_ref().is_some_and(|w| w.pid == pid))
    }

    /// The current state, for `sticky status`: the loader, slots, workers and the program's
    /// counters.
    pub(super) fn status(&self, loader: LoaderInfo) -> Result<Status, DispatchError> {
        let dispatchers = self.dispatch.dispatchers();
        let counters =
            dispatchers.iter().map(Dispatcher::counters).collect::<Result<Vec<_>, _>>()?;
        let total = |field: fn(&Counters) -> u64| counters.iter().map(field).sum();
        let mut entries = vec![0usize; self.slots.len().max(MAX_SLOTS as usize)];
        for &slot in self.table.iter().flat_map(|table| table.iter()) {
            entries[usize::from(slot)] += 1;
        }
        let slots = (0..)
            .zip(&self.slots)
            .map(|(index, slot)| SlotStatus {
                slot: index,
                pid: slot.worker.as_ref().map(|w| w.pid),
                uptime_secs: slot.worker.as_ref().map(|w| w.started.elapsed().as_secs_f64()),
                restarts: slot.life.restarts,
                in_table: slot.life.in_table(),
                connections: Counters::selected_total(&counters, index as usize),
                ready: slot.worker.as_ref().is_some_and(Worker::is_ready),
                status: slot.worker.as_ref().and_then(Worker::status),
                hangs: slot.life.hangs,
                table_share: self
                    .table
                    .as_ref()
                    .map(|_| entries[index as usize] as f64 / TABLE_SIZE as f64),
                state: Some(slot.life.phase.into()),
                queue: self.queue(index as usize),
                ready_at_unix_secs: slot.worker.as_ref().and_then(Worker::ready_at),
                // Read from /proc by the caller, without the lock.
                cpu_secs: None,
                rss_bytes: None,
            })
            .collect();
        Ok(Status {
            pid: std::process::id(),
            loader: LoaderInfo { upgrades: self.upgrades, ..loader },
            listen: self.groups.iter().map(|g| g.listen.to_string()).collect(),
            dispatch: self.dispatch.mode(),
            program_ids: dispatchers.iter().map(Dispatcher::program_id).collect(),
            migrates: dispatchers.iter().all(Dispatcher::migrates) && !dispatchers.is_empty(),
            fallback: total(|c| c.fallback),
            passed: total(|c| c.passed),
            unreadable: total(|c| c.unreadable),
            slots,
            last_reload: self.last_reload.clone(),
            last_upgrade: self.last_upgrade.clone(),
            client_address: self.client_address_status(total(|c| c.proxied)),
            quic: dispatchers.iter().find_map(Dispatcher::quic_cid_len).map(|cid_len| QuicStatus {
                cid_len,
                routed: total(|c| c.quic_routed),
                unroutable: total(|c| c.quic_unroutable),
                generations: self.quic_generations(),
            }),
        })
    }

    /// Connections waiting in slot `index`'s accept queues (TCP listen addresses), if it has
    /// sockets of its own (not under userspace dispatch).
    fn queue(&self, index: usize) -> Option<u32> {
        if matches!(self.dispatch, Dispatch::Userspace) {
            return None;
        }
        let tcp = self.groups.iter().filter(|group| group.listen.transport == Transport::Tcp);
        let sockets = tcp.filter_map(|group| group.sockets.get(index));
        Some(sockets.map(|socket| accept_backlog(socket).unwrap_or(0)).sum())
    }

    /// How trusted proxies' connections went, if any are trusted.
    fn client_address_status(&self, proxied: u64) -> Option<ClientAddressStatus> {
        let handoff = self.handoff.as_ref().filter(|handoff| handoff.reads_headers())?;
        let stats = &handoff.stats;
        Some(ClientAddressStatus {
            proxied,
            by_header: stats.by_header.load(Relaxed),
            by_proxy: stats.by_proxy.load(Relaxed),
            errors: stats.errors().into_iter().map(|(label, n)| (label.to_owned(), n)).collect(),
        })
    }

    /// The rules of the slots' lives: the policy's, and whether a slot can leave the table.
    pub(super) fn rules(&self) -> Rules {
        Rules::new(&self.policy, !self.dispatch.dispatchers().is_empty())
    }

    /// Passes `event` to slot `index`'s life and carries out what concerns the table (update,
    /// eject); returns the rest (kill, restart) for the caller, which holds the tasks.
    pub(super) fn on(&mut self, index: usize, event: Event) -> Vec<Action> {
        let rules = self.rules();
        let actions = self.slots[index].life.on(event, Instant::now(), rules);
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::UpdateTable => {
                    if let Err(err) = self.update_table() {
                        error!(error = %Chain(&err), "cannot update the table");
                    }
                }
                Action::Eject => {
                    if let Err(err) = self.eject(index) {
                        let what = if self.slots[index].life.phase == Phase::Ejected(Ejection::Hung)
                        {
                            "cannot take the hung slot out of the table"
                        } else {
                            "cannot eject the slot"
                        };
                        error!(slot = index, error = %Chain(&err), "{what}");
                    }
                }
                Action::Kill | Action::Restart(_) => rest.push(action),
            }
        }
        rest
    }

    /// Slot `index`'s current worker is ready: the start counts it, and a slot out of the table
    /// because its last worker hung rejoins.
    pub(super) fn slot_ready(&mut self, index: usize) {
        if self.slots[index].life.phase == Phase::Ejected(Ejection::Hung) {
            info!(slot = index, "the hung slot's new worker is ready: it rejoins the table");
        }
        let worker = self.slots[index].worker.as_ref();
        if let (Some(handoff), Some(channel)) = (&self.handoff, worker.and_then(|w| w.channel())) {
            handoff.serve(index, channel);
        }
        self.on(index, Event::Ready);
    }

    /// The fds slot `index`'s worker inherits at fd 3 onwards: its listening sockets (none
    /// under userspace dispatch), or those given (a next generation's), then its handoff
    /// socket if the loader passes connections on.
    pub(super) fn inherited_fds(&self, index: usize, sockets: Option<&[Socket]>) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = match (&self.dispatch, sockets) {
            (Dispatch::Userspace, _) => Vec::new(),
            (_, Some(sockets)) => sockets.iter().map(AsRawFd::as_raw_fd).collect(),
            (_, None) => self.groups.iter().map(|group| group.sockets[index].as_raw_fd()).collect(),
        };
        let ends = self.handoff.iter().filter_map(|handoff| handoff.worker_ends.get(index));
        fds.extend(ends.map(AsRawFd::as_raw_fd));
        fds
    }

    /// Rebuilds the table from the slots in it and writes it to the maps.
    pub(super) fn update_table(&mut self) -> Result<(), DispatchError> {
        if self.dispatch.dispatchers().is_empty() {
            return Ok(());
        }
        let live: Vec<u32> =
            (0..).zip(&self.slots).filter(|(_, s)| s.life.in_table()).map(|(i, _)| i).collect();
        if live.is_empty() {
            warn!("every slot is out of the table: keeping the last table");
            return Ok(());
        }
        let table = table::build(self.seed, &live);
        let dispatchers = self.dispatch.dispatchers_mut();
        dispatchers.iter_mut().try_for_each(|dispatcher| dispatcher.update_table(&table))?;
        if let Some(handoff) = &self.handoff {
            handoff.router.set_table(&table);
        }
        self.table = Some(table);
        Ok(())
    }

    /// Adds slots up to `workers`, with their sockets in the socket arrays but not yet in the
    /// table; returns the slots without a worker. Once their workers run, the caller puts them
    /// in the table with [`State::update_table`].
    pub(super) fn add_slots(&mut self, workers: u32) -> Result<Vec<usize>, SupervisorError> {
        // Every socket first: a failure to open one leaves the slots as they were.
        let first = self.slots.len() as u32;
        let opened: Vec<Vec<_>> = (first..workers)
            .map(|_| self.groups.iter().map(ListenerGroup::open_socket).collect())
            .collect::<Result<_, _>>()?;
        for (index, sockets) in (first..).zip(opened) {
            for (position, socket) in sockets.into_iter().enumerate() {
                if let Some(dispatcher) = self.dispatch.dispatchers_mut().get_mut(position) {
                    dispatcher.set_socket(index, &socket)?;
                }
                self.groups[position].sockets.push(socket);
            }
            fd_store::keep(&self.groups, index);
            if let Some(handoff) = &mut self.handoff {
                handoff.push_slot().map_err(SupervisorError::Io)?;
            }
            let slot = self.new_slot();
            self.slots.push(slot);
        }
        for dispatcher in self.dispatch.dispatchers_mut() {
            dispatcher.set_slot_count(workers)?;
        }
        Ok((0..self.slots.len()).filter(|&index| self.slots[index].worker.is_none()).collect())
    }

    /// Removes the slots from `workers` up: out of the table, then out of the socket arrays
    /// (with `--quic`, their UDP sockets to their draining indexes), then their sockets are let
    /// go. Returns their workers (if they have one) by slot, for the caller to stop or drain.
    pub(super) fn remove_slots(
        &mut self,
        workers: u32,
    ) -> Result<Vec<(usize, Option<Worker>)>, SupervisorError> {
        let rules = self.rules();
        for slot in &mut self.slots[workers as usize..] {
            slot.life.on(Event::Leave, Instant::now(), rules);
        }
        // First no new client maps to the leaving slots ...
        self.update_table()?;
        let mut retiring = Vec::new();
        while self.slots.len() as u32 > workers {
            let index = self.slots.len() as u32 - 1;
            let dispatchers = self.dispatch.dispatchers_mut();
            for (dispatcher, group) in dispatchers.iter_mut().zip(&self.groups) {
                dispatcher.drain_slot(index, &group.sockets[index as usize])?;
            }
            // ... then the loader lets go of their sockets: each closes when its worker has
            // finished, and the kernel migrates what is still queued on it.
            for group in &mut self.groups {
                group.sockets.pop();
            }
            fd_store::forget(fd_store::slot_name(index));
            if let Some(handoff) = &mut self.handoff {
                handoff.pop_slot();
            }
            retiring.push((index as usize, self.slots.pop().and_then(|slot| slot.worker)));
        }
        for dispatcher in self.dispatch.dispatchers_mut() {
            dispatcher.set_slot_count(workers)?;
        }
        Ok(retiring)
    }

    /// Takes an ejected slot (its life says so already) out of the table, and gives it a fresh
    /// socket so the connections queued on the old one migrate to live slots.
    fn eject(&mut self, index: usize) -> Result<(), SupervisorError> {
        self.update_table()?;
        for (group, dispatcher) in self.groups.iter_mut().zip(self.dispatch.dispatchers_mut()) {
            let socket = group.open_socket()?;
            dispatcher.set_socket(index as u32, &socket)?;
            // Dropping the old socket closes it once the worker is gone too (a crashed worker
            // already is; a hung one is killed right after).
            group.sockets[index] = socket;
        }
        fd_store::forget(fd_store::slot_name(index as u32));
        fd_store::keep(&self.groups, index as u32);
        Ok(())
    }
}
