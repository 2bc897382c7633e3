//! Starting one worker process on its slot's listening sockets.
//!
//! A worker is started as `sticky exec-worker -- CMD…`. In the forked child, before exec, the
//! slot's sockets are moved to fd 3 onwards, PR_SET_PDEATHSIG is set so the worker dies with the
//! loader, and the child gets its own process group (a terminal's Ctrl-C then reaches only the
//! loader). The `exec-worker` shim sets `LISTEN_PID` to its own pid and execs CMD, which keeps
//! that pid: the loader cannot set it, as the pid is only known after fork.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io,
    os::{fd::RawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Stdio,
};

use nix::{
    sys::{
        prctl,
        resource::{Resource, getrlimit},
        signal::Signal,
    },
    unistd::{AccessFlags, Uid, User, access, getppid, getuid},
};
use sticky_worker::{
    LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, NOTIFY_SOCKET, STICKY_WORKER,
    STICKY_WORKERS, WATCHDOG_PID, WATCHDOG_USEC,
};
use thiserror::Error;

use crate::config::{Credentials, MAX_LISTEN_ADDRESSES, RunConfig, WorkerCommand};

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
    working_directory: Option<PathBuf>,
    credentials: Option<Credentials>,
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
            working_directory: config.working_directory.clone(),
            credentials: config.credentials.clone(),
            watchdog: config.policy.worker_watchdog,
        })
    }

    /// The sticky executable's path, as it was when this loader started.
    pub fn executable(&self) -> &Path {
        &self.sticky
    }

    /// Checks that a worker can be started: the `exec-worker` shim runs as the workers' user in
    /// their working directory, and that user may execute the worker program.
    pub fn check(&self) -> Result<(), SpawnError> {
        let user =
            self.credentials.as_ref().map_or_else(|| user_name(getuid()), |c| c.user.clone());
        let program = &self.command[0];
        let mut command = self.shim();
        command.arg("--check").arg("--").arg(program).stdout(Stdio::null()).stderr(Stdio::piped());
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
    /// address) at fd 3 onwards and its own readiness socket at `notify_socket`. Returns its
    /// pid: the caller waits for it (it is not reaped otherwise).
    pub fn spawn(
        &self,
        slot: u32,
        slots: u32,
        fds: Vec<RawFd>,
        notify_socket: &Path,
    ) -> io::Result<u32> {
        let loader = std::process::id();
        let mut command = self.shim();
        command
            .arg("--")
            .args(&self.command)
            .env(LISTEN_FDS, fds.len().to_string())
            .env(LISTEN_FDNAMES, &self.names)
            .env(STICKY_WORKER, slot.to_string())
            .env(STICKY_WORKERS, slots.to_string())
            .env_remove(LISTEN_PID)
            .env_remove(NOTIFY_SOCKET)
            .env_remove(WATCHDOG_PID)
            .env_remove(WATCHDOG_USEC)
            .envs(&self.environment)
            .stdin(Stdio::null())
            .process_group(0);
        command.env(NOTIFY_SOCKET, notify_socket);
        if let Some(watchdog) = self.watchdog {
            // The shim adds WATCHDOG_PID, as it does LISTEN_PID.
            command.env(WATCHDOG_USEC, watchdog.as_micros().to_string());
        }
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls, without allocating.
        unsafe { command.pre_exec(move || prepare_child(loader, &fds)) };
        // Dropping a std `Child` neither waits for nor kills it.
        command.spawn().map(|child| child.id())
    }

    /// `sticky exec-worker` as the workers' user, in their working directory.
    fn shim(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.sticky);
        command.arg(EXEC_WORKER);
        if let Some(dir) = &self.working_directory {
            command.current_dir(dir);
        }
        if let Some(credentials) = &self.credentials {
            // std applies setgid, setgroups([]) and setuid before the pre_exec closure, so the
            // death signal set there survives; leaving root clears the capability sets.
            command.uid(credentials.uid).gid(credentials.gid);
        }
        command
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

/// In the forked child: die with the loader, never gain privileges, and keep only fds 0–2 and
/// the slot's sockets, moved to fd 3 onwards.
///
/// Runs between fork and exec: system calls only, no allocation.
fn prepare_child(loader: u32, fds: &[RawFd]) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid().as_raw() as u32 != loader {
        // The loader died before the line above took effect. (No allocation after fork.)
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // A set-user-ID program the worker runs gains nothing.
    prctl::set_no_new_privs()?;
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
