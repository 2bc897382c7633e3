//! Worker processes: starting one on its slot, its readiness, handling its exit (restart with
//! backoff, crash loops), and stopping it.

use std::{
    io,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::time::{sleep, timeout};
use tracing::{error, info, warn};

use super::{
    drain::NextGeneration,
    reaper::{Exiting, kill_and_reap},
    slot::{Action, Ejection, Event, HEALTHY_RUN, Phase},
    state::{State, Worker},
    worker::Exit,
};
use crate::{
    config::{ReadyMode, WorkerPolicy},
    endpoints::readiness::{self, Notice},
    sync::lock,
};

/// Starts the worker of slot `index` and makes it the slot's worker. Returns it, or `None` if
/// it could not be started (then a restart is scheduled).
pub(super) fn start_worker(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    index: usize,
) -> Option<Worker> {
    match spawn_worker(shared, state, index, None) {
        Ok(worker) => {
            state.slots[index].worker = Some(worker.clone());
            Some(worker)
        }
        Err(err) => {
            error!(slot = index, error = %err, "cannot start worker");
            let actions = state.on(index, Event::StartFailed);
            carry_out(shared, state, index, actions);
            None
        }
    }
}

/// Starts a worker on slot `index`'s sockets, or on those of its `next` generation, without
/// making it the slot's worker (a rolling restart's candidate). Its exit is handled by
/// [`on_exit`]; it becomes ready by `READY=1` or, in delay mode, by staying up for the ready
/// delay.
pub(super) fn spawn_worker(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    index: usize,
    next: Option<&NextGeneration>,
) -> io::Result<Worker> {
    let fds = state.inherited_fds(index, next.map(|next| &next.sockets[..]));
    let generation = match next {
        Some(next) => next.generation,
        None => state.generation(index).unwrap_or(0),
    };
    let slots = state.slots.len() as u32;
    let inbox = state.notify.bind(index)?;
    let channel = state.handoff.as_ref().map(|h| h.worker_channel()).transpose()?.flatten();
    let (loader_end, worker_end) = channel.unzip();
    let worker_fd = worker_end.as_ref().map(|end| end.as_raw_fd());
    let pid = state.spawner.spawn(index as u32, slots, generation, fds, worker_fd, inbox.path())?;
    // The worker's end is the worker's alone: its exit closes the channel.
    drop(worker_end);
    let worker = Worker::new(pid, inbox).with_channel(loader_end);
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
        let Some(slot) = state.slots.get(index).filter(|slot| slot.id == id) else { return };
        let Some(worker) = slot.worker.clone().filter(|w| w.pid == pid) else { return };
        if slot.life.phase == Phase::Ejected(Ejection::CrashLooping) {
            info!(slot = index, pid, "worker stayed up: slot rejoins the table");
        }
        state.on(index, Event::StayedUp { ready: worker.is_ready() });
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
    warn!(slot = index, pid, %exit, "worker exited");
    state.slots[index].worker = None;
    let in_table = state.slots[index].life.in_table();
    let actions = state.on(index, Event::Exited { exit, ready: worker.is_ready() });
    if in_table && state.slots[index].life.phase == Phase::Ejected(Ejection::CrashLooping) {
        warn!(
            slot = index,
            exits = crash_limit,
            window_secs = crash_window.as_secs_f64(),
            "slot is crash-looping: its clients go to the other slots until its worker stays up"
        );
    }
    carry_out(shared, &mut state, index, actions);
}

/// Carries out what slot `index`'s life returned beyond the table: kills its worker, or
/// restarts it after a delay unless the slot is gone or stopping by then.
pub(super) fn carry_out(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    index: usize,
    actions: Vec<Action>,
) {
    for action in actions {
        match action {
            Action::Kill => {
                if let Some(worker) = &state.slots[index].worker {
                    kill(worker);
                }
            }
            Action::Restart(delay) => {
                info!(slot = index, delay_ms = delay.as_millis() as u64, "restarting worker");
                let (shared, id) = (shared.clone(), state.slots[index].id);
                tokio::spawn(async move {
                    sleep(delay).await;
                    let mut state = lock(&shared);
                    let current = state
                        .slots
                        .get(index)
                        .is_some_and(|slot| slot.id == id && slot.worker.is_none());
                    if current && !state.stopping {
                        start_worker(&shared, &mut state, index);
                    }
                });
            }
            // Carried out by the state.
            Action::UpdateTable | Action::Eject => {}
        }
    }
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
