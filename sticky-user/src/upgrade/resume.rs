//! The new image's side: `sticky resume --state-fd N` reads the record and takes over every fd
//! it names, then runs as `sticky run` would, with the workers adopted rather than started.
//!
//! Whatever can fail works on copies of the fds (the program and its maps, the notify socket)
//! or on none; only then are the fds themselves taken, which cannot fail. So until the takeover
//! is certain, every fd stays as the old image passed it, and a failure hands the loader back
//! to the old image ([`super::rollback`]).

use std::{
    collections::HashMap,
    net::TcpListener,
    os::{
        fd::{BorrowedFd, FromRawFd as _, IntoRawFd as _, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
};

use nix::fcntl::{FcntlArg, fcntl};
use socket2::Socket;
use thiserror::Error;
use tracing::error;

use super::{
    exec::set_close_on_exec,
    record::{Record, RecordError, SupervisorRecord},
    rollback::{HandBackError, hand_back},
};
use crate::{
    chain::Chain,
    config::{DispatchMode, Launch},
    dispatch::Dispatch,
    endpoints::{
        control::LoaderInfo,
        readiness::{Identity, Inbox, NotifyDir},
    },
    identity,
    kernel::{DispatchError, Dispatcher, DispatcherFds},
    limits::{self, LimitError},
    listeners::ListenerGroup,
    spawn::{SpawnError, Spawner, socket_names},
};

/// Everything the new image took over, its own now: what `sticky run` would have set up, and
/// what the supervisor goes on from.
pub struct Takeover {
    /// The configuration, as it runs.
    pub(crate) launch: Launch,
    /// Starts the workers.
    pub(crate) spawner: Spawner,
    /// The listening sockets, per listen address.
    pub(crate) groups: Vec<ListenerGroup>,
    /// The dispatch, its programs taken over.
    pub(crate) dispatch: Dispatch,
    /// The hash seed.
    pub(crate) seed: u64,
    /// The workers' notify directory.
    pub(crate) notify: NotifyDir,
    /// The control socket and its path.
    pub(crate) control: (PathBuf, UnixListener),
    /// The metrics listener.
    pub(crate) metrics: Option<TcpListener>,
    /// The supervisor's state and how this image came to run.
    pub(crate) carried: Carried,
    /// The loader's hand-over to the workers, if it passes connections on.
    pub(crate) handoff: Option<HandoffFds>,
}

/// The loader's hand-over, taken over: the sockets it accepts on and each slot's pair.
pub(crate) struct HandoffFds {
    /// The sockets the loader accepts on.
    pub(crate) listeners: Vec<(u8, TcpListener)>,
    /// The loader's end of each slot's pair.
    pub(crate) loader_ends: Vec<OwnedFd>,
    /// The workers' end of each slot's pair.
    pub(crate) worker_ends: Vec<OwnedFd>,
}

/// What the supervisor goes on from after an upgrade or a rollback.
pub(crate) struct Carried {
    /// Its slots and workers.
    pub(crate) supervisor: SupervisorRecord,
    /// The workers' notify sockets, by pid.
    pub(crate) inboxes: HashMap<u32, Inbox>,
    /// The image that handed over.
    pub(crate) previous: LoaderInfo,
    /// The `sticky upgrade` connection that waits for the answer.
    pub(crate) reply: Option<UnixStream>,
    /// After a rollback: why the new image could not take over.
    pub(crate) rollback: Option<String>,
}

/// Why the new image could not take over.
#[derive(Debug, Error)]
pub enum ResumeError {
    /// The record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An inherited fd is not open.
    #[error("inherited fd {0} is not open")]
    Fd(RawFd),
    /// An inherited fd could not be copied.
    #[error("cannot copy inherited fd {0}")]
    Copy(RawFd, #[source] std::io::Error),
    /// The open-files limit does not fit the configuration.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The workers could not be set up.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A worker's notify socket could not be taken over.
    #[error("cannot take over a worker's notify socket")]
    Notify(#[source] std::io::Error),
    /// A dispatcher could not be taken over.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The takeover panicked.
    #[error("the takeover panicked")]
    Panicked,
    /// The takeover failed, and the old image could not be given the loader back.
    #[error("{failure}; the previous image cannot take over again")]
    NoWayBack {
        /// Why the takeover failed.
        failure: String,
        /// Why the hand-back failed.
        #[source]
        back: HandBackError,
    },
}

/// Takes over from the image that handed over the record at `state_fd`. `rollback` is the
/// reason a newer image gave when it handed the loader back to this one.
///
/// If the takeover fails in an upgrade (not a rollback), the old image is executed again and
/// this does not return; it returns the error only when that is impossible.
///
/// # Safety
///
/// `state_fd` must be the record an upgrade passed to this process, and the fds it names must
/// be open and owned by nothing else in this process (as they are right after the exec).
pub unsafe fn resume(state_fd: RawFd, rollback: Option<String>) -> Result<Takeover, ResumeError> {
    let rolled_back = rollback.is_some();
    // Read now: the way back must not need a free fd.
    let build = identity::build_id();
    // SAFETY: guaranteed by the caller.
    let taken = catch_unwind(AssertUnwindSafe(|| unsafe { take_over(state_fd, rollback) }));
    let failure = match taken {
        Ok(Ok(takeover)) => return Ok(takeover),
        Ok(Err(err)) => err,
        Err(_) => ResumeError::Panicked,
    };
    if rolled_back {
        return Err(failure);
    }
    let failure = Chain(&failure).to_string();
    let reason = format!(
        "sticky {} (build {}) cannot take over: {failure}",
        identity::VERSION,
        &build[..build.len().min(12)]
    );
    error!("{reason}; handing the loader back to the previous image");
    // SAFETY: guaranteed by the caller; the failed takeover left every fd as it was.
    let back = unsafe { hand_back(state_fd, &reason) };
    Err(ResumeError::NoWayBack { failure, back })
}

/// The takeover.
///
/// # Safety
///
/// As [`resume`].
unsafe fn take_over(state_fd: RawFd, rollback: Option<String>) -> Result<Takeover, ResumeError> {
    // SAFETY: the caller guarantees it is open for the duration of this call.
    let record = Record::read(unsafe { BorrowedFd::borrow_raw(state_fd) })?;
    for fd in record.fds() {
        // SAFETY: a borrow for one fcntl; an fd that is not open fails with EBADF.
        fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD)
            .map_err(|_| ResumeError::Fd(fd))?;
    }
    let config = &record.launch.config;
    limits::raise(config, record.started_with)?;
    let mut spawner = Spawner::new(config, &socket_names(config))?;
    if let Some(path) = &record.executable {
        spawner.set_executable(path.clone());
    }
    let mut dispatchers = Vec::new();
    for group in &record.groups {
        let Some(handover) = &group.dispatcher else { continue };
        let copy = copy_dispatcher_fds(handover)?;
        // SAFETY: the copies are this process's own, used nowhere else.
        dispatchers.push(unsafe { Dispatcher::resume(&copy, group.listen.to_string()) }?);
    }

    // Nothing fails from here on: the copied fds, the record and the old image close, the
    // others are taken.
    // SAFETY: each fd below is named once in the record and owned by nothing else (above).
    let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
    let mut closing = vec![state_fd];
    closing.extend(record.previous_image);
    for handover in record.groups.iter().filter_map(|group| group.dispatcher.as_ref()) {
        closing.extend(handover.fds());
    }
    closing.iter().map(|&fd| own(fd)).for_each(drop);
    let taken: Vec<RawFd> = record.fds().into_iter().filter(|fd| !closing.contains(fd)).collect();
    // Ours again only: workers inherit only what each is given. (All open, checked above.)
    let _ = set_close_on_exec(&taken, true);
    let Record { launch, seed, groups, endpoints, supervisor, previous, reply, handoff, .. } =
        record;
    let config = &launch.config;
    let notify = NotifyDir::adopt(endpoints.notify_dir.clone(), Identity::of(config));
    let inboxes = supervisor
        .workers()
        .filter_map(|worker| Some((worker.pid, worker.notify.as_ref()?)))
        .map(|(pid, socket)| {
            (pid, Inbox::adopt(own(socket.fd), socket.path.clone(), notify.sender()))
        })
        .collect();
    let listener_groups = groups
        .into_iter()
        .map(|group| ListenerGroup {
            listen: group.listen,
            sockets: group.sockets.into_iter().map(|fd| Socket::from(own(fd))).collect(),
        })
        .collect();
    let dispatch = match config.dispatch {
        DispatchMode::None => Dispatch::None,
        DispatchMode::Userspace => Dispatch::Userspace,
        DispatchMode::Kernel => Dispatch::Kernel(dispatchers),
    };
    let handoff = handoff.map(|handoff| HandoffFds {
        listeners: (handoff.listener_indexes.into_iter())
            .zip(handoff.listeners)
            .map(|(index, fd)| (index, TcpListener::from(own(fd))))
            .collect(),
        loader_ends: handoff.loader_ends.into_iter().map(own).collect(),
        worker_ends: handoff.worker_ends.into_iter().map(own).collect(),
    });
    let control = UnixListener::from(own(endpoints.control));
    let metrics = endpoints.metrics.map(|fd| TcpListener::from(own(fd)));
    let reply = reply.map(|fd| UnixStream::from(own(fd)));
    Ok(Takeover {
        launch,
        spawner,
        groups: listener_groups,
        dispatch,
        seed,
        notify,
        control: (endpoints.control_path, control),
        metrics,
        carried: Carried { supervisor, inboxes, previous, reply, rollback },
        handoff,
    })
}

/// A close-on-exec copy of inherited fd `fd`.
fn copy(fd: RawFd) -> Result<OwnedFd, ResumeError> {
    // SAFETY: a borrow for one fcntl of an fd the record names (checked open).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(|err| ResumeError::Copy(fd, err))
}

/// `handover` with copies of its fds, which the caller owns (as raw fds).
fn copy_dispatcher_fds(handover: &DispatcherFds) -> Result<DispatcherFds, ResumeError> {
    // All copied before any is let go, so a failure closes those made.
    let program = copy(handover.program)?;
    let maps = handover.maps.try_map(|fd, _| copy(fd))?;
    let logs = handover.logs.map(copy).transpose()?;
    let generations = handover.generations.map(copy).transpose()?;
    let maps = maps.try_map(|fd, _| Ok::<_, ResumeError>(fd.into_raw_fd()))?;
    let (program, logs) = (program.into_raw_fd(), logs.map(|fd| fd.into_raw_fd()));
    let generations = generations.map(|fd| fd.into_raw_fd());
    Ok(DispatcherFds { program, maps, logs, generations, ..handover.clone() })
}
