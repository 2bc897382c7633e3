//! `sticky run`'s start: from a validated [`RunConfig`] to a supervisor ready to run, with its
//! endpoints bound. Every check comes before the first worker starts; a failure here leaves
//! nothing running, and nothing attached once the process exits (the sockets close with it).

use std::{io, net::TcpListener, os::fd::RawFd, path::PathBuf, sync::Arc};

use sticky_common::{DispatchConfig, LOADER_INDEX, Table};
use thiserror::Error;
use tracing::{info, warn};

pub use crate::kernel::Counters;
use crate::{
    config::{DispatchMode, HandoffTransport, Launch, Listen, LogLevel, RunConfig},
    dispatch::Dispatch,
    endpoints::{
        control::{self, ControlError},
        readiness::{self, Identity, NotifyDir, NotifyDirError},
    },
    fd_store::{self, Inherited},
    handoff::{self, Handoff, Router, Target},
    kernel::{DispatchError, Dispatcher, table},
    limits::{self, LimitError},
    listeners::{self, ListenError, ListenerGroup},
    privileges::{self, PrivilegeError},
    seed::{self, SeedError},
    spawn::{SpawnError, Spawner, socket_names},
    supervisor::{Endpoints, Setup, Supervisor, SupervisorError},
    upgrade::{self, Carried, ResumeError, Takeover},
};

/// Why sticky could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    /// A capability is missing.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// The open-files limit does not fit the configuration.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The workers could not be started as configured.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A listening socket could not be opened.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The seed could not be read or made.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// The program could not be loaded or attached.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The control socket could not be bound.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The metrics address could not be bound.
    #[error("cannot listen on metrics address {address}")]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The workers' notify directory cannot be used.
    #[error(transparent)]
    Notify(#[from] NotifyDirError),
    /// Userspace dispatch's sockets could not be made.
    #[error("cannot set up userspace dispatch")]
    Handoff(#[source] io::Error),
}

/// A loader ready to run: call [`Started::run`] inside a current-thread tokio runtime.
pub struct Started {
    pub(crate) supervisor: Arc<Supervisor>,
    pub(crate) control: (PathBuf, std::os::unix::net::UnixListener),
    pub(crate) metrics: Option<TcpListener>,
    pub(crate) listen: Vec<Listen>,
    /// How much the loader logs (`--log-level`, as it was given at the first start).
    pub log_level: LogLevel,
}

/// Checks privileges, limits and the worker command, binds the endpoints, then opens the
/// listeners (adopting those `inherited` from the service manager), loads the seed, builds the
/// table and sets up the dispatch. A failure removes the endpoints' files again.
pub fn start(launch: Launch, inherited: Inherited) -> Result<Started, StartupError> {
    let mut config = launch.config.clone();
    privileges::check(&config)?;
    limits::raise(&config, None)?;
    if config.passes_on() {
        let value = if config.handoff == HandoffTransport::Node { "node" } else { "1" };
        config.environment.insert(handoff::STICKY_HANDOFF.into(), value.into());
    }
    let spawner = Spawner::new(&config, &socket_names(&config))?;
    spawner.check()?;
    // The endpoints before the kernel: a bad path is an error with nothing attached yet.
    let control = control::bind(&config.control)?;
    let endpoints = bind_endpoints(&config).inspect_err(|_| {
        let _ = std::fs::remove_file(&config.control);
    })?;
    let (metrics, notify) = endpoints;
    let dispatch = set_up_dispatch(&config, inherited).inspect_err(|_| {
        notify.remove();
        let _ = std::fs::remove_file(&config.control);
    })?;
    let Dispatching { groups, dispatch, seed, table, handoff } = dispatch;
    let setup = Setup { spawner, groups, dispatch, seed, table, notify, handoff };
    Ok(assemble(launch, setup, (config.control, control), metrics, None))
}

/// The metrics listener and the workers' notify directory (made once the control socket is
/// this loader's, so no other loader uses that directory).
fn bind_endpoints(config: &RunConfig) -> Result<(Option<TcpListener>, NotifyDir), StartupError> {
    let metrics = config
        .metrics
        .map(|address| {
            TcpListener::bind(address)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|source| StartupError::Metrics { address, source })
        })
        .transpose()?;
    let notify = NotifyDir::create(readiness::location(&config.control), Identity::of(config))?;
    Ok((metrics, notify))
}

/// What [`set_up_dispatch`] makes.
struct Dispatching {
    groups: Vec<ListenerGroup>,
    dispatch: Dispatch,
    seed: u64,
    /// The table in use (none with plain SO_REUSEPORT).
    table: Option<Box<Table>>,
    handoff: Option<Handoff>,
}

/// Opens the listeners (adopting those `inherited` from the service manager), loads the seed,
/// builds the table and sets up the dispatch.
fn set_up_dispatch(config: &RunConfig, inherited: Inherited) -> Result<Dispatching, StartupError> {
    let userspace = config.dispatch == DispatchMode::Userspace;
    // Userspace dispatch: one socket per address, accepted on by the loader.
    let sockets_per_address = if userspace { 1 } else { config.workers };
    let adopted = inherited.adopt(&config.listen, sockets_per_address);
    let groups = config
        .listen
        .iter()
        .zip(adopted.by_address)
        .map(|(&address, sockets)| listeners::open_group(address, sockets_per_address, sockets))
        .collect::<Result<Vec<_>, _>>()?;
    adopted.forget.iter().cloned().for_each(fd_store::forget);
    (0..sockets_per_address).for_each(|slot| fd_store::keep(&groups, slot));
    let seed = seed::load_or_create(&config.state_dir)?;
    let slots: Vec<u32> = (0..config.workers).collect();
    let table = table::build(seed, &slots);
    let dispatch_config =
        DispatchConfig::new(seed, config.prefix_v4, config.prefix_v6, config.workers);
    let in_use = (config.dispatch != DispatchMode::None).then(|| table.clone());
    let mut dispatch = match config.dispatch {
        DispatchMode::Kernel => {
            let dispatchers = attach(config, &dispatch_config, &table, &groups, adopted.old_maps)?;
            Dispatch::Kernel(dispatchers)
        }
        DispatchMode::None => {
            detach_previous(&groups);
            warn!("--dispatch none: plain SO_REUSEPORT, clients are NOT sticky");
            Dispatch::None
        }
        DispatchMode::Userspace => {
            detach_previous(&groups);
            Dispatch::Userspace
        }
    };
    // The loader's own accept loop: every connection under userspace dispatch; trusted
    // proxies' under kernel dispatch, which the program sends to the loader's own socket.
    let listeners = match (&mut dispatch, &config.client_address) {
        (Dispatch::Userspace, _) => (0..)
            .zip(&groups)
            .map(|(index, group)| {
                let listener = group.sockets[0].try_clone().map_err(StartupError::Handoff)?;
                Ok((index, listener.into()))
            })
            .collect::<Result<Vec<_>, StartupError>>()?,
        (Dispatch::Kernel(dispatchers), Some(client_address)) => {
            loader_sockets(&groups, dispatchers, client_address)?
        }
        _ => return Ok(Dispatching { groups, dispatch, seed, table: in_use, handoff: None }),
    };
    let node = config.handoff == HandoffTransport::Node;
    let (targets, worker_ends) = if node {
        ((0..config.workers).map(|_| Target::node()).collect(), Vec::new())
    } else {
        let (loader_ends, worker_ends) =
            handoff::pairs(config.workers).map_err(StartupError::Handoff)?;
        (loader_ends.into_iter().map(|end| Target::Socket(end.into())).collect(), worker_ends)
    };
    let router = Router::new(dispatch_config, table, targets);
    let client_address = config.client_address.clone();
    let handoff = Handoff::new(listeners, worker_ends, router, client_address, node);
    Ok(Dispatching { groups, dispatch, seed, table: in_use, handoff: Some(handoff) })
}

/// The loader's own socket in each TCP reuseport group, at the program's [`LOADER_INDEX`], and
/// the trusted proxies in that program's trie: their connections come to the loader. Each with
/// its listen address's index.
fn loader_sockets(
    groups: &[ListenerGroup],
    dispatchers: &mut [Dispatcher],
    client_address: &crate::config::ClientAddress,
) -> Result<Vec<(u8, TcpListener)>, StartupError> {
    (0..)
        .zip(groups.iter().zip(dispatchers))
        .filter(|(_, (group, _))| !group.listen.is_udp())
        .map(|(index, (group, dispatcher))| {
            let socket = group.open_socket()?;
            dispatcher.set_socket(LOADER_INDEX, &socket)?;
            dispatcher.set_trusted_proxies(&client_address.trusted)?;
            info!(
                listen = %group.listen,
                trusted = ?client_address.trusted.iter().map(ToString::to_string).collect::<Vec<_>>(),
                source = ?client_address.source,
                "trusted proxies' connections come to the loader, which reads the client's address"
            );
            Ok((index, socket.into()))
        })
        .collect()
}

/// `sticky resume --state-fd N [--rollback REASON]`: takes over from the image that handed
/// over the record at `state_fd` ([`upgrade::resume`]), with the table rebuilt from the slots
/// that were in it, and the supervisor going on from its record.
///
/// # Safety
///
/// As [`upgrade::resume`].
pub unsafe fn resume(state_fd: RawFd, rollback: Option<String>) -> Result<Started, ResumeError> {
    // SAFETY: guaranteed by the caller.
    let takeover = unsafe { upgrade::resume(state_fd, rollback) }?;
    let Takeover {
        launch,
        spawner,
        groups,
        dispatch,
        seed,
        notify,
        control,
        metrics,
        carried,
        handoff,
    } = takeover;
    let slots = &carried.supervisor.slots;
    let in_table: Vec<u32> =
        (0..).zip(slots).filter(|(_, slot)| slot.in_table).map(|(index, _)| index).collect();
    let table = (launch.config.dispatch != DispatchMode::None && !in_table.is_empty())
        .then(|| table::build(seed, &in_table));
    let config = &launch.config;
    let handoff = handoff.zip(table.clone()).map(|(fds, table)| {
        let slots = fds.loader_ends.len() as u32;
        let dispatch_config = DispatchConfig::new(seed, config.prefix_v4, config.prefix_v6, slots);
        let targets = fds.loader_ends.into_iter().map(|end| Target::Socket(end.into())).collect();
        let router = Router::new(dispatch_config, table, targets);
        let client_address = config.client_address.clone();
        Handoff::new(fds.listeners, fds.worker_ends, router, client_address, false)
    });
    let setup = Setup { spawner, groups, dispatch, seed, table, notify, handoff };
    Ok(assemble(launch, setup, control, metrics, Some(carried)))
}

/// The running loader, from what a fresh start set up or an upgrade took over: the one place
/// its supervisor is built.
fn assemble(
    launch: Launch,
    setup: Setup,
    control: (PathBuf, std::os::unix::net::UnixListener),
    metrics: Option<TcpListener>,
    carried: Option<Carried>,
) -> Started {
    let (listen, log_level) = (launch.config.listen.clone(), launch.config.log_level);
    let mut setup = setup;
    if let Some(quic) = launch.config.quic {
        setup.spawner.set_quic(quic.cid_len, setup.seed);
    }
    let supervisor = Arc::new(Supervisor::new(setup, launch, carried));
    Started { supervisor, control, metrics, listen, log_level }
}

impl Started {
    /// Starts the workers (and the loader's own accept loop, if any) and runs until SIGINT,
    /// SIGTERM or `sticky stop`. Returns the final counters, one per listen address (none
    /// unless kernel dispatch). Must run in a current-thread tokio runtime: the workers'
    /// parent-death signal is tied to the thread that forks them, which must live as long as
    /// sticky does.
    pub async fn run(self) -> Result<Vec<(Listen, Counters)>, SupervisorError> {
        let (path, control) = self.control;
        let endpoints = Endpoints {
            control: (path, tokio::net::UnixListener::from_std(control).map_err(io_error)?),
            metrics: self
                .metrics
                .map(tokio::net::TcpListener::from_std)
                .transpose()
                .map_err(io_error)?,
        };
        let counters = self.supervisor.run(endpoints).await?;
        Ok(self.listen.into_iter().zip(counters).collect())
    }
}

/// Detaches the program an earlier loader left attached to adopted sockets (a restart into
/// another dispatch mode): without kernel dispatch, nothing must choose among them.
fn detach_previous(groups: &[ListenerGroup]) {
    for group in groups {
        if let Some(socket) = group.sockets.first() {
            let _ = Dispatcher::detach_any(socket);
        }
    }
}

fn io_error(source: io::Error) -> SupervisorError {
    SupervisorError::Io(source)
}

/// Attaches one dispatch program per listener group, its maps holding `dispatch` and `table`,
/// taking the sockets from the `previous` loader's socket arrays where there are some; keeps
/// each socket array in the fd store.
fn attach(
    config: &RunConfig,
    dispatch: &DispatchConfig,
    table: &Table,
    groups: &[ListenerGroup],
    previous: Vec<Option<std::os::fd::OwnedFd>>,
) -> Result<Vec<Dispatcher>, DispatchError> {
    let mut dispatchers = Vec::with_capacity(groups.len());
    for (group, previous) in groups.iter().zip(previous) {
        let mut dispatch = *dispatch;
        if let Some(quic) = config.quic.filter(|_| group.listen.is_udp()) {
            dispatch.quic_cid_len = quic.cid_len.into();
            dispatch.quic_key = sticky_common::quic::key(dispatch.seed);
        }
        let level = config.log_level.into();
        let dispatcher = Dispatcher::attach(group, &dispatch, table, previous, level)?;
        fd_store::keep_map(group.listen, dispatcher.sockets_map());
        info!(
            listen = %group.listen,
            program_id = dispatcher.program_id(),
            migrates = dispatcher.migrates(),
            workers = config.workers,
            prefix_v4 = config.prefix_v4,
            prefix_v6 = config.prefix_v6,
            quic_cid_len = dispatch.quic_cid_len,
            "dispatch program attached"
        );
        dispatchers.push(dispatcher);
    }
    Ok(dispatchers)
}
