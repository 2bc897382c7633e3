//! The supervisor's side of an upgrade in place: refuse what cannot be handed over, ask the new
//! binary, write the record and exec; in the new image (or the old one again, after a
//! rollback), go on from the record and answer the one who asked.

use std::{
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::UnixStream,
    },
    time::Duration,
};

use tracing::{error, info, warn};

use super::Supervisor;
use crate::{
    chain::Chain,
    endpoints::{
        control::{self, LoaderInfo, ReloadOutcome, Response},
        systemd,
    },
    handoff::Handoff,
    sync::{lock, unix_now},
    upgrade::{self, GroupRecord, HandoffRecord, Image, Record, UpgradeError},
};

/// How long, after a header's own time, an upgrade waits for the connections the loader
/// accepted to reach their workers.
const PASS_WAIT: Duration = Duration::from_secs(1);

/// How long an upgrade waits for the control requests being answered before its exec.
const CONTROL_WAIT: Duration = Duration::from_secs(2);

/// Whether an upgrade may go on, decided once it holds the supervisor's operation lock. That
/// lock is fair (first asked, first served), so an upgrade asked for during a rolling restart
/// (or a scale) waits until it has ended, and is decided then: after a roll that finished, or
/// that stopped at a slot whose new worker was not ready (every slot then has one worker, old
/// or new, and is handed over as it is), it goes on; after a stop, which also stops a roll,
/// it is refused, as it is while node workers take connections over their IPC channels, which
/// are not handed over.
pub(super) fn may_upgrade(stopping: bool, node_channels: bool) -> Result<(), UpgradeError> {
    if stopping {
        return Err(UpgradeError::Stopping);
    }
    if node_channels {
        return Err(UpgradeError::NodeChannels);
    }
    Ok(())
}

/// How this image came to run, after an upgrade or a rollback.
pub(super) struct Resumed {
    /// The image that handed over.
    pub(super) previous: LoaderInfo,
    /// The `sticky upgrade` connection that waits for the answer.
    pub(super) reply: Option<UnixStream>,
    /// After a rollback: why the new image could not take over.
    pub(super) rollback: Option<String>,
}

impl Supervisor {
    /// Upgrades the loader in place (`sticky upgrade`, SIGUSR2). Returns only if the upgrade
    /// did not happen: then the reason is logged, kept for `sticky status`, and sent on `reply`.
    pub(crate) async fn upgrade_in_place(self: std::sync::Arc<Self>, reply: Option<UnixStream>) {
        let err = self.try_upgrade(reply.as_ref()).await;
        let message = Chain(&err).to_string();
        error!("{message}");
        self.state().last_upgrade =
            Some(ReloadOutcome { at_unix_secs: unix_now(), ok: false, message: message.clone() });
        if let Some(reply) = reply {
            let _ = control::reply(reply, &Response::Error { message });
        }
    }

    /// Everything up to the exec; returns why it did not happen.
    async fn try_upgrade(&self, reply: Option<&UnixStream>) -> UpgradeError {
        let Ok(_operation) = self.operation().await else {
            return UpgradeError::UnderWay;
        };
        {
            let state = self.state();
            let node_channels = state.handoff.as_ref().is_some_and(|handoff| handoff.node);
            if let Err(refused) = may_upgrade(state.stopping, node_channels) {
                return refused;
            }
        }
        let image = match Image::open(&self.executable) {
            Ok(image) => image,
            Err(err) => return err,
        };
        // Kept open (and open across the exec) for the way back.
        let running = match upgrade::open_running() {
            Ok(running) => running,
            Err(err) => return UpgradeError::Running(err),
        };
        let reply = reply.map(|stream| stream.as_raw_fd());
        let offered = self.record(reply, running.as_raw_fd());
        let answer = match upgrade::probe(&image, &offered).await {
            Ok(answer) => answer,
            Err(err) => return err,
        };
        info!(
            path = %self.executable.display(),
            version = answer.version,
            build_id = answer.build_id,
            "upgrading in place"
        );
        systemd::reloading();
        // The loader's own accept loop stops; what arrives from now on queues on its sockets,
        // which the new image takes over, and what it accepted reaches its workers first.
        let accepting = self.state().handoff.as_mut().and_then(Handoff::stop);
        if let Some(accepting) = accepting {
            let header_wait = self.launch.config.client_address.as_ref().map(|c| c.timeout);
            accepting.finish(header_wait.unwrap_or_default() + PASS_WAIT).await;
        }
        // Control requests, too, queue for the new image; those being answered finish first
        // (an operation waiting for its turn is refused).
        if !self.control_gate.close(CONTROL_WAIT).await {
            warn!("a control request was not answered in time: the upgrade closes it");
        }
        // Written again: workers may have changed while the probe ran.
        let err = upgrade::exec(&image, &self.record(reply, running.as_raw_fd()));
        // Still this image: accept again.
        self.control_gate.open();
        if let Some(handoff) = &mut self.state().handoff
            && let Err(err) = handoff.start()
        {
            error!(error = %err, "cannot accept again after the failed upgrade");
        }
        systemd::ready(&self.summary());
        err
    }

    /// The state record: everything the next image takes over.
    fn record(&self, reply: Option<RawFd>, running: RawFd) -> Record {
        let state = self.state();
        let dispatchers = state.dispatch.dispatchers();
        let groups = state
            .groups
            .iter()
            .enumerate()
            .map(|(index, group)| GroupRecord {
                listen: group.listen,
                sockets: group.sockets.iter().map(|socket| socket.as_raw_fd()).collect(),
                dispatcher: dispatchers.get(index).map(|dispatcher| dispatcher.handover()),
            })
            .collect();
        Record {
            version: upgrade::STATE_VERSION,
            launch: self.launch.clone(),
            seed: state.seed,
            groups,
            endpoints: self.endpoint_fds.get().expect("set when the loader runs").clone(),
            supervisor: state.handover(),
            previous: self.loader_info(),
            reply,
            executable: Some(self.executable.clone()),
            previous_image: Some(running),
            started_with: crate::limits::started_with(),
            handoff: state.handoff.as_ref().map(|handoff| HandoffRecord {
                listeners: handoff.listeners.iter().map(|(_, l)| l.as_raw_fd()).collect(),
                listener_indexes: handoff.listeners.iter().map(|(index, _)| *index).collect(),
                loader_ends: handoff.router.loader_ends(),
                worker_ends: handoff.worker_ends.iter().map(AsRawFd::as_raw_fd).collect(),
            }),
        }
    }

    /// In the image an upgrade (or a rollback) started, once every slot is ready: tells the
    /// one who asked.
    pub(super) fn answer_upgrade(&self) {
        let resumed = lock(&self.resumed).take();
        let Some(Resumed { previous, reply, rollback }) = resumed else { return };
        let now = self.loader_info();
        let workers = self.state().slots.len();
        let pid = std::process::id();
        let (ok, message) = match rollback {
            None => (
                true,
                format!(
                    "upgraded in place: sticky {} (build {}) -> sticky {} (build {}), pid {pid}, \
                     {workers} workers kept",
                    previous.version,
                    short(&previous.build_id),
                    now.version,
                    short(&now.build_id),
                ),
            ),
            Some(reason) => (
                false,
                format!(
                    "upgrade failed: {}: {reason}; rolled back to sticky {} (build {}), pid \
                     {pid}, {workers} workers kept",
                    self.executable.display(),
                    now.version,
                    short(&now.build_id),
                ),
            ),
        };
        if ok {
            info!("{message}");
        } else {
            error!("{message}");
        }
        self.state().last_upgrade =
            Some(ReloadOutcome { at_unix_secs: unix_now(), ok, message: message.clone() });
        if let Some(reply) = reply {
            let response =
                if ok { Response::Done { message } } else { Response::Error { message } };
            let _ = control::reply(reply, &response);
        }
    }
}

/// The first 12 hex digits of a build id.
fn short(build_id: &str) -> &str {
    &build_id[..build_id.len().min(12)]
}
