//! `sticky run`'s options: each defined once ([`RunOptions`]: flags, TOML file, or both), and
//! validated into one [`RunConfig`] that every later stage trusts.
//!
//! - [`options`]: the options, as clap parses them and serde reads and writes them, and the
//!   flags-over-file overlay;
//! - [`file`]: reading the TOML file, errors with line and column;
//! - [`resolve`]: the rules, with defaults from [`defaults`];
//! - [`client_address`]: trusted proxies and where their connections carry the client;
//! - [`handoff`]: how handed-over connections reach the workers (socket or Node's IPC);
//! - [`launch`]: what `sticky run` was given, as reload and upgrade keep it;
//! - [`host`]: what the rules ask of the machine (users, groups, programs), behind a trait;
//! - [`error`]: one variant per problem.

mod client_address;
pub mod defaults;
mod error;
mod file;
mod handoff;
mod host;
mod launch;
mod listen;
mod options;
mod resolve;

use std::{collections::BTreeMap, ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

pub use client_address::{AddressSource, ClientAddress, DEFAULT_CLIENT_ADDRESS_TIMEOUT};
pub use defaults::MAX_LISTEN_ADDRESSES;
pub use error::{CommandProblem, ConfigError};
pub use file::load_file;
pub use handoff::HandoffTransport;
pub use host::{Host, System, UserEntry};
pub use launch::{Launch, Reconfigure};
pub use listen::{Listen, Transport};
pub use options::{DispatchMode, LogLevel, ReadyMode, RunOptions};
use serde::{Deserialize, Serialize};

impl RunOptions {
    /// The options in effect: the `--config` file's, if any, with these (the flags) on top.
    pub fn with_file(self) -> Result<RunOptions, ConfigError> {
        match &self.config {
            Some(path) => load_file(path)?.overlay(self),
            None => Ok(self),
        }
    }

    /// The options in effect ([`RunOptions::with_file`]), validated for this machine.
    pub fn validate(self) -> Result<RunConfig, ConfigError> {
        RunConfig::resolve(self.with_file()?, &System)
    }
}

/// A validated `sticky run` configuration: every later stage trusts it. (Serialized only in
/// the state record an upgrade hands to the new binary.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Listen addresses (TCP or UDP), each served by every worker slot.
    pub listen: Vec<Listen>,
    /// Number of worker slots, `1..=MAX_SLOTS`.
    pub workers: u32,
    /// IPv4 prefix length, `0..=32`.
    pub prefix_v4: u8,
    /// IPv6 prefix length, `0..=128`.
    pub prefix_v6: u8,
    /// The worker program; `None` runs the built-in demo worker.
    pub command: Option<WorkerCommand>,
    /// Directory for the persisted hash seed.
    pub state_dir: PathBuf,
    /// How connections are dispatched to workers.
    pub dispatch: DispatchMode,
    /// How the supervisor treats the workers.
    pub policy: WorkerPolicy,
    /// Path of the control socket.
    pub control: PathBuf,
    /// Extra environment variables for the workers.
    pub environment: BTreeMap<String, String>,
    /// The workers' working directory (sticky's own when `None`).
    pub working_directory: Option<PathBuf>,
    /// The user and group the workers run as (sticky's own when `None`).
    pub credentials: Option<Credentials>,
    /// Address of the Prometheus metrics endpoint, if enabled.
    pub metrics: Option<SocketAddr>,
    /// Trusted proxies and where their connections carry the client's address, if any.
    #[serde(default)]
    pub client_address: Option<ClientAddress>,
    /// How connections the loader passes on reach the workers.
    #[serde(default)]
    pub handoff: HandoffTransport,
    /// With `--quic`: QUIC datagrams on the UDP addresses are routed by connection ID.
    #[serde(default)]
    pub quic: Option<Quic>,
    /// How much the loader and its program log.
    #[serde(default)]
    pub log_level: LogLevel,
}

/// The workers' variable that gives their connection IDs' length, with `--quic`.
pub const STICKY_QUIC_CID_LEN: &str = "STICKY_QUIC_CID_LEN";
/// The workers' variable that gives the key of their connection IDs' check, with `--quic`.
pub const STICKY_QUIC_KEY: &str = "STICKY_QUIC_KEY";

/// The workers' variable that holds their slot's stateless reset key, with `--quic`.
pub const STICKY_QUIC_RESET_KEY: &str = "STICKY_QUIC_RESET_KEY";
/// The workers' variable that gives their socket generation, which their connection IDs name,
/// with `--quic`.
pub const STICKY_QUIC_GENERATION: &str = "STICKY_QUIC_GENERATION";

/// QUIC routing by connection ID (`--quic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quic {
    /// The length of the workers' connection IDs, as short headers carry them.
    pub cid_len: u8,
    /// How long the worker of a slot's earlier socket generation may drain.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// How long its socket must get no datagram for its connections to count as over.
    #[serde(default = "defaults::drain_idle")]
    pub drain_idle: Duration,
}

impl RunConfig {
    /// Whether the loader accepts connections and passes them on (userspace dispatch, trusted
    /// proxies).
    pub fn passes_on(&self) -> bool {
        self.dispatch == DispatchMode::Userspace || self.client_address.is_some()
    }
}

/// How the supervisor treats workers: stopping, crash loops, readiness, hangs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkerPolicy {
    /// How long a worker may take to exit after SIGTERM.
    pub grace_period: Duration,
    /// Exits within `crash_window` that take a slot out of the table.
    pub crash_limit: u32,
    /// The window `crash_limit` counts exits in.
    pub crash_window: Duration,
    /// When a new worker counts as ready.
    pub ready: ReadyMode,
    /// How long a worker must stay up to be ready in delay mode.
    pub ready_delay: Duration,
    /// How long a new worker may take to become ready.
    pub ready_timeout: Duration,
    /// How long a slot may keep connections waiting without an accept (`None`: off).
    pub hang_timeout: Option<Duration>,
    /// The workers' watchdog interval (`None`: off).
    pub worker_watchdog: Option<Duration>,
}

/// The unprivileged identity workers run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
    /// The user's supplementary groups (as `initgroups` sets them), `gid` among them.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// A worker program resolved to an executable file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerCommand {
    /// Absolute path of the executable.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<OsString>,
}
