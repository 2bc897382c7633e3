//! `sticky run`: listeners, dispatch program and workers, until SIGINT/SIGTERM or `sticky stop`.

use std::sync::Arc;

use anyhow::Context as _;
use sticky_common::{DispatchConfig, Table};
use sticky_user::{
    config::{DispatchMode, RunConfig, RunOptions},
    control,
    dispatch::Dispatcher,
    handoff,
    listeners::{self, ListenerGroup},
    privileges, seed,
    spawn::Spawner,
    supervisor::{Endpoints, Options, Reconfigure, Setup, Supervisor},
    table,
};
use tracing::{info, warn};

/// `sticky check`: validates the options and says what `run` would do.
pub fn check(options: RunOptions) -> anyhow::Result<()> {
    let source = options.config.clone();
    let config = options.validate()?;
    Spawner::new(&config, &[])?.check()?;
    let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    let command =
        config.command.as_ref().map_or("sticky demo".into(), |c| c.program.display().to_string());
    let user = config.credentials.as_ref().map_or("root".into(), |c| c.user.clone());
    let source = source.map_or("options".into(), |path| path.display().to_string());
    println!(
        "{source}: ok: {} workers ({command}, as {user}) on {}",
        config.workers,
        listen.join(", ")
    );
    Ok(())
}

pub fn run(options: RunOptions) -> anyhow::Result<()> {
    // A reload reads the file again, with the same flags on top.
    let reconfigure = options.config.is_some().then(|| {
        let flags = options.clone();
        let reconfigure: Reconfigure = Box::new(move || {
            flags.clone().validate().map(|config| config.workers).map_err(|err| err.to_string())
        });
        reconfigure
    });
    let mut config = options.validate()?;
    privileges::check(&config)?;
    let names: Vec<String> = if config.dispatch == DispatchMode::Userspace {
        config.environment.insert(handoff::STICKY_HANDOFF.into(), "1".into());
        vec!["sticky-handoff".into()]
    } else {
        config.listen.iter().map(|address| format!("sticky-{}", address.port())).collect()
    };
    let spawner = Spawner::new(&config, &names)?;
    spawner.check()?;
    let userspace = config.dispatch == DispatchMode::Userspace;
    // Userspace dispatch: one socket per address, accepted on by the loader.
    let sockets_per_address = if userspace { 1 } else { config.workers };
    let groups = config
        .listen
        .iter()
        .map(|&address| listeners::open_group(address, sockets_per_address))
        .collect::<Result<Vec<_>, _>>()?;
    let seed = seed::load_or_create(&config.state_dir)?;
    let slots: Vec<u32> = (0..config.workers).collect();
    let table = table::build(seed, &slots);
    let dispatch = DispatchConfig::new(seed, config.prefix_v4, config.prefix_v6, config.workers);
    let dispatchers = match config.dispatch {
        DispatchMode::Kernel => attach(&config, &dispatch, &table, &groups)?,
        DispatchMode::None => {
            warn!("--dispatch none: plain SO_REUSEPORT, clients are NOT sticky");
            Vec::new()
        }
        DispatchMode::Userspace => Vec::new(),
    };
    let (master_ends, handoff_ends) =
        if userspace { handoff::pairs(config.workers)? } else { Default::default() };
    let master_listeners = if userspace {
        let clones = groups.iter().map(|group| group.sockets[0].try_clone());
        clones.collect::<Result<Vec<_>, _>>().context("cannot share the listening sockets")?
    } else {
        Vec::new()
    };
    let control = control::bind(&config.control)?;
    let metrics = config
        .metrics
        .map(|address| {
            std::net::TcpListener::bind(address)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .with_context(|| format!("cannot listen on metrics address {address}"))
        })
        .transpose()?;
    let options = Options {
        grace_period: config.grace_period,
        crash_limit: config.crash_limit,
        crash_window: config.crash_window,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let counters = runtime.block_on(async {
        let endpoints = Endpoints {
            control: Some((config.control.clone(), tokio::net::UnixListener::from_std(control)?)),
            metrics: metrics.map(tokio::net::TcpListener::from_std).transpose()?,
        };
        if userspace {
            let listeners = master_listeners
                .into_iter()
                .map(|listener| {
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener)
                })
                .collect::<Result<Vec<_>, _>>()?;
            info!(
                workers = config.workers,
                "userspace dispatch: the loader accepts every connection"
            );
            tokio::spawn(handoff::master(listeners, master_ends, dispatch, table));
        }
        let setup = Setup { spawner, groups, dispatchers, handoff_ends, seed };
        let mut supervisor = Supervisor::new(setup, options);
        if let Some(reconfigure) = reconfigure {
            supervisor = supervisor.with_reconfigure(reconfigure);
        }
        let supervisor = Arc::new(supervisor);
        anyhow::Ok(supervisor.run(endpoints).await?)
    })?;
    for (address, counters) in config.listen.iter().zip(counters) {
        info!(
            listen = %address,
            selected = ?counters.selected,
            fallback = counters.fallback,
            passed = counters.passed,
            unreadable = counters.unreadable,
            "dispatch counters"
        );
    }
    info!("stopped");
    Ok(())
}

/// Attaches one dispatch program per listener group, its maps holding `dispatch` and `table`.
fn attach(
    config: &RunConfig,
    dispatch: &DispatchConfig,
    table: &Table,
    groups: &[ListenerGroup],
) -> anyhow::Result<Vec<Dispatcher>> {
    let mut dispatchers = Vec::with_capacity(groups.len());
    for group in groups {
        let dispatcher = Dispatcher::attach(group, dispatch, table)?;
        info!(
            listen = %group.address,
            program_id = dispatcher.program_id(),
            migrates = dispatcher.migrates(),
            workers = config.workers,
            prefix_v4 = config.prefix_v4,
            prefix_v6 = config.prefix_v6,
            "dispatch program attached"
        );
        dispatchers.push(dispatcher);
    }
    Ok(dispatchers)
}
