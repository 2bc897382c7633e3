//! The loader's own process limits. At start it raises its open-files limit (it holds a socket
//! per slot and address, a pidfd and a notify socket per worker, and its clients' connections)
//! and narrows its umask (nothing it creates is ever reachable by others, even briefly). Every
//! process it executes, a worker or a new image of itself, gets back the limits it started with.

use std::{io, sync::OnceLock};

use nix::sys::{
    resource::{Resource, getrlimit, setrlimit},
    stat::{Mode, umask},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{DispatchMode, RunConfig};

/// Connections the metrics endpoint serves at once; past it, the oldest is closed.
pub const METRICS_CONNECTIONS: usize = 256;
/// Connections the control socket serves at once; past it, new ones are closed.
pub const CONTROL_CONNECTIONS: usize = 32;
/// Accepted connections the loader holds while their worker's hand-over queue is full.
pub const HANDOFF_PENDING: usize = 1024;
/// Trusted proxies' connections the loader reads a header from at once; past it, new ones are
/// closed.
pub const HEADER_PENDING: usize = 2048;
/// Descriptors the loader holds whatever the configuration: stdio, the runtime, the control
/// and metrics listeners, the program and its maps, logs.
const FIXED_FDS: u64 = 64;

/// The open-files limit is too low for the configuration.
#[derive(Debug, Error)]
pub enum LimitError {
    /// The hard limit is below what the configuration needs.
    #[error(
        "the open-files limit ({limit}) is too low for {workers} workers on {addresses} listen \
         address(es), which need about {needed}: raise it (LimitNOFILE= in the unit, ulimit -n)"
    )]
    TooLow {
        /// The hard limit.
        limit: u64,
        /// The worker count.
        workers: u32,
        /// The listen address count.
        addresses: usize,
        /// What the loader needs.
        needed: u64,
    },
    /// The limit could not be read or raised.
    #[error("cannot raise the open-files limit")]
    Raise(#[source] io::Error),
}

/// What this process started with, given back to what it executes (and handed on by an
/// upgrade, whose new image starts with the raised limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedWith {
    /// The soft open-files limit.
    nofile: u64,
    /// The umask's bits.
    umask: u32,
}

static STARTED_WITH: OnceLock<StartedWith> = OnceLock::new();

/// Descriptors the loader may hold for `workers` workers in `config`.
pub fn fds_needed(config: &RunConfig, workers: u32) -> u64 {
    let addresses = config.listen.len() as u64;
    // Per worker: a socket per address, a pidfd and a notify socket; a rolling restart runs
    // one slot's old and new worker side by side.
    let per_worker = addresses + 2;
    let mut needed = (u64::from(workers) + 1) * per_worker + 2 * addresses;
    needed += FIXED_FDS + (METRICS_CONNECTIONS + CONTROL_CONNECTIONS) as u64;
    if config.dispatch == DispatchMode::Userspace || config.client_address.is_some() {
        // Both ends of a hand-over socket pair per worker, and the connections waiting for one.
        needed += 2 * u64::from(workers) + HANDOFF_PENDING as u64;
    }
    if config.client_address.is_some() {
        // The loader's own socket per address, and the connections whose header it reads.
        needed += addresses + HEADER_PENDING as u64;
    }
    needed
}

/// Raises the soft open-files limit to the hard one, checks it fits `config`, and sets the
/// umask to 0077; remembers what the process started with for [`restore`]: `started`, handed
/// on by an upgrade, or what it has now.
pub fn raise(config: &RunConfig, started: Option<StartedWith>) -> Result<(), LimitError> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| LimitError::Raise(e.into()))?;
    let old_umask = umask(Mode::from_bits_truncate(0o077)).bits();
    let _ = STARTED_WITH.set(started.unwrap_or(StartedWith { nofile: soft, umask: old_umask }));
    fits(config, config.workers)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| LimitError::Raise(e.into()))?;
    }
    Ok(())
}

/// Whether `workers` workers fit the open-files limit (for `sticky scale`).
pub fn fits(config: &RunConfig, workers: u32) -> Result<(), LimitError> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| LimitError::Raise(e.into()))?;
    let needed = fds_needed(config, workers);
    if hard < needed {
        return Err(LimitError::TooLow {
            limit: hard,
            workers,
            addresses: config.listen.len(),
            needed,
        });
    }
    Ok(())
}

/// What this process started with, once [`raise`] ran.
pub fn started_with() -> Option<StartedWith> {
    STARTED_WITH.get().copied()
}

/// Gives this process back the soft open-files limit and the umask it started with, before it
/// executes something else. Between fork and exec: system calls only, no allocation.
pub fn restore() -> io::Result<()> {
    let Some(started) = STARTED_WITH.get() else { return Ok(()) };
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, started.nofile.min(hard), hard)?;
    umask(Mode::from_bits_truncate(started.umask));
    Ok(())
}
