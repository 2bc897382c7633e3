//! QUIC socket generations (`--quic`): a slot's planned replacement (a rolling restart, a slot's
//! restart, scaling down) lets its worker drain its connections instead of cutting them.
//!
//! The slot's new worker starts on fresh sockets of the next generation, whose connection IDs
//! name it. Once it is ready, its sockets take the slot's place in the socket arrays, and the
//! slot's previous UDP sockets move to the slot's draining index, where the program sends the
//! datagrams whose IDs name the previous generation: the old worker keeps serving its
//! connections, and gets no new ones (its TCP sockets leave the arrays). It gets SIGTERM once
//! its socket has had no datagram for `--drain-idle` (its connections are over), or after
//! `--drain-timeout`, unless it exits first. A slot has one draining generation at most: its
//! next replacement ends the one still draining.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use socket2::Socket;
use tokio::time::sleep;
use tracing::{error, info};

use super::{
    Supervisor, SupervisorError,
    processes::terminate,
    state::{State, Worker},
};
use crate::{
    chain::Chain, config::Quic, endpoints::control::QuicGeneration, fd_store,
    listeners::ListenerGroup, sync::lock,
};

/// How often a drain checks its socket's datagrams.
const POLL: Duration = Duration::from_millis(250);

/// A slot's previous generation, whose worker drains its connections.
#[derive(Clone)]
pub(super) struct Draining {
    /// The slot (which may have been removed since).
    pub(super) slot: usize,
    /// The generation its connection IDs name.
    pub(super) generation: u8,
    /// Its worker.
    pub(super) worker: Worker,
    /// When its drain began.
    pub(super) since: Instant,
}

/// The fresh sockets (one per listen address) a slot's next worker starts on, and their
/// generation.
pub(super) struct NextGeneration {
    pub(super) sockets: Vec<Socket>,
    pub(super) generation: u8,
}

impl State {
    /// With `--quic` (and a program that has generations), slot `index`'s current generation.
    pub(super) fn generation(&self, index: usize) -> Option<u8> {
        self.dispatch.dispatchers().iter().find_map(|d| d.generation(index as u32))
    }

    /// The sockets of slot `index`'s next generation; none without generations (its next
    /// worker shares the slot's sockets).
    pub(super) fn next_generation(
        &self,
        index: usize,
    ) -> Result<Option<NextGeneration>, SupervisorError> {
        let Some(current) = self.generation(index) else { return Ok(None) };
        let sockets = self.groups.iter().map(ListenerGroup::open_socket).collect::<Result<_, _>>();
        Ok(Some(NextGeneration { sockets: sockets?, generation: current.wrapping_add(1) }))
    }

    /// Makes `next` slot `index`'s sockets, its UDP sockets' predecessors its draining ones.
    /// The loader lets go of the predecessors: each closes when its worker exits. On failure
    /// the slot is put back as it was.
    pub(super) fn take_generation(
        &mut self,
        index: usize,
        next: NextGeneration,
    ) -> Result<(), SupervisorError> {
        let (slot, previous) = (index as u32, next.generation.wrapping_sub(1));
        let dispatchers = self.dispatch.dispatchers_mut();
        let moved = dispatchers.iter_mut().zip(&self.groups).zip(&next.sockets).try_for_each(
            |((dispatcher, group), socket)| {
                dispatcher.set_generation(slot, next.generation, socket, &group.sockets[index])
            },
        );
        if let Err(err) = moved {
            for (dispatcher, group) in dispatchers.iter_mut().zip(&self.groups) {
                let _ = dispatcher.restore_generation(slot, previous, &group.sockets[index]);
            }
            return Err(err.into());
        }
        for (group, socket) in self.groups.iter_mut().zip(next.sockets) {
            group.sockets[index] = socket;
        }
        fd_store::forget(fd_store::slot_name(slot));
        fd_store::keep(&self.groups, slot);
        Ok(())
    }

    /// The generations alive, by slot: its current one, then its draining one.
    pub(super) fn quic_generations(&self) -> Vec<QuicGeneration> {
        let current = (0..self.slots.len()).filter_map(|index| {
            Some(QuicGeneration {
                slot: index as u32,
                generation: self.generation(index)?,
                pid: self.slots[index].worker.as_ref().map(|worker| worker.pid),
                ..QuicGeneration::default()
            })
        });
        let draining = self.draining.iter().map(|draining| QuicGeneration {
            slot: draining.slot as u32,
            generation: draining.generation,
            pid: Some(draining.worker.pid),
            draining_secs: Some(draining.since.elapsed().as_secs_f64()),
            draining_datagrams: Some(self.draining_datagrams(draining.slot)),
        });
        let mut generations: Vec<_> = current.chain(draining).collect();
        generations.sort_by_key(|generation| (generation.slot, generation.draining_secs.is_some()));
        generations
    }

    /// Ends the drain of slot `index`'s previous generation, if one drains: returns its worker.
    pub(super) fn end_drain(&mut self, index: usize) -> Option<Worker> {
        let position = self.draining.iter().position(|draining| draining.slot == index)?;
        Some(self.draining.remove(position).worker)
    }

    /// Datagrams routed to slot `index`'s draining sockets so far.
    fn draining_datagrams(&self, index: usize) -> u64 {
        let dispatchers = self.dispatch.dispatchers().iter();
        let counts = dispatchers.filter(|d| d.generation(index as u32).is_some());
        counts.filter_map(|d| d.draining_datagrams(index as u32).ok()).sum()
    }
}

impl Supervisor {
    /// Lets `worker`, of slot `slot`'s generation before its current one, drain; a generation
    /// of the slot still draining from before ends now (one per slot).
    pub(super) fn drain_previous(&self, state: &mut State, slot: usize, worker: Option<Worker>) {
        let grace = state.policy.grace_period;
        if let Some(earlier) = state.end_drain(slot) {
            terminate(&earlier, grace);
        }
        let Some(worker) = worker else { return };
        let (Some(current), Some(quic)) = (state.generation(slot), self.launch.config.quic) else {
            terminate(&worker, grace);
            return;
        };
        let generation = current.wrapping_sub(1);
        let draining = Draining { slot, generation, worker, since: Instant::now() };
        drain(&self.shared, state, draining, quic, grace);
    }

    /// Goes on with the drains an earlier image began (after an upgrade).
    pub(super) fn resume_drains(&self, state: &mut State) {
        let grace = state.policy.grace_period;
        for draining in std::mem::take(&mut state.draining) {
            match self.launch.config.quic {
                Some(quic) => drain(&self.shared, state, draining, quic, grace),
                None => terminate(&draining.worker, grace),
            }
        }
    }
}

/// Lets `draining`'s worker drain, as `quic` says how long; it gets SIGTERM (then SIGKILL
/// after `grace`) once it has drained.
fn drain(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    draining: Draining,
    quic: Quic,
    grace: Duration,
) {
    info!(
        slot = draining.slot,
        generation = draining.generation,
        pid = draining.worker.pid,
        "the previous generation drains its QUIC connections"
    );
    state.draining.push(draining.clone());
    tokio::spawn(watch(shared.clone(), draining, quic, grace));
}

/// Waits until `draining` has drained, stops its worker and empties its draining index.
async fn watch(shared: Arc<Mutex<State>>, draining: Draining, quic: Quic, grace: Duration) {
    let Draining { slot, generation, worker, since } = draining;
    let mut seen = None;
    let mut quiet_since = Instant::now();
    let reason = loop {
        tokio::select! {
            () = worker.wait() => break None,
            () = sleep(POLL) => {}
        }
        let datagrams = {
            let state = lock(&shared);
            // Ended meanwhile (the slot's next replacement, a stop).
            if !state.draining.iter().any(|d| d.worker.pid == worker.pid) {
                return;
            }
            state.draining_datagrams(slot)
        };
        let now = Instant::now();
        if seen != Some(datagrams) {
            (seen, quiet_since) = (Some(datagrams), now);
        }
        if now - quiet_since >= quic.drain_idle {
            break Some("its socket got no datagram for --drain-idle");
        }
        if now - since >= quic.drain_timeout {
            break Some("--drain-timeout passed");
        }
    };
    match reason {
        Some(reason) => {
            info!(slot, generation, pid = worker.pid, "drained: {reason}");
            terminate(&worker, grace);
            worker.wait().await;
        }
        // Not signalled: its pid may be another process's by now.
        None => info!(slot, generation, pid = worker.pid, "the draining worker exited"),
    }
    let mut state = lock(&shared);
    let Some(position) = state.draining.iter().position(|d| d.worker.pid == worker.pid) else {
        return;
    };
    state.draining.remove(position);
    for dispatcher in state.dispatch.dispatchers_mut() {
        if let Err(err) = dispatcher.clear_draining(slot as u32) {
            error!(slot, error = %Chain(&err), "cannot empty the draining socket's index");
        }
    }
}
