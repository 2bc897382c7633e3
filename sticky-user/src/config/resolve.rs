//! The rules: [`RunOptions`] in, one validated [`RunConfig`] out, with defaults filled in and
//! names (users, groups, programs) resolved through a [`Host`].

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    path::Path,
    time::Duration,
};

use sticky_common::{MAX_SLOTS, quic};

use super::{
    Credentials, DispatchMode, Listen, Quic, ReadyMode, RunConfig, STICKY_QUIC_CID_LEN,
    STICKY_QUIC_GENERATION, STICKY_QUIC_KEY, STICKY_QUIC_RESET_KEY, WorkerCommand, WorkerPolicy,
    client_address,
    defaults::*,
    error::ConfigError,
    handoff,
    host::Host,
    options::{RunOptions, environment_map},
};

/// The variables sticky sets for every worker: `--env` may not override them.
const RESERVED_VARIABLES: [&str; 15] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "STICKY_WORKER",
    "STICKY_WORKERS",
    "STICKY_HANDOFF",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
    STICKY_QUIC_CID_LEN,
    STICKY_QUIC_KEY,
    STICKY_QUIC_RESET_KEY,
    STICKY_QUIC_GENERATION,
];

impl RunConfig {
    /// Validates `options` for `host`, filling in defaults (the worker count defaults to the
    /// host's CPUs).
    pub fn resolve(mut options: RunOptions, host: &impl Host) -> Result<Self, ConfigError> {
        let listen = parse_listen(&options.listen)?;
        let workers = options.workers.unwrap_or(host.cpus().clamp(1, MAX_SLOTS));
        if !(1..=MAX_SLOTS).contains(&workers) {
            return Err(ConfigError::Workers(workers));
        }
        let prefix_v4 = options.prefix_v4.unwrap_or(DEFAULT_PREFIX_V4);
        if prefix_v4 > 32 {
            return Err(ConfigError::PrefixV4(prefix_v4));
        }
        let prefix_v6 = options.prefix_v6.unwrap_or(DEFAULT_PREFIX_V6);
        if prefix_v6 > 128 {
            return Err(ConfigError::PrefixV6(prefix_v6));
        }
        let grace_period = seconds(options.grace_period, DEFAULT_GRACE_PERIOD, 0.0..=3600.0)
            .map_err(ConfigError::GracePeriod)?;
        let crash_window = seconds(options.crash_window, DEFAULT_CRASH_WINDOW, 0.1..=86400.0)
            .map_err(ConfigError::CrashWindow)?;
        let ready_delay = seconds(options.ready_delay, DEFAULT_READY_DELAY, 0.0..=3600.0)
            .map_err(ConfigError::ReadyDelay)?;
        let ready_timeout = seconds(options.ready_timeout, DEFAULT_READY_TIMEOUT, 0.1..=3600.0)
            .map_err(ConfigError::ReadyTimeout)?;
        let hang_timeout = match options.hang_timeout {
            Some(0.0) => None,
            hang => Some(
                seconds(hang, DEFAULT_HANG_TIMEOUT, 0.5..=3600.0)
                    .map_err(ConfigError::HangTimeout)?,
            ),
        };
        let worker_watchdog = options
            .worker_watchdog
            .map(|secs| seconds(Some(secs), Duration::ZERO, 0.1..=3600.0))
            .transpose()
            .map_err(ConfigError::WorkerWatchdog)?;
        let crash_limit = options.crash_limit.unwrap_or(DEFAULT_CRASH_LIMIT);
        if !(1..=1000).contains(&crash_limit) {
            return Err(ConfigError::CrashLimit(crash_limit));
        }
        let credentials = credentials(host, options.user.as_deref(), options.group.as_deref())?;
        if let Some(root) = root_workers(host, credentials.as_ref())
            && options.allow_root_workers != Some(true)
        {
            return Err(ConfigError::RootWorkers(root));
        }
        if let Some(dir) = options.working_directory.as_ref().filter(|dir| !host.is_dir(dir)) {
            return Err(ConfigError::WorkingDirectory(dir.clone()));
        }
        let environment = environment_map(std::mem::take(&mut options.environment));
        if let Some(name) = environment.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(ConfigError::EnvironmentName(name.clone()));
        }
        if let Some(name) = environment.keys().find(|k| RESERVED_VARIABLES.contains(&k.as_str())) {
            return Err(ConfigError::ReservedVariable(name.clone()));
        }
        let ready = options.ready.unwrap_or_default();
        if ready == ReadyMode::Delay && ready_delay >= ready_timeout {
            return Err(ConfigError::ReadyDelayTooLong {
                delay: ready_delay.as_secs_f64(),
                timeout: ready_timeout.as_secs_f64(),
            });
        }
        let metrics = options.metrics.as_deref().map(parse_metrics).transpose()?;
        let dispatch = options.dispatch.unwrap_or_default();
        if let Some(&udp) = listen.iter().find(|listen| listen.is_udp())
            && dispatch == DispatchMode::Userspace
        {
            return Err(ConfigError::UdpDispatch(udp));
        }
        let client_address = client_address::resolve(
            &options.trusted_proxy,
            options.client_address,
            options.client_address_timeout,
            dispatch,
        )?;
        if client_address.is_some() && listen.iter().all(Listen::is_udp) {
            return Err(ConfigError::ClientAddressWithoutTcp);
        }
        let quic = quic(&options, &listen, dispatch)?;
        let command = resolve_command(host, options.command)?;
        let handoff = handoff::resolve(options.handoff, command.as_ref());
        Ok(Self {
            listen,
            workers,
            prefix_v4,
            prefix_v6,
            command,
            state_dir: options.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            dispatch,
            policy: WorkerPolicy {
                grace_period,
                crash_limit,
                crash_window,
                ready,
                ready_delay,
                ready_timeout,
                hang_timeout,
                worker_watchdog,
            },
            control: options.control.unwrap_or_else(|| DEFAULT_CONTROL.into()),
            environment,
            working_directory: options.working_directory,
            credentials,
            metrics,
            client_address,
            handoff,
            quic,
            log_level: options.log_level.unwrap_or_default(),
        })
    }
}

/// `--quic` and its options: on UDP addresses, with the program (kernel dispatch).
fn quic(
    options: &RunOptions,
    listen: &[Listen],
    dispatch: DispatchMode,
) -> Result<Option<Quic>, ConfigError> {
    if options.quic != Some(true) {
        let given = [
            ("--quic-cid-len", options.quic_cid_len.is_some()),
            ("--drain-timeout", options.drain_timeout.is_some()),
            ("--drain-idle", options.drain_idle.is_some()),
        ];
        return match given.into_iter().find(|(_, given)| *given) {
            Some((option, _)) => Err(ConfigError::WithoutQuic(option)),
            None => Ok(None),
        };
    }
    let cid_len = options.quic_cid_len.unwrap_or(quic::DEFAULT_CID_LEN);
    if !(quic::MIN_CID_LEN..=quic::MAX_CID_LEN).contains(&cid_len) {
        return Err(ConfigError::QuicCidLen(cid_len));
    }
    if !listen.iter().any(Listen::is_udp) {
        return Err(ConfigError::QuicWithoutUdp);
    }
    if dispatch != DispatchMode::Kernel {
        return Err(ConfigError::QuicDispatch(dispatch));
    }
    let drain_timeout = seconds(options.drain_timeout, DEFAULT_DRAIN_TIMEOUT, 0.0..=86400.0)
        .map_err(ConfigError::DrainTimeout)?;
    let drain_idle = seconds(options.drain_idle, DEFAULT_DRAIN_IDLE, 0.1..=3600.0)
        .map_err(ConfigError::DrainIdle)?;
    Ok(Some(Quic { cid_len, drain_timeout, drain_idle }))
}

/// Resolves `user` (name or uid) and `group` (name or gid; the user's primary group if `None`).
fn credentials(
    host: &impl Host,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Credentials>, ConfigError> {
    let Some(user_name) = user else {
        return match group {
            Some(_) => Err(ConfigError::GroupWithoutUser),
            None => Ok(None),
        };
    };
    let user = host.user(user_name).ok_or_else(|| ConfigError::User(user_name.into()))?;
    let gid = match group {
        None => user.gid,
        Some(group) => host.group(group).ok_or_else(|| ConfigError::Group(group.into()))?,
    };
    let groups = host.groups(&user, gid);
    Ok(Some(Credentials { user: user.name, uid: user.uid, gid, groups }))
}

/// How the workers would run as root, if they would and this loader could start them so (it
/// is root or holds a capability): uid 0 (sticky's own, or `--user`) or group 0.
fn root_workers(host: &impl Host, credentials: Option<&Credentials>) -> Option<String> {
    let root = match credentials {
        None => host.is_root().then(|| "as root, sticky's own user".to_owned()),
        Some(c) if c.uid == 0 => Some(format!("as user {}", c.user)),
        Some(c) if c.gid == 0 => Some("with group 0".to_owned()),
        Some(_) => None,
    };
    root.filter(|_| host.privileged())
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
    range: RangeInclusive<f64>,
) -> Result<Duration, f64> {
    match value {
        None => Ok(default),
        Some(secs) if range.contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        Some(secs) => Err(secs),
    }
}

fn parse_listen(inputs: &[String]) -> Result<Vec<Listen>, ConfigError> {
    let defaults = [DEFAULT_LISTEN.to_owned()];
    let inputs = if inputs.is_empty() { &defaults[..] } else { inputs };
    if inputs.len() > MAX_LISTEN_ADDRESSES {
        return Err(ConfigError::TooManyListen(inputs.len()));
    }
    let mut addresses: Vec<Listen> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let address = Listen::parse(input)
            .ok_or_else(|| ConfigError::ListenSyntax { input: input.clone() })?;
        if address.address.port() == 0 {
            return Err(ConfigError::ListenPortZero(address));
        }
        if addresses.contains(&address) {
            return Err(ConfigError::ListenTwice(address));
        }
        addresses.push(address);
    }
    Ok(addresses)
}

fn resolve_command(
    host: &impl Host,
    command: Vec<String>,
) -> Result<Option<WorkerCommand>, ConfigError> {
    let mut parts = command.into_iter().map(OsString::from);
    let Some(program) = parts.next() else { return Ok(None) };
    let program = host.program(Path::new(&program)).map_err(|reason| ConfigError::Command {
        command: program.to_string_lossy().into(),
        reason,
    })?;
    Ok(Some(WorkerCommand { program, args: parts.collect() }))
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
