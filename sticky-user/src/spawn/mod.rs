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
//!
//! The shim (and the demo worker) is the loader's own image, `/proc/self/exe`, named by
//! sticky's path: a new file at that path changes nothing until the next upgrade.

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

use nix::unistd::{AccessFlags, Uid, User, access, getuid};
use sticky_worker::{
    LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, NOTIFY_SOCKET, STICKY_WORKER, STICKY_WORKERS,
    WATCHDOG_PID, WATCHDOG_USEC,
};
use thiserror::Error;

use self::child::{Identity, become_worker, prepare_child};
use crate::{
    config::{Credentials, DispatchMode, HandoffTransport, Listen, RunConfig, WorkerCommand},
    handoff::HANDOFF_NAME,
    identity::RUNNING_IMAGE,
};

mod child;
mod quic;

use quic::QuicEnvironment;

/// The hidden `sticky` subcommand that sets `LISTEN_PID` and execs the worker.
pub const EXEC_WORKER: &str = "exec-worker";
/// Node's IPC channel: the fd a node worker reads (`--handoff node`).
const NODE_CHANNEL_FD: &str = "NODE_CHANNEL_FD";
/// How node reads its IPC channel: `json`, one message per line.
const NODE_CHANNEL_SERIALIZATION_MODE: &str = "NODE_CHANNEL_SERIALIZATION_MODE";

/// Starts workers: knows the command, their environment and identity, and the names of the
/// listen addresses.
#[derive(Debug)]
pub struct Spawner {
    /// The `sticky` executable's path: the shim's argv[0] (it runs [`RUNNING_IMAGE`]).
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
    /// The workers' watchdog interval, if any.
    watchdog: Option<std::time::Duration>,
    /// With `--quic`: what workers get to mint routable connection IDs.
    quic: Option<QuicEnvironment>,
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
            None => vec![RUNNING_IMAGE.into(), "demo".into()],
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
            watchdog: config.policy.worker_watchdog,
            quic: None,
        })
    }

    /// The sticky executable's path, as it was when this loader started.
    pub fn executable(&self) -> &Path {
        &self.sticky
    }

    /// Sets the path [`Spawner::executable`] returns (after an upgrade: the path the loader was
    /// started from, which the state record carries).
    pub fn set_executable(&mut self, path: PathBuf) {
        self.sticky = path;
    }

    /// Tells the workers how to mint connection IDs the program routes (`--quic`), from the
    /// loader's `seed`: their length, the key of their check, their slot's reset key.
    pub fn set_quic(&mut self, cid_len: u8, seed: u64) {
        self.quic = Some(QuicEnvironment { cid_len, seed });
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

    /// Starts the worker for `slot` of `slots` (of QUIC socket `generation`), with `fds` (one listening socket per listen
    /// address) at fd 3 onwards, a node worker's IPC `channel` right after them (not counted
    /// in `LISTEN_FDS`: `NODE_CHANNEL_FD`), and its own readiness socket at `notify_socket`.
    /// Returns its pid: the caller waits for it (it is not reaped otherwise).
    pub fn spawn(
        &self,
        slot: u32,
        slots: u32,
        generation: u8,
        mut fds: Vec<RawFd>,
        channel: Option<RawFd>,
        notify_socket: &Path,
    ) -> io::Result<u32> {
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
            .envs(self.quic.iter().flat_map(|quic| quic.for_slot(slot, generation)))
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(channel) = channel {
            command.env(NODE_CHANNEL_FD, (3 + fds.len()).to_string());
            command.env(NODE_CHANNEL_SERIALIZATION_MODE, "json");
            fds.push(channel);
        }
        command.env(NOTIFY_SOCKET, notify_socket);
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

    /// `sticky exec-worker`: the loader's own image, whatever is at its path now, named by the
    /// path; the pre_exec closure makes it the workers' user, in their working directory.
    fn shim(&self) -> std::process::Command {
        let mut command = std::process::Command::new(RUNNING_IMAGE);
        command.arg0(&self.sticky).arg(EXEC_WORKER);
        command
    }
}

/// Variables of sticky's own environment that are addressed to sticky alone, never passed to a
/// worker: what systemd sets for the service's main process, and sticky's own `STICKY_*`
/// (sticky sets the workers' `STICKY_*` itself). `--env` may still set any that is not
/// reserved.
fn loader_only(name: &std::ffi::OsStr) -> bool {
    const SERVICE: [&str; 20] = [
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
        NODE_CHANNEL_FD,
        NODE_CHANNEL_SERIALIZATION_MODE,
    ];
    let name = name.as_bytes();
    name.starts_with(b"STICKY_") || SERVICE.iter().any(|s| s.as_bytes() == name)
}

/// Why workers cannot be started as configured.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The path of the running `sticky` is unknown.
    #[error("cannot locate the sticky executable")]
    Executable(#[source] io::Error),
    /// The shim that starts every worker cannot run as the workers' user.
    #[error(
        "cannot start workers as user {user}, who must be able to run {} (it starts every worker)",
        sticky.display()
    )]
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

/// The workers' `LISTEN_FDNAMES`: `sticky-PORT` per listen address (none under userspace
/// dispatch), then the handoff socket if the loader passes connections on over it (node
/// workers get theirs over the unnamed IPC channel instead).
pub(crate) fn socket_names(config: &RunConfig) -> Vec<String> {
    let mut names: Vec<String> = match config.dispatch {
        DispatchMode::Userspace => Vec::new(),
        _ => config.listen.iter().map(Listen::fd_name).collect(),
    };
    if config.passes_on() && config.handoff == HandoffTransport::Socket {
        names.push(HANDOFF_NAME.into());
    }
    names
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
    if program == RUNNING_IMAGE {
        // The demo: this image again, named as the shim is.
        worker.arg0(std::env::args_os().next().unwrap_or_else(|| program.clone()));
    }
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
