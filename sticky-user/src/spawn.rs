//! Starting one worker process on its slot's listening sockets.
//!
//! A worker is started as `sticky exec-worker -- CMD…`. In the forked child, before exec, it
//! becomes the workers' user (with that user's supplementary groups), is set to die with the
//! loader (PR_SET_PDEATHSIG), gives up every capability (ambient, inheritable, permitted,
//! effective) and the loader's raised limits, and moves the slot's sockets to fd 3 onwards; it
//! gets its own process group (a terminal's Ctrl-C then reaches only the loader). Its
//! environment is the loader's without what is addressed to the loader alone. The
//! `exec-worker` shim sets `LISTEN_PID` to its own pid and execs CMD, which keeps that pid: the
//! loader cannot set it, as the pid is only known after fork.

use std::{
    collections::BTreeMap,
    ffi::{CString, OsString},
    io,
    os::{
        fd::RawFd,
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Stdio,
};

use nix::{
    sys::{
        prctl,
        resource::{Resource, getrlimit},
        signal::Signal,
    },
    unistd::{AccessFlags, Gid, Uid, User, access, getppid, getuid},
};
use sticky_worker::{
    LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, NOTIFY_SOCKET, STICKY_WORKER,
    STICKY_WORKERS, WATCHDOG_PID, WATCHDOG_USEC,
};
use thiserror::Error;

use crate::{
    config::{Credentials, MAX_LISTEN_ADDRESSES, RunConfig, WorkerCommand},
    limits,
};

/// The hidden `sticky` subcommand that sets `LISTEN_PID` and execs the worker.
pub const EXEC_WORKER: &str = "exec-worker";

/// Starts workers: knows the command, their environment and identity, and the names of the
/// listen addresses.
#[derive(Debug)]
pub struct Spawner {
    /// The `sticky` executable, for the `exec-worker` shim.
    sticky: PathBuf,
    /// The worker program and its arguments.
    command: Vec<OsString>,
    /// `LISTEN_FDNAMES` value.
    names: String,
    environment: BTreeMap<String, String>,
    /// The working directory, entered as the workers' user.
    working_directory: Option<CString>,
    credentials: Option<Credentials>,
    /// The identity a child takes before exec, when it is not the loader's own.
    identity: Option<Identity>,
    /// The workers' `NOTIFY_SOCKET`, once the loader has bound it.
    notify_socket: Option<String>,
    /// The workers' watchdog interval, if any.
    watchdog: Option<std::time::Duration>,
}

impl Spawner {
    /// A spawner for `config`'s workers on sockets named `names` (one per listen address).
    /// Without a command the workers run `sticky demo`.
    pub fn new(config: &RunConfig, names: &[String]) -> Result<Self, SpawnError> {
        let sticky = std::env::current_exe().map_err(SpawnError::Executable)?;
        let command = match &config.command {
            Some(WorkerCommand { program, args }) => {
                std::iter::once(program.into()).chain(args.iter().cloned()).collect()
            }
            None => vec![sticky.clone().into(), "demo".into()],
        };
        Ok(Self {
            sticky,
            command,
            names: names.join(":"),
            environment: config.environment.clone(),
            working_directory: config
                .working_directory
                .as_ref()
                .map(|dir| CString::new(dir.as_os_str().as_bytes()))
                .transpose()
                .map_err(|_| SpawnError::NulByte)?,
            credentials: config.credentials.clone(),
            identity: config.credentials.as_ref().and_then(Identity::switch_to),
            notify_socket: None,
            watchdog: config.policy.worker_watchdog,
        })
    }

    /// The sticky executable's path, as it was when this loader started.
    pub fn executable(&self) -> &Path {
        &self.sticky
    }

    /// Gives the workers `NOTIFY_SOCKET=socket` (the loader's readiness socket).
    pub fn set_notify_socket(&mut self, socket: String) {
        self.notify_socket = Some(socket);
    }

    /// Checks that a worker can be started: the `exec-worker` shim runs as the workers' user in
    /// their working directory, and that user may execute the worker program.
    pub fn check(&self) -> Result<(), SpawnError> {
        let user =
            self.credentials.as_ref().map_or_else(|| user_name(getuid()), |c| c.user.clone());
        let program = &self.command[0];
        let mut command = self.shim();
        command.arg("--check").arg("--").arg(program).stdout(Stdio::null()).stderr(Stdio::piped());
        let (identity, dir) = (self.identity.clone(), self.working_directory.clone());
        // SAFETY: the closure runs between fork and exec and only makes system calls.
        unsafe { command.pre_exec(move || become_worker(identity.as_ref(), dir.as_deref())) };
        let output = command.output().map_err(|source| SpawnError::Shim {
            sticky: self.sticky.clone(),
            user: user.clone(),
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        let reason = last.strip_prefix("sticky: error: ").unwrap_or(last).to_owned();
        Err(SpawnError::Command { program: program.into(), user, reason })
    }

    /// Starts the worker for `slot` of `slots`, with `fds` (one listening socket per listen
    /// address) at fd 3 onwards. Returns its pid: the caller waits for it (it is not reaped
    /// otherwise).
    pub fn spawn(&self, slot: u32, slots: u32, fds: Vec<RawFd>) -> io::Result<u32> {
        let loader = std::process::id();
        let mut command = self.shim();
        for (name, _) in std::env::vars_os() {
            if loader_only(&name) {
                command.env_remove(name);
            }
        }
        command
            .arg("--")
            .args(&self.command)
            .env(LISTEN_FDS, fds.len().to_string())
            .env(LISTEN_FDNAMES, &self.names)
            .env(STICKY_WORKER, slot.to_string())
            .env(STICKY_WORKERS, slots.to_string())
            .envs(&self.environment)
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(socket) = &self.notify_socket {
            command.env(NOTIFY_SOCKET, socket);
        }
        if let Some(watchdog) = self.watchdog {
            // The shim adds WATCHDOG_PID, as it does LISTEN_PID.
            command.env(WATCHDOG_USEC, watchdog.as_micros().to_string());
        }
        let (identity, dir) = (self.identity.clone(), self.working_directory.clone());
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls, without allocating.
        unsafe {
            command.pre_exec(move || prepare_child(loader, &fds, identity.as_ref(), dir.as_deref()))
        };
        // Dropping a std `Child` neither waits for nor kills it.
        command.spawn().map(|child| child.id())
    }

    /// `sticky exec-worker`; the pre_exec closure makes it the workers' user, in their working
    /// directory.
    fn shim(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.sticky);
        command.arg(EXEC_WORKER);
        command
    }
}

/// Variables of sticky's own environment that are addressed to sticky alone, never passed to a
/// worker: what systemd sets for the service's main process, and sticky's own `STICKY_*`
/// (sticky sets the workers' `STICKY_*` itself). `--env` may still set any that is not
/// reserved.
fn loader_only(name: &std::ffi::OsStr) -> bool {
    const SERVICE: [&str; 18] = [
        "FDSTORE",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "MAINPID",
        "MANAGERPID",
        "SYSTEMD_EXEC_PID",
        "STATE_DIRECTORY",
        "RUNTIME_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
        "MEMORY_PRESSURE_WATCH",
        "MEMORY_PRESSURE_WRITE",
    ];
    let name = name.as_bytes();
    name.starts_with(b"STICKY_") || SERVICE.iter().any(|s| s.as_bytes() == name)
}

/// The user, group and supplementary groups a child switches to before exec.
#[derive(Debug, Clone)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl Identity {
    /// The identity for `credentials`, or `None` when they are the loader's own and it is not
    /// root (nothing to switch, and no privilege to do it with).
    fn switch_to(credentials: &Credentials) -> Option<Self> {
        let (uid, gid) = (Uid::effective(), Gid::effective());
        let own = credentials.uid == uid.as_raw() && credentials.gid == gid.as_raw();
        if own && !uid.is_root() {
            return None;
        }
        let groups = if credentials.groups.is_empty() {
            vec![credentials.gid]
        } else {
            credentials.groups.clone()
        };
        Some(Self { uid: credentials.uid, gid: credentials.gid, groups })
    }
}

/// Why workers cannot be started as configured.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The path of the running `sticky` is unknown.
    #[error("cannot locate the sticky executable")]
    Executable(#[source] io::Error),
    /// The shim that starts every worker cannot run as the workers' user.
    #[error("cannot start workers as user {user}: running {} as that user failed", sticky.display())]
    Shim {
        /// The sticky executable.
        sticky: PathBuf,
        /// The workers' user.
        user: String,
        /// Why it does not run.
        #[source]
        source: io::Error,
    },
    /// The working directory's path holds a NUL byte.
    #[error("the working directory's path holds a NUL byte")]
    NulByte,
    /// The workers' user may not execute the worker program.
    #[error("worker command {} cannot be executed as user {user}: {reason}", Path::new(program).display())]
    Command {
        /// The resolved program.
        program: OsString,
        /// The workers' user.
        user: String,
        /// Why not.
        reason: String,
    },
}

/// In the forked child: become the workers' user without any privilege, die with the loader,
/// and keep only fds 0–2 and the slot's sockets, moved to fd 3 onwards.
///
/// Runs between fork and exec: system calls only, no allocation.
fn prepare_child(
    loader: u32,
    fds: &[RawFd],
    identity: Option<&Identity>,
    dir: Option<&std::ffi::CStr>,
) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    // The death signal is cleared by a change of user or group: set it after become_worker's.
    become_worker(identity, dir)?;
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid().as_raw() as u32 != loader {
        // The loader died before the line above took effect. (No allocation after fork.)
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // First copy every socket above the target range, so no dup2 below overwrites a source.
    if fds.len() > MAX_LISTEN_ADDRESSES {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    let above = LISTEN_FDS_START + fds.len() as RawFd;
    let mut copies = [0 as RawFd; MAX_LISTEN_ADDRESSES];
    for (copy, &fd) in copies.iter_mut().zip(fds) {
        // SAFETY: F_DUPFD_CLOEXEC on an fd this process owns; the copy closes at exec.
        *copy = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) })?;
    }
    for (target, &copy) in (LISTEN_FDS_START..).zip(&copies[..fds.len()]) {
        // SAFETY: the target is in the range reserved for the listeners.
        check(unsafe { libc::dup2(copy, target) })?;
        // dup2 onto an fd equal to its source keeps FD_CLOEXEC: clear it in every case.
        // SAFETY: F_SETFD on the fd just made.
        check(unsafe { libc::fcntl(target, libc::F_SETFD, 0) })?;
    }
    close_at_exec_from(above)
}

/// In a forked child: takes `identity` (supplementary groups, group, user) when given, then
/// gives up every capability and can never gain one (no_new_privs), gets back the limits and
/// umask the loader started with, and enters `dir` as the new user.
///
/// Leaving root clears the permitted, effective and ambient sets but not the inheritable one,
/// and a loader that is not root keeps its ambient set across exec: so both are emptied here,
/// whoever the loader and the workers are. Runs between fork and exec: system calls only.
fn become_worker(identity: Option<&Identity>, dir: Option<&std::ffi::CStr>) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    if let Some(identity) = identity {
        // SAFETY: setgroups reads `groups.len()` gids from the vector's buffer.
        check(unsafe { libc::setgroups(identity.groups.len(), identity.groups.as_ptr()) })?;
        // SAFETY: plain system calls on ids.
        check(unsafe { libc::setresgid(identity.gid, identity.gid, identity.gid) })?;
        // SAFETY: as above.
        check(unsafe { libc::setresuid(identity.uid, identity.uid, identity.uid) })?;
    }
    // A set-user-ID program the worker runs gains nothing.
    prctl::set_no_new_privs()?;
    drop_capabilities()?;
    limits::restore()?;
    if let Some(dir) = dir {
        // SAFETY: chdir with a NUL-terminated path.
        check(unsafe { libc::chdir(dir.as_ptr()) })?;
    }
    Ok(())
}

/// Empties the ambient, inheritable, permitted and effective capability sets (which needs no
/// privilege). The bounding set stays: with no_new_privs and empty sets, nothing is regained
/// from it.
fn drop_capabilities() -> io::Result<()> {
    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    /// `struct __user_cap_data_struct`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    /// `_LINUX_CAPABILITY_VERSION_3`: two data structs, 64 capabilities.
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments.
    let cleared = unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
    };
    // EINVAL: a kernel older than 4.3 has no ambient set.
    if cleared < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    let header = Header { version: VERSION_3, pid: 0 };
    let none = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset(2) reads one header and two data structs.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, none.as_ptr()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Marks every fd from `first` up close-on-exec: whatever sticky's own parent leaked to it
/// stays out of the worker. (Marked rather than closed: std reports a failed exec through
/// one of them.)
fn close_at_exec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags (Linux 5.11+).
    let ret = unsafe {
        libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
    };
    if ret == 0 {
        return Ok(());
    }
    // Older kernels: one fcntl per possible fd, up to the fd limit.
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft.min(1 << 20));
    for fd in first..limit as RawFd {
        // SAFETY: F_SETFD on a number that may or may not be an open fd (EBADF is ignored).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// The body of `sticky exec-worker -- CMD...`: sets `LISTEN_PID` to this process and execs
/// `command`. Returns only if the exec failed, with an error naming the command, the user and
/// the slot.
pub fn exec_worker(command: &[OsString]) -> io::Error {
    let Some((program, args)) = command.split_first() else {
        return io::Error::other("no worker command given");
    };
    let pid = std::process::id().to_string();
    let mut worker = std::process::Command::new(program);
    worker.args(args).env(LISTEN_PID, &pid);
    if std::env::var_os(WATCHDOG_USEC).is_some() {
        worker.env(WATCHDOG_PID, &pid);
    }
    let error = worker.exec();
    let slot = std::env::var(STICKY_WORKER).unwrap_or_else(|_| "?".into());
    io::Error::new(
        error.kind(),
        format!(
            "worker {slot}: cannot execute {} as user {}: {error}",
            Path::new(program).display(),
            user_name(getuid())
        ),
    )
}

/// The body of `sticky exec-worker --check -- CMD...`: whether this process (started as a
/// worker would be) may execute CMD's program.
pub fn check_worker(command: &[OsString]) -> io::Result<()> {
    let program = command.first().ok_or_else(|| io::Error::other("no worker command given"))?;
    access(Path::new(program), AccessFlags::X_OK).map_err(io::Error::from)
}

/// The name of user `uid`, or the number if it has none.
fn user_name(uid: Uid) -> String {
    User::from_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |user| user.name)
}
