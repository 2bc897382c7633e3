//! `sticky run`'s options: raw input (flags, a TOML file, or both) in, one validated
//! [`RunConfig`] out.

mod file;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

pub use file::load_file;
use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};
use sticky_common::MAX_SLOTS;
use thiserror::Error;

/// The listen address used when none is given: dual-stack, port 3000.
pub const DEFAULT_LISTEN: &str = "[::]:3000";
/// The IPv4 prefix length used when none is given: each address is its own client.
pub const DEFAULT_PREFIX_V4: u8 = 32;
/// The IPv6 prefix length used when none is given: a /64 is usually one host or site.
pub const DEFAULT_PREFIX_V6: u8 = 64;
/// Where the hash seed is kept when no state directory is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sticky";
/// Exits within the crash window that take a slot out of the table, when none is given.
pub const DEFAULT_CRASH_LIMIT: u32 = 5;
/// The window the crash limit counts exits in, when none is given.
pub const DEFAULT_CRASH_WINDOW: Duration = Duration::from_secs(30);
/// The most listen addresses one `sticky run` serves.
pub const MAX_LISTEN_ADDRESSES: usize = 16;
/// How long a worker may take to exit after SIGTERM when none is given.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// `sticky run`'s options as the user gave them; `None` and empty mean "the default". The
/// TOML file's keys are the flags' names (`prefix-v4 = 24`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunInput {
    /// Listen addresses, `ADDR:PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// Number of worker slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// IPv4 prefix length that makes one client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_v4: Option<u8>,
    /// IPv6 prefix length that makes one client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_v6: Option<u8>,
    /// Worker command and its arguments; empty for the built-in demo worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Directory for the persisted hash seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a worker may take to exit after SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<f64>,
    /// How connections are dispatched: `kernel`, `none` or `userspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<String>,
    /// Exits within the crash window that eject a slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_limit: Option<u32>,
    /// Seconds the crash limit counts exits in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_window: Option<f64>,
    /// Path of the control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// Extra environment variables for the workers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// The workers' working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<PathBuf>,
    /// User the workers run as (name or uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group the workers run as (name or gid); the user's primary group by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Allow workers to run as root when no user is given and sticky runs as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_root_workers: Option<bool>,
    /// Address of the Prometheus metrics endpoint, `PORT` (on 127.0.0.1) or `ADDR:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl RunInput {
    /// This input with every value `over` gives replacing this one's (flags over a file).
    pub fn overlay(self, over: RunInput) -> RunInput {
        fn list<T>(base: Vec<T>, over: Vec<T>) -> Vec<T> {
            if over.is_empty() { base } else { over }
        }
        let mut environment = self.environment;
        environment.extend(over.environment);
        RunInput {
            listen: list(self.listen, over.listen),
            workers: over.workers.or(self.workers),
            prefix_v4: over.prefix_v4.or(self.prefix_v4),
            prefix_v6: over.prefix_v6.or(self.prefix_v6),
            command: list(self.command, over.command),
            state_dir: over.state_dir.or(self.state_dir),
            grace_period: over.grace_period.or(self.grace_period),
            dispatch: over.dispatch.or(self.dispatch),
            crash_limit: over.crash_limit.or(self.crash_limit),
            crash_window: over.crash_window.or(self.crash_window),
            control: over.control.or(self.control),
            environment,
            working_directory: over.working_directory.or(self.working_directory),
            user: over.user.or(self.user),
            group: over.group.or(self.group),
            allow_root_workers: over.allow_root_workers.or(self.allow_root_workers),
            metrics: over.metrics.or(self.metrics),
        }
    }
}

/// A validated `sticky run` configuration: every later stage trusts it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Listen addresses, each served by every worker slot.
    pub listen: Vec<SocketAddr>,
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
    /// How long a worker may take to exit after SIGTERM.
    pub grace_period: Duration,
    /// How connections are dispatched to workers.
    pub dispatch: DispatchMode,
    /// Exits within `crash_window` that take a slot out of the table.
    pub crash_limit: u32,
    /// The window `crash_limit` counts exits in.
    pub crash_window: Duration,
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
}

/// The unprivileged identity workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// Who picks the worker for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DispatchMode {
    /// sticky's eBPF program: by client address (the product).
    #[default]
    Kernel,
    /// Plain `SO_REUSEPORT`: the kernel's hash of the 4-tuple, not sticky. For comparison.
    None,
    /// The loader accepts and passes each connection to its client's worker (SCM_RIGHTS).
    Userspace,
}

/// A worker program resolved to an executable file.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCommand {
    /// Absolute path of the executable.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<OsString>,
}

/// Why a `sticky run` configuration is invalid.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A listen address does not parse.
    #[error("invalid listen address '{input}': expected ADDR:PORT, e.g. 0.0.0.0:3000 or [::]:3000")]
    ListenSyntax {
        /// The address as given.
        input: String,
    },
    /// A listen address has port 0.
    #[error("invalid listen address '{0}': port 0 is not supported, name a port")]
    ListenPortZero(SocketAddr),
    /// The same listen address is given twice.
    #[error("listen address {0} is given twice")]
    ListenTwice(SocketAddr),
    /// More listen addresses than [`MAX_LISTEN_ADDRESSES`].
    #[error("at most {MAX_LISTEN_ADDRESSES} listen addresses are supported, got {0}")]
    TooManyListen(usize),
    /// The worker count is out of range.
    #[error("--workers must be between 1 and {MAX_SLOTS}, got {0}")]
    Workers(u32),
    /// The IPv4 prefix length is out of range.
    #[error("--prefix-v4 must be between 0 and 32, got {0}")]
    PrefixV4(u8),
    /// The IPv6 prefix length is out of range.
    #[error("--prefix-v6 must be between 0 and 128, got {0}")]
    PrefixV6(u8),
    /// The grace period is negative, not a number or absurdly long.
    #[error("--grace-period must be between 0 and 3600 seconds, got {0}")]
    GracePeriod(f64),
    /// The crash limit is out of range.
    #[error("--crash-limit must be between 1 and 1000, got {0}")]
    CrashLimit(u32),
    /// The crash window is out of range.
    #[error("--crash-window must be between 0.1 and 86400 seconds, got {0}")]
    CrashWindow(f64),
    /// The dispatch mode is unknown.
    #[error("--dispatch must be one of kernel, none, userspace; got '{0}'")]
    Dispatch(String),
    /// The user does not exist.
    #[error("unknown user '{0}'")]
    User(String),
    /// The group does not exist.
    #[error("unknown group '{0}'")]
    Group(String),
    /// A group without a user.
    #[error("--group needs --user")]
    GroupWithoutUser,
    /// Workers would run as root without being allowed to.
    #[error(
        "refusing to run workers as root: give --user (e.g. --user nobody), or --allow-root-workers"
    )]
    RootWorkers,
    /// The working directory is not a directory.
    #[error("working directory {} is not a directory", .0.display())]
    WorkingDirectory(PathBuf),
    /// An environment variable name is empty or holds '='.
    #[error("invalid environment variable name '{0}'")]
    EnvironmentName(String),
    /// The metrics address does not parse.
    #[error("invalid metrics address '{0}': expected PORT or ADDR:PORT")]
    Metrics(String),
    /// The configuration file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration file is not valid.
    #[error("{}:{line}:{column}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What was expected.
        message: String,
    },
    /// The worker command cannot be found or is not executable.
    #[error("worker command '{command}' {reason}")]
    Command {
        /// The command as given.
        command: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl RunConfig {
    /// Validates `input`, filling in defaults; `default_workers` is used when no count is given.
    pub fn from_input(input: RunInput, default_workers: u32) -> Result<Self, ConfigError> {
        let listen = parse_listen(&input.listen)?;
        let workers = input.workers.unwrap_or(default_workers.clamp(1, MAX_SLOTS));
        if !(1..=MAX_SLOTS).contains(&workers) {
            return Err(ConfigError::Workers(workers));
        }
        let prefix_v4 = input.prefix_v4.unwrap_or(DEFAULT_PREFIX_V4);
        if prefix_v4 > 32 {
            return Err(ConfigError::PrefixV4(prefix_v4));
        }
        let prefix_v6 = input.prefix_v6.unwrap_or(DEFAULT_PREFIX_V6);
        if prefix_v6 > 128 {
            return Err(ConfigError::PrefixV6(prefix_v6));
        }
        let grace_period = seconds(input.grace_period, DEFAULT_GRACE_PERIOD, 0.0..=3600.0)
            .map_err(ConfigError::GracePeriod)?;
        let crash_window = seconds(input.crash_window, DEFAULT_CRASH_WINDOW, 0.1..=86400.0)
            .map_err(ConfigError::CrashWindow)?;
        let crash_limit = input.crash_limit.unwrap_or(DEFAULT_CRASH_LIMIT);
        if !(1..=1000).contains(&crash_limit) {
            return Err(ConfigError::CrashLimit(crash_limit));
        }
        let dispatch = match input.dispatch.as_deref() {
            None | Some("kernel") => DispatchMode::Kernel,
            Some("none") => DispatchMode::None,
            Some("userspace") => DispatchMode::Userspace,
            Some(other) => return Err(ConfigError::Dispatch(other.into())),
        };
        let credentials = credentials(input.user.as_deref(), input.group.as_deref())?;
        let root = Uid::effective().is_root();
        if root && credentials.is_none() && input.allow_root_workers != Some(true) {
            return Err(ConfigError::RootWorkers);
        }
        if let Some(dir) = input.working_directory.as_ref().filter(|dir| !dir.is_dir()) {
            return Err(ConfigError::WorkingDirectory(dir.clone()));
        }
        if let Some(name) = input.environment.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(ConfigError::EnvironmentName(name.clone()));
        }
        let metrics = input.metrics.as_deref().map(parse_metrics).transpose()?;
        Ok(Self {
            environment: input.environment,
            working_directory: input.working_directory,
            credentials,
            metrics,
            crash_limit,
            crash_window,
            control: input.control.unwrap_or_else(|| crate::control::DEFAULT_CONTROL.into()),
            dispatch,
            listen,
            workers,
            prefix_v4,
            prefix_v6,
            command: resolve_command(input.command)?,
            state_dir: input.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            grace_period,
        })
    }
}

/// Resolves `user` (name or uid) and `group` (name or gid; the user's primary group if `None`).
fn credentials(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Credentials>, ConfigError> {
    let Some(user_name) = user else {
        return match group {
            Some(_) => Err(ConfigError::GroupWithoutUser),
            None => Ok(None),
        };
    };
    let unknown_user = || ConfigError::User(user_name.into());
    let found = match user_name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user_name),
    };
    let user = found.ok().flatten().ok_or_else(unknown_user)?;
    let gid = match group {
        None => user.gid,
        Some(group_name) => {
            let found = match group_name.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(group_name),
            };
            found.ok().flatten().ok_or_else(|| ConfigError::Group(group_name.into()))?.gid
        }
    };
    Ok(Some(Credentials { user: user.name, uid: user.uid.as_raw(), gid: gid.as_raw() }))
}

/// `PORT` (on 127.0.0.1) or `ADDR:PORT`.
fn parse_metrics(input: &str) -> Result<SocketAddr, ConfigError> {
    let error = || ConfigError::Metrics(input.into());
    match input.parse::<u16>() {
        Ok(0) => Err(error()),
        Ok(port) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        Err(_) => input.parse().map_err(|_| error()),
    }
}

/// `value` seconds if within `range`, `default` if not given; the value itself as the error.
fn seconds(
    value: Option<f64>,
    default: Duration,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Duration, f64> {
    match value {
        None => Ok(default),
        Some(secs) if range.contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        Some(secs) => Err(secs),
    }
}

fn parse_listen(inputs: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    let defaults = [DEFAULT_LISTEN.to_owned()];
    let inputs = if inputs.is_empty() { &defaults[..] } else { inputs };
    if inputs.len() > MAX_LISTEN_ADDRESSES {
        return Err(ConfigError::TooManyListen(inputs.len()));
    }
    let mut addresses: Vec<SocketAddr> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let address: SocketAddr =
            input.trim().parse().map_err(|_| ConfigError::ListenSyntax { input: input.clone() })?;
        if address.port() == 0 {
            return Err(ConfigError::ListenPortZero(address));
        }
        if addresses.contains(&address) {
            return Err(ConfigError::ListenTwice(address));
        }
        addresses.push(address);
    }
    Ok(addresses)
}

fn resolve_command(command: Vec<String>) -> Result<Option<WorkerCommand>, ConfigError> {
    let mut parts = command.into_iter().map(OsString::from);
    let Some(program) = parts.next() else { return Ok(None) };
    let error = |reason| ConfigError::Command { command: program.to_string_lossy().into(), reason };
    let path = PathBuf::from(&program);
    let resolved = if path.components().count() > 1 {
        // A path: `which` also checks that it is an executable file.
        which::which(&path).map_err(|_| match path.exists() {
            true => error("is not an executable file"),
            false => error("does not exist"),
        })?
    } else {
        which::which(&program).map_err(|_| error("was not found in PATH"))?
    };
    let program = std::path::absolute(&resolved).unwrap_or(resolved);
    Ok(Some(WorkerCommand { program, args: parts.collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(input: RunInput) -> Result<RunConfig, ConfigError> {
        let allow = input.allow_root_workers.or(Some(true));
        RunConfig::from_input(RunInput { allow_root_workers: allow, ..input }, 4)
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let config = config(RunInput::default()).unwrap();
        assert_eq!(config.listen, vec!["[::]:3000".parse().unwrap()]);
        assert_eq!((config.workers, config.prefix_v4, config.prefix_v6), (4, 32, 64));
        assert_eq!(config.command, None);
        assert_eq!(config.grace_period, DEFAULT_GRACE_PERIOD);
    }

    #[test]
    fn bad_values_are_named() {
        let with = |f: fn(&mut RunInput)| {
            let mut input = RunInput::default();
            f(&mut input);
            config(input).unwrap_err()
        };
        assert_eq!(with(|i| i.workers = Some(0)), ConfigError::Workers(0));
        assert_eq!(with(|i| i.workers = Some(MAX_SLOTS + 1)), ConfigError::Workers(MAX_SLOTS + 1));
        assert_eq!(with(|i| i.prefix_v4 = Some(33)), ConfigError::PrefixV4(33));
        assert_eq!(with(|i| i.prefix_v6 = Some(129)), ConfigError::PrefixV6(129));
        assert_eq!(with(|i| i.grace_period = Some(-1.0)), ConfigError::GracePeriod(-1.0));
        assert_eq!(with(|i| i.dispatch = Some("x".into())), ConfigError::Dispatch("x".into()));
        assert_eq!(with(|i| i.crash_limit = Some(0)), ConfigError::CrashLimit(0));
        assert_eq!(
            with(|i| i.crash_window = Some(f64::NAN)).to_string(),
            "--crash-window must be between 0.1 and 86400 seconds, got NaN"
        );
        assert!(matches!(
            with(|i| i.listen = vec!["nope".into()]),
            ConfigError::ListenSyntax { .. }
        ));
        assert!(matches!(
            with(|i| i.listen = vec!["1.2.3.4:0".into()]),
            ConfigError::ListenPortZero(_)
        ));
        let twice = with(|i| i.listen = vec!["[::1]:80".into(), "[::1]:80".into()]);
        assert!(matches!(twice, ConfigError::ListenTwice(_)));
    }

    #[test]
    fn workers_get_credentials_or_root_must_be_allowed() {
        let nobody =
            config(RunInput { user: Some("nobody".into()), ..Default::default() }).unwrap();
        let credentials = nobody.credentials.unwrap();
        assert_eq!((credentials.user.as_str(), credentials.uid), ("nobody", 65534));
        let with = |user: &str, group: Option<&str>| {
            config(RunInput {
                user: Some(user.into()),
                group: group.map(Into::into),
                ..Default::default()
            })
        };
        assert_eq!(
            with("no-such-user-sticky", None).unwrap_err(),
            ConfigError::User("no-such-user-sticky".into())
        );
        assert_eq!(
            with("nobody", Some("no-such-group")).unwrap_err(),
            ConfigError::Group("no-such-group".into())
        );
        assert_eq!(with("0", Some("0")).unwrap().credentials.unwrap().gid, 0);
        if Uid::effective().is_root() {
            let refused = RunConfig::from_input(RunInput::default(), 4).unwrap_err();
            assert_eq!(refused, ConfigError::RootWorkers);
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file =
            RunInput { workers: Some(2), listen: vec!["[::]:80".into()], ..Default::default() };
        let flags = RunInput { workers: Some(3), ..Default::default() };
        let merged = file.overlay(flags);
        assert_eq!((merged.workers, merged.listen), (Some(3), vec!["[::]:80".to_string()]));
    }

    #[test]
    fn metrics_default_to_loopback() {
        let with = |m: &str| config(RunInput { metrics: Some(m.into()), ..Default::default() });
        assert_eq!(with("9100").unwrap().metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(with("[::]:9100").unwrap().metrics, Some("[::]:9100".parse().unwrap()));
        assert_eq!(with("x").unwrap_err(), ConfigError::Metrics("x".into()));
    }

    #[test]
    fn commands_are_resolved_or_refused() {
        let with = |command: &[&str]| {
            let command = command.iter().map(|s| s.to_string()).collect();
            config(RunInput { command, ..Default::default() })
        };
        let sh = with(&["sh", "-c", "true"]).unwrap().command.unwrap();
        assert!(sh.program.is_absolute());
        assert_eq!(sh.args, ["-c", "true"]);
        let missing = with(&["no-such-program-sticky"]).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "worker command 'no-such-program-sticky' was not found in PATH"
        );
        let file = std::env::temp_dir().join(format!("sticky-config-test-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let not_executable = with(&[file.to_str().unwrap()]).unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert!(
            not_executable.to_string().ends_with("is not an executable file"),
            "{not_executable}"
        );
        assert!(
            not_executable.to_string().ends_with("is not an executable file"),
            "{not_executable}"
        );
        assert!(with(&["/no/such/file"]).unwrap_err().to_string().ends_with("does not exist"));
    }
}
