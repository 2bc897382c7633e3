//! The new image's side: `sticky resume --state-fd N` reads the record and takes over every fd
//! it names, then runs as `sticky run` would, with the workers adopted rather than started.

use std::{
    net::TcpListener,
    os::{
        fd::{FromRawFd as _, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::Arc,
};

use thiserror::Error;

use super::{
    exec::set_close_on_exec,
    record::{Record, RecordError},
};
use crate::{
    config::DispatchMode,
    dispatch::Dispatch,
    endpoints::readiness::{Identity, Inbox, NotifyDir},
    kernel::{DispatchError, Dispatcher, table},
    listeners::ListenerGroup,
    spawn::{SpawnError, Spawner},
    startup::{Started, socket_names},
    supervisor::{Setup, Supervisor},
};

/// Why the new image could not take over.
#[derive(Debug, Error)]
pub enum ResumeError {
    /// The record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An inherited fd is not open.
    #[error("inherited fd {0} is not open")]
    Fd(RawFd),
    /// The workers could not be set up.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A worker's notify socket could not be taken over.
    #[error("cannot take over a worker's notify socket")]
    Notify(#[source] std::io::Error),
    /// A dispatcher could not be taken over.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// Takes over from the image that handed over the record at `state_fd`.
///
/// # Safety
///
/// `state_fd` must be the record an upgrade passed to this process, and the fds it names must
/// be open and owned by nothing else in this process (as they are right after the exec).
pub unsafe fn resume(state_fd: RawFd) -> Result<Started, ResumeError> {
    // SAFETY: guaranteed by the caller.
    let record = unsafe { Record::read(state_fd) }?;
    // Ours again only (workers inherit only what each is given), and each is checked open.
    set_close_on_exec(&record.fds(), true).map_err(|(fd, _)| ResumeError::Fd(fd))?;
    // SAFETY: each fd below is named once in the record and owned by nothing else (above).
    let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
    let Record { launch, seed, groups, endpoints, supervisor, previous, reply, .. } = record;
    let config = &launch.config;
    let spawner = Spawner::new(config, &socket_names(config))?;
    let notify = NotifyDir::adopt(endpoints.notify_dir.clone(), Identity::of(config));
    let inboxes = supervisor
        .workers()
        .filter_map(|worker| Some((worker.pid, worker.notify.as_ref()?)))
        .map(|(pid, socket)| {
            Inbox::adopt(own(socket.fd), socket.path.clone(), notify.sender()).map(|i| (pid, i))
        })
        .collect::<Result<_, _>>()
        .map_err(ResumeError::Notify)?;
    let mut dispatchers = Vec::new();
    let mut listener_groups = Vec::new();
    for group in groups {
        if let Some(handover) = &group.dispatcher {
            // SAFETY: as above.
            dispatchers.push(unsafe { Dispatcher::resume(handover) }?);
        }
        let sockets = group.sockets.into_iter().map(|fd| TcpListener::from(own(fd))).collect();
        listener_groups.push(ListenerGroup { address: group.address, sockets });
    }
    let dispatch = match config.dispatch {
        DispatchMode::None => Dispatch::Plain,
        _ => Dispatch::Kernel(dispatchers),
    };
    let in_table: Vec<u32> =
        (0..).zip(&supervisor.slots).filter(|(_, slot)| slot.in_table).map(|(i, _)| i).collect();
    let table = (config.dispatch != DispatchMode::None && !in_table.is_empty())
        .then(|| table::build(seed, &in_table));
    let setup = Setup { spawner, groups: listener_groups, dispatch, seed, table, notify };
    let control = UnixListener::from(own(endpoints.control));
    let metrics = endpoints.metrics.map(|fd| TcpListener::from(own(fd)));
    let reply = reply.map(|fd| UnixStream::from(own(fd)));
    let listen = config.listen.clone();
    let supervisor = Supervisor::resume(setup, launch, supervisor, inboxes, previous, reply);
    Ok(Started {
        supervisor: Arc::new(supervisor),
        control: (endpoints.control_path, control),
        metrics,
        accept: None,
        listen,
    })
}
