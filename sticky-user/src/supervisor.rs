//! Runs one worker per slot and keeps the slots, the sockets and the dispatch maps in step.
//!
//! Worker `i` always serves slot `i`, on sockets the loader keeps open for its whole life, so a
//! restarted worker serves what queued while it was away. The supervisor restarts workers that
//! exit (with a capped backoff), takes a crash-looping slot out of the lookup table until its
//! worker stays up, replaces workers one slot at a time on reload, adds and removes slots on
//! scale, and stops everything on SIGINT/SIGTERM or `sticky stop`.
//!
//! All of its state sits behind one mutex that is never held across an `await`; the tasks that
//! wait for worker exits, timers and control requests each take it briefly.

use std::{
    collections::VecDeque,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use sticky_common::MAX_SLOTS;
use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
    time::{sleep, timeout},
};
use tracing::{error, info, warn};

use crate::{
    control::{self, Request, Response, SlotStatus, Status},
    dispatch::{Counters, DispatchError, Dispatcher},
    listeners::{ListenError, ListenerGroup},
    metrics, notify,
    spawn::Spawner,
    table,
};

/// Delay before the first restart of a worker that exited.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A worker that ran this long is healthy: its backoff resets and an ejected slot rejoins.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a rolling restart lets a new worker start before stopping the old one. The
/// listening socket queues connections meanwhile, so none is refused.
const WARMUP: Duration = Duration::from_millis(500);

/// What the supervisor serves besides the workers.
#[derive(Default)]
pub struct Endpoints {
    /// The control socket and its path (removed at exit).
    pub control: Option<(PathBuf, UnixListener)>,
    /// The metrics listener.
    pub metrics: Option<TcpListener>,
}

/// How the supervisor treats workers.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a worker may take to exit after SIGTERM.
    pub grace_period: Duration,
    /// Exits within `crash_window` that make a slot crash-looping.
    pub crash_limit: u32,
    /// The window `crash_limit` counts exits in.
    pub crash_window: Duration,
}

/// Why the supervisor could not change the slots.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// A dispatch map could not be updated.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A listening socket for a new slot could not be opened.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The control socket failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// A worker count out of range.
    #[error("workers must be between 1 and {MAX_SLOTS}, got {0}")]
    Workers(u32),
    /// The loader is stopping.
    #[error("sticky is stopping")]
    Stopping,
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// The supervisor: everything `sticky run` set up, and the workers it runs.
pub struct Supervisor {
    shared: Arc<Mutex<State>>,
    /// Serializes reload and scale.
    operation: tokio::sync::Mutex<()>,
    /// Woken by `sticky stop`.
    stop: Notify,
}

struct State {
    spawner: Spawner,
    groups: Vec<ListenerGroup>,
    dispatchers: Vec<Dispatcher>,
    seed: u64,
    /// The table as last written to the maps.
    table: Vec<u32>,
    options: Options,
    slots: Vec<Slot>,
    /// Every worker process not yet reaped, current or retiring.
    live: Vec<Worker>,
    next_slot_id: u64,
    stopping: bool,
}

struct Slot {
    /// Tells a slot apart from a later one at the same index (after scaling down and up).
    id: u64,
    worker: Option<Worker>,
    restarts: u32,
    exits: VecDeque<Instant>,
    in_table: bool,
    backoff: Duration,
}

#[derive(Clone)]
struct Worker {
    pid: u32,
    started: Instant,
    exited: watch::Receiver<bool>,
}

impl Worker {
    async fn wait(&self) {
        let _ = self.exited.clone().wait_for(|exited| *exited).await;
    }
}

impl Supervisor {
    /// A supervisor for `groups` (one socket per slot each) and their `dispatchers` (none with
    /// `--dispatch none`), whose maps hold `table`, built from `seed` for all slots.
    pub fn new(
        spawner: Spawner,
        groups: Vec<ListenerGroup>,
        dispatchers: Vec<Dispatcher>,
        seed: u64,
        table: Vec<u32>,
        options: Options,
    ) -> Self {
        let count = groups.first().map_or(0, |group| group.sockets.len() as u32);
        let mut state = State {
            spawner,
            groups,
            dispatchers,
            seed,
            table,
            options,
            slots: Vec::new(),
            live: Vec::new(),
            next_slot_id: 0,
            stopping: false,
        };
        for _ in 0..count {
            let slot = state.new_slot();
            state.slots.push(slot);
        }
        Self {
            shared: Arc::new(Mutex::new(state)),
            operation: Default::default(),
            stop: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Starts the workers and runs until SIGINT, SIGTERM or `sticky stop`; SIGHUP reloads.
    /// Answers on the control socket and serves metrics if given, and speaks sd_notify.
    /// Returns the final counters, one per listen address.
    pub async fn run(
        self: Arc<Self>,
        endpoints: Endpoints,
    ) -> Result<Vec<Counters>, SupervisorError> {
        let signals = |kind| signal(kind).map_err(SupervisorError::Signals);
        let (mut interrupt, mut terminate, mut hangup) = (
            signals(SignalKind::interrupt())?,
            signals(SignalKind::terminate())?,
            signals(SignalKind::hangup())?,
        );
        {
            let mut state = self.state();
            for slot in 0..state.slots.len() {
                start_worker(&self.shared, &mut state, slot);
            }
        }
        let control_path = endpoints.control.map(|(path, listener)| {
            tokio::spawn(serve_control(self.clone(), listener));
            path
        });
        if let Some(listener) = endpoints.metrics {
            tokio::spawn(metrics::serve(listener, self.clone()));
        }
        tokio::spawn(notify::watchdog());
        notify::ready(&self.summary());
        let reason = loop {
            tokio::select! {
                _ = interrupt.recv() => break "SIGINT received",
                _ = terminate.recv() => break "SIGTERM received",
                () = self.stop.notified() => break "stop requested",
                _ = hangup.recv() => {
                    let this = self.clone();
                    tokio::spawn(async move { log_outcome("reload", this.reload().await) });
                }
            }
        };
        info!("{reason}: stopping the workers");
        notify::stopping();
        self.stop_workers().await;
        let mut state = self.state();
        let counters =
            state.dispatchers.iter().map(Dispatcher::counters).collect::<Result<_, _>>()?;
        let State { dispatchers, groups, .. } = &mut *state;
        for (dispatcher, group) in dispatchers.drain(..).zip(groups.iter()) {
            dispatcher.detach(&group.sockets[0])?;
        }
        if let Some(path) = control_path {
            let _ = std::fs::remove_file(path);
        }
        notify::flush(Duration::from_secs(1));
        Ok(counters)
    }

    /// Replaces every worker, one slot at a time: the new worker takes over the same sockets,
    /// then the old one gets SIGTERM and the grace period to finish its connections.
    pub async fn reload(&self) -> Result<String, SupervisorError> {
        let _operation = self.operation.lock().await;
        let count = self.state().slots.len();
        info!(workers = count, "rolling restart");
        notify::reloading();
        for slot in 0..count {
            let (old, new) = {
                let mut state = self.state();
                if state.stopping {
                    return Err(SupervisorError::Stopping);
                }
                let Some(entry) = state.slots.get_mut(slot) else { break };
                let old = entry.worker.take();
                (old, start_worker(&self.shared, &mut state, slot))
            };
            if let Some(new) = new {
                let _ = timeout(WARMUP, new.wait()).await;
            }
            if let Some(old) = old {
                terminate(&old, self.state().options.grace_period);
                old.wait().await;
            }
        }
        notify::ready(&self.summary());
        Ok(format!("restarted {count} workers"))
    }

    /// One line for systemd's status: workers, addresses, dispatch.
    fn summary(&self) -> String {
        let state = self.state();
        let listen: Vec<String> = state.groups.iter().map(|g| g.address.to_string()).collect();
        let dispatch = if state.dispatchers.is_empty() { "none" } else { "kernel" };
        format!("{} workers on {}, dispatch {dispatch}", state.slots.len(), listen.join(", "))
    }

    /// Sets the number of worker slots to `workers`. New slots get new sockets and workers and
    /// take about 1/N of the clients; removed slots (the highest) leave the table first, so
    /// only their clients move, then their workers stop and their queues migrate.
    pub async fn scale(&self, workers: u32) -> Result<String, SupervisorError> {
        if !(1..=MAX_SLOTS).contains(&workers) {
            return Err(SupervisorError::Workers(workers));
        }
        let _operation = self.operation.lock().await;
        let retiring = {
            let mut state = self.state();
            if state.stopping {
                return Err(SupervisorError::Stopping);
            }
            let old = state.slots.len() as u32;
            if workers > old {
                state.add_slots(&self.shared, workers)?;
                Vec::new()
            } else {
                state.remove_slots(workers)?
            }
        };
        for worker in &retiring {
            worker.wait().await;
        }
        Ok(format!("{workers} workers"))
    }

    /// The current state, for `sticky status`.
    pub fn status(&self) -> Result<Status, SupervisorError> {
        let state = self.state();
        let counters =
            state.dispatchers.iter().map(Dispatcher::counters).collect::<Result<Vec<_>, _>>()?;
        let total = |field: fn(&Counters) -> u64| counters.iter().map(field).sum();
        let slots = state
            .slots
            .iter()
            .zip(0..)
            .map(|(slot, index)| SlotStatus {
                slot: index,
                pid: slot.worker.as_ref().map(|w| w.pid),
                uptime_secs: slot.worker.as_ref().map(|w| w.started.elapsed().as_secs_f64()),
                restarts: slot.restarts,
                in_table: slot.in_table,
                connections: counters.iter().filter_map(|c| c.selected.get(index as usize)).sum(),
            })
            .collect();
        Ok(Status {
            pid: std::process::id(),
            listen: state.groups.iter().map(|g| g.address.to_string()).collect(),
            dispatch: if state.dispatchers.is_empty() { "none" } else { "kernel" }.into(),
            program_ids: state.dispatchers.iter().map(Dispatcher::program_id).collect(),
            migrates: state.dispatchers.iter().all(Dispatcher::migrates)
                && !state.dispatchers.is_empty(),
            fallback: total(|c| c.fallback),
            passed: total(|c| c.passed),
            unreadable: total(|c| c.unreadable),
            slots,
        })
    }

    /// SIGTERM to every worker, SIGKILL after the grace period, and waits for them all.
    async fn stop_workers(&self) {
        let live = {
            let mut state = self.state();
            state.stopping = true;
            for slot in &mut state.slots {
                slot.worker = None;
            }
            state.live.clone()
        };
        let grace = self.state().options.grace_period;
        for worker in &live {
            terminate(worker, grace);
        }
        for worker in &live {
            worker.wait().await;
        }
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Response {
        let done = |result: Result<String, SupervisorError>| match result {
            Ok(message) => Response::Done { message },
            Err(err) => Response::Error { message: err.to_string() },
        };
        match request {
            Request::Status => match self.status() {
                Ok(status) => Response::Status(status),
                Err(err) => Response::Error { message: err.to_string() },
            },
            Request::Reload => done(self.reload().await),
            Request::Scale { workers } => done(self.scale(workers).await),
            Request::Stop => {
                self.stop.notify_one();
                Response::Done { message: "stopping".into() }
            }
        }
    }
}

impl State {
    fn new_slot(&mut self) -> Slot {
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

    fn slot_of(&self, pid: u32) -> Option<usize> {
        self.slots.iter().position(|slot| slot.worker.as_ref().is_some_and(|w| w.pid == pid))
    }

    /// Rebuilds the table from the slots in it and writes the entries that changed.
    fn update_table(&mut self) -> Result<(), DispatchError> {
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
        for dispatcher in &mut self.dispatchers {
            dispatcher.update_table(&self.table, &table)?;
        }
        self.table = table;
        Ok(())
    }

    fn add_slots(
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

    fn remove_slots(&mut self, workers: u32) -> Result<Vec<Worker>, SupervisorError> {
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
    fn eject(&mut self, index: usize) -> Result<(), SupervisorError> {
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

fn lock(shared: &Arc<Mutex<State>>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the worker of slot `index`; its exit is handled by [`on_exit`]. Returns the worker,
/// or `None` if it could not be started (then a restart is scheduled).
fn start_worker(shared: &Arc<Mutex<State>>, state: &mut State, index: usize) -> Option<Worker> {
    let fds = state.groups.iter().map(|group| group.sockets[index].as_raw_fd()).collect();
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
    if crash_loop && !state.dispatchers.is_empty() {
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
fn schedule_restart(shared: &Arc<Mutex<State>>, state: &mut State, index: usize) {
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
fn terminate(worker: &Worker, grace: Duration) {
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

fn log_outcome(what: &str, result: Result<String, SupervisorError>) {
    match result {
        Ok(message) => info!("{what}: {message}"),
        Err(err) => error!("{what} failed: {err}"),
    }
}

/// Answers control requests until the loader stops.
async fn serve_control(supervisor: Arc<Supervisor>, listener: UnixListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            let response = match control::read_request(&mut stream).await {
                Ok(request) => supervisor.handle(request).await,
                Err(err) => Response::Error { message: format!("bad request: {err}") },
            };
            let _ = control::write_response(&mut stream, &response).await;
        });
    }
}
