//! Worker processes: starting one on its slot, handling its exit (restart with backoff, crash
//! loops), and stopping it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    sync::watch,
    time::{sleep, timeout},
};
use tracing::{error, info, warn};

use super::state::{FIRST_BACKOFF, HEALTHY_RUN, Options, State, Worker, lock};

/// The longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the worker of slot `index`; its exit is handled by [`on_exit`]. Returns the worker,
/// or `None` if it could not be started (then a restart is scheduled).
pub(super) fn start_worker(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    index: usize,
) -> Option<Worker> {
    let fds = state.inherited_fds(index);
    let slots = state.slots.len() as u32;
    let mut child = match state.spawner.spawn(index as u32, slots, fds) {
        Ok(child) => child,
        Err(err) => {
            error!(slot = index, error = %err, "cannot start worker");
            schedule_restart(shared, state, index);
            return None;
        }
    };
    let pid = child.id().unwrap_or_default();
    let (exited_tx, exited) = watch::channel(false);
    let worker = Worker { pid, started: Instant::now(), exited };
    info!(slot = index, pid, "worker started");
    state.slots[index].worker = Some(worker.clone());
    state.live.push(worker.clone());
    let waiter = shared.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exited_tx.send(true);
        on_exit(&waiter, pid, status.map_or_else(|e| e.to_string(), |s| s.to_string()));
    });
    let watcher = shared.clone();
    let id = state.slots[index].id;
    tokio::spawn(async move {
        sleep(HEALTHY_RUN).await;
        let mut state = lock(&watcher);
        let Some(slot) = state.slots.get_mut(index).filter(|slot| slot.id == id) else { return };
        if slot.worker.as_ref().is_some_and(|w| w.pid == pid) {
            slot.backoff = FIRST_BACKOFF;
            if !slot.in_table {
                slot.in_table = true;
                info!(slot = index, pid, "worker stayed up: slot rejoins the table");
                if let Err(err) = state.update_table() {
                    error!(error = %err, "cannot update the table");
                }
            }
        }
    });
    Some(worker)
}

/// A worker exited: forget it, and if it was its slot's current worker, restart it after the
/// slot's backoff, ejecting the slot first if it is crash-looping.
fn on_exit(shared: &Arc<Mutex<State>>, pid: u32, status: String) {
    let mut state = lock(shared);
    state.live.retain(|worker| worker.pid != pid);
    if state.stopping {
        return;
    }
    let Some(index) = state.slot_of(pid) else { return };
    let Options { crash_limit, crash_window, .. } = state.options;
    let slot = &mut state.slots[index];
    warn!(slot = index, pid, %status, "worker exited");
    slot.worker = None;
    slot.restarts += 1;
    let now = Instant::now();
    slot.exits.push_back(now);
    while slot.exits.front().is_some_and(|&exit| now - exit > crash_window) {
        slot.exits.pop_front();
    }
    let crash_loop = slot.in_table && slot.exits.len() as u32 >= crash_limit;
    if crash_loop && !state.dispatch.dispatchers().is_empty() {
        warn!(
            slot = index,
            exits = crash_limit,
            window_secs = crash_window.as_secs_f64(),
            "slot is crash-looping: its clients go to the other slots until its worker stays up"
        );
        if let Err(err) = state.eject(index) {
            error!(slot = index, error = %err, "cannot eject the slot");
        }
    }
    schedule_restart(shared, &mut state, index);
}

/// Restarts slot `index`'s worker after its backoff, unless the slot is gone or stopping.
pub(super) fn schedule_restart(shared: &Arc<Mutex<State>>, state: &mut State, index: usize) {
    let slot = &mut state.slots[index];
    let (delay, id) = (slot.backoff, slot.id);
    slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    info!(slot = index, delay_ms = delay.as_millis() as u64, "restarting worker");
    let shared = shared.clone();
    tokio::spawn(async move {
        sleep(delay).await;
        let mut state = lock(&shared);
        let current =
            state.slots.get(index).is_some_and(|slot| slot.id == id && slot.worker.is_none());
        if current && !state.stopping {
            start_worker(&shared, &mut state, index);
        }
    });
}

/// SIGTERM to the worker's process group, SIGKILL once `grace` has passed; then SIGKILL to
/// what is left of its group (its own children).
pub(super) fn terminate(worker: &Worker, grace: Duration) {
    let group = Pid::from_raw(worker.pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let worker = worker.clone();
    tokio::spawn(async move {
        if timeout(grace, worker.wait()).await.is_err() {
            warn!(pid = worker.pid, "worker still running after the grace period: killing it");
            let _ = killpg(group, Signal::SIGKILL);
            worker.wait().await;
        }
        let _ = killpg(group, Signal::SIGKILL);
    });
}
