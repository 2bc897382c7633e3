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
    path::PathBuf,
    process::Stdio,
};

use tokio::process::{Child, Command};

use crate::{
    config::{Credentials, MAX_LISTEN_ADDRESSES, RunConfig, WorkerCommand},
    worker::{
        LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, STICKY_WORKER, STICKY_WORKERS,
    },
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
    working_directory: Option<PathBuf>,
    credentials: Option<Credentials>,
}

impl Spawner {
    /// A spawner for `config`'s workers on sockets named `names` (one per listen address).
    /// Without a command the workers run `sticky demo`.
    pub fn new(config: &RunConfig, names: &[String]) -> io::Result<Self> {
        let sticky = std::env::current_exe()?;
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
        })
    }

    /// Starts the worker for `slot` of `slots`, with `fds` (one listening socket per listen
    /// address) at fd 3 onwards.
    pub fn spawn(&self, slot: u32, slots: u32, fds: Vec<RawFd>) -> io::Result<Child> {
        let loader = std::process::id();
        let mut command = Command::new(&self.sticky);
        command
            .arg(EXEC_WORKER)
            .arg("--")
            .args(&self.command)
            .env(LISTEN_FDS, fds.len().to_string())
            .env(LISTEN_FDNAMES, &self.names)
            .env(STICKY_WORKER, slot.to_string())
            .env(STICKY_WORKERS, slots.to_string())
            .env_remove(LISTEN_PID)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_PID")
            .env_remove("WATCHDOG_USEC")
            .envs(&self.environment)
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(dir) = &self.working_directory {
            command.current_dir(dir);
        }
        if let Some(credentials) = &self.credentials {
            // std applies setgid, setgroups([]) and setuid before the pre_exec closure, so the
            // death signal set there survives; leaving root clears the capability sets.
            command.uid(credentials.uid).gid(credentials.gid);
        }
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls, without allocating.
        unsafe { command.pre_exec(move || prepare_child(loader, &fds)) };
        command.spawn()
    }
}

/// In the forked child: die with the loader, and move the slot's sockets to fd 3 onwards.
fn prepare_child(loader: u32, fds: &[RawFd]) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    // SAFETY: plain system calls on integers and on fds this process owns.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        if libc::getppid() as u32 != loader {
            // The loader died before the line above took effect.
            return Err(io::Error::other("the loader exited"));
        }
        // First copy every socket above the target range, so no dup2 below overwrites a source.
        let above = LISTEN_FDS_START + fds.len() as RawFd;
        let mut copies = [0 as RawFd; MAX_LISTEN_ADDRESSES];
        for (copy, &fd) in copies.iter_mut().zip(fds) {
            *copy = check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above))?;
        }
        for (target, &copy) in (LISTEN_FDS_START..).zip(&copies[..fds.len()]) {
            check(libc::dup2(copy, target))?;
            // dup2 onto an fd equal to its source keeps FD_CLOEXEC: clear it in every case.
            check(libc::fcntl(target, libc::F_SETFD, 0))?;
        }
    }
    Ok(())
}

/// The body of `sticky exec-worker -- CMD...`: sets `LISTEN_PID` to this process and execs
/// `command`. Returns only if the exec failed.
pub fn exec_worker(command: &[OsString]) -> io::Error {
    let Some((program, args)) = command.split_first() else {
        return io::Error::other("no worker command given");
    };
    std::process::Command::new(program)
        .args(args)
        .env(LISTEN_PID, std::process::id().to_string())
        .exec()
}
