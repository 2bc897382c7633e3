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

mod drain;
mod error;
mod hang;
mod processes;
mod reaper;
mod roll;
mod scale;
mod slot;
mod state;
mod state_record;
mod upgrade;
mod usage;
mod worker;

use std::{
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use sticky_common::Table;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::{error, info};

pub use self::error::SupervisorError;
use self::{
    processes::{start_worker, terminate, track},
    state::State,
    upgrade::Resumed,
};
use crate::{
    chain::Chain,
    config::{Launch, Reconfigure},
    dispatch::Dispatch,
    endpoints::{
        Loader,
        control::{self, LoaderInfo, Request, Response, Status},
        gate::Gate,
        metrics,
        readiness::NotifyDir,
        systemd,
    },
    handoff::Handoff,
    identity,
    kernel::{Counters, Dispatcher},
    listeners::ListenerGroup,
    spawn::Spawner,
    sync::{lock, unix_now},
    upgrade::{Carried, EndpointFds, handled_signals},
};

/// What `sticky run` set up for the supervisor.
pub struct Setup {
    /// Starts the workers.
    pub spawner: Spawner,
    /// The listening sockets: one per slot per address, or (userspace dispatch) one per address.
    pub groups: Vec<ListenerGroup>,
    /// How the workers get their connections.
    pub dispatch: Dispatch,
    /// The lookup table the dispatch starts with (none with plain SO_REUSEPORT).
    pub table: Option<Box<Table>>,
    /// The hash seed, from which the lookup table is rebuilt when slots change.
    pub seed: u64,
    /// Where the workers' notify sockets are bound.
    pub(crate) notify: NotifyDir,
    /// The connections the loader accepts itself and passes on (userspace dispatch, trusted
    /// proxies).
    pub handoff: Option<Handoff>,
}

/// What the supervisor serves besides the workers.
pub struct Endpoints {
    /// The control socket and its path (removed at exit).
    pub control: (PathBuf, UnixListener),
    /// The metrics listener.
    pub metrics: Option<TcpListener>,
}

/// The supervisor: everything `sticky run` set up, and the workers it runs.
pub struct Supervisor {
    shared: Arc<Mutex<State>>,
    /// Serializes reload, scale, a slot's restart and upgrade (see [`Supervisor::operation`]).
    operation: tokio::sync::Mutex<()>,
    /// Closed by an upgrade just before its exec.
    control_gate: Arc<Gate>,
    /// Woken by `sticky stop`.
    stop: Notify,
    /// Reads the worker count again at each reload (from the configuration file).
    reconfigure: Option<Reconfigure>,
    /// What `sticky run` was given, for an upgrade to hand on.
    launch: Launch,
    /// The sticky binary's path, which an upgrade executes.
    executable: PathBuf,
    /// When this image started, in seconds since the Unix epoch.
    started_at_unix_secs: u64,
    /// The endpoints' fds, known once running, for an upgrade to hand on.
    endpoint_fds: OnceLock<EndpointFds>,
    /// Each worker's last CPU time and memory read (supervisor/usage.rs).
    usages: usage::Usages,
    /// After an upgrade or a rollback: the image before this one, the `sticky upgrade`
    /// connection that waits for this image's answer, and why a rollback happened.
    resumed: Mutex<Option<Resumed>>,
}

impl Supervisor {
    /// A supervisor for what `sticky run` set up, as `launch` configures it: with a slot per
    /// socket at a fresh start, or, after an upgrade or a rollback, going on from what the
    /// earlier image `carried` over (its slots, its workers adopted, the requester to answer).
    pub(crate) fn new(setup: Setup, launch: Launch, carried: Option<Carried>) -> Self {
        let count = match &setup.dispatch {
            Dispatch::Userspace => setup.handoff.as_ref().map_or(0, |h| h.router.slots()),
            _ => setup.groups.first().map_or(0, |group| group.sockets.len()),
        };
        let mut state = State::new(setup, launch.config.policy);
        let mut started_at_unix_secs = unix_now();
        let mut resumed = None;
        match carried {
            None => {
                for _ in 0..count {
                    let slot = state.new_slot();
                    state.slots.push(slot);
                }
            }
            Some(Carried { supervisor, inboxes, previous, reply, rollback }) => {
                let upgrades = supervisor.upgrades;
                state.adopt(supervisor, inboxes);
                // After a rollback, this image is the one that ran before: same start, same
                // count.
                if rollback.is_some() {
                    state.upgrades = upgrades;
                    started_at_unix_secs = previous.started_at_unix_secs;
                }
                resumed = Some(Resumed { previous, reply, rollback });
            }
        }
        let executable = state.spawner.executable().to_owned();
        Self {
            shared: Arc::new(Mutex::new(state)),
            operation: Default::default(),
            control_gate: control::gate(),
            stop: Notify::new(),
            reconfigure: launch.reconfigure(),
            launch,
            executable,
            started_at_unix_secs,
            endpoint_fds: OnceLock::new(),
            usages: Default::default(),
            resumed: Mutex::new(resumed),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Waits for this operation's turn (first asked, first served); gives up once an upgrade
    /// is about to exec, whose new image would not answer it.
    async fn operation(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, SupervisorError> {
        tokio::select! {
            biased;
            guard = self.operation.lock() => Ok(guard),
            () = self.control_gate.closing() => Err(SupervisorError::Upgrading),
        }
    }

    /// Starts the workers and runs until SIGINT, SIGTERM or `sticky stop`; SIGHUP reloads.
    /// Answers on the control socket and serves metrics if given, and speaks sd_notify.
    /// Returns the final counters, one per listen address.
    pub async fn run(
        self: Arc<Self>,
        endpoints: Endpoints,
    ) -> Result<Vec<Counters>, SupervisorError> {
        let signals = |kind| signal(kind).map_err(SupervisorError::Signals);
        let (mut interrupt, mut terminate, mut hangup, mut upgrade) = (
            signals(SignalKind::interrupt())?,
            signals(SignalKind::terminate())?,
            signals(SignalKind::hangup())?,
            signals(SignalKind::user_defined2())?,
        );
        // An upgrade blocks these across its exec; they are handled from here on.
        let _ = handled_signals().thread_unblock();
        let (control_path, control_listener) = endpoints.control;
        let _ = self.endpoint_fds.set(EndpointFds {
            control: control_listener.as_raw_fd(),
            control_path: control_path.clone(),
            metrics: endpoints.metrics.as_ref().map(|listener| listener.as_raw_fd()),
            notify_dir: self.state().notify.path().to_owned(),
        });
        self.start_workers();
        if let Some(handoff) = &mut self.state().handoff {
            handoff.start().map_err(SupervisorError::Io)?;
            match handoff.reads_headers() {
                true => info!("the loader reads trusted proxies' headers"),
                false => info!("userspace dispatch: the loader accepts every connection"),
            }
        }
        tokio::spawn(control::serve(control_listener, self.clone(), self.control_gate.clone()));
        if let Some(listener) = endpoints.metrics {
            tokio::spawn(metrics::serve(listener, self.clone()));
        }
        tokio::spawn(systemd::watchdog());
        tokio::spawn(usage::watch(self.shared.clone(), self.usages.clone()));
        for logs in self.state().dispatch.dispatchers_mut().iter_mut().filter_map(|d| d.take_logs())
        {
            tokio::spawn(logs.forward());
        }
        // A stop while the workers get ready is obeyed at once.
        let stopped_early = tokio::select! {
            ready = self.wait_until_ready() => match ready {
                Ok(()) => None,
                Err(err) => {
                    self.shut_down(control_path).await?;
                    return Err(err);
                }
            },
            _ = interrupt.recv() => Some("SIGINT received"),
            _ = terminate.recv() => Some("SIGTERM received"),
            () = self.stop.notified() => Some("stop requested"),
        };
        let reason = match stopped_early {
            Some(reason) => reason,
            None => {
                tokio::spawn(hang::watch(self.shared.clone()));
                systemd::ready(&self.summary());
                self.answer_upgrade();
                loop {
                    tokio::select! {
                        _ = interrupt.recv() => break "SIGINT received",
                        _ = terminate.recv() => break "SIGTERM received",
                        () = self.stop.notified() => break "stop requested",
                        _ = hangup.recv() => {
                            let this = self.clone();
                            tokio::spawn(async move { log_outcome("reload", this.reload().await) });
                        }
                        _ = upgrade.recv() => {
                            tokio::spawn(self.clone().upgrade_in_place(None));
                        }
                    }
                }
            }
        };
        info!("{reason}: stopping the workers");
        self.shut_down(control_path).await
    }

    /// Starts a worker on every slot that has none, and watches the workers an earlier image
    /// started (after an upgrade).
    fn start_workers(&self) {
        let mut state = self.state();
        for worker in std::mem::take(&mut state.live) {
            let slot = state.slot_of(worker.pid);
            if let Err(err) = track(&self.shared, &mut state, &worker, slot) {
                error!(pid = worker.pid, error = %err, "cannot watch an adopted worker");
            }
        }
        for slot in 0..state.slots.len() {
            if state.slots[slot].worker.is_none() {
                start_worker(&self.shared, &mut state, slot);
            }
        }
        self.resume_drains(&mut state);
    }

    /// Stops the workers, detaches the programs and removes the control socket and the notify
    /// directory; returns the final counters.
    async fn shut_down(&self, control_path: PathBuf) -> Result<Vec<Counters>, SupervisorError> {
        systemd::stopping();
        self.stop_workers().await;
        let mut state = self.state();
        let dispatchers = state.dispatch.dispatchers().iter();
        // Whatever fails here, the rest of the clean-up still runs.
        let counters = dispatchers.map(Dispatcher::counters).collect::<Result<_, _>>();
        let counters = counters.unwrap_or_else(|err| {
            error!(error = %Chain(&err), "cannot read the final counters");
            Vec::new()
        });
        let State { dispatch, groups, .. } = &mut *state;
        // With an fd store, the sockets outlive this process (a restart adopts them): the
        // program stays attached to keep queueing connections by client meanwhile. It goes
        // with the sockets when systemd lets go of them (a stop).
        if let Dispatch::Kernel(dispatchers) = dispatch
            && !systemd::fd_store()
        {
            for (dispatcher, group) in dispatchers.drain(..).zip(groups.iter()) {
                if let Err(err) = dispatcher.detach(&group.sockets[0]) {
                    error!(error = %Chain(&err), "cannot detach the program");
                }
            }
        }
        let _ = std::fs::remove_file(control_path);
        state.notify.remove();
        systemd::flush(Duration::from_secs(1));
        Ok(counters)
    }

    /// One line for systemd's status: workers, addresses, dispatch.
    fn summary(&self) -> String {
        let state = self.state();
        let listen: Vec<String> = state.groups.iter().map(|g| g.listen.to_string()).collect();
        let dispatch = state.dispatch.mode();
        format!("{} workers on {}, dispatch {dispatch}", state.slots.len(), listen.join(", "))
    }

    /// The current state, for `sticky status`.
    pub fn status(&self) -> Result<Status, SupervisorError> {
        let mut status = self.state().status(self.loader_info())?;
        usage::fill(&mut status.slots, &self.usages);
        Ok(status)
    }

    /// This image of the loader.
    fn loader_info(&self) -> LoaderInfo {
        LoaderInfo {
            version: identity::VERSION.into(),
            build_id: identity::build_id().into(),
            started_at_unix_secs: self.started_at_unix_secs,
            upgrades: 0,
        }
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
        let grace = self.state().policy.grace_period;
        for worker in &live {
            terminate(worker, grace);
        }
        for worker in &live {
            worker.wait().await;
        }
    }
}

impl Loader for Supervisor {
    fn status(&self) -> Result<Status, String> {
        Supervisor::status(self).map_err(|err| Chain(&err).to_string())
    }

    async fn handle(self: Arc<Self>, request: Request) -> Response {
        let done = |result: Result<String, SupervisorError>| match result {
            Ok(message) => Response::Done { message },
            Err(err) => Response::Error { message: Chain(&err).to_string() },
        };
        match request {
            Request::Status => match Supervisor::status(&self) {
                Ok(status) => Response::Status(Box::new(status)),
                Err(err) => Response::Error { message: Chain(&err).to_string() },
            },
            Request::Reload => done(self.reload().await),
            Request::Scale { workers } => done(self.scale(workers).await),
            Request::Stop => {
                self.stop.notify_one();
                Response::Done { message: "stopping".into() }
            }
            Request::RestartSlot { slot } => done(self.restart_slot(slot as usize).await),
            Request::Upgrade => {
                Response::Error { message: "an upgrade is answered by the upgrade path".into() }
            }
        }
    }

    async fn upgrade(self: Arc<Self>, reply: tokio::net::UnixStream) {
        match reply.into_std().and_then(|stream| stream.set_nonblocking(false).map(|()| stream)) {
            Ok(stream) => self.upgrade_in_place(Some(stream)).await,
            Err(err) => error!(error = %err, "upgrade: cannot keep the requester's connection"),
        }
    }
}

fn log_outcome(what: &str, result: Result<String, SupervisorError>) {
    match result {
        Ok(message) => info!("{what}: {message}"),
        Err(err) => error!("{what} failed: {}", Chain(&err)),
    }
}
