//! No capability, group or variable of the loader's ever reaches a worker, whoever starts
//! sticky: root with the unit's capabilities, a user given ambient capabilities, with or
//! without `--user`. Read from each worker's /proc.

use std::{os::unix::process::CommandExt as _, process::Command};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use sticky_tests::{
    Sticky, in_netns,
    privileges::{ProcStatus, assert_unprivileged_worker, environ_of, open_files},
};
use sticky_user::control::{Request, Response};

/// The supplementary groups `id -G USER` lists.
fn groups_of(user: &str) -> Vec<u32> {
    let output = Command::new("id").args(["-G", user]).output().expect("id");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace().map(|gid| gid.parse().expect("a gid")).collect()
}

/// The soft and hard open-files limits of `pid`.
fn open_files_of(pid: u32) -> (u64, u64) {
    open_files(&std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits"))
}

/// The open-files soft limit sticky is started with: below the hard one, which it raises to.
const SOFT_NOFILE: u64 = 1024;

/// Starts `sticky run ARGS` as deployed, with [`LOADER_ENVIRONMENT`] and a soft open-files
/// limit of [`SOFT_NOFILE`].
fn start(args: &[&str]) -> Sticky {
    Sticky::start_with(args, |command| {
        command.envs(LOADER_ENVIRONMENT);
        // SAFETY: getrlimit and setrlimit are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(|| {
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                Ok(setrlimit(Resource::RLIMIT_NOFILE, SOFT_NOFILE, hard)?)
            })
        };
    })
}

/// Checks every worker of `sticky` with [`assert_unprivileged_worker`], and that each has the
/// open-files soft limit sticky was started with, which sticky itself has raised.
fn check_workers(sticky: &Sticky, uid: u32, groups: &[u32]) {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(hard > SOFT_NOFILE, "this test needs a hard open-files limit above {SOFT_NOFILE}");
    let soft = SOFT_NOFILE;
    assert_eq!(open_files_of(sticky.pid()), (hard, hard), "sticky did not raise its limit");
    for slot in sticky.status().slots {
        let pid = slot.pid.expect("a worker in every slot");
        let environ = environ_of(pid);
        assert_unprivileged_worker(&ProcStatus::of(pid), uid, groups, &environ);
        assert!(environ.split('\0').any(|v| v == "KEEP_ME=kept"), "{environ:?}");
        assert_eq!(open_files_of(pid), (soft, hard), "worker {pid}");
    }
}

/// What sticky's own environment may hold under systemd or a developer's shell, and one
/// variable of the application's (`KEEP_ME`), which workers keep.
/// (`RUNTIME_DIRECTORY` would place the notify sockets; the container test has it from systemd.)
const LOADER_ENVIRONMENT: [(&str, &str); 6] = [
    ("FDSTORE", "0"),
    ("STATE_DIRECTORY", "/var/lib/sticky/x"),
    ("STICKY_LOG", "info"),
    ("STICKY_HANDOFF", "1"),
    ("SYSTEMD_EXEC_PID", "1"),
    ("KEEP_ME", "kept"),
];

#[test]
fn a_root_loader_with_the_units_capabilities_gives_its_workers_nothing() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3040", "--workers", "2"];
        let mut sticky = start(&args);
        sticky.wait_until_serving(2);
        check_workers(&sticky, 65534, &groups_of("nobody"));
        // After an upgrade (whose new image starts with the raised limit), new workers still
        // get the limits the first image started with.
        match sticky.control(Request::Upgrade) {
            Response::Done { message } => assert!(message.starts_with("upgraded"), "{message}"),
            other => panic!("upgrade: {other:?}\n{}", sticky.log()),
        }
        match sticky.control(Request::Reload) {
            Response::Done { message } => assert_eq!(message, "restarted 2 workers"),
            other => panic!("reload: {other:?}\n{}", sticky.log()),
        }
        check_workers(&sticky, 65534, &groups_of("nobody"));
        sticky.stop_cleanly();
    });
}

#[test]
fn root_workers_when_allowed_still_hold_no_capability() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3041", "--workers", "2", "--allow-root-workers"];
        let mut sticky = start(&args);
        sticky.wait_until_serving(2);
        // No --user: the workers keep the loader's own user and groups, nothing else.
        let loader = ProcStatus::of(sticky.pid());
        check_workers(&sticky, 0, &loader.groups);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_loader_with_ambient_capabilities_passes_none_on() {
    in_netns(|| {
        // Without --user: the workers are the loader's own user, which holds capabilities.
        let args = ["--listen", "127.0.0.1:3042", "--workers", "2"];
        let mut sticky = Sticky::start_unprivileged("+bpf,+net_admin", &args);
        sticky.wait_until_serving(2);
        check_ambient(&sticky);
        check_workers_without_environment(&sticky, 65534, &[]);
        sticky.stop_cleanly();

        // With --user: another user, with that user's groups.
        let args = ["--listen", "127.0.0.1:3043", "--workers", "2", "--user", "daemon"];
        let caps = "+bpf,+net_admin,+setuid,+setgid,+kill";
        let mut sticky = Sticky::start_unprivileged(caps, &args);
        sticky.wait_until_serving(2);
        check_ambient(&sticky);
        check_workers_without_environment(&sticky, 1, &groups_of("daemon"));
        sticky.stop_cleanly();
    });
}

/// The loader itself holds the ambient capabilities it was given (so the workers' empty sets
/// are sticky's doing).
fn check_ambient(sticky: &Sticky) {
    let loader = ProcStatus::of(sticky.pid());
    assert_ne!(loader.capabilities["CapAmb"], 0, "{loader:?}");
}

/// [`check_workers`] for a loader started without [`LOADER_ENVIRONMENT`].
fn check_workers_without_environment(sticky: &Sticky, uid: u32, groups: &[u32]) {
    for slot in sticky.status().slots {
        let pid = slot.pid.expect("a worker in every slot");
        assert_unprivileged_worker(&ProcStatus::of(pid), uid, groups, &environ_of(pid));
    }
}
