//! The rules: [`RunOptions`] in, one validated [`RunConfig`] out, with defaults filled in and
//! names (users, groups, programs) resolved through a [`Host`].

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    path::Path,
    time::Duration,
};

use sticky_common::MAX_SLOTS;

use super::{
    Credentials, ReadyMode, RunConfig, WorkerCommand, WorkerPolicy,
    defaults::*,
    error::ConfigError,
    host::Host,
    options::{RunOptions, environment_map},
};

/// The variables sticky sets for every worker: `--env` may not override them.
const RESERVED_VARIABLES: [&str; 9] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "STICKY_WORKER",
    "STICKY_WORKERS",
    "STICKY_HANDOFF",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

impl RunConfig {
    /// Validates `options` for `host`, filling in defaults (the worker count defaults to the
    /// host's CPUs).
    pub fn resolve(options: RunOptions, host: &impl Host) -> Result<Self, ConfigError> {
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
        let environment = environment_map(options.environment);
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
        Ok(Self {
            listen,
            workers,
            prefix_v4,
            prefix_v6,
            command: resolve_command(host, options.command)?,
            state_dir: options.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            dispatch: options.dispatch.unwrap_or_default(),
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
        })
    }
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
mod tests {
    use std::{collections::HashMap, path::PathBuf};

    use super::*;
    use crate::config::{
        error::CommandProblem,
        host::{Host, UserEntry},
    };

    /// A machine with a few users and programs, as the tests say.
    struct FakeHost {
        root: bool,
        /// Holds an effective capability.
        capable: bool,
        users: Vec<UserEntry>,
        groups: HashMap<&'static str, u32>,
        programs: HashMap<&'static str, Result<&'static str, CommandProblem>>,
    }

    impl Default for FakeHost {
        fn default() -> Self {
            let user = |name: &str, uid, gid| UserEntry { name: name.into(), uid, gid };
            Self {
                root: true,
                capable: false,
                users: vec![user("root", 0, 0), user("web", 1000, 1000)],
                groups: HashMap::from([("root", 0), ("web", 1000), ("www", 33)]),
                programs: HashMap::from([
                    ("sh", Ok("/bin/sh")),
                    ("/srv/app", Err(CommandProblem::NotExecutable)),
                    ("/no/such/file", Err(CommandProblem::Missing)),
                ]),
            }
        }
    }

    impl Host for FakeHost {
        fn user(&self, name_or_uid: &str) -> Option<UserEntry> {
            let uid = name_or_uid.parse::<u32>().ok();
            self.users.iter().find(|u| u.name == name_or_uid || Some(u.uid) == uid).cloned()
        }
        fn group(&self, name_or_gid: &str) -> Option<u32> {
            let gid = name_or_gid.parse::<u32>().ok();
            self.groups
                .get(name_or_gid)
                .copied()
                .or(gid.filter(|g| self.groups.values().any(|v| v == g)))
        }
        fn program(&self, program: &Path) -> Result<PathBuf, CommandProblem> {
            let name = program.to_str().unwrap();
            let found = self.programs.get(name).copied().unwrap_or(Err(CommandProblem::NotInPath));
            found.map(PathBuf::from)
        }
        fn is_dir(&self, path: &Path) -> bool {
            path == Path::new("/srv")
        }
        fn groups(&self, _user: &UserEntry, gid: u32) -> Vec<u32> {
            vec![gid, 100]
        }
        fn is_root(&self) -> bool {
            self.root
        }
        fn privileged(&self) -> bool {
            self.root || self.capable
        }
        fn cpus(&self) -> u32 {
            4
        }
    }

    fn config(options: RunOptions) -> Result<RunConfig, ConfigError> {
        let allow = options.allow_root_workers.or(Some(true));
        RunConfig::resolve(
            RunOptions { allow_root_workers: allow, ..options },
            &FakeHost::default(),
        )
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let config = config(RunOptions::default()).unwrap();
        assert_eq!(config.listen, vec!["[::]:3000".parse().unwrap()]);
        assert_eq!((config.workers, config.prefix_v4, config.prefix_v6), (4, 32, 64));
        assert_eq!(config.command, None);
        assert_eq!(config.policy.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(config.control, Path::new(DEFAULT_CONTROL));
        assert_eq!(config.policy.ready, crate::config::ReadyMode::Delay);
        assert_eq!(config.policy.hang_timeout, Some(DEFAULT_HANG_TIMEOUT));
        assert_eq!(config.policy.worker_watchdog, None);
        let off = RunOptions { hang_timeout: Some(0.0), ..Default::default() };
        assert_eq!(super::tests::config(off).unwrap().policy.hang_timeout, None);
    }

    #[test]
    fn bad_values_are_named() {
        let with = |f: fn(&mut RunOptions)| {
            let mut options = RunOptions::default();
            f(&mut options);
            config(options).unwrap_err()
        };
        assert_eq!(with(|i| i.workers = Some(0)), ConfigError::Workers(0));
        assert_eq!(with(|i| i.workers = Some(MAX_SLOTS + 1)), ConfigError::Workers(MAX_SLOTS + 1));
        assert_eq!(with(|i| i.prefix_v4 = Some(33)), ConfigError::PrefixV4(33));
        assert_eq!(with(|i| i.prefix_v6 = Some(129)), ConfigError::PrefixV6(129));
        assert_eq!(with(|i| i.grace_period = Some(-1.0)), ConfigError::GracePeriod(-1.0));
        assert_eq!(with(|i| i.crash_limit = Some(0)), ConfigError::CrashLimit(0));
        assert_eq!(with(|i| i.ready_timeout = Some(0.0)), ConfigError::ReadyTimeout(0.0));
        assert_eq!(with(|i| i.hang_timeout = Some(0.1)), ConfigError::HangTimeout(0.1));
        assert_eq!(with(|i| i.worker_watchdog = Some(-1.0)), ConfigError::WorkerWatchdog(-1.0));
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
        assert_eq!(
            with(|i| i.working_directory = Some("/nowhere".into())),
            ConfigError::WorkingDirectory("/nowhere".into())
        );
        assert_eq!(
            with(|i| i.environment = vec![("A=B".into(), "1".into())]),
            ConfigError::EnvironmentName("A=B".into())
        );
        assert_eq!(
            with(|i| i.environment = vec![("LISTEN_FDS".into(), "2".into())]),
            ConfigError::ReservedVariable("LISTEN_FDS".into())
        );
        assert_eq!(
            with(|i| i.ready_delay = Some(30.0)).to_string(),
            "--ready-delay (30 s) must be shorter than --ready-timeout (30 s)"
        );
    }

    #[test]
    fn workers_get_credentials_or_root_must_be_allowed() {
        let web = config(RunOptions { user: Some("web".into()), ..Default::default() }).unwrap();
        let credentials = web.credentials.unwrap();
        assert_eq!(
            (credentials.user.as_str(), credentials.uid, credentials.gid),
            ("web", 1000, 1000)
        );
        let with = |user: &str, group: Option<&str>| {
            config(RunOptions {
                user: Some(user.into()),
                group: group.map(Into::into),
                ..Default::default()
            })
        };
        assert_eq!(with("nobody-here", None).unwrap_err(), ConfigError::User("nobody-here".into()));
        assert_eq!(
            with("web", Some("no-such-group")).unwrap_err(),
            ConfigError::Group("no-such-group".into())
        );
        assert_eq!(with("web", Some("www")).unwrap().credentials.unwrap().gid, 33);
        assert_eq!(with("0", Some("0")).unwrap().credentials.unwrap().gid, 0);
        assert_eq!(with("web", None).unwrap().credentials.unwrap().groups, [1000, 100]);
        let group_alone = RunOptions { group: Some("www".into()), ..Default::default() };
        assert_eq!(config(group_alone).unwrap_err(), ConfigError::GroupWithoutUser);
    }

    #[test]
    fn root_workers_need_allowing_whenever_sticky_is_privileged() {
        let resolve = |host: &FakeHost, user: Option<&str>, group: Option<&str>| {
            let options = RunOptions {
                user: user.map(Into::into),
                group: group.map(Into::into),
                ..Default::default()
            };
            RunConfig::resolve(options, host).map(|_| ()).map_err(|err| err.to_string())
        };
        let root = FakeHost::default();
        let capable = FakeHost { root: false, capable: true, ..Default::default() };
        let plain = FakeHost { root: false, ..Default::default() };
        for (user, group) in
            [(None, None), (Some("root"), None), (Some("0"), None), (Some("web"), Some("0"))]
        {
            let refused = resolve(&root, user, group).unwrap_err();
            assert!(refused.starts_with("refusing to run workers"), "{refused}");
        }
        assert!(resolve(&root, Some("web"), Some("root")).is_err());
        for user in ["root", "0"] {
            assert!(resolve(&capable, Some(user), None).is_err(), "{user}");
        }
        assert!(resolve(&capable, Some("web"), Some("root")).is_err());
        // A capable non-root loader's workers without --user run as its own user, not root.
        assert_eq!(resolve(&capable, None, None), Ok(()));
        assert_eq!(resolve(&plain, None, None), Ok(()));
        assert_eq!(resolve(&root, Some("web"), None), Ok(()));
        let allowed = RunOptions {
            user: Some("root".into()),
            allow_root_workers: Some(true),
            ..Default::default()
        };
        assert!(RunConfig::resolve(allowed, &root).is_ok());
    }

    #[test]
    fn metrics_default_to_loopback() {
        let with = |m: &str| config(RunOptions { metrics: Some(m.into()), ..Default::default() });
        assert_eq!(with("9100").unwrap().metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(with("[::]:9100").unwrap().metrics, Some("[::]:9100".parse().unwrap()));
        assert_eq!(with("x").unwrap_err(), ConfigError::Metrics("x".into()));
    }

    #[test]
    fn commands_are_resolved_or_refused() {
        let with = |command: &[&str]| {
            let command = command.iter().map(|s| s.to_string()).collect();
            config(RunOptions { command, ..Default::default() })
        };
        let sh = with(&["sh", "-c", "true"]).unwrap().command.unwrap();
        assert_eq!(sh.program, Path::new("/bin/sh"));
        assert_eq!(sh.args, ["-c", "true"]);
        assert_eq!(
            with(&["no-such-program"]).unwrap_err().to_string(),
            "worker command 'no-such-program' was not found in PATH"
        );
        assert_eq!(
            with(&["/srv/app"]).unwrap_err().to_string(),
            "worker command '/srv/app' is not an executable file"
        );
        assert!(with(&["/no/such/file"]).unwrap_err().to_string().ends_with("does not exist"));
    }
}
