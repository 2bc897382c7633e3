//! `sticky run`: listeners, dispatch program and workers, until SIGINT/SIGTERM or `sticky stop`.

use std::{path::PathBuf, sync::Arc, thread::available_parallelism};

use anyhow::Context as _;
use clap::Args;
use sticky_common::{DispatchConfig, Table};
use sticky_user::{
    config::{self, DispatchMode, RunConfig, RunInput},
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

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML file with any of these options (keys named like the flags); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, ADDR:PORT; repeat for several. [default: [::]:3000, dual-stack]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Number of worker processes. [default: number of CPUs]
    #[arg(long, short = 'w', value_name = "N")]
    workers: Option<u32>,
    /// IPv4 prefix length that makes one client, e.g. 24 keeps a /24 on one worker. [default: 32]
    #[arg(long, value_name = "LEN")]
    prefix_v4: Option<u8>,
    /// IPv6 prefix length that makes one client. [default: 64]
    #[arg(long, value_name = "LEN")]
    prefix_v6: Option<u8>,
    /// Directory that keeps the hash seed across restarts. [default: /var/lib/sticky]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds a worker may take to exit after SIGTERM before it is killed. [default: 10]
    #[arg(long, value_name = "SECS")]
    grace_period: Option<f64>,
    /// Who picks the worker: `kernel` (sticky's eBPF program), `userspace` (sticky accepts and
    /// passes each connection to its worker) or `none` (plain SO_REUSEPORT, not sticky; for
    /// comparison). [default: kernel]
    #[arg(long, value_name = "MODE")]
    dispatch: Option<String>,
    /// Worker exits within the crash window that take a slot out of the table. [default: 5]
    #[arg(long, value_name = "N")]
    crash_limit: Option<u32>,
    /// Seconds the crash limit counts exits in. [default: 30]
    #[arg(long, value_name = "SECS")]
    crash_window: Option<f64>,
    /// Control socket for `sticky status|reload|scale|stop`. [default: /run/sticky/sticky.sock]
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Extra environment variable for the workers, KEY=VALUE; repeat for several.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    environment: Vec<(String, String)>,
    /// The workers' working directory.
    #[arg(long, value_name = "DIR")]
    working_directory: Option<PathBuf>,
    /// Run the workers as this user (name or uid), without capabilities.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Run the workers with this group (name or gid). [default: the user's primary group]
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Let workers run as root when sticky runs as root and no --user is given.
    #[arg(long)]
    allow_root_workers: bool,
    /// Serve Prometheus metrics on PORT (127.0.0.1) or ADDR:PORT. [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Worker command; it finds its listening sockets at fd 3 (LISTEN_FDS). [default: sticky demo]
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((key.to_owned(), value.to_owned()))
}

impl RunArgs {
    /// The options: the file's, with the flags' on top.
    pub fn input(self) -> anyhow::Result<RunInput> {
        let file = match &self.config {
            Some(path) => config::load_file(path)?,
            None => RunInput::default(),
        };
        Ok(file.overlay(self.into()))
    }

    /// The validated configuration.
    pub fn config(self) -> anyhow::Result<RunConfig> {
        Ok(validate(self.input()?)?)
    }
}

/// Validates `input`; the default worker count is the number of CPUs.
pub fn validate(input: RunInput) -> Result<RunConfig, config::ConfigError> {
    let cpus = available_parallelism().map_or(1, |n| n.get() as u32);
    RunConfig::from_input(input, cpus)
}

impl From<RunArgs> for RunInput {
    fn from(args: RunArgs) -> Self {
        Self {
            listen: args.listen,
            workers: args.workers,
            prefix_v4: args.prefix_v4,
            prefix_v6: args.prefix_v6,
            command: args.command,
            state_dir: args.state_dir,
            grace_period: args.grace_period,
            dispatch: args.dispatch,
            crash_limit: args.crash_limit,
            crash_window: args.crash_window,
            control: args.control,
            environment: args.environment.into_iter().collect(),
            working_directory: args.working_directory,
            user: args.user,
            group: args.group,
            allow_root_workers: args.allow_root_workers.then_some(true),
            metrics: args.metrics,
        }
    }
}

/// `sticky check`: validates the options and says what `run` would do.
pub fn check(args: RunArgs) -> anyhow::Result<()> {
    let source = args.config.clone();
    let config = args.config()?;
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

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // A reload reads the file again, with the same flags on top.
    let reconfigure = args.config.clone().map(|file| {
        let flags = RunInput::from(args.clone());
        let reconfigure: Reconfigure = Box::new(move || {
            let input = config::load_file(&file).map_err(|err| err.to_string())?;
            validate(input.overlay(flags.clone())).map(|c| c.workers).map_err(|e| e.to_string())
        });
        reconfigure
    });
    let mut config = args.config()?;
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
