//! `sticky run`: listeners, dispatch program and workers, until SIGINT/SIGTERM.

use std::{ffi::OsString, path::PathBuf, thread::available_parallelism};

use anyhow::Context as _;
use clap::Args;
use sticky_common::DispatchConfig;
use sticky_user::{
    config::{DispatchMode, RunConfig, RunInput},
    dispatch::Dispatcher,
    listeners::{self, ListenerGroup},
    privileges, seed, supervisor, table,
};
use tracing::{info, warn};

#[derive(Debug, Args)]
pub struct RunArgs {
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
    /// Who picks the worker: `kernel` (sticky's eBPF program) or `none` (plain SO_REUSEPORT,
    /// not sticky; for comparison). [default: kernel]
    #[arg(long, value_name = "MODE")]
    dispatch: Option<String>,
    /// Worker command; it finds its listening sockets at fd 3 (LISTEN_FDS). [default: sticky demo]
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
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
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let cpus = available_parallelism().map_or(1, |n| n.get() as u32);
    let config = RunConfig::from_input(args.into(), cpus)?;
    privileges::check()?;
    let groups = config
        .listen
        .iter()
        .map(|&address| listeners::open_group(address, config.workers))
        .collect::<Result<Vec<_>, _>>()?;
    let dispatchers = match config.dispatch {
        DispatchMode::Kernel => attach(&config, &groups)?,
        DispatchMode::None => {
            warn!("--dispatch none: plain SO_REUSEPORT, clients are NOT sticky");
            Vec::new()
        }
    };
    let spawner = supervisor::Spawner::new(config.command.as_ref(), &groups)
        .context("cannot locate the sticky executable")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(supervisor::run(spawner, config.grace_period))
        .context("supervisor failed")?;
    for (group, dispatcher) in groups.iter().zip(&dispatchers) {
        let counters = dispatcher.counters()?;
        info!(
            listen = %group.address,
            selected = ?counters.selected,
            fallback = counters.fallback,
            passed = counters.passed,
            unreadable = counters.unreadable,
            "dispatch counters"
        );
    }
    // Detach before the sockets close.
    drop(dispatchers);
    info!("stopped");
    Ok(())
}

/// Loads the seed, builds the table and attaches one dispatch program per listener group.
fn attach(config: &RunConfig, groups: &[ListenerGroup]) -> anyhow::Result<Vec<Dispatcher>> {
    let seed = seed::load_or_create(&config.state_dir)?;
    let slots: Vec<u32> = (0..config.workers).collect();
    let table = table::build(seed, &slots);
    let dispatch = DispatchConfig::new(seed, config.prefix_v4, config.prefix_v6, config.workers);
    let mut dispatchers = Vec::with_capacity(groups.len());
    for group in groups {
        let dispatcher = Dispatcher::attach(group, &dispatch, &table)?;
        info!(
            listen = %group.address,
            program_id = dispatcher.program_id(),
            workers = config.workers,
            prefix_v4 = config.prefix_v4,
            prefix_v6 = config.prefix_v6,
            "dispatch program attached"
        );
        dispatchers.push(dispatcher);
    }
    Ok(dispatchers)
}
