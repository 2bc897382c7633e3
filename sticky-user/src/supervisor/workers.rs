//! Worker processes: starting one on its slot, its readiness, handling its exit (restart with
//! backoff, crash loops), and stopping it.

use std::{
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::time::{sleep, timeout};
use tracing::{error, info, warn};

use super::{
    reaper::{Exiting, kill_and_reap},
    state::{FIRST_BACKOFF, HEALTHY_RUN, State, Worker},
    worker::Exit,
};
use crate::{
    config::{ReadyMode, WorkerPolicy},
    endpoints::readiness::{self, Notice},
    sync::lock,
};

/// The longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the worker of slot `index` and makes it the slot's worker. Returns it, or `None` if
/// it could not be started (then a restart is scheduled).
pub(super) fn start_worker(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    index: usize,
) -> Option<Worker> {
    match spawn_worker(shared, state, index) {
        Ok(worker) => {
            state.slots[index].worker = Some(worker.clone());
            Some(worker)
        }
        Err(err) => {
            error!(slot = index, error = %err, "cannot start worker");
            schedule_restart(shared, state, index);
            None
        }
    }
}

/// Starts a worker on slot `index`'s sockets without making it the slot's worker (a rolling
/// restart's candidate). Its exit is handled by [`on_exit`]; it becomes ready by `READY=1`
/// or, in delay mode, by staying up for the ready delay.
pub(super) fn spawn_worker(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    index: usize,
) -> io::Result<Worker> {
    let fds = state.inherited_fds(index);
    let slots = state.slots.len() as u32;
    let inbox = state.notify.bind(index)?;
    let pid = state.spawner.spawn(index as u32, slots, fds, inbox.path())?;
    let worker = Worker::new(pid, inbox);
    if let Err(err) = track(shared, state, &worker, Some(index)) {
        kill_and_reap(pid);
        return Err(err);
    }
    info!(slot = index, pid, "worker started");
    Ok(worker)
}

/// Watches `worker`, just started or adopted from before an upgrade: its exit goes to
/// [`on_exit`], what it sends to its notify socket to [`apply`] while it lives, its readiness
/// (delay mode) and its health to slot `index` (none for a worker of a removed slot that is
/// still finishing).
pub(super) fn track(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    worker: &Worker,
    index: Option<usize>,
) -> io::Result<()> {
    let exiting = Exiting::watch(worker.pid)?;
    state.live.push(worker.clone());
    let (waiter, ended) = (shared.clone(), worker.clone());
    tokio::spawn(async move {
        let exit = exiting.wait().await;
        ended.exited(exit.clone());
        on_exit(&waiter, &ended, exit);
    });
    if let Some(inbox) = worker.inbox.clone() {
        let (shared, worker) = (shared.clone(), worker.clone());
        tokio::spawn(async move {
            let apply = |notice| apply(&shared, &worker, notice);
            tokio::select! {
                () = readiness::receive(inbox, worker.pid, apply) => {}
                () = worker.wait() => {}
            }
        });
    }
    if state.policy.ready == ReadyMode::Delay && !worker.is_ready() {
        let (shared, starting, delay) = (shared.clone(), worker.clone(), state.policy.ready_delay);
        tokio::spawn(async move {
            if timeout(delay, starting.wait()).await.is_err() {
                became_ready(&shared, &starting);
            }
        });
    }
    let Some(index) = index else { return Ok(()) };
    let (watcher, pid) = (shared.clone(), worker.pid);
    let id = state.slots[index].id;
    tokio::spawn(async move {
        sleep(HEALTHY_RUN).await;
        let mut state = lock(&watcher);
        let Some(slot) = state.slots.get_mut(index).filter(|slot| slot.id == id) else { return };
        if slot.worker.as_ref().is_some_and(|w| w.pid == pid) {
            slot.backoff = FIRST_BACKOFF;
            // A hung slot rejoins when its new worker is ready, not merely up.
            if !slot.in_table && !slot.hung {
                slot.in_table = true;
                info!(slot = index, pid, "worker stayed up: slot rejoins the table");
                if let Err(err) = state.update_table() {
                    error!(error = %crate::chain::Chain(&err), "cannot update the table");
                }
            }
        }
    });
    Ok(())
}

/// A worker became ready (`READY=1`, or the ready delay passed). A slot out of the table
/// because its last worker hung rejoins.
pub(super) fn became_ready(shared: &Arc<Mutex<State>>, worker: &Worker) {
    if !worker.mark_ready() {
        return;
    }
    info!(pid = worker.pid, "worker ready");
    let mut state = lock(shared);
    if let Some(index) = state.slot_of(worker.pid) {
        state.slot_ready(index);
    }
}

/// Applies what `worker` (or a process it started) sent to its notify socket.
fn apply(shared: &Arc<Mutex<State>>, worker: &Worker, notice: Notice) {
    match notice {
        Notice::Ready => became_ready(shared, worker),
        Notice::Status(status) => worker.set_status(status),
        Notice::Watchdog => worker.feed(),
    }
}

/// A worker exited: forget it, and if it was its slot's current worker, restart it after the
/// slot's backoff, ejecting the slot first if it is crash-looping.
fn on_exit(shared: &Arc<Mutex<State>>, worker: &Worker, exit: Exit) {
    let pid = worker.pid;
    let mut state = lock(shared);
    state.live.retain(|live| live.pid != pid);
    if state.stopping {
        return;
    }
    let Some(index) = state.slot_of(pid) else { return };
    let WorkerPolicy { crash_limit, crash_window, .. } = state.policy;
    let slot = &mut state.slots[index];
    warn!(slot = index, pid, %exit, "worker exited");
    if !worker.is_ready() {
        slot.failure = Some(exit);
    }
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
            error!(slot = index, error = %crate::chain::Chain(&err), "cannot eject the slot");
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

/// SIGKILL to the worker's process group (a hung worker, or a candidate that did not become
/// ready).
pub(super) fn kill(worker: &Worker) {
    let _ = killpg(Pid::from_raw(worker.pid as i32), Signal::SIGKILL);
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
