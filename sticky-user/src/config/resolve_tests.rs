//! The rules of `resolve.rs`, one test per rule, against a made-up host.

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
    RunConfig::resolve(RunOptions { allow_root_workers: allow, ..options }, &FakeHost::default())
}

#[test]
fn defaults_fill_what_is_missing() {
    let config = config(RunOptions::default()).unwrap();
    assert_eq!(config.listen, vec![Listen::tcp("[::]:3000".parse().unwrap())]);
    assert_eq!((config.workers, config.prefix_v4, config.prefix_v6), (4, 32, 64));
    assert_eq!(config.command, None);
    assert_eq!(config.policy.grace_period, DEFAULT_GRACE_PERIOD);
    assert_eq!(config.control, Path::new(DEFAULT_CONTROL));
    assert_eq!(config.policy.ready, crate::config::ReadyMode::Delay);
    assert_eq!(config.policy.hang_timeout, Some(DEFAULT_HANG_TIMEOUT));
    assert_eq!(config.policy.worker_watchdog, None);
    assert_eq!(config.log_level, crate::config::LogLevel::Info);
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
    assert!(matches!(with(|i| i.listen = vec!["nope".into()]), ConfigError::ListenSyntax { .. }));
    assert!(matches!(
        with(|i| i.listen = vec!["1.2.3.4:0".into()]),
        ConfigError::ListenPortZero(_)
    ));
    let twice = with(|i| i.listen = vec!["[::1]:80".into(), "[::1]:80".into()]);
    assert!(matches!(twice, ConfigError::ListenTwice(_)));
    let udp = Listen::udp("[::1]:53".parse().unwrap());
    let userspace = with(|i| {
        i.listen = vec!["[::1]:80".into(), "udp://[::1]:53".into()];
        i.dispatch = Some(DispatchMode::Userspace);
    });
    assert_eq!(userspace, ConfigError::UdpDispatch(udp));
    let proxies_over_udp = with(|i| {
        i.listen = vec!["udp://[::1]:53".into()];
        i.trusted_proxy = vec!["10.0.0.0/8".into()];
        i.client_address = Some(crate::config::AddressSource::ProxyProtocol);
    });
    assert_eq!(proxies_over_udp, ConfigError::ClientAddressWithoutTcp);
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
    assert_eq!((credentials.user.as_str(), credentials.uid, credentials.gid), ("web", 1000, 1000));
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

#[test]
fn tcp_and_udp_may_share_an_address() {
    let listen = vec!["127.0.0.1:53".into(), "udp://127.0.0.1:53".into()];
    let config = config(RunOptions { listen, ..RunOptions::default() }).unwrap();
    let address = "127.0.0.1:53".parse().unwrap();
    assert_eq!(config.listen, vec![Listen::tcp(address), Listen::udp(address)]);
}

#[test]
fn quic_needs_a_udp_address_the_program_and_a_cid_length_in_range() {
    let quic = |listen: &str, cid_len: Option<u8>, dispatch: Option<DispatchMode>| {
        config(RunOptions {
            listen: vec![listen.into()],
            quic: Some(true),
            quic_cid_len: cid_len,
            dispatch,
            ..RunOptions::default()
        })
    };
    let udp = "udp://127.0.0.1:443";
    let drain = |cid_len| Quic {
        cid_len,
        drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        drain_idle: DEFAULT_DRAIN_IDLE,
    };
    assert_eq!(quic(udp, None, None).unwrap().quic, Some(drain(20)));
    assert_eq!(quic(udp, Some(8), None).unwrap().quic, Some(drain(8)));
    assert_eq!(quic(udp, Some(7), None).unwrap_err(), ConfigError::QuicCidLen(7));
    assert_eq!(quic(udp, Some(21), None).unwrap_err(), ConfigError::QuicCidLen(21));
    assert_eq!(quic("127.0.0.1:443", None, None).unwrap_err(), ConfigError::QuicWithoutUdp);
    let none = quic(udp, None, Some(DispatchMode::None)).unwrap_err();
    assert_eq!(none, ConfigError::QuicDispatch(DispatchMode::None));
    let cid_len_alone = RunOptions { quic_cid_len: Some(20), ..RunOptions::default() };
    assert_eq!(config(cid_len_alone).unwrap_err(), ConfigError::WithoutQuic("--quic-cid-len"));
    let drain_alone = RunOptions { drain_idle: Some(5.0), ..RunOptions::default() };
    assert_eq!(config(drain_alone).unwrap_err(), ConfigError::WithoutQuic("--drain-idle"));
    let drain = |drain_timeout, drain_idle| {
        let listen = vec![udp.into()];
        let quic = Some(true);
        config(RunOptions { listen, quic, drain_timeout, drain_idle, ..RunOptions::default() })
    };
    let quic = drain(Some(0.0), Some(2.5)).unwrap().quic.unwrap();
    assert_eq!(
        (quic.drain_timeout, quic.drain_idle),
        (Duration::ZERO, Duration::from_millis(2500))
    );
    assert_eq!(drain(Some(-1.0), None).unwrap_err(), ConfigError::DrainTimeout(-1.0));
    assert_eq!(drain(None, Some(0.0)).unwrap_err(), ConfigError::DrainIdle(0.0));
    let reserved = vec![("STICKY_QUIC_KEY".into(), "1".into())];
    let reserved = config(RunOptions { environment: reserved, ..RunOptions::default() });
    assert_eq!(reserved.unwrap_err(), ConfigError::ReservedVariable("STICKY_QUIC_KEY".into()));
}
